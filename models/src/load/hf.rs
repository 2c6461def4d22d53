//! Hugging Face model directories: `config.json` plus one `model.safetensors` or shards listed
//! by `model.safetensors.index.json`.
//!
//! [`load`] reads such a directory's decoder configuration and weights onto a device;
//! [`write_random`] writes one with random
//! weights for any configuration, in `transformers`' tensor names and layout (`[out, in]`
//! projections), so that the same directory loads in `transformers` for reference checks.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::{Element, Tensor, TensorData, backend::Backend};
use half::{bf16, f16};
use rand::{Rng, SeedableRng, rngs::StdRng};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::ModelError;
use crate::config::LlamaConfig;
use crate::llama::{Block, Embedding, Linear, Weights};

const INDEX_FILE: &str = "model.safetensors.index.json";
const SINGLE_FILE: &str = "model.safetensors";

/// The decoder configuration and weights of the model in `dir`, on `device`, converted to the
/// backend's float type.
pub fn load<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(LlamaConfig, Weights<B>), ModelError> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(ModelError::format(
            &config_path,
            "missing: a Hugging Face model directory needs its config.json",
        ));
    }
    let config = LlamaConfig::from_file(&config_path)?;
    let files = weight_files(dir)?;
    let maps = map_files(&files)?;
    let tensors = parse_files(&files, &maps)?;
    let store = Store::new(&files, &tensors);

    let c = &config;
    let (d, hd, v) = (c.hidden_size, c.head_dim(), c.vocab_size);
    let (h, kv, i) = (c.num_attention_heads, c.kv_heads(), c.intermediate_size);
    let upload = |values: Vec<f32>, shape: [usize; 2]| {
        let dtype = <B::FloatElem as Element>::dtype();
        Tensor::<B, 2>::from_data(TensorData::new(values, shape).convert_dtype(dtype), device)
    };
    let upload_1d = |name: &str| -> Result<Tensor<B, 1>, ModelError> {
        let values = store.read(name, &[d])?;
        let dtype = <B::FloatElem as Element>::dtype();
        Ok(Tensor::from_data(
            TensorData::new(values, [d]).convert_dtype(dtype),
            device,
        ))
    };
    // `[out, in]` matrices stacked along `out`, kept in that layout (see `Linear::Dense`).
    let projection = |names: &[(String, usize)], fan_in: usize| -> Result<Linear<B>, ModelError> {
        let mut stacked = Vec::new();
        let mut rows = 0;
        for (name, out) in names {
            stacked.extend(store.read(name, &[*out, fan_in])?);
            rows += out;
        }
        Ok(Linear::Dense(upload(stacked, [rows, fan_in])))
    };

    let mut blocks = Vec::with_capacity(c.num_hidden_layers);
    for layer in 0..c.num_hidden_layers {
        let p = format!("model.layers.{layer}");
        blocks.push(Block {
            attn_norm: upload_1d(&format!("{p}.input_layernorm.weight"))?,
            wqkv: projection(
                &[
                    (format!("{p}.self_attn.q_proj.weight"), h * hd),
                    (format!("{p}.self_attn.k_proj.weight"), kv * hd),
                    (format!("{p}.self_attn.v_proj.weight"), kv * hd),
                ],
                d,
            )?,
            qkv_bias: if c.qkv_bias() {
                let mut bias = Vec::with_capacity((h + 2 * kv) * hd);
                for (part, len) in [("q", h * hd), ("k", kv * hd), ("v", kv * hd)] {
                    bias.extend(store.read(&format!("{p}.self_attn.{part}_proj.bias"), &[len])?);
                }
                let len = bias.len();
                let dtype = <B::FloatElem as Element>::dtype();
                Some(Tensor::from_data(
                    TensorData::new(bias, [len]).convert_dtype(dtype),
                    device,
                ))
            } else {
                None
            },
            wo: projection(&[(format!("{p}.self_attn.o_proj.weight"), d)], h * hd)?,
            mlp_norm: upload_1d(&format!("{p}.post_attention_layernorm.weight"))?,
            w_gate_up: projection(
                &[
                    (format!("{p}.mlp.gate_proj.weight"), i),
                    (format!("{p}.mlp.up_proj.weight"), i),
                ],
                d,
            )?,
            w_down: projection(&[(format!("{p}.mlp.down_proj.weight"), d)], i)?,
        });
    }
    let embed = upload(store.read("model.embed_tokens.weight", &[v, d])?, [v, d]);
    // Checkpoints that tie the head usually omit `lm_head.weight`; some still carry a copy. A
    // tied head is the embedding table itself, not a copy.
    let lm_head = if c.tie_word_embeddings {
        Linear::Dense(embed.clone())
    } else {
        projection(&[("lm_head.weight".to_string(), v)], d)?
    };
    let weights = Weights {
        embed: Embedding::Dense(embed),
        blocks,
        norm: upload_1d("model.norm.weight")?,
        lm_head,
    };
    Ok((config, weights))
}

