//! GGUF: dequantization against the `gguf` package's reference decoders (fixture), a random
//! model written as GGUF (Q/K permuted as llama.cpp's converter does) loads to the same logits
//! as its safetensors original, and broken files give clear errors naming the file.

use std::path::{Path, PathBuf};

use burn::tensor::{Int, Tensor, TensorData};
use drpo_models::device::CpuBackend;
use drpo_models::gguf::{self, GgmlType, GgufFile};
use drpo_models::llama::{Llama, Logits, WeightStorage};
use drpo_models::load::hf::{self, StoreDtype};
use drpo_models::{KernelOptions, LlamaConfig, ModelError};
use safetensors::SafeTensors;

type B = CpuBackend;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("drpo-gguf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn dequantization_matches_the_gguf_package() {
    let text = include_str!("fixtures/dequant.json");
    let fixture: serde_json::Value = serde_json::from_str(text).unwrap();
    let mut seen = Vec::new();
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["type"].as_str().unwrap();
        let dtype = match name {
            "F32" => GgmlType::F32,
            "F16" => GgmlType::F16,
            "BF16" => GgmlType::Bf16,
            "Q8_0" => GgmlType::Q8_0,
            "Q4_0" => GgmlType::Q4_0,
            "Q4_1" => GgmlType::Q4_1,
            "Q5_0" => GgmlType::Q5_0,
            "Q5_1" => GgmlType::Q5_1,
            "Q4_K" => GgmlType::Q4K,
            "Q5_K" => GgmlType::Q5K,
            "Q6_K" => GgmlType::Q6K,
            other => panic!("unexpected type {other}"),
        };
        let hex = case["bytes"].as_str().unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let expected: Vec<f32> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = gguf::dequantize(dtype, &bytes);
        assert_eq!(got.len(), expected.len(), "{name}");
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!(
                (g - e).abs() <= 1e-6 * e.abs().max(1.0),
                "{name}[{i}]: {g} != {e}"
            );
        }
        seen.push(name.to_string());
    }
    assert_eq!(seen.len(), 11, "{seen:?}");
}

/// A minimal GGUF writer for the tests: metadata of a few types, tensors as raw bytes.
struct Writer {
    metadata: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

fn gguf_string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend(s.as_bytes());
    out
}

impl Writer {
    fn new() -> Self {
        Self {
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }
    fn u32(&mut self, key: &str, v: u32) {
        self.metadata
            .push((key.into(), 4, v.to_le_bytes().to_vec()));
    }
    fn f32(&mut self, key: &str, v: f32) {
        self.metadata
            .push((key.into(), 6, v.to_le_bytes().to_vec()));
    }
    fn str(&mut self, key: &str, v: &str) {
        self.metadata.push((key.into(), 8, gguf_string(v)));
    }
    fn strings(&mut self, key: &str, items: &[String]) {
        let mut value = 8u32.to_le_bytes().to_vec();
        value.extend((items.len() as u64).to_le_bytes());
        for item in items {
            value.extend(gguf_string(item));
        }
        self.metadata.push((key.into(), 9, value));
    }
    /// A tensor in row-major `shape` (ggml dims are the reverse).
    fn tensor(&mut self, name: &str, shape: &[usize], type_id: u32, data: Vec<u8>) {
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        self.tensors.push((name.into(), dims, type_id, data));
    }
    fn f32_tensor(&mut self, name: &str, shape: &[usize], values: &[f32]) {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, shape, 0, data);
    }
    fn bytes(&self) -> Vec<u8> {
        const ALIGN: usize = 32;
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, kind, value) in &self.metadata {
            out.extend(gguf_string(key));
            out.extend(kind.to_le_bytes());
            out.extend(value);
        }
        let mut offset = 0usize;
        for (name, dims, kind, data) in &self.tensors {
            out.extend(gguf_string(name));
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(kind.to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset += data.len().div_ceil(ALIGN) * ALIGN;
        }
        out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
        for (_, _, _, data) in &self.tensors {
            out.extend(data);
            out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
        }
        out
    }
    fn write(&self, path: &Path) {
        std::fs::write(path, self.bytes()).unwrap();
    }
}

