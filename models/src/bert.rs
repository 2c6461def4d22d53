//! Sentence embeddings with a BERT-family encoder in the `sentence-transformers` layout (the
//! default is all-MiniLM-L6-v2): a Hugging Face directory with `config.json`,
//! `model.safetensors`, `tokenizer.json` and `modules.json`, whose pooling module
//! (`1_Pooling/config.json`) says how token vectors become one sentence vector and whose
//! `Normalize` module, when listed, scales it to unit length.
//!
//! Each sentence is encoded on its own (no padding, so no attention mask is needed): token,
//! position and segment embeddings, then post-norm transformer layers (self-attention and a GELU
//! feed-forward, each followed by a residual LayerNorm), then pooling. Runs on the CPU backend.

use std::path::{Path, PathBuf};

use burn::tensor::{Int, Tensor, TensorData, activation};
use serde::Deserialize;

use crate::ModelError;
use crate::device::CpuBackend;
use crate::load::hf::{Store, map_files, parse_files, weight_files};

type B = CpuBackend;

/// The files an embedding model directory must hold.
pub const REQUIRED_FILES: [&str; 4] = [
    "config.json",
    "tokenizer.json",
    "modules.json",
    "1_Pooling/config.json",
];

/// The encoder's hyper-parameters, from `config.json`.
#[derive(Debug, Clone, Deserialize)]
struct BertConfig {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    vocab_size: usize,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_act")]
    hidden_act: String,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

/// How token vectors are pooled (`1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean of the token vectors.
    Mean,
    /// The `[CLS]` token's vector.
    Cls,
}

#[derive(Debug, Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Debug, Deserialize)]
struct Module {
    #[serde(rename = "type")]
    kind: String,
}

struct LayerNorm {
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
}

struct Linear {
    /// `[in, out]`.
    weight: Tensor<B, 2>,
    bias: Tensor<B, 1>,
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// A loaded sentence encoder.
pub struct SentenceEncoder {
    config: BertConfig,
    tokenizer: tokenizers::Tokenizer,
    word: Tensor<B, 2>,
    position: Tensor<B, 2>,
    token_type: Tensor<B, 2>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    pooling: Pooling,
    normalize: bool,
    device: burn::tensor::Device<B>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::format(path, format!("not valid: {e}")))
}