/// Maps the weight files into memory.
pub(crate) fn map_files(files: &[PathBuf]) -> Result<Vec<memmap2::Mmap>, ModelError> {
    files
        .iter()
        .map(|path| {
            let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
            // SAFETY: the file is only read, and a model directory is not rewritten while a
            // model loads from it.
            unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))
        })
        .collect()
}

/// Reads the safetensors headers of mapped weight files.
pub(crate) fn parse_files<'a>(
    files: &[PathBuf],
    maps: &'a [memmap2::Mmap],
) -> Result<Vec<SafeTensors<'a>>, ModelError> {
    files
        .iter()
        .zip(maps)
        .map(|(path, map)| {
            SafeTensors::deserialize(map).map_err(|e| {
                ModelError::format(path, format!("not a readable safetensors file: {e}"))
            })
        })
        .collect()
}

/// The safetensors files of `dir`: the index's shards, else `model.safetensors`, else every
/// `*.safetensors` file (sorted).
pub(crate) fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index_path = dir.join(INDEX_FILE);
    if index_path.is_file() {
        let text =
            std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
        let index: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::format(&index_path, format!("not valid JSON: {e}")))?;
        let map = index
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::format(&index_path, "has no \"weight_map\" object"))?;
        let mut files: Vec<PathBuf> = Vec::new();
        for value in map.values() {
            let name = value.as_str().ok_or_else(|| {
                ModelError::format(&index_path, "a \"weight_map\" value is not a file name")
            })?;
            let path = dir.join(name);
            if !files.contains(&path) {
                if !path.is_file() {
                    return Err(ModelError::format(
                        &path,
                        format!("missing: {INDEX_FILE} lists it as a shard"),
                    ));
                }
                files.push(path);
            }
        }
        return Ok(files);
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::io(dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ModelError::format(
            dir,
            format!("no weights: expected {SINGLE_FILE}, {INDEX_FILE} or *.safetensors files"),
        ));
    }
    Ok(files)
}

/// Tensor look-up across the shards of one model.
pub(crate) struct Store<'a> {
    files: &'a [PathBuf],
    tensors: &'a [SafeTensors<'a>],
    location: HashMap<String, usize>,
}

impl<'a> Store<'a> {
    pub(crate) fn new(files: &'a [PathBuf], tensors: &'a [SafeTensors<'a>]) -> Self {
        let mut location = HashMap::new();
        for (index, file) in tensors.iter().enumerate() {
            for name in file.names() {
                location.insert(name.to_string(), index);
            }
        }
        Self {
            files,
            tensors,
            location,
        }
    }

    /// The tensor `name` as f32 values, checked against `shape`.
    pub(crate) fn read(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let Some(&index) = self.location.get(name) else {
            let where_ = self
                .files
                .first()
                .and_then(|f| f.parent())
                .unwrap_or(Path::new("."));
            return Err(ModelError::format(
                where_,
                format!(
                    "tensor {name:?} is missing from the safetensors files; does the \
                     checkpoint match its config.json and architecture?"
                ),
            ));
        };
        let path = &self.files[index];
        let view = self.tensors[index]
            .tensor(name)
            .map_err(|e| ModelError::format(path, format!("tensor {name:?}: {e}")))?;
        if view.shape() != shape {
            return Err(ModelError::format(
                path,
                format!(
                    "tensor {name:?} has shape {:?}, but config.json implies {shape:?}",
                    view.shape()
                ),
            ));
        }
        to_f32(&view)
            .map_err(|message| ModelError::format(path, format!("tensor {name:?}: {message}")))
    }
}

/// Decodes little-endian f32, bf16 or f16 data to f32.
fn to_f32(view: &TensorView<'_>) -> Result<Vec<f32>, String> {
    let bytes = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(format!(
                "dtype {other:?} is not supported (use F32, BF16 or F16)"
            ));
        }
    })
}

/// Storage type of written weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDtype {
    /// 32-bit floats (exact reference checks).
    F32,
    /// bfloat16 (half the size; what Mistral ships).
    Bf16,
}

