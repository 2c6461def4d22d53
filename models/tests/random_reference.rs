//! Small random Mistral (grouped-query attention, sliding window shorter than the sequence) and
//! Llama (tied embeddings) models against `transformers`' logits for the same weights
//! (fixture written by models/scripts/reference.py, weights by `hf::write_random` with the
//! fixture's seed): within 1e-4.

use burn::tensor::{Int, Tensor, TensorData};
use drpo_models::device::CpuBackend;
use drpo_models::llama::{Llama, Logits};
use drpo_models::load::hf::{self, StoreDtype};
use drpo_models::{KernelOptions, LlamaConfig};

type B = CpuBackend;

#[test]
fn random_models_match_transformers() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/random-logits.json")).unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let preset = case["preset"].as_str().unwrap();
        let seed = case["seed"].as_u64().unwrap();
        let dir =
            std::env::temp_dir().join(format!("drpo-random-ref-{preset}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = LlamaConfig::preset(preset).unwrap();
        // The tool's default shard size (2 GiB) keeps these in one file, as here.
        hf::write_random(&config, &dir, seed, StoreDtype::F32, 2048 << 20).unwrap();
        let device = Default::default();
        let (loaded, weights) = hf::load::<B>(&dir, &device).unwrap();
        let model = Llama::<B>::new(loaded, weights, &device, KernelOptions::default());
        let ids: Vec<i32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap() as i32)
            .collect();
        let len = ids.len();
        if let Some(window) = config.sliding_window {
            assert!(window < len, "the sequence must be longer than the window");
        }
        let mut cache = model.new_cache(&[0], len);
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, len]), model.device());
        let logits = model
            .forward(input, &mut cache, Logits::All)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let vocab = config.vocab_size;
        let mut worst = 0f32;
        for (pos, row) in case["first32"].as_array().unwrap().iter().enumerate() {
            for (v, expected) in row.as_array().unwrap().iter().enumerate() {
                let got = logits[pos * vocab + v];
                worst = worst.max((got - expected.as_f64().unwrap() as f32).abs());
            }
        }
        for (v, expected) in case["last"].as_array().unwrap().iter().enumerate() {
            let got = logits[(len - 1) * vocab + v];
            worst = worst.max((got - expected.as_f64().unwrap() as f32).abs());
        }
        eprintln!("{preset}: max |logit - transformers| = {worst:.2e}");
        assert!(
            worst < 1e-4,
            "{preset}: logits differ from transformers' by {worst}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
