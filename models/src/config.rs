//! The decoder's hyper-parameters, read from a Hugging Face `config.json`.
//!
//! One plain struct covers the Llama family: Llama 2/3, Mistral (v0.1 with a sliding window;
//! v0.2/v0.3 without), SmolLM2 and Qwen2 (Qwen2.5), whose only differences the decoder sees are
//! biases on the query, key and value projections and a sliding window it declares but switches
//! off (`use_sliding_window: false`). Field names follow `transformers`' own names so that a
//! `config.json` parses directly and a written one loads in `transformers` unchanged.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Architecture hyper-parameters of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `transformers` class names, e.g. `["MistralForCausalLM"]`; kept so written configs load.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// `llama`, `mistral` or `qwen2`; `qwen2` gives the query, key and value projections biases
    /// (as `transformers`' Qwen2 always has them).
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Vocabulary size (rows of the embedding and of the output head).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP's inner layer.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Epsilon of the RMSNorms.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Longest position the model was trained for; bounds the RoPE table.
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Mistral's sliding attention window (`null` in v0.2/v0.3: full attention).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Qwen2's switch for `sliding_window`: `false` means full attention whatever the window
    /// says (Qwen2.5 configs carry a window with the switch off); absent means on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    /// Qwen2's layers from which a switched-on sliding window applies; kept so written configs
    /// match, used only to refuse a switched-on window (see [`LlamaConfig::validate`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_window_layers: Option<usize>,
    /// Whether the output head shares the embedding matrix (SmolLM2 does).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token id (Llama 3 lists several; the first is kept here).
    #[serde(default, deserialize_with = "one_or_many")]
    pub eos_token_id: Option<u32>,
    /// Activation of the MLP; only `silu` (SwiGLU) is supported.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Storage type the weights were saved in (`bfloat16`, `float32`, ...), informative.
    #[serde(default)]
    pub torch_dtype: Option<String>,
    /// RoPE scaling (Llama 3.1 and later); unsupported, so its presence is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
}

fn default_model_type() -> String {
    "llama".into()
}
fn default_rms_norm_eps() -> f64 {
    1e-5
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_position_embeddings() -> usize {
    4096
}
fn default_hidden_act() -> String {
    "silu".into()
}

/// `eos_token_id` is an integer in most configs and a list in Llama 3's.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => None,
        Some(OneOrMany::One(id)) => Some(id),
        Some(OneOrMany::Many(ids)) => ids.first().copied(),
    })
}

impl LlamaConfig {
    /// Number of key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// The sliding window attention actually uses: `sliding_window` unless switched off.
    pub fn sliding_window_in_use(&self) -> Option<usize> {
        self.sliding_window
            .filter(|_| self.use_sliding_window != Some(false))
    }