/// Writes a model directory for `config` with random weights drawn from `seed`: `config.json`
/// and the weights, split into shards of at most `shard_bytes` (with an index) when they do not
/// fit in one file.
///
/// Projections are uniform with standard deviation `1/sqrt(fan_in)`, embeddings and an untied
/// head are scaled so that logits spread over a few units: greedy decoding then has clear
/// winners, which keeps bf16-vs-f32 comparisons of the chosen tokens meaningful.
pub fn write_random(
    config: &LlamaConfig,
    out: &Path,
    seed: u64,
    dtype: StoreDtype,
    shard_bytes: usize,
) -> Result<(), ModelError> {
    config.validate().map_err(ModelError::Usage)?;
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, e))?;
    let mut config = config.clone();
    config.torch_dtype = Some(match dtype {
        StoreDtype::F32 => "float32".into(),
        StoreDtype::Bf16 => "bfloat16".into(),
    });
    let config_path = out.join("config.json");
    let text = serde_json::to_string_pretty(&config).expect("a config always serialises");
    std::fs::write(&config_path, text).map_err(|e| ModelError::io(&config_path, e))?;

    let c = &config;
    let (d, hd, v) = (c.hidden_size, c.head_dim(), c.vocab_size);
    let (h, kv, i) = (c.num_attention_heads, c.kv_heads(), c.intermediate_size);
    // (name, shape, standard deviation; 0 means a norm weight, filled with ones)
    let mut specs: Vec<(String, Vec<usize>, f32)> = vec![(
        "model.embed_tokens.weight".into(),
        vec![v, d],
        if c.tie_word_embeddings {
            4.0 / (d as f32).sqrt()
        } else {
            1.0
        },
    )];
    let linear = |fan_in: usize| 1.0 / (fan_in as f32).sqrt();
    for layer in 0..c.num_hidden_layers {
        let p = format!("model.layers.{layer}");
        specs.extend([
            (format!("{p}.input_layernorm.weight"), vec![d], 0.0),
            (
                format!("{p}.self_attn.q_proj.weight"),
                vec![h * hd, d],
                linear(d),
            ),
            (
                format!("{p}.self_attn.k_proj.weight"),
                vec![kv * hd, d],
                linear(d),
            ),
            (
                format!("{p}.self_attn.v_proj.weight"),
                vec![kv * hd, d],
                linear(d),
            ),
            (
                format!("{p}.self_attn.o_proj.weight"),
                vec![d, h * hd],
                linear(h * hd),
            ),
            (format!("{p}.post_attention_layernorm.weight"), vec![d], 0.0),
            (format!("{p}.mlp.gate_proj.weight"), vec![i, d], linear(d)),
            (format!("{p}.mlp.up_proj.weight"), vec![i, d], linear(d)),
            (format!("{p}.mlp.down_proj.weight"), vec![d, i], linear(i)),
        ]);
        if c.qkv_bias() {
            // Biases of the order of the projections' outputs, so that they matter.
            specs.extend([
                (format!("{p}.self_attn.q_proj.bias"), vec![h * hd], 0.5),
                (format!("{p}.self_attn.k_proj.bias"), vec![kv * hd], 0.5),
                (format!("{p}.self_attn.v_proj.bias"), vec![kv * hd], 0.5),
            ]);
        }
    }
    specs.push(("model.norm.weight".into(), vec![d], 0.0));
    if !c.tie_word_embeddings {
        specs.push(("lm_head.weight".into(), vec![v, d], 4.0 / (d as f32).sqrt()));
    }

    let elem = match dtype {
        StoreDtype::F32 => 4,
        StoreDtype::Bf16 => 2,
    };
    let mut shards: Vec<Vec<(String, Vec<usize>, f32)>> = vec![Vec::new()];
    let mut shard_size = 0;
    for spec in specs {
        let bytes = spec.1.iter().product::<usize>() * elem;
        if shard_size > 0 && shard_size + bytes > shard_bytes {
            shards.push(Vec::new());
            shard_size = 0;
        }
        shard_size += bytes;
        shards.last_mut().expect("never empty").push(spec);
    }

    let mut rng = StdRng::seed_from_u64(seed);
    let count = shards.len();
    let mut weight_map = BTreeMap::new();
    let mut total_size = 0;
    for (n, shard) in shards.into_iter().enumerate() {
        let name = if count == 1 {
            SINGLE_FILE.to_string()
        } else {
            format!("model-{:05}-of-{count:05}.safetensors", n + 1)
        };
        let data: Vec<(String, Vec<usize>, Vec<u8>)> = shard
            .into_iter()
            .map(|(tensor, shape, std)| {
                let len = shape.iter().product();
                let bytes = random_bytes(&mut rng, len, std, dtype);
                weight_map.insert(tensor.clone(), name.clone());
                total_size += bytes.len();
                (tensor, shape, bytes)
            })
            .collect();
        let views = data.iter().map(|(tensor, shape, bytes)| {
            let st_dtype = match dtype {
                StoreDtype::F32 => Dtype::F32,
                StoreDtype::Bf16 => Dtype::BF16,
            };
            let view = TensorView::new(st_dtype, shape.clone(), bytes)
                .expect("sizes are computed from the shapes");
            (tensor.clone(), view)
        });
        let path = out.join(&name);
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(views, Some(metadata), &path)
            .map_err(|e| ModelError::format(&path, format!("cannot write: {e}")))?;
    }
    if count > 1 {
        let index = serde_json::json!({
            "metadata": { "total_size": total_size },
            "weight_map": weight_map,
        });
        let path = out.join(INDEX_FILE);
        std::fs::write(&path, serde_json::to_string_pretty(&index).expect("JSON"))
            .map_err(|e| ModelError::io(&path, e))?;
    }
    Ok(())
}

