//! Tokenizers, with the `tokenizers` crate: from a Hugging Face `tokenizer.json`, or built from
//! a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! From GGUF, two vocabularies are understood:
//! - `gpt2`: byte-level BPE with the file's merges; `tokenizer.ggml.pre` picks the
//!   pre-tokenizer as llama.cpp does (`default`/`gpt2`, `smollm` and the other
//!   digit-splitting StarCoder-style ones, `llama3`/`llama-bpe`, `qwen2`);
//! - `llama`: SentencePiece-style BPE over `▁`-marked pieces with byte fallback; the merges are
//!   derived from the pieces' scores (as `transformers` does for such files).
//!
//! Control tokens (`token_type` 3) and user-defined tokens (4) become added tokens, so they are
//! matched whole in the text; control tokens are "special" (dropped by `decode` when asked).
//! Whether a beginning-of-sequence token is prepended follows `tokenizer.ggml.add_bos_token`
//! (default: yes for `llama`, no for `gpt2`), and likewise for the end-of-sequence token.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::ModelError;
use crate::gguf::{GgufFile, MetaValue};

/// A text ⇄ token-id codec plus the model's special-token conventions.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Prepend this id when encoding with special tokens (GGUF); `None` when the tokenizer's
    /// own post-processor handles it (`tokenizer.json`) or when the model wants none.
    prepend_bos: Option<u32>,
    /// Append this id when encoding with special tokens (GGUF).
    append_eos: Option<u32>,
    bos: Option<u32>,
    eos: Vec<u32>,
    source: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

