//! Loading a Llama-family decoder from a GGUF file: its configuration from the `{arch}.*`
//! metadata, its weights from the tensors, named as llama.cpp's converter names them.
//!
//! Quantized matrices become [`PackedMatrix`] rows (their blocks kept, for the CPU's packed
//! matmul) and, where the weights live on the device, are dequantized from there.
//!
//! For `llama` and `mistral` files, llama.cpp's converter permutes the rows of the query and key
//! projections so that its RoPE can rotate adjacent pairs (`x[2i]`, `x[2i+1]`); this crate's
//! decoder uses Hugging Face's layout (`x[i]`, `x[i + head_dim/2]`), so [`load`] undoes that
//! permutation, as `transformers` does when it reads a GGUF file. `qwen2` files are not
//! permuted: llama.cpp rotates their halves (its "NEOX" RoPE), which is Hugging Face's layout.

use burn::tensor::{Element, Tensor, TensorData, backend::Backend};
use half::f16;

use crate::ModelError;
use crate::config::LlamaConfig;
use crate::gguf::{GgmlType, GgufFile, MetaValue, dequantize, q5_values, q6_k_block, scale_min_k4};
use crate::llama::{Block, Embedding, Linear, WeightStorage, Weights};
use crate::packed::PackedMatrix;

/// Undoes llama.cpp's RoPE permutation of a query or key projection `[heads * head_dim, in]`
/// (row-major): GGUF row `h * hd + 2 * i + j` is Hugging Face row `h * hd + j * hd / 2 + i`.
pub fn unpermute_rope_rows(values: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    rope_row_order(values.len() / cols, heads)
        .into_iter()
        .flat_map(|src| &values[src * cols..(src + 1) * cols])
        .copied()
        .collect()
}

/// For each Hugging Face row of a `rows`-row query or key projection, the GGUF row holding it
/// (see [`unpermute_rope_rows`]).
pub fn rope_row_order(rows: usize, heads: usize) -> Vec<usize> {
    let hd = rows / heads;
    let half = hd / 2;
    (0..rows)
        .map(|dst| {
            let (h, within) = (dst / hd, dst % hd);
            let (j, i) = (within / half, within % half);
            h * hd + 2 * i + j
        })
        .collect()
}