    /// Whether the query, key and value projections carry biases (Qwen2's do).
    pub fn qkv_bias(&self) -> bool {
        self.model_type == "qwen2"
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Reads and checks `config.json` at `path`.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let config: Self = serde_json::from_str(&text).map_err(|e| ModelError::Format {
            path: path.to_owned(),
            message: format!("not a valid Llama-family config.json: {e}"),
        })?;
        config.validate().map_err(|message| ModelError::Format {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// Checks the invariants the decoder relies on; the message says which field is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("head_dim", self.head_dim()),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim()
            ));
        }
        if self.hidden_act != "silu" {
            return Err(format!(
                "hidden_act {:?} is not supported (only \"silu\", the SwiGLU MLP)",
                self.hidden_act
            ));
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err("rope_scaling is not supported; use a model without it".into());
        }
        if self.model_type == "qwen2"
            && self.sliding_window.is_some()
            && self.use_sliding_window != Some(false)
        {
            return Err(
                "a Qwen2 sliding window (use_sliding_window true) is not supported: it applies \
                 to some layers only (max_window_layers)"
                    .into(),
            );
        }
        if self.sliding_window == Some(0) {
            return Err("sliding_window must be positive or null".into());
        }
        Ok(())
    }

    /// A built-in configuration by name, for random-weight models:
    /// `mistral-7b` (Mistral-7B-Instruct-v0.1's shapes), `mistral-7b-v0.3`, `tiny-llama`
    /// (a SmolLM2-like toy with tied embeddings), `tiny-mistral` (grouped-query attention and
    /// a sliding window shorter than the test sequences) and `tiny-qwen2` (biases, untied head,
    /// a switched-off window).
    pub fn preset(name: &str) -> Option<Self> {
        let mistral = |vocab: usize, theta: f64, window: Option<usize>| Self {
            architectures: vec!["MistralForCausalLM".into()],
            model_type: "mistral".into(),
            vocab_size: vocab,
            hidden_size: 4096,
            intermediate_size: 14336,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: Some(8),
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: theta,
            max_position_embeddings: 32768,
            sliding_window: window,
            use_sliding_window: None,
            max_window_layers: None,
            tie_word_embeddings: false,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            hidden_act: "silu".into(),
            torch_dtype: Some("bfloat16".into()),
            rope_scaling: None,
        };
        match name {
            "mistral-7b" | "mistral-7b-v0.1" => Some(mistral(32000, 10_000.0, Some(4096))),
            "mistral-7b-v0.2" => Some(mistral(32000, 1_000_000.0, None)),
            "mistral-7b-v0.3" => Some(mistral(32768, 1_000_000.0, None)),
            "tiny-llama" => Some(Self {
                architectures: vec!["LlamaForCausalLM".into()],
                model_type: "llama".into(),
                vocab_size: 512,
                hidden_size: 64,
                intermediate_size: 160,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                num_key_value_heads: Some(2),
                head_dim: None,
                rms_norm_eps: 1e-5,
                rope_theta: 10_000.0,
                max_position_embeddings: 2048,
                sliding_window: None,
                use_sliding_window: None,
                max_window_layers: None,
                tie_word_embeddings: true,
                bos_token_id: Some(1),
                eos_token_id: Some(2),
                hidden_act: "silu".into(),
                torch_dtype: Some("float32".into()),
                rope_scaling: None,
            }),
            "tiny-mistral" => Some(Self {
                architectures: vec!["MistralForCausalLM".into()],
                model_type: "mistral".into(),
                vocab_size: 512,
                hidden_size: 128,
                intermediate_size: 256,
                num_hidden_layers: 2,
                num_attention_heads: 8,
                num_key_value_heads: Some(2),
                head_dim: None,
                rms_norm_eps: 1e-5,
                rope_theta: 10_000.0,
                max_position_embeddings: 2048,
                sliding_window: Some(8),
                use_sliding_window: None,
                max_window_layers: None,
                tie_word_embeddings: false,
                bos_token_id: Some(1),
                eos_token_id: Some(2),
                hidden_act: "silu".into(),
                torch_dtype: Some("float32".into()),
                rope_scaling: None,
            }),
            // Qwen2's shapes in small: biased query/key/value projections, an untied head,
            // and, as Qwen2.5 configs have, a sliding window (shorter than the test sequences)
            // that is switched off.
            "tiny-qwen2" => Some(Self {
                architectures: vec!["Qwen2ForCausalLM".into()],
                model_type: "qwen2".into(),
                vocab_size: 512,
                hidden_size: 64,
                intermediate_size: 160,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                num_key_value_heads: Some(2),
                head_dim: None,
                rms_norm_eps: 1e-6,
                rope_theta: 1_000_000.0,
                max_position_embeddings: 2048,
                sliding_window: Some(4),
                use_sliding_window: Some(false),
                max_window_layers: Some(2),
                tie_word_embeddings: false,
                bos_token_id: Some(1),
                eos_token_id: Some(2),
                hidden_act: "silu".into(),
                torch_dtype: Some("float32".into()),
                rope_scaling: None,
            }),
            _ => None,
        }
    }

    /// Names accepted by [`LlamaConfig::preset`].
    pub const PRESETS: &'static [&'static str] = &[
        "mistral-7b",
        "mistral-7b-v0.2",
        "mistral-7b-v0.3",
        "tiny-llama",
        "tiny-mistral",
        "tiny-qwen2",
    ];

    /// Resolves a preset name, a `config.json` path or a model directory holding one.
    pub fn resolve(spec: &str) -> Result<Self, ModelError> {
        if let Some(config) = Self::preset(spec) {
            return Ok(config);
        }
        let path = Path::new(spec);
        if path.is_dir() {
            return Self::from_file(&path.join("config.json"));
        }
        if path.is_file() {
            return Self::from_file(path);
        }
        Err(ModelError::Usage(format!(
            "{spec:?} is neither a preset ({}) nor a config.json or model directory",
            Self::PRESETS.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of Qwen2.5-Coder-1.5B-Instruct's config.json that the decoder reads.
    const QWEN2_5: &str = r#"{
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960,
        "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
        "sliding_window": 32768, "use_sliding_window": false, "max_window_layers": 21,
        "tie_word_embeddings": true, "bos_token_id": 151643, "eos_token_id": 151645,
        "hidden_act": "silu", "torch_dtype": "bfloat16", "rope_scaling": null,
        "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": true
    }"#;

    #[test]
    fn qwen2_config_has_biases_and_no_window_when_switched_off() {
        let config: LlamaConfig = serde_json::from_str(QWEN2_5).unwrap();
        assert_eq!(config.validate(), Ok(()));
        assert!(config.qkv_bias());
        assert_eq!(config.sliding_window_in_use(), None);
        assert_eq!(config.head_dim(), 128);
        let llama = LlamaConfig::preset("tiny-llama").unwrap();
        assert!(!llama.qkv_bias());
    }

    #[test]
    fn qwen2_sliding_window_switched_on_is_refused() {
        let mut config: LlamaConfig = serde_json::from_str(QWEN2_5).unwrap();
        config.use_sliding_window = Some(true);
        let message = config.validate().unwrap_err();
        assert!(message.contains("use_sliding_window"), "{message}");
    }
}