/// The pre-tokenizer of llama.cpp's `llama3` vocabularies.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The pre-tokenizer of llama.cpp's `qwen2` vocabularies.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ModelError> {
        Self::from_gguf_metadata(&file.metadata, file.path())
    }

    /// Builds the tokenizer described by GGUF metadata; `path` names the file in errors.
    pub fn from_gguf_metadata(
        meta: &BTreeMap<String, MetaValue>,
        path: &Path,
    ) -> Result<Self, ModelError> {
        let err = |message: String| ModelError::format(path, message);
        let model = meta
            .get("tokenizer.ggml.model")
            .and_then(MetaValue::as_str)
            .ok_or_else(|| {
                err("tokenizer.ggml.model is missing: the file has no tokenizer".into())
            })?;
        let tokens: Vec<&str> = meta
            .get("tokenizer.ggml.tokens")
            .and_then(MetaValue::as_array)
            .ok_or_else(|| err("tokenizer.ggml.tokens is missing".into()))?
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| err("tokenizer.ggml.tokens holds a non-string".into()))
            })
            .collect::<Result<_, _>>()?;
        let types: Vec<i64> = match meta
            .get("tokenizer.ggml.token_type")
            .and_then(MetaValue::as_array)
        {
            Some(values) => values
                .iter()
                .map(|v| v.as_f64().map_or(1, |x| x as i64))
                .collect(),
            None => vec![1; tokens.len()],
        };
        let id = |key: &str| {
            meta.get(key)
                .and_then(MetaValue::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&v| (v as usize) < tokens.len())
        };
        let flag = |key: &str| meta.get(key).and_then(MetaValue::as_bool);
        let bos = id("tokenizer.ggml.bos_token_id");
        let eos_id = id("tokenizer.ggml.eos_token_id");

        let mut vocab = serde_json::Map::new();
        for (i, token) in tokens.iter().enumerate() {
            vocab.entry(token.to_string()).or_insert(json!(i));
        }
        let added: Vec<Value> = tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| matches!(types.get(*i), Some(3 | 4)))
            .map(|(i, token)| {
                json!({
                    "id": i, "content": token, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": types[i] == 3,
                })
            })
            .collect();

        let (spec, default_bos) = match model {
            "gpt2" => {
                let merges = meta
                    .get("tokenizer.ggml.merges")
                    .and_then(MetaValue::as_array)
                    .ok_or_else(|| {
                        err("tokenizer.ggml.merges is missing (a gpt2 BPE needs them)".into())
                    })?
                    .iter()
                    .map(|m| {
                        let m = m
                            .as_str()
                            .ok_or_else(|| err("a merge is not a string".into()))?;
                        let (a, b) = m.split_once(' ').ok_or_else(|| {
                            err(format!(
                                "merge {m:?} is not two tokens separated by a space"
                            ))
                        })?;
                        Ok(json!([a, b]))
                    })
                    .collect::<Result<Vec<_>, ModelError>>()?;
                let pre = meta
                    .get("tokenizer.ggml.pre")
                    .and_then(MetaValue::as_str)
                    .unwrap_or("default");
                let byte_level = |use_regex: bool| {
                    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                           "use_regex": use_regex})
                };
                let split = |regex: &str| {
                    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated",
                           "invert": false})
                };
                let pre_tokenizer = match pre {
                    "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais" | "trillion" => {
                        byte_level(true)
                    }
                    "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
                    | "minerva" => json!({"type": "Sequence", "pretokenizers": [
                        {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
                    "llama3" | "llama-bpe" | "llama-v3" | "falcon3" | "pixtral" | "smaug-bpe" => {
                        json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX),
                               byte_level(false)]})
                    }
                    "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "hunyuan" => {
                        json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX),
                               byte_level(false)]})
                    }
                    other => {
                        return Err(err(format!(
                            "tokenizer.ggml.pre {other:?} is not supported (known: default, \
                             gpt2, smollm, starcoder, llama3, llama-bpe, qwen2 and their kin)"
                        )));
                    }
                };
                let spec = json!({
                    "version": "1.0",
                    "added_tokens": added,
                    "normalizer": null,
                    "pre_tokenizer": pre_tokenizer,
                    "post_processor": null,
                    "decoder": {"type": "ByteLevel", "add_prefix_space": true,
                                "trim_offsets": true, "use_regex": true},
                    "model": {"type": "BPE", "dropout": null, "unk_token": null,
                              "continuing_subword_prefix": null, "end_of_word_suffix": null,
                              "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                              "vocab": vocab, "merges": merges},
                });
                (spec, false)
            }
            "llama" => {
                let scores: Vec<f64> = match meta
                    .get("tokenizer.ggml.scores")
                    .and_then(MetaValue::as_array)
                {
                    Some(values) => values.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect(),
                    None => vec![0.0; tokens.len()],
                };
                let merges = spm_merges(&tokens, &types, &scores);
                let unk =
                    id("tokenizer.ggml.unknown_token_id").map(|i| tokens[i as usize].to_string());
                let add_space = flag("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                let mut normalizers = Vec::new();
                if add_space {
                    normalizers.push(json!({"type": "Prepend", "prepend": "▁"}));
                }
                normalizers
                    .push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
                let mut decoders = vec![
                    json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
                    json!({"type": "ByteFallback"}),
                    json!({"type": "Fuse"}),
                ];
                if add_space {
                    decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
                }
                let spec = json!({
                    "version": "1.0",
                    "added_tokens": added,
                    "normalizer": {"type": "Sequence", "normalizers": normalizers},
                    "pre_tokenizer": null,
                    "post_processor": null,
                    "decoder": {"type": "Sequence", "decoders": decoders},
                    "model": {"type": "BPE", "dropout": null, "unk_token": unk,
                              "continuing_subword_prefix": null, "end_of_word_suffix": null,
                              "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                              "vocab": vocab, "merges": merges},
                });
                (spec, true)
            }
            other => {
                return Err(err(format!(
                    "tokenizer.ggml.model {other:?} is not supported (only \"gpt2\" and \"llama\")"
                )));
            }
        };
        let inner = tokenizers::Tokenizer::from_bytes(spec.to_string().as_bytes())
            .map_err(|e| err(format!("cannot build the tokenizer from its metadata: {e}")))?;
        let add_bos = flag("tokenizer.ggml.add_bos_token").unwrap_or(default_bos);
        let add_eos = flag("tokenizer.ggml.add_eos_token").unwrap_or(false);
        let mut eos: Vec<u32> = eos_id.into_iter().collect();
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(i) = id(key)
                && !eos.contains(&i)
            {
                eos.push(i);
            }
        }
        Ok(Self {
            inner,
            prepend_bos: bos.filter(|_| add_bos),
            append_eos: eos_id.filter(|_| add_eos),
            bos,
            eos,
            source: path.to_owned(),
        })
    }

    /// Loads `tokenizer.json` from a Hugging Face model directory, with the special tokens of
    /// its `tokenizer_config.json`, `config.json` and `generation_config.json` where present.
    pub fn from_hf_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(ModelError::format(
                &path,
                "missing: a Hugging Face model directory needs its tokenizer.json",
            ));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| ModelError::format(&path, format!("not a readable tokenizer: {e}")))?;
        let read_json = |name: &str| -> Result<Option<Value>, ModelError> {
            let p = dir.join(name);
            if !p.is_file() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&p).map_err(|e| ModelError::io(&p, e))?;
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| ModelError::format(&p, format!("not valid JSON: {e}")))
        };
        let tok_config = read_json("tokenizer_config.json")?;
        let config = read_json("config.json")?;
        let gen_config = read_json("generation_config.json")?;
        // `bos_token` is a string or an AddedToken object `{"content": ...}`.
        let token_of = |v: Option<&Value>| -> Option<u32> {
            let v = v?;
            let text = v.as_str().or_else(|| v.get("content")?.as_str())?;
            inner.token_to_id(text)
        };
        let ids_of = |v: Option<&Value>| -> Vec<u32> {
            match v {
                Some(Value::Number(n)) => n.as_u64().map(|n| n as u32).into_iter().collect(),
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|n| n.as_u64())
                    .map(|n| n as u32)
                    .collect(),
                _ => Vec::new(),
            }
        };
        let tc = tok_config.as_ref();
        let bos = token_of(tc.and_then(|c| c.get("bos_token"))).or_else(|| {
            ids_of(config.as_ref().and_then(|c| c.get("bos_token_id")))
                .first()
                .copied()
        });
        let mut eos = Vec::new();
        for id in token_of(tc.and_then(|c| c.get("eos_token")))
            .into_iter()
            .chain(ids_of(
                gen_config.as_ref().and_then(|c| c.get("eos_token_id")),
            ))
            .chain(ids_of(config.as_ref().and_then(|c| c.get("eos_token_id"))))
        {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        // A post-processor adds BOS itself; older configs say `add_bos_token` without one.
        let has_post = inner.get_post_processor().is_some();
        let add_bos = tc
            .and_then(|c| c.get("add_bos_token"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Self {
            prepend_bos: bos.filter(|_| add_bos && !has_post),
            append_eos: None,
            inner,
            bos,
            eos,
            source: path,
        })
    }

    /// Encodes `text`. Special and added tokens written in the text (e.g. `<|im_start|>`) are
    /// recognised; with `add_special`, BOS/EOS are added as the model declares.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, ModelError> {
        let encoding = self
            .inner
            .encode(text, add_special)
            .map_err(|e| ModelError::Backend(format!("tokenizer: cannot encode: {e}")))?;
        let mut ids = Vec::with_capacity(encoding.len() + 2);
        if add_special && let Some(bos) = self.prepend_bos {
            ids.push(bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        if add_special && let Some(eos) = self.append_eos {
            ids.push(eos);
        }
        Ok(ids)
    }

    /// Decodes `ids` to text; with `skip_special`, control tokens are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, ModelError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| ModelError::Backend(format!("tokenizer: cannot decode: {e}")))
    }

    /// The text of one token as stored in the vocabulary (e.g. `<|im_end|>`, `Ġthe`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a vocabulary entry or added token.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of token ids (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The beginning-of-sequence token, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The tokens that end a generation (end of sequence, end of turn), first the model's EOS.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// The tokenizer of the `tokenizers` crate underneath.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// BPE merges for a SentencePiece vocabulary: every split of a piece into two pieces of the
/// vocabulary, in the order of the merged piece's score (highest first), then of the halves' ids.
fn spm_merges(tokens: &[&str], types: &[i64], scores: &[f64]) -> Vec<Value> {
    // Only normal pieces (type 1, or unknown types) take part in merges.
    let normal = |i: usize| matches!(types.get(i), Some(1) | None);
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|&(i, _)| normal(i))
        .map(|(i, t)| (*t, i))
        .collect();
    let mut order: Vec<usize> = (0..tokens.len()).filter(|&i| normal(i)).collect();
    order.sort_by(|&a, &b| {
        let (sa, sb) = (
            scores.get(a).copied().unwrap_or(0.0),
            scores.get(b).copied().unwrap_or(0.0),
        );
        sb.total_cmp(&sa).then(a.cmp(&b))
    });
    let mut seen = HashSet::new();
    let mut merges = Vec::new();
    for i in order {
        let piece = tokens[i];
        let mut local: Vec<(usize, usize, &str, &str)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (left, right) = piece.split_at(at);
                Some((*ids.get(left)?, *ids.get(right)?, left, right))
            })
            .collect();
        local.sort();
        for (_, _, left, right) in local {
            if seen.insert((left, right)) {
                merges.push(json!([left, right]));
            }
        }
    }
    merges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(entries: Vec<(&str, MetaValue)>) -> BTreeMap<String, MetaValue> {
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    fn strings(items: &[&str]) -> MetaValue {
        MetaValue::Array(
            items
                .iter()
                .map(|s| MetaValue::String(s.to_string()))
                .collect(),
        )
    }

    #[test]
    fn sentencepiece_style_vocabulary() {
        let mut tokens = vec!["<unk>", "<s>", "</s>"];
        let bytes: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
        tokens.extend(bytes.iter().map(String::as_str));
        let pieces = [
            "▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "ll", "▁he", "llo", "▁hello", "▁w", "or",
            "▁wor", "ld", "▁world",
        ];
        tokens.extend(pieces);
        let mut types = vec![2, 3, 3];
        types.extend(std::iter::repeat_n(6, 256));
        types.extend(std::iter::repeat_n(1, pieces.len()));
        let scores: Vec<MetaValue> = (0..tokens.len())
            .map(|i| MetaValue::F32(if i < 259 { 0.0 } else { -(i as f32) }))
            .collect();
        let m = meta(vec![
            ("tokenizer.ggml.model", MetaValue::String("llama".into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            (
                "tokenizer.ggml.token_type",
                MetaValue::Array(types.into_iter().map(MetaValue::I32).collect()),
            ),
            ("tokenizer.ggml.scores", MetaValue::Array(scores)),
            ("tokenizer.ggml.bos_token_id", MetaValue::U32(1)),
            ("tokenizer.ggml.eos_token_id", MetaValue::U32(2)),
            ("tokenizer.ggml.unknown_token_id", MetaValue::U32(0)),
        ]);
        let tok = Tokenizer::from_gguf_metadata(&m, Path::new("test.gguf")).unwrap();
        let id = |t: &str| tok.token_to_id(t).unwrap();
        let ids = tok.encode("hello world", true).unwrap();
        assert_eq!(ids, vec![1, id("▁hello"), id("▁world")]);
        assert_eq!(tok.decode(&ids, true).unwrap(), "hello world");
        // Unknown characters fall back to bytes: "é" is 0xC3 0xA9.
        let ids = tok.encode("é", false).unwrap();
        assert_eq!(ids, vec![id("▁"), id("<0xC3>"), id("<0xA9>")]);
        assert_eq!(tok.decode(&ids, false).unwrap(), "é");
        assert_eq!(tok.eos_ids(), &[2]);
    }

    #[test]
    fn unknown_tokenizer_model_is_a_clear_error() {
        let m = meta(vec![
            ("tokenizer.ggml.model", MetaValue::String("rwkv".into())),
            ("tokenizer.ggml.tokens", strings(&["a"])),
        ]);
        let err = Tokenizer::from_gguf_metadata(&m, Path::new("x.gguf")).unwrap_err();
        assert!(
            err.to_string().contains("x.gguf") && err.to_string().contains("rwkv"),
            "{err}"
        );
    }
}
