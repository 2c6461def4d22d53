//! Schema-constrained decoding with llguidance (cargo feature `structured`): a request's JSON
//! schema becomes a grammar, and at every step the tokens that cannot continue a valid answer
//! are masked out of the logits, so the answer parses and follows the schema.
//!
//! The token budget cannot cut an answer short: once the tokens left are no more than the
//! bytes of the shortest way to finish the answer from where it stands (every token is at least
//! one byte), the answer enters its *endgame*, where only the allowed tokens that close it
//! fastest remain (closing a string first, then an object or array, then separators, then
//! digits). The shortest way to finish is worked out on a copy of the grammar's state, so the
//! part of the answer already written no longer counts against the strings still to come: with
//! the bound of the whole document instead, a judgement on five aspects closed its last
//! rationales empty while most of its budget was unspent.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use crate::ModelError;
use crate::tokenizer::Tokenizer;

/// The grammar compiler for one model's vocabulary.
pub struct Structured {
    factory: ParserFactory,
    env: TokEnv,
}

impl std::fmt::Debug for Structured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Structured")
    }
}

/// llguidance's view of the vocabulary: the bytes of every token, and a tokenizer.
struct Env {
    trie: TokTrie,
    tokenizer: tokenizers::Tokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// The tokenizer's own tokens for `s` when they spell exactly `s`, else the trie's greedy
    /// ones. llguidance forces the tokens of the bytes a grammar forces, and a SentencePiece
    /// tokenizer (Llama 2, Mistral) puts a `▁` (a space) before the text it is given: forcing
    /// that space broke the first `{` of every answer. Forcing stays on (`tokenize_is_canonical`
    /// keeps its default): the greedy tokens spell the forced bytes exactly, if perhaps in other
    /// pieces than the tokenizer would choose.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        let text = String::from_utf8_lossy(s);
        match self.tokenizer.encode(text.as_ref(), false) {
            Ok(encoding)
                if encoding
                    .get_ids()
                    .iter()
                    .flat_map(|&id| self.trie.token(id))
                    .eq(s) =>
            {
                encoding.get_ids().to_vec()
            }
            _ => self.trie.greedy_tokenize(s),
        }
    }
}

impl Structured {
    /// Prepares constrained decoding for `tokenizer`'s vocabulary (`vocab_size` rows of logits).
    pub fn new(tokenizer: &Tokenizer, vocab_size: usize) -> Result<Self, ModelError> {
        let err = |e: String| ModelError::Backend(format!("structured output: {e}"));
        let json = tokenizer
            .inner()
            .to_string(false)
            .map_err(|e| err(format!("cannot serialise the tokenizer: {e}")))?;
        let json: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| err(e.to_string()))?;
        let mut words = llguidance::token_bytes_from_tokenizer_json(&json)
            .map_err(|e| err(format!("cannot read the vocabulary's bytes: {e}")))?;
        words.resize(vocab_size.max(words.len()), Vec::new());
        let eos = tokenizer.eos_ids().first().copied().unwrap_or(0);
        let mut info = TokRxInfo::new(words.len() as u32, eos);
        info.tok_bos = tokenizer.bos_id();
        let env = Env {
            trie: TokTrie::from(&info, &words),
            tokenizer: tokenizer.inner().clone(),
        };
        let env: TokEnv = Arc::new(env);
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| err(e.to_string()))?;
        factory.quiet();
        Ok(Self { factory, env })
    }

    /// A matcher for answers that follow `schema` (JSON text).
    pub fn matcher(&self, schema: &str) -> Result<Constraint, ModelError> {
        let schema: serde_json::Value = serde_json::from_str(schema)
            .map_err(|e| ModelError::Usage(format!("json_schema is not valid JSON: {e}")))?;
        let endgame = shortest_document(&schema) + ENDGAME_MARGIN;
        let grammar = TopLevelGrammar::from_json_schema(schema);
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| ModelError::Usage(format!("json_schema is not usable: {e}")))?;
        Ok(Constraint {
            matcher: Matcher::new(Ok(parser)),
            env: self.env.clone(),
            endgame,
            to_finish: None,
            after_backslash: false,
        })
    }
}

