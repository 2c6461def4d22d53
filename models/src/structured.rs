//! Schema-constrained decoding with llguidance (cargo feature `structured`): a request's JSON
//! schema becomes a grammar, and at every step the tokens that cannot continue a valid answer
//! are masked out of the logits, so the answer parses and follows the schema (unless the token
//! budget runs out first).

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use crate::ModelError;
use crate::tokenizer::Tokenizer;

/// The grammar compiler for one model's vocabulary.
pub struct Structured {
    factory: ParserFactory,
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

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        let text = String::from_utf8_lossy(s);
        match self.tokenizer.encode(text.as_ref(), false) {
            Ok(encoding) => encoding.get_ids().to_vec(),
            Err(_) => self.trie.greedy_tokenize(s),
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
        Ok(Self { factory })
    }

    /// A matcher for answers that follow `schema` (JSON text).
    pub fn matcher(&self, schema: &str) -> Result<Constraint, ModelError> {
        let schema: serde_json::Value = serde_json::from_str(schema)
            .map_err(|e| ModelError::Usage(format!("json_schema is not valid JSON: {e}")))?;
        let grammar = TopLevelGrammar::from_json_schema(schema);
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| ModelError::Usage(format!("json_schema is not usable: {e}")))?;
        Ok(Constraint(Matcher::new(Ok(parser))))
    }
}

/// The state of one constrained answer.
pub struct Constraint(Matcher);

impl Constraint {
    /// Sets the logits of every token the grammar forbids next to minus infinity.
    pub fn mask(&mut self, scores: &mut [f32]) -> Result<(), ModelError> {
        let mask = self
            .0
            .compute_mask_or_eos()
            .map_err(|e| ModelError::Backend(format!("structured output: {e}")))?;
        for (id, score) in scores.iter_mut().enumerate() {
            if !mask.is_allowed(id as TokenId) {
                *score = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advances past the chosen token; returns whether the answer is complete.
    pub fn consume(&mut self, token: u32) -> Result<bool, ModelError> {
        if self.0.is_stopped() {
            return Ok(true);
        }
        self.0
            .consume_token(token)
            .map_err(|e| ModelError::Backend(format!("structured output: {e}")))?;
        Ok(self.0.is_stopped())
    }
}