impl SentenceEncoder {
    /// Fails, naming the file, when `dir` lacks a file every sentence-transformers directory
    /// has; cheap, so a run can refuse a broken directory before it loads anything.
    pub fn check_files(dir: &Path) -> Result<(), ModelError> {
        for file in REQUIRED_FILES {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(ModelError::format(
                    &path,
                    "missing: a sentence-transformers model directory needs config.json, \
                     tokenizer.json, modules.json and 1_Pooling/config.json (fetch the default \
                     with scripts/fetch-minilm.sh)",
                ));
            }
        }
        Ok(())
    }

    /// Loads the encoder in `dir`; a missing file is named in the error.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        Self::check_files(dir)?;
        let config: BertConfig = read_json(&dir.join("config.json"))?;
        if config.hidden_act != "gelu" {
            return Err(ModelError::format(
                &dir.join("config.json"),
                format!(
                    "hidden_act {:?} is not supported (only gelu)",
                    config.hidden_act
                ),
            ));
        }
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(ModelError::format(
                &dir.join("config.json"),
                "hidden_size is not a positive multiple of num_attention_heads",
            ));
        }
        let pooling = read_pooling(&dir.join("1_Pooling/config.json"))?;
        let modules: Vec<Module> = read_json(&dir.join("modules.json"))?;
        let normalize = modules.iter().any(|m| m.kind.ends_with(".Normalize"));
        let max_tokens = max_seq_length(dir, &config)?;

        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| ModelError::format(&tokenizer_path, e.to_string()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| ModelError::format(&tokenizer_path, e.to_string()))?;

        let files = weight_files(dir)?;
        let maps = map_files(&files)?;
        let tensors = parse_files(&files, &maps)?;
        let store = Store::new(&files, &tensors);
        let device = Default::default();
        let c = &config;
        let (d, i) = (c.hidden_size, c.intermediate_size);
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<Tensor<B, 2>, ModelError> {
            let values = store.read(name, &[rows, cols])?;
            Ok(Tensor::from_data(
                TensorData::new(values, [rows, cols]),
                &device,
            ))
        };
        let vector = |name: &str, n: usize| -> Result<Tensor<B, 1>, ModelError> {
            Ok(Tensor::from_data(
                TensorData::new(store.read(name, &[n])?, [n]),
                &device,
            ))
        };
        // `transformers` stores `[out, in]`; the forward pass multiplies by `[in, out]`.
        let linear = |prefix: &str, fan_in: usize, fan_out: usize| -> Result<Linear, ModelError> {
            Ok(Linear {
                weight: matrix(&format!("{prefix}.weight"), fan_out, fan_in)?.transpose(),
                bias: vector(&format!("{prefix}.bias"), fan_out)?,
            })
        };
        let norm = |prefix: &str| -> Result<LayerNorm, ModelError> {
            Ok(LayerNorm {
                weight: vector(&format!("{prefix}.weight"), d)?,
                bias: vector(&format!("{prefix}.bias"), d)?,
            })
        };
        // Some checkpoints keep the `bert.` prefix of the pre-training model.
        let root = if store.read("bert.embeddings.LayerNorm.weight", &[d]).is_ok() {
            "bert."
        } else {
            ""
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for n in 0..c.num_hidden_layers {
            let p = format!("{root}encoder.layer.{n}");
            layers.push(Layer {
                query: linear(&format!("{p}.attention.self.query"), d, d)?,
                key: linear(&format!("{p}.attention.self.key"), d, d)?,
                value: linear(&format!("{p}.attention.self.value"), d, d)?,
                attention_out: linear(&format!("{p}.attention.output.dense"), d, d)?,
                attention_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                intermediate: linear(&format!("{p}.intermediate.dense"), d, i)?,
                output: linear(&format!("{p}.output.dense"), i, d)?,
                output_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        Ok(SentenceEncoder {
            word: matrix(
                &format!("{root}embeddings.word_embeddings.weight"),
                c.vocab_size,
                d,
            )?,
            position: matrix(
                &format!("{root}embeddings.position_embeddings.weight"),
                c.max_position_embeddings,
                d,
            )?,
            token_type: matrix(
                &format!("{root}embeddings.token_type_embeddings.weight"),
                c.type_vocab_size,
                d,
            )?,
            embedding_norm: norm(&format!("{root}embeddings.LayerNorm"))?,
            layers,
            pooling,
            normalize,
            tokenizer,
            config,
            device,
        })
    }

    /// The length of the vectors.
    pub fn dimension(&self) -> usize {
        self.config.hidden_size
    }

    /// Embeds each text (unit length when the model normalises).
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
        texts.iter().map(|t| self.embed_one(t)).collect()
    }

    fn embed_one(&self, text: &str) -> Result<Vec<f32>, ModelError> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| ModelError::Usage(format!("cannot tokenize {text:?}: {e}")))?;
        let ids: Vec<i32> = encoding.get_ids().iter().map(|&id| id as i32).collect();
        let types: Vec<i32> = encoding
            .get_type_ids()
            .iter()
            .map(|&id| id as i32)
            .collect();
        let len = ids.len();
        let d = self.config.hidden_size;
        let index = |values: &[i32]| {
            Tensor::<B, 1, Int>::from_data(
                TensorData::new(values[..len].to_vec(), [len]),
                &self.device,
            )
        };
        let positions: Vec<i32> = (0..len as i32).collect();
        let x = self.word.clone().select(0, index(&ids))
            + self.position.clone().select(0, index(&positions))
            + self.token_type.clone().select(0, index(&types));
        let mut x = self.layer_norm(x, &self.embedding_norm);
        for layer in &self.layers {
            x = self.layer(x, layer, len);
        }
        let pooled: Tensor<B, 1> = match self.pooling {
            Pooling::Mean => x.mean_dim(0).reshape([d]),
            Pooling::Cls => x.slice([0..1, 0..d]).reshape([d]),
        };
        let mut vector: Vec<f32> = pooled
            .into_data()
            .to_vec()
            .map_err(|e| ModelError::Backend(format!("{e:?}")))?;
        if self.normalize {
            let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            vector.iter_mut().for_each(|v| *v /= norm);
        }
        Ok(vector)
    }

    fn layer(&self, x: Tensor<B, 2>, layer: &Layer, len: usize) -> Tensor<B, 2> {
        let (d, h) = (self.config.hidden_size, self.config.num_attention_heads);
        let hd = d / h;
        let heads = |t: Tensor<B, 2>| t.reshape([len, h, hd]).swap_dims(0, 1);
        let q = heads(linear(x.clone(), &layer.query));
        let k = heads(linear(x.clone(), &layer.key));
        let v = heads(linear(x.clone(), &layer.value));
        let scores = q.matmul(k.swap_dims(1, 2)) / (hd as f64).sqrt();
        let probs = activation::softmax(scores, 2);
        let context = probs.matmul(v).swap_dims(0, 1).reshape([len, d]);
        let attended = self.layer_norm(
            linear(context, &layer.attention_out) + x,
            &layer.attention_norm,
        );
        let hidden = activation::gelu(linear(attended.clone(), &layer.intermediate));
        self.layer_norm(linear(hidden, &layer.output) + attended, &layer.output_norm)
    }

    fn layer_norm(&self, x: Tensor<B, 2>, norm: &LayerNorm) -> Tensor<B, 2> {
        let mean = x.clone().mean_dim(1);
        let centered = x - mean;
        let variance = centered.clone().powf_scalar(2.0).mean_dim(1);
        let normed = centered / (variance + self.config.layer_norm_eps).sqrt();
        normed * norm.weight.clone().unsqueeze::<2>() + norm.bias.clone().unsqueeze::<2>()
    }
}

fn linear(x: Tensor<B, 2>, layer: &Linear) -> Tensor<B, 2> {
    x.matmul(layer.weight.clone()) + layer.bias.clone().unsqueeze::<2>()
}

fn read_pooling(path: &Path) -> Result<Pooling, ModelError> {
    let config: PoolingConfig = read_json(path)?;
    match (
        config.pooling_mode_mean_tokens,
        config.pooling_mode_cls_token,
        config.pooling_mode_max_tokens || config.pooling_mode_mean_sqrt_len_tokens,
    ) {
        (true, false, false) => Ok(Pooling::Mean),
        (false, true, false) => Ok(Pooling::Cls),
        _ => Err(ModelError::format(
            path,
            "only mean or CLS pooling (one of them) is supported",
        )),
    }
}

/// The token limit: `max_seq_length` of `sentence_bert_config.json` when present, never more
/// than the position table.
fn max_seq_length(dir: &Path, config: &BertConfig) -> Result<usize, ModelError> {
    let path: PathBuf = dir.join("sentence_bert_config.json");
    let limit = if path.is_file() {
        let value: serde_json::Value = read_json(&path)?;
        value["max_seq_length"].as_u64().map(|n| n as usize)
    } else {
        None
    };
    Ok(limit
        .unwrap_or(config.max_position_embeddings)
        .min(config.max_position_embeddings))
}