/// Extra tokens granted to the endgame beyond the shortest document, for whitespace the
/// grammar may force.
const ENDGAME_MARGIN: usize = 8;

/// Bytes of the shortest JSON document that follows `schema` (compact, no whitespace): an
/// upper bound on the tokens needed to finish any answer that has not yet gone past it.
pub fn shortest_document(schema: &serde_json::Value) -> usize {
    use serde_json::Value;
    let longest_enum = |values: &Vec<Value>| {
        values
            .iter()
            .map(|v| v.to_string().len())
            .max()
            .unwrap_or(0)
    };
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return longest_enum(values);
    }
    if let Some(value) = schema.get("const") {
        return value.to_string().len();
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let members: Vec<usize> = required
                .iter()
                .map(|key| {
                    let value = properties
                        .and_then(|p| p.get(*key))
                        .map_or(4, shortest_document);
                    key.len() + 3 + value
                })
                .collect();
            2 + members.iter().sum::<usize>() + members.len().saturating_sub(1)
        }
        Some("array") => {
            let items = schema.get("items").map_or(4, shortest_document);
            let count = schema.get("minItems").and_then(Value::as_u64).unwrap_or(0) as usize;
            2 + count * items + count.saturating_sub(1)
        }
        Some("string") => 2 + schema.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize,
        Some("boolean") => 5,
        // Numbers have no shortest form a schema without bounds can promise; one digit is the
        // usual, and the margin covers a sign or a fraction the grammar may force.
        Some("integer") | Some("number") => 1,
        _ => 4,
    }
}

/// The state of one constrained answer.
pub struct Constraint {
    matcher: Matcher,
    env: TokEnv,
    /// The endgame of the whole answer: the bytes of the shortest document plus the margin. No
    /// answer needs more, so with more tokens left than this the shortest way to finish is not
    /// worked out at all.
    endgame: usize,
    /// The bytes of the shortest way to finish the answer, as last worked out; `None` once a
    /// token that may have opened a string, an object, an array, a member or an escape has been
    /// consumed since. Otherwise the answer has only gone on inside a string or a number, or
    /// closed one, which needs no more bytes to finish (a number's `.` or exponent one more at
    /// most, within the margin), so the figure stays a bound.
    to_finish: Option<usize>,
    /// Whether the last token consumed held a backslash: the token after it may be inside an
    /// escape (`\u` wants four more digits).
    after_backslash: bool,
}

/// Most steps the search for the shortest way to finish takes before giving up (and falling
/// back on the whole document's bound).
const FINISH_SEARCH_STEPS: usize = 4096;

/// How fast a token closes a JSON document, by its first byte; `None`: it does not help.
fn closing_rank(token: &[u8]) -> Option<u8> {
    match token.first()? {
        b'"' => Some(0),
        b'}' | b']' => Some(1),
        b',' | b':' => Some(2),
        b'0'..=b'9' | b'-' => Some(3),
        _ => None,
    }
}

/// How fast a token finishes a JSON document where something must still be opened (a nested
/// object after its key) or spelled out (`true`): the closing ranks first, then `{` and `[`,
/// then any other token but whitespace, which never brings the end nearer.
fn finishing_rank(token: &[u8]) -> Option<u8> {
    closing_rank(token).or_else(|| match token.first()? {
        b'{' | b'[' => Some(4),
        b' ' | b'\t' | b'\n' | b'\r' => None,
        _ => Some(5),
    })
}