/// The decoder configuration from the `{arch}.*` metadata of a Llama-family GGUF file.
pub fn config(file: &GgufFile) -> Result<LlamaConfig, ModelError> {
    let path = file.path();
    let arch = file.architecture().ok_or_else(|| {
        ModelError::format(path, "general.architecture is missing from the metadata")
    })?;
    let class = match arch {
        "llama" => "LlamaForCausalLM",
        "mistral" => "MistralForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        _ => {
            return Err(ModelError::format(
                path,
                format!(
                    "architecture {arch:?} is not supported (only the Llama family: \"llama\", \
                     \"mistral\", \"qwen2\")"
                ),
            ));
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let required = |k: &str| -> Result<usize, ModelError> {
        file.get_u64(&key(k)).map(|v| v as usize).ok_or_else(|| {
            ModelError::format(
                path,
                format!("metadata {:?} is missing or not an integer", key(k)),
            )
        })
    };
    let hidden = required("embedding_length")?;
    let heads = required("attention.head_count")?;
    let embd = file
        .tensor_info("token_embd.weight")
        .ok_or_else(|| ModelError::format(path, "tensor \"token_embd.weight\" is missing"))?;
    let vocab = match file.get_u64(&key("vocab_size")) {
        Some(v) => v as usize,
        None => embd.dims.get(1).copied().unwrap_or(0),
    };
    let head_dim = file
        .get_u64(&key("attention.key_length"))
        .map(|v| v as usize)
        .or_else(|| {
            file.get_u64(&key("rope.dimension_count"))
                .map(|v| v as usize)
        })
        .filter(|&hd| hd != hidden / heads);
    let token_id = |k: &str| file.get_u64(k).and_then(|v| u32::try_from(v).ok());
    let float = |k: &str| file.get(&key(k)).and_then(MetaValue::as_f64);
    let config = LlamaConfig {
        architectures: vec![class.into()],
        model_type: arch.into(),
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: required("feed_forward_length")?,
        num_hidden_layers: required("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: file
            .get_u64(&key("attention.head_count_kv"))
            .map(|v| v as usize),
        head_dim,
        rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
        max_position_embeddings: file
            .get_u64(&key("context_length"))
            .map_or(4096, |v| v as usize),
        sliding_window: file
            .get_u64(&key("attention.sliding_window"))
            .map(|v| v as usize)
            .filter(|&w| w > 0),
        use_sliding_window: None,
        max_window_layers: None,
        tie_word_embeddings: file.tensor_info("output.weight").is_none(),
        bos_token_id: token_id("tokenizer.ggml.bos_token_id"),
        eos_token_id: token_id("tokenizer.ggml.eos_token_id"),
        hidden_act: "silu".into(),
        torch_dtype: Some("float32".into()),
        rope_scaling: None,
    };
    if let Some(scaling) = file.get_str(&key("rope.scaling.type"))
        && scaling != "none"
    {
        return Err(ModelError::format(
            path,
            format!("RoPE scaling {scaling:?} is not supported"),
        ));
    }
    config
        .validate()
        .map_err(|message| ModelError::format(path, message))?;
    Ok(config)
}

/// The configuration and weights of a Llama-family GGUF file's decoder, on `device`, its weight
/// matrices held as `storage` says (norms are always dequantized).
pub fn load<B: Backend>(
    file: &GgufFile,
    device: &B::Device,
    storage: WeightStorage,
) -> Result<(LlamaConfig, Weights<B>), ModelError> {
    let config = config(file)?;
    let c = &config;
    let (d, hd, v) = (c.hidden_size, c.head_dim(), c.vocab_size);
    let (h, kv, i) = (c.num_attention_heads, c.kv_heads(), c.intermediate_size);
    let dtype = <B::FloatElem as Element>::dtype();
    let vector = |values: Vec<f32>| {
        let len = values.len();
        Tensor::<B, 1>::from_data(TensorData::new(values, [len]).convert_dtype(dtype), device)
    };
    let norm = |name: &str| -> Result<Tensor<B, 1>, ModelError> {
        Ok(vector(file.tensor_f32(name, &[d])?))
    };
    // Only llama.cpp's `llama` converter permutes the query and key rows (see the module docs).
    let permuted = c.model_type != "qwen2";
    let rope_heads = |heads: usize| permuted.then_some(heads);
    // `[out, in]` matrices (each optionally un-permuted) stacked into one projection.
    let projection = |parts: &[(String, usize, Option<usize>)],
                      fan_in: usize|
     -> Result<Linear<B>, ModelError> {
        let mut stacked = Vec::new();
        for (name, out, rope_heads) in parts {
            let part = packed_matrix(file, name, *out, fan_in)?;
            stacked.push(match rope_heads {
                Some(heads) => part.permute_rows(&rope_row_order(*out, *heads)),
                None => part,
            });
        }
        Ok(Linear::from_rows(
            PackedMatrix::stack(stacked),
            storage,
            device,
        ))
    };

    let mut blocks = Vec::with_capacity(c.num_hidden_layers);
    for layer in 0..c.num_hidden_layers {
        let p = format!("blk.{layer}");
        blocks.push(Block {
            attn_norm: norm(&format!("{p}.attn_norm.weight"))?,
            wqkv: projection(
                &[
                    (format!("{p}.attn_q.weight"), h * hd, rope_heads(h)),
                    (format!("{p}.attn_k.weight"), kv * hd, rope_heads(kv)),
                    (format!("{p}.attn_v.weight"), kv * hd, None),
                ],
                d,
            )?,
            qkv_bias: if c.qkv_bias() {
                let mut bias = Vec::with_capacity((h + 2 * kv) * hd);
                for (part, len) in [("q", h * hd), ("k", kv * hd), ("v", kv * hd)] {
                    bias.extend(file.tensor_f32(&format!("{p}.attn_{part}.bias"), &[len])?);
                }
                Some(vector(bias))
            } else {
                None
            },
            wo: projection(&[(format!("{p}.attn_output.weight"), d, None)], h * hd)?,
            mlp_norm: norm(&format!("{p}.ffn_norm.weight"))?,
            w_gate_up: projection(
                &[
                    (format!("{p}.ffn_gate.weight"), i, None),
                    (format!("{p}.ffn_up.weight"), i, None),
                ],
                d,
            )?,
            w_down: projection(&[(format!("{p}.ffn_down.weight"), d, None)], i)?,
        });
    }
    let embed = packed_matrix(file, "token_embd.weight", v, d)?;
    let lm_head = if c.tie_word_embeddings {
        Linear::from_rows(embed.clone(), storage, device)
    } else {
        projection(&[("output.weight".to_string(), v, None)], d)?
    };
    let weights = Weights {
        embed: Embedding::from_rows(embed, storage, device),
        blocks,
        norm: norm("output_norm.weight")?,
        lm_head,
    };
    Ok((config, weights))
}

/// The matrix `name` of `file`, `[rows, cols]`, kept in its quantized blocks (see [`pack`]).
pub fn packed_matrix(
    file: &GgufFile,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<PackedMatrix, ModelError> {
    let info = file.checked_tensor(name, &[rows, cols])?;
    Ok(pack(info.dtype, file.tensor_bytes(info), rows, cols))
}

/// A GGUF tensor of `rows × cols` elements (row-major, `cols` a multiple of the type's block)
/// as packed rows, from its raw bytes: Q4_0, Q4_1 and Q4_K as nibble blocks, Q8_0 and Q5_0 as
/// byte blocks (their f16 scales widened to f32), Q6_K as byte blocks with a scale for each
/// half, every other type dequantized to f32 rows (Q5_1 and Q5_K among them: their minimums
/// have no place in a byte block).
///
/// # Panics
/// If `bytes` does not hold exactly `rows × cols` elements of `dtype`: the loader checks the
/// shape against the tensor table first.
pub fn pack(dtype: GgmlType, bytes: &[u8], rows: usize, cols: usize) -> PackedMatrix {
    assert_eq!(
        bytes.len(),
        rows * cols / dtype.block_elements() * dtype.block_bytes(),
        "{dtype} tensor of {rows}×{cols} elements"
    );
    let packable = cols.is_multiple_of(dtype.block_elements());
    let f16_at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    let blocks = bytes.chunks_exact(dtype.block_bytes());
    match dtype {
        GgmlType::Q4_0 | GgmlType::Q4_1 if packable => {
            let mut nibbles = Nibbles::with_blocks(blocks.len());
            for b in blocks {
                let d = f16_at(b, 0);
                if dtype == GgmlType::Q4_0 {
                    nibbles.push(d, -8.0 * d, b[2..18].try_into().unwrap());
                } else {
                    nibbles.push(d, f16_at(b, 2), b[4..20].try_into().unwrap());
                }
            }
            nibbles.into_matrix(rows, cols)
        }
        GgmlType::Q4K if packable => {
            let supers = blocks.len();
            let (mut d, mut dmin) = (Vec::with_capacity(supers), Vec::with_capacity(supers));
            let (mut sc, mut m) = (
                Vec::with_capacity(8 * supers),
                Vec::with_capacity(8 * supers),
            );
            let mut quants = Vec::with_capacity(128 * supers);
            for b in blocks {
                d.push(f16_at(b, 0));
                dmin.push(f16_at(b, 2));
                let scales = &b[4..16];
                // Each 32 bytes hold two sub-blocks: one in the low nibbles, one in the high.
                for (chunk, q) in b[16..144].chunks_exact(32).enumerate() {
                    for (sub, shift) in [(2 * chunk, 0), (2 * chunk + 1, 4)] {
                        let (block_scale, block_min) = scale_min_k4(sub, scales);
                        sc.push(block_scale);
                        m.push(block_min);
                        quants.extend((0..16).map(|j| {
                            ((q[j] >> shift) & 0xF) | (((q[j + 16] >> shift) & 0xF) << 4)
                        }));
                    }
                }
            }
            PackedMatrix::from_q4_k(d, dmin, sc, m, quants, rows, cols)
        }
        GgmlType::Q8_0 if packable => {
            let mut scales = Vec::with_capacity(blocks.len());
            let mut quants = Vec::with_capacity(blocks.len() * 32);
            for b in blocks {
                scales.push(f16_at(b, 0));
                quants.extend(b[2..34].iter().map(|&q| q as i8));
            }
            PackedMatrix::from_bytes(scales, quants, rows, cols)
        }
        GgmlType::Q5_0 if packable => {
            let mut scales = Vec::with_capacity(blocks.len());
            let mut quants = vec![0i8; blocks.len() * 32];
            for (b, q) in blocks.zip(quants.chunks_exact_mut(32)) {
                scales.push(f16_at(b, 0));
                for (j, v) in q5_values(b[2..6].try_into().unwrap(), &b[6..22]) {
                    q[j] = v as i8 - 16;
                }
            }
            PackedMatrix::from_bytes(scales, quants, rows, cols)
        }
        GgmlType::Q6K if packable => {
            let mut scales = Vec::with_capacity(blocks.len() * 16);
            let mut quants = Vec::with_capacity(blocks.len() * 256);
            for b in blocks {
                let (block_quants, block_scales) = q6_k_block(b);
                scales.extend(block_scales);
                quants.extend(block_quants);
            }
            PackedMatrix::from_half_scaled_bytes(scales, quants, rows, cols)
        }
        _ => PackedMatrix::from_f32(dequantize(dtype, bytes), rows, cols),
    }
}

/// Nibble blocks collected for [`PackedMatrix::from_nibbles`].
struct Nibbles {
    scales: Vec<f32>,
    mins: Vec<f32>,
    quants: Vec<u8>,
}

impl Nibbles {
    fn with_blocks(blocks: usize) -> Self {
        Self {
            scales: Vec::with_capacity(blocks),
            mins: Vec::with_capacity(blocks),
            quants: Vec::with_capacity(16 * blocks),
        }
    }

    fn push(&mut self, scale: f32, min: f32, quants: [u8; 16]) {
        self.scales.push(scale);
        self.mins.push(min);
        self.quants.extend(quants);
    }

    fn into_matrix(self, rows: usize, cols: usize) -> PackedMatrix {
        PackedMatrix::from_nibbles(self.scales, self.mins, self.quants, rows, cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KernelOptions;
    use crate::packed::tests::{activations, reference};

    /// Q4_1 blocks with varied scales, minimums and nibbles.
    fn q4_1_bytes(rows: usize, cols: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for block in 0..rows * cols / 32 {
            bytes.extend(f16::from_f32(0.01 + 0.003 * (block % 7) as f32).to_le_bytes());
            bytes.extend(f16::from_f32(-0.05 + 0.01 * (block % 5) as f32).to_le_bytes());
            bytes.extend((0..16).map(|j| ((block * 7 + j * 13) % 256) as u8));
        }
        bytes
    }

    #[test]
    fn matmul_matches_the_dequantized_product_for_every_packed_type() {
        let (rows, cols) = (70, 96);
        let q8: Vec<u8> = (0..rows * cols / 32)
            .flat_map(|b| {
                let mut block = f16::from_f32(0.02 * (1 + b % 3) as f32)
                    .to_le_bytes()
                    .to_vec();
                block.extend((0..32).map(|j| ((b * 11 + j * 29) % 256) as u8));
                block
            })
            .collect();
        let q4_0: Vec<u8> = (0..rows * cols / 32)
            .flat_map(|b| {
                let mut block = f16::from_f32(0.03).to_le_bytes().to_vec();
                block.extend((0..16).map(|j| ((b * 5 + j * 17) % 256) as u8));
                block
            })
            .collect();
        let q5_0: Vec<u8> = (0..rows * cols / 32)
            .flat_map(|b| {
                let mut block = f16::from_f32(0.01 * (1 + b % 4) as f32)
                    .to_le_bytes()
                    .to_vec();
                block.extend((0..20).map(|j| ((b * 13 + j * 37) % 256) as u8));
                block
            })
            .collect();
        let cases = [
            (GgmlType::Q4_1, q4_1_bytes(rows, cols)),
            (GgmlType::Q8_0, q8),
            (GgmlType::Q4_0, q4_0),
            (GgmlType::Q5_0, q5_0),
        ];
        for (dtype, bytes) in cases {
            let weights = dequantize(dtype, &bytes);
            let packed = pack(dtype, &bytes, rows, cols);
            for n in [1, 2, 3, 4, 8, 9] {
                let x = activations(n, cols);
                let got = packed.matmul(&x, n, &KernelOptions::default());
                let want = reference(&weights, &x, rows, cols, n);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{dtype} n={n}: {g} vs {w}"
                    );
                }
            }
            for r in [0, 33, rows - 1] {
                assert_eq!(packed.row(r), weights[r * cols..(r + 1) * cols], "{dtype}");
            }
        }
    }

    #[test]
    fn q4_k_rows_are_exactly_ggml_dequantization() {
        let (rows, cols) = (3, 512);
        let mut bytes = Vec::new();
        for block in 0..rows * cols / 256 {
            bytes.extend(f16::from_f32(0.01 * (1 + block) as f32).to_le_bytes());
            bytes.extend(f16::from_f32(0.002).to_le_bytes());
            bytes.extend((0..12).map(|j| ((block * 31 + j * 53) % 256) as u8));
            bytes.extend((0..128).map(|j| ((block * 3 + j * 7) % 256) as u8));
        }
        let weights = dequantize(GgmlType::Q4K, &bytes);
        let packed = pack(GgmlType::Q4K, &bytes, rows, cols);
        for r in 0..rows {
            assert_eq!(packed.row(r), weights[r * cols..(r + 1) * cols]);
        }
    }

    #[test]
    fn q6_k_rows_are_exactly_ggml_dequantization_and_multiply_as_dequantized() {
        let (rows, cols) = (5, 512);
        let mut bytes = Vec::new();
        for block in 0..rows * cols / 256 {
            bytes.extend((0..192).map(|j| ((block * 29 + j * 13) % 256) as u8));
            bytes.extend((0..16).map(|j| ((block * 7 + j * 41) % 256) as u8));
            bytes.extend(f16::from_f32(0.004 * (1 + block % 3) as f32).to_le_bytes());
        }
        let weights = dequantize(GgmlType::Q6K, &bytes);
        let packed = pack(GgmlType::Q6K, &bytes, rows, cols);
        assert!(
            packed.bytes() < weights.len() * 2,
            "Q6_K is not held as f32 rows"
        );
        for r in 0..rows {
            assert_eq!(packed.row(r), weights[r * cols..(r + 1) * cols]);
        }
        for n in [1, 2, 3, 8] {
            let x = activations(n, cols);
            let got = packed.matmul(&x, n, &KernelOptions::default());
            let want = reference(&weights, &x, rows, cols, n);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "n={n}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2).reshape(rows, cols)
        let (heads, hd, cols) = (2, 8, 3);
        let hf: Vec<f32> = (0..heads * hd * cols).map(|x| x as f32).collect();
        let mut gguf = vec![0f32; hf.len()];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..hd / 2 {
                    let src = h * hd + j * hd / 2 + i; // (h, j, i) in HF
                    let dst = h * hd + i * 2 + j; // (h, i, j) after swapaxes
                    gguf[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_eq!(unpermute_rope_rows(&gguf, heads, cols), hf);
    }
}
