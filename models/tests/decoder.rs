//! The decoder on the CPU: batching and padding do not change results, sharded and single-file
//! directories load the same weights, broken directories give errors that name the file.

use std::path::Path;

use burn::tensor::{Int, Tensor, TensorData};
use drpo_models::device::CpuBackend;
use drpo_models::llama::{Llama, Logits};
use drpo_models::load::hf::{self, StoreDtype};
use drpo_models::{KernelOptions, LlamaConfig, ModelError};

type B = CpuBackend;

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("drpo-models-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn write(preset: &str, name: &str, shard_bytes: usize) -> std::path::PathBuf {
    let dir = temp_dir(name);
    let config = LlamaConfig::preset(preset).expect("preset");
    hf::write_random(&config, &dir, 7, StoreDtype::F32, shard_bytes).expect("write");
    dir
}

fn load(dir: &Path) -> Llama<B> {
    let device = Default::default();
    let (config, weights) = hf::load::<B>(dir, &device).expect("load");
    Llama::new(config, weights, &device, KernelOptions::default())
}

/// Last-position logits of each prompt, the prompts left-padded into one batch.
fn last_logits(model: &Llama<B>, prompts: &[Vec<i32>]) -> Vec<Vec<f32>> {
    let longest = prompts.iter().map(Vec::len).max().unwrap();
    let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let ids: Vec<i32> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(0, longest - p.len()).chain(p.iter().copied()))
        .collect();
    let mut cache = model.new_cache(&pads, longest);
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids, [prompts.len(), longest]),
        model.device(),
    );
    let logits = model.forward(input, &mut cache, Logits::Last);
    let vocab = model.config().vocab_size;
    logits
        .into_data()
        .to_vec::<f32>()
        .unwrap()
        .chunks(vocab)
        .map(<[f32]>::to_vec)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn prompts(lengths: &[usize]) -> Vec<Vec<i32>> {
    lengths
        .iter()
        .enumerate()
        .map(|(n, &len)| {
            (0..len)
                .map(|i| ((i * 31 + n * 17) % 500 + 3) as i32)
                .collect()
        })
        .collect()
}

#[test]
fn batched_left_padded_prompts_match_one_by_one() {
    for preset in ["tiny-mistral", "tiny-llama"] {
        let dir = write(preset, &format!("batch-{preset}"), usize::MAX);
        let model = load(&dir);
        // Longer than tiny-mistral's window of 8, and of different lengths.
        let prompts = prompts(&[3, 13, 21, 9]);
        let together = last_logits(&model, &prompts);
        for (prompt, batched) in prompts.iter().zip(&together) {
            let alone = last_logits(&model, std::slice::from_ref(prompt));
            let diff = max_diff(batched, &alone[0]);
            assert!(diff < 1e-4, "{preset}: batched vs alone differ by {diff}");
        }
        std::fs::remove_dir_all(dir).ok();
    }
}

#[test]
fn decoding_with_the_cache_matches_a_full_forward() {
    let dir = write("tiny-mistral", "cache", usize::MAX);
    let model = load(&dir);
    let prompt = prompts(&[20]).remove(0);
    let full = last_logits(&model, std::slice::from_ref(&prompt));

    let device = model.device();
    let mut cache = model.new_cache(&[0], prompt.len());
    let head =
        Tensor::<B, 2, Int>::from_data(TensorData::new(prompt[..12].to_vec(), [1, 12]), device);
    model.forward(head, &mut cache, Logits::Last);
    let mut last = None;
    for &token in &prompt[12..] {
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![token], [1, 1]), device);
        last = Some(model.forward(input, &mut cache, Logits::Last));
    }
    let stepped: Vec<f32> = last.unwrap().into_data().to_vec().unwrap();
    let diff = max_diff(&stepped, &full[0]);
    assert!(diff < 1e-4, "step-by-step vs full forward differ by {diff}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn sharded_and_single_file_directories_load_the_same_weights() {
    let single = write("tiny-mistral", "single", usize::MAX);
    let sharded = write("tiny-mistral", "sharded", 200_000);
    assert!(sharded.join("model.safetensors.index.json").is_file());
    let prompts = prompts(&[6]);
    let a = last_logits(&load(&single), &prompts);
    let b = last_logits(&load(&sharded), &prompts);
    assert_eq!(a, b);
    std::fs::remove_dir_all(single).ok();
    std::fs::remove_dir_all(sharded).ok();
}

fn load_error(dir: &Path) -> String {
    match hf::load::<B>(dir, &Default::default()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn broken_directories_give_errors_naming_the_file() {
    let dir = write("tiny-llama", "broken", usize::MAX);

    // A tensor of the wrong shape.
    let mut config = LlamaConfig::from_file(&dir.join("config.json")).unwrap();
    config.intermediate_size += 1;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string(&config).unwrap(),
    )
    .unwrap();
    let message = load_error(&dir);
    assert!(
        message.contains("model.safetensors") && message.contains("shape"),
        "{message}"
    );

    // A truncated weights file.
    config.intermediate_size -= 1;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string(&config).unwrap(),
    )
    .unwrap();
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &weights[..weights.len() / 2]).unwrap();
    let message = load_error(&dir);
    assert!(message.contains("model.safetensors"), "{message}");

    // No config.json at all.
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let message = load_error(&dir);
    assert!(
        message.contains("config.json") && message.contains("missing"),
        "{message}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn configs_of_the_mistral_and_llama_releases_parse() {
    let v01 = r#"{"architectures":["MistralForCausalLM"],"bos_token_id":1,"eos_token_id":2,
        "hidden_act":"silu","hidden_size":4096,"initializer_range":0.02,
        "intermediate_size":14336,"max_position_embeddings":32768,"model_type":"mistral",
        "num_attention_heads":32,"num_hidden_layers":32,"num_key_value_heads":8,
        "rms_norm_eps":1e-05,"rope_theta":10000.0,"sliding_window":4096,
        "tie_word_embeddings":false,"torch_dtype":"bfloat16","transformers_version":"4.34.0",
        "use_cache":true,"vocab_size":32000}"#;
    let config: LlamaConfig = serde_json::from_str(v01).unwrap();
    assert_eq!(config, LlamaConfig::preset("mistral-7b").unwrap());
    let v03 = v01
        .replace("\"sliding_window\":4096", "\"sliding_window\":null")
        .replace("10000.0", "1000000.0")
        .replace("32000", "32768");
    let config: LlamaConfig = serde_json::from_str(&v03).unwrap();
    assert_eq!(config, LlamaConfig::preset("mistral-7b-v0.3").unwrap());
    let llama3 = v01.replace("\"eos_token_id\":2", "\"eos_token_id\":[128001,128009]");
    let config: LlamaConfig = serde_json::from_str(&llama3).unwrap();
    assert_eq!(config.eos_token_id, Some(128001));
    assert!(matches!(
        LlamaConfig::resolve("no-such-preset"),
        Err(ModelError::Usage(_))
    ));
}