impl Constraint {
    /// Sets the logits of every token the grammar forbids next to minus infinity; with
    /// `tokens_left` in the endgame, also those of every allowed token that does not close the
    /// answer fastest.
    pub fn mask(&mut self, scores: &mut [f32], tokens_left: usize) -> Result<(), ModelError> {
        let mask = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| ModelError::Backend(format!("structured output: {e}")))?;
        for (id, score) in scores.iter_mut().enumerate() {
            if !mask.is_allowed(id as TokenId) {
                *score = f32::NEG_INFINITY;
            }
        }
        if tokens_left <= self.endgame && tokens_left <= self.tokens_to_finish() + ENDGAME_MARGIN {
            let trie = self.env.tok_trie();
            let rank = |id: usize| closing_rank(trie.token(id as TokenId));
            let best = (0..scores.len())
                .filter(|&id| scores[id] != f32::NEG_INFINITY)
                .filter_map(rank)
                .min();
            if let Some(best) = best {
                for (id, score) in scores.iter_mut().enumerate() {
                    if rank(id) != Some(best) {
                        *score = f32::NEG_INFINITY;
                    }
                }
            }
        }
        Ok(())
    }

    /// With this many tokens left or fewer, an answer not yet begun is in its endgame: the
    /// tokens the shortest answer the schema allows may take, at one byte each.
    pub fn endgame(&self) -> usize {
        self.endgame
    }

    /// The bytes of the shortest way to finish the answer from where it stands (an upper bound
    /// on the tokens it takes), worked out when a consumed token may have changed it.
    fn tokens_to_finish(&mut self) -> usize {
        if let Some(bytes) = self.to_finish {
            return bytes;
        }
        let bytes = self
            .shortest_finish()
            .unwrap_or(self.endgame - ENDGAME_MARGIN);
        self.to_finish = Some(bytes);
        bytes
    }

    /// Finishes a copy of the answer the shortest way: the tokens the grammar forces, and where
    /// it offers a choice, the shortest of the tokens that finish fastest. `None` when the copy
    /// fails or does not finish within [`FINISH_SEARCH_STEPS`].
    fn shortest_finish(&self) -> Option<usize> {
        let trie = self.env.tok_trie();
        let mut copy = self.matcher.deep_clone();
        let mut bytes = 0;
        for _ in 0..FINISH_SEARCH_STEPS {
            if copy.is_stopped() || copy.is_accepting().ok()? {
                return Some(bytes);
            }
            let forced = copy.consume_ff_tokens();
            if !forced.is_empty() {
                bytes += forced.iter().map(|&t| trie.token_len(t)).sum::<usize>();
                continue;
            }
            let mask = copy.compute_mask().ok()?;
            let mut fastest: Option<(u8, usize, TokenId)> = None;
            mask.iter_set_entries(|id| {
                let token = trie.token(id as TokenId);
                if let Some(rank) = finishing_rank(token) {
                    let candidate = (rank, token.len(), id as TokenId);
                    if fastest.is_none_or(|best| candidate < best) {
                        fastest = Some(candidate);
                    }
                }
            });
            let (_, len, token) = fastest?;
            copy.consume_token(token).ok()?;
            bytes += len;
        }
        None
    }

    /// Advances past the chosen token; returns whether the answer is complete.
    pub fn consume(&mut self, token: u32) -> Result<bool, ModelError> {
        if self.matcher.is_stopped() {
            return Ok(true);
        }
        let bytes = self.env.tok_trie().token(token);
        if self.after_backslash || bytes.iter().any(|b| b"\"{[,:\\".contains(b)) {
            self.to_finish = None;
        }
        self.after_backslash = bytes.contains(&b'\\');
        self.matcher
            .consume_token(token)
            .map_err(|e| ModelError::Backend(format!("structured output: {e}")))?;
        Ok(self.matcher.is_stopped())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A matcher for `schema` on the tiny byte-fallback tokenizer of the fixtures, and that
    /// tokenizer's token for each byte.
    fn tiny(schema: &serde_json::Value) -> (Constraint, impl Fn(u8) -> u32 + use<>) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spm-tiny");
        let tokenizer = Tokenizer::from_hf_dir(&dir).unwrap();
        let structured = Structured::new(&tokenizer, tokenizer.vocab_size()).unwrap();
        let constraint = structured.matcher(&schema.to_string()).unwrap();
        let trie = constraint.env.tok_trie().clone();
        let byte = move |b: u8| {
            (0..trie.vocab_size() as u32)
                .find(|&id| trie.token(id) == [b])
                .unwrap_or_else(|| panic!("no token for byte {b}"))
        };
        (constraint, byte)
    }

    fn write(constraint: &mut Constraint, byte: &impl Fn(u8) -> u32, text: &str) {
        for b in text.bytes() {
            assert!(!constraint.consume(byte(b)).unwrap(), "{text} ended early");
        }
    }

    fn two_strings() -> serde_json::Value {
        json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
               "required": ["a", "b"], "additionalProperties": false})
    }

    #[test]
    fn the_shortest_finish_counts_only_what_is_left_to_write() {
        let (mut constraint, byte) = tiny(&two_strings());
        assert_eq!(constraint.tokens_to_finish(), r#"{"a":"","b":""}"#.len());
        write(&mut constraint, &byte, r#"{"a":"some text"#);
        assert_eq!(constraint.tokens_to_finish(), r#"","b":""}"#.len());
        write(&mut constraint, &byte, r#"","b":"more"#);
        assert_eq!(constraint.tokens_to_finish(), r#""}"#.len());
        // An escape begun needs its character before the string can close.
        write(&mut constraint, &byte, "\\");
        assert_eq!(constraint.tokens_to_finish(), r#"n"}"#.len());
    }

    #[test]
    fn the_shortest_finish_opens_the_objects_still_to_be_written() {
        let entry = json!({"type": "object",
            "properties": {"why": {"type": "string"}, "score": {"type": "integer", "enum": [1, 2]}},
            "required": ["why", "score"], "additionalProperties": false});
        let schema = json!({"type": "object", "properties": {"A": entry, "B": entry},
                            "required": ["A", "B"], "additionalProperties": false});
        let (mut constraint, byte) = tiny(&schema);
        write(&mut constraint, &byte, r#"{"A":{"why":"text"#);
        let rest = r#"","score":1},"B":{"why":"","score":1}}"#;
        assert_eq!(constraint.tokens_to_finish(), rest.len());
    }

    #[test]
    fn the_endgame_comes_when_what_is_left_needs_the_tokens_not_the_whole_document() {
        let letter = |constraint: &mut Constraint, byte: &dyn Fn(u8) -> u32, tokens_left| {
            let mut scores = vec![0.0; constraint.env.tok_trie().vocab_size()];
            constraint.mask(&mut scores, tokens_left).unwrap();
            scores[byte(b'x') as usize] != f32::NEG_INFINITY
        };
        let (mut constraint, byte) = tiny(&two_strings());
        write(&mut constraint, &byte, r#"{"a":"some text","b":""#);
        // The whole document's bound (15 bytes and the margin) would close "b" at once; what
        // is left ("}) leaves it room until the last few tokens.
        let whole = constraint.endgame();
        assert!(letter(&mut constraint, &byte, whole));
        assert!(letter(&mut constraint, &byte, 2 + ENDGAME_MARGIN + 1));
        assert!(!letter(&mut constraint, &byte, 2 + ENDGAME_MARGIN));
    }

    #[test]
    fn the_shortest_document_counts_required_members_enums_and_minimum_items() {
        let schema = json!({
            "type": "object",
            "properties": {
                "why": {"type": "string"},
                "score": {"type": "integer", "enum": [1, 2, 3, 4, 5]},
                "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "bcd"]},
                         "minItems": 2},
                "note": {"type": "string"}
            },
            "required": ["why", "score", "tags"]
        });
        let shortest = r#"{"why":"","score":1,"tags":["bcd","bcd"]}"#;
        assert_eq!(shortest_document(&schema), shortest.len());
    }
}