/// llama.cpp's converter permutation of a `[heads * hd, cols]` query/key matrix.
fn permute(values: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let hd = values.len() / cols / heads;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..hd / 2 {
                let src = h * hd + j * hd / 2 + i;
                let dst = h * hd + 2 * i + j;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn f32s(st: &SafeTensors<'_>, name: &str) -> Vec<f32> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Converts a random HF model directory (f32, single file) to GGUF as llama.cpp would: as a
/// `qwen2` file (biases, query/key rows as they are) for a Qwen2 config, else as a `llama` one
/// (query/key rows permuted).
fn convert(config: &LlamaConfig, dir: &Path, out: &Path) -> Writer {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let c = config;
    let (d, hd, v) = (c.hidden_size, c.head_dim(), c.vocab_size);
    let (h, kv, i) = (c.num_attention_heads, c.kv_heads(), c.intermediate_size);
    let qwen2 = c.model_type == "qwen2";
    let arch = if qwen2 { "qwen2" } else { "llama" };
    let rope_rows = |values: Vec<f32>, heads: usize| {
        if qwen2 {
            values
        } else {
            permute(&values, heads, d)
        }
    };
    let mut w = Writer::new();
    w.str("general.architecture", arch);
    w.u32(
        &format!("{arch}.context_length"),
        c.max_position_embeddings as u32,
    );
    w.u32(&format!("{arch}.embedding_length"), d as u32);
    w.u32(&format!("{arch}.block_count"), c.num_hidden_layers as u32);
    w.u32(&format!("{arch}.feed_forward_length"), i as u32);
    w.u32(&format!("{arch}.attention.head_count"), h as u32);
    w.u32(&format!("{arch}.attention.head_count_kv"), kv as u32);
    w.f32(&format!("{arch}.rope.freq_base"), c.rope_theta as f32);
    w.f32(
        &format!("{arch}.attention.layer_norm_rms_epsilon"),
        c.rms_norm_eps as f32,
    );
    // llama.cpp's qwen2 converter writes no window (Qwen2.5's is switched off).
    if let Some(window) = c.sliding_window_in_use() {
        w.u32(&format!("{arch}.attention.sliding_window"), window as u32);
    }
    w.f32_tensor(
        "token_embd.weight",
        &[v, d],
        &f32s(&st, "model.embed_tokens.weight"),
    );
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let g = format!("blk.{l}");
        let t = |n: &str| f32s(&st, &format!("{p}.{n}"));
        w.f32_tensor(
            &format!("{g}.attn_norm.weight"),
            &[d],
            &t("input_layernorm.weight"),
        );
        w.f32_tensor(
            &format!("{g}.attn_q.weight"),
            &[h * hd, d],
            &rope_rows(t("self_attn.q_proj.weight"), h),
        );
        w.f32_tensor(
            &format!("{g}.attn_k.weight"),
            &[kv * hd, d],
            &rope_rows(t("self_attn.k_proj.weight"), kv),
        );
        w.f32_tensor(
            &format!("{g}.attn_v.weight"),
            &[kv * hd, d],
            &t("self_attn.v_proj.weight"),
        );
        if qwen2 {
            for (part, rows) in [("q", h * hd), ("k", kv * hd), ("v", kv * hd)] {
                w.f32_tensor(
                    &format!("{g}.attn_{part}.bias"),
                    &[rows],
                    &t(&format!("self_attn.{part}_proj.bias")),
                );
            }
        }
        w.f32_tensor(
            &format!("{g}.attn_output.weight"),
            &[d, h * hd],
            &t("self_attn.o_proj.weight"),
        );
        w.f32_tensor(
            &format!("{g}.ffn_norm.weight"),
            &[d],
            &t("post_attention_layernorm.weight"),
        );
        w.f32_tensor(
            &format!("{g}.ffn_gate.weight"),
            &[i, d],
            &t("mlp.gate_proj.weight"),
        );
        w.f32_tensor(
            &format!("{g}.ffn_up.weight"),
            &[i, d],
            &t("mlp.up_proj.weight"),
        );
        w.f32_tensor(
            &format!("{g}.ffn_down.weight"),
            &[d, i],
            &t("mlp.down_proj.weight"),
        );
    }
    w.f32_tensor("output_norm.weight", &[d], &f32s(&st, "model.norm.weight"));
    if !c.tie_word_embeddings {
        w.f32_tensor("output.weight", &[v, d], &f32s(&st, "lm_head.weight"));
    }
    w.write(out);
    w
}

fn all_logits(model: &Llama<B>, ids: &[i32]) -> Vec<f32> {
    let mut cache = model.new_cache(&[0], ids.len());
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids.to_vec(), [1, ids.len()]),
        model.device(),
    );
    model
        .forward(input, &mut cache, Logits::All)
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

#[test]
fn gguf_conversion_of_a_random_model_gives_the_same_logits() {
    for preset in ["tiny-llama", "tiny-mistral", "tiny-qwen2"] {
        let dir = temp_dir(preset);
        let config = LlamaConfig::preset(preset).unwrap();
        hf::write_random(&config, &dir, 11, StoreDtype::F32, usize::MAX).unwrap();
        let path = dir.join("model.gguf");
        convert(&config, &dir, &path);
        let file = GgufFile::open(&path).unwrap();
        let loaded = drpo_models::load::gguf::config(&file).unwrap();
        assert_eq!(loaded.tie_word_embeddings, config.tie_word_embeddings);
        assert_eq!(
            loaded.sliding_window_in_use(),
            config.sliding_window_in_use()
        );
        assert_eq!(loaded.qkv_bias(), config.qkv_bias());
        assert_eq!(loaded.kv_heads(), config.kv_heads());
        let device = Default::default();
        let (hf_config, weights) = hf::load::<B>(&dir, &device).unwrap();
        let from_hf = Llama::new(hf_config, weights, &device, KernelOptions::default());
        let ids: Vec<i32> = (0..19).map(|i| i * 37 % 500 + 3).collect();
        let reference = all_logits(&from_hf, &ids);
        for storage in [WeightStorage::Dequantized, WeightStorage::Packed] {
            let (gguf_config, weights) =
                drpo_models::load::gguf::load::<B>(&file, &device, storage).unwrap();
            let from_gguf = Llama::new(gguf_config, weights, &device, KernelOptions::default());
            let diff = all_logits(&from_gguf, &ids)
                .iter()
                .zip(&reference)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                diff < 1e-4,
                "{preset}, {storage:?}: GGUF and safetensors logits differ by {diff}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn expect_format_error(result: Result<GgufFile, ModelError>, path: &Path, words: &[&str]) {
    let err = result.expect_err("the file must be rejected");
    let text = err.to_string();
    assert!(matches!(err, ModelError::Format { .. }), "{text}");
    assert!(
        text.contains(&path.display().to_string()),
        "names the file: {text}"
    );
    for w in words {
        assert!(text.contains(w), "{text:?} should mention {w:?}");
    }
}

fn small_file() -> Writer {
    let mut w = Writer::new();
    w.str("general.architecture", "llama");
    w.strings("tokenizer.ggml.tokens", &["a".into(), "b".into()]);
    w.f32_tensor("x.weight", &[2, 32], &[0.5; 64]);
    w
}

#[test]
fn wrong_magic_is_a_clear_error() {
    let dir = temp_dir("magic");
    let path = dir.join("not.gguf");
    std::fs::write(&path, b"GGML\x03\0\0\0 and some more bytes here").unwrap();
    expect_format_error(GgufFile::open(&path), &path, &["not a GGUF file", "magic"]);
}

#[test]
fn truncated_files_are_clear_errors() {
    let dir = temp_dir("truncated");
    let bytes = small_file().bytes();
    let whole = dir.join("whole.gguf");
    std::fs::write(&whole, &bytes).unwrap();
    let file = GgufFile::open(&whole).unwrap();
    assert_eq!(file.version, 3);
    assert_eq!(file.tensors.len(), 1);
    assert_eq!(file.architecture(), Some("llama"));
    assert_eq!(
        file.tensor_f32("x.weight", &[2, 32]).unwrap(),
        vec![0.5; 64]
    );
    // Cut in the header, in the metadata, in the tensor table and in the data.
    for cut in [6, 40, bytes.len() - 300, bytes.len() - 10] {
        let path = dir.join(format!("cut-{cut}.gguf"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        expect_format_error(GgufFile::open(&path), &path, &["truncated"]);
    }
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    expect_format_error(GgufFile::open(&empty), &empty, &["truncated"]);
}

#[test]
fn unknown_quantization_type_is_a_clear_error() {
    let dir = temp_dir("quant");
    let mut w = small_file();
    w.tensor("q.weight", &[1, 256], 11, vec![0; 110]); // Q3_K
    let path = dir.join("q3k.gguf");
    w.write(&path);
    expect_format_error(GgufFile::open(&path), &path, &["q.weight", "Q3_K", "11"]);
    let mut w = small_file();
    w.tensor("z.weight", &[1, 32], 99, vec![0; 32]);
    let path = dir.join("type99.gguf");
    w.write(&path);
    expect_format_error(GgufFile::open(&path), &path, &["z.weight", "99"]);
}

#[test]
fn tensor_of_the_wrong_shape_is_a_clear_error() {
    let dir = temp_dir("shape");
    let config = LlamaConfig::preset("tiny-llama").unwrap();
    hf::write_random(&config, &dir, 3, StoreDtype::F32, usize::MAX).unwrap();
    let path = dir.join("model.gguf");
    let mut w = convert(&config, &dir, &path);
    // blk.0.attn_v.weight with one row too few.
    let entry = w
        .tensors
        .iter_mut()
        .find(|t| t.0 == "blk.0.attn_v.weight")
        .unwrap();
    entry.1[1] -= 1;
    let row = entry.1[0] as usize * 4;
    entry.3.truncate(entry.3.len() - row);
    w.write(&path);
    let file = GgufFile::open(&path).unwrap();
    let err = drpo_models::load::gguf::load::<B>(&file, &Default::default(), WeightStorage::Packed)
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(
        text.contains("blk.0.attn_v.weight") && text.contains("shape"),
        "{text}"
    );
}

/// The loader's error for a tiny Qwen2 GGUF file whose tensor table `edit` changed.
fn qwen2_load_error(name: &str, edit: impl FnOnce(&mut Writer)) -> (PathBuf, String) {
    let dir = temp_dir(name);
    let config = LlamaConfig::preset("tiny-qwen2").unwrap();
    hf::write_random(&config, &dir, 3, StoreDtype::F32, usize::MAX).unwrap();
    let path = dir.join("model.gguf");
    let mut w = convert(&config, &dir, &path);
    edit(&mut w);
    w.write(&path);
    let file = GgufFile::open(&path).unwrap();
    let err = drpo_models::load::gguf::load::<B>(&file, &Default::default(), WeightStorage::Packed)
        .unwrap_err();
    (path, err.to_string())
}

#[test]
fn qwen2_file_without_a_bias_is_a_clear_error() {
    let (path, text) = qwen2_load_error("qwen2-missing", |w| {
        w.tensors.retain(|t| t.0 != "blk.1.attn_k.bias");
    });
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(
        text.contains("blk.1.attn_k.bias") && text.contains("missing"),
        "{text}"
    );
}

#[test]
fn qwen2_bias_of_the_wrong_shape_is_a_clear_error() {
    let (path, text) = qwen2_load_error("qwen2-shape", |w| {
        let entry = w
            .tensors
            .iter_mut()
            .find(|t| t.0 == "blk.0.attn_q.bias")
            .unwrap();
        entry.1[0] -= 1;
        entry.3.truncate(entry.3.len() - 4);
    });
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(
        text.contains("blk.0.attn_q.bias") && text.contains("shape"),
        "{text}"
    );
}