/// Writes a small SentencePiece-style `tokenizer.json` of `tokens` tokens (at least 279) and a
/// `tokenizer_config.json` with a plain chat template into `dir`, so that a random-weight model
/// there loads as a [`crate::LocalModel`] and answers text prompts (for tests and device checks).
///
/// The vocabulary: `<unk>`, `<s>`, `</s>`, the 256 byte tokens `<0x00>`…`<0xFF>` (any text
/// encodes), the pieces of "hello world", unused fillers, and last a user-defined `<extra>`.
/// The template renders `<s>[role] content` lines and `[assistant]` as the generation prompt.
pub fn write_small_tokenizer(dir: &Path, tokens: usize) -> Result<(), ModelError> {
    use crate::gguf::MetaValue;
    const PIECES: [&str; 18] = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "ll", "▁he", "llo", "▁hello", "▁w", "or",
        "▁wor", "ld", "▁world",
    ];
    let fixed = 3 + 256 + PIECES.len() + 1;
    if tokens < fixed {
        return Err(ModelError::Usage(format!(
            "a small tokenizer has at least {fixed} tokens, not {tokens}"
        )));
    }
    // Token types as GGUF numbers them: 1 normal, 2 unknown, 3 control, 4 user-defined,
    // 5 unused, 6 byte.
    let mut vocabulary: Vec<(String, i32)> =
        vec![("<unk>".into(), 2), ("<s>".into(), 3), ("</s>".into(), 3)];
    vocabulary.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), 6)));
    vocabulary.extend(PIECES.iter().map(|p| (p.to_string(), 1)));
    while vocabulary.len() < tokens - 1 {
        vocabulary.push((format!("<filler{}>", vocabulary.len()), 5));
    }
    vocabulary.push(("<extra>".into(), 4));
    let scores = (0..tokens).map(|i| MetaValue::F32(-(i as f32))).collect();
    let (names, types): (Vec<_>, Vec<_>) = vocabulary
        .into_iter()
        .map(|(name, kind)| (MetaValue::String(name), MetaValue::I32(kind)))
        .unzip();
    let meta: BTreeMap<String, MetaValue> = [
        ("tokenizer.ggml.model", MetaValue::String("llama".into())),
        ("tokenizer.ggml.tokens", MetaValue::Array(names)),
        ("tokenizer.ggml.token_type", MetaValue::Array(types)),
        ("tokenizer.ggml.scores", MetaValue::Array(scores)),
        ("tokenizer.ggml.unknown_token_id", MetaValue::U32(0)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let tokenizer = crate::tokenizer::Tokenizer::from_gguf_metadata(&meta, dir)?;
    let path = dir.join("tokenizer.json");
    tokenizer
        .inner()
        .save(&path, false)
        .map_err(|e| ModelError::format(&path, format!("cannot write the tokenizer: {e}")))?;
    let config = serde_json::json!({
        "bos_token": "<s>",
        "eos_token": "</s>",
        "add_bos_token": true,
        "chat_template": "{% for m in messages %}{{ bos_token if loop.first }}[{{ m.role }}] \
                          {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}[assistant]\
                          {% endif %}",
    });
    let path = dir.join("tokenizer_config.json");
    std::fs::write(&path, config.to_string()).map_err(|e| ModelError::io(&path, e))
}

/// `len` values, uniform with standard deviation `std` (ones when `std` is 0), encoded.
fn random_bytes(rng: &mut StdRng, len: usize, std: f32, dtype: StoreDtype) -> Vec<u8> {
    let half_width = std * 3f32.sqrt();
    let mut bytes = Vec::with_capacity(len * 4);
    for _ in 0..len {
        let value = if std == 0.0 {
            1.0
        } else {
            rng.random_range(-half_width..half_width)
        };
        match dtype {
            StoreDtype::F32 => bytes.extend(value.to_le_bytes()),
            StoreDtype::Bf16 => bytes.extend(bf16::from_f32(value).to_le_bytes()),
        }
    }
    bytes
}
