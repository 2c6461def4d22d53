//! Qwen2 against references independent of this crate (models/scripts/qwen2_reference.py: a numpy
//! transcription of `transformers`' Qwen2, the `gguf` package's dequantizers, `transformers`'
//! GGUF tokenizer and chat template):
//! - a small random Qwen2 (`tiny-qwen2`: biased query/key/value projections, untied head, a
//!   switched-off sliding window), weights by `hf::write_random` with the fixture's seed;
//! - the real Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, mostly Q5_0 matrices): tokenizer,
//!   chat template, last-position logits and greedy tokens.
//!
//! The 0.5B comes from `scripts/fetch-qwen.sh 0.5b` (or the path in `DRPO_QWEN_05B`). Where it is
//! absent its tests print why and pass, except where `CI` is set, where they fail (`scripts/test`
//! fetches it first, and stops if it cannot).

use std::path::PathBuf;
use std::sync::OnceLock;

use burn::tensor::{Int, Tensor, TensorData};
use drpo_models::chat::ChatMessage;
use drpo_models::device::CpuBackend;
use drpo_models::generate::argmax;
use drpo_models::llama::{Llama, Logits};
use drpo_models::load::hf::{self, StoreDtype};
use drpo_models::{DeviceSpec, KernelOptions, LlamaConfig, LocalModel, PromptInput};
use serde_json::Value;

type B = CpuBackend;

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn random_qwen2_matches_transformers() {
    let fixture = fixture("qwen2-random-logits.json");
    let case = &fixture["cases"][0];
    let preset = case["preset"].as_str().unwrap();
    let seed = case["seed"].as_u64().unwrap();
    let dir = std::env::temp_dir().join(format!("drpo-qwen2-ref-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = LlamaConfig::preset(preset).unwrap();
    // The tool's default shard size (2 GiB) keeps it in one file, as here.
    hf::write_random(&config, &dir, seed, StoreDtype::F32, 2048 << 20).unwrap();
    let device = Default::default();
    let (loaded, weights) = hf::load::<B>(&dir, &device).unwrap();
    assert!(
        weights.blocks.iter().all(|b| b.qkv_bias.is_some()),
        "Qwen2 blocks carry biases"
    );
    let model = Llama::<B>::new(loaded, weights, &device, KernelOptions::default());
    let ids: Vec<i32> = ids_of(&case["ids"]).iter().map(|&i| i as i32).collect();
    let len = ids.len();
    let window = config.sliding_window.unwrap();
    assert!(
        window < len,
        "the sequence must be longer than the switched-off window"
    );
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
            worst = worst.max((logits[pos * vocab + v] - expected.as_f64().unwrap() as f32).abs());
        }
    }
    for (v, expected) in case["last"].as_array().unwrap().iter().enumerate() {
        let got = logits[(len - 1) * vocab + v];
        worst = worst.max((got - expected.as_f64().unwrap() as f32).abs());
    }
    eprintln!("{preset}: max |logit - reference| = {worst:.2e}");
    assert!(worst < 1e-4, "{preset}: logits differ by {worst}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The 0.5B, loaded once with the default kernels; `None` (with the reason printed) where it is
/// absent outside CI.
fn model() -> Option<&'static LocalModel> {
    static MODEL: OnceLock<Option<LocalModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| load(KernelOptions::default()))
        .as_ref()
}

/// The 0.5B loaded with `kernels`, or `None` where it is absent outside CI.
fn load(kernels: KernelOptions) -> Option<LocalModel> {
    let path = std::env::var_os("DRPO_QWEN_05B").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../.cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
        },
        PathBuf::from,
    );
    if !path.is_file() {
        let why = format!(
            "the test model {} is missing: run scripts/fetch-qwen.sh 0.5b (or set \
             DRPO_QWEN_05B to the file)",
            path.display()
        );
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("skipped: {why}");
        return None;
    }
    Some(
        LocalModel::load_on(&path, DeviceSpec::Cpu, kernels)
            .unwrap_or_else(|e| panic!("loading {}: {e}", path.display())),
    )
}

#[test]
fn qwen2_5_tokenizer_matches_transformers() {
    let Some(model) = model() else { return };
    let tok = model.tokenizer();
    for case in fixture("qwen2.5-0.5b-tokenizer.json")["cases"]
        .as_array()
        .unwrap()
    {
        let text = case["text"].as_str().unwrap();
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(ids, ids_of(&case["ids"]), "encode({text:?})");
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            case["decoded"].as_str().unwrap(),
            "decode({text:?})"
        );
        assert_eq!(
            tok.decode(&ids, true).unwrap(),
            case["decoded_skip_special"].as_str().unwrap(),
            "decode({text:?}, skip special)"
        );
    }
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    assert_eq!(
        tok.eos_ids().first(),
        Some(&im_end),
        "<|im_end|> ends a turn"
    );
}

#[test]
fn qwen2_5_chat_template_matches_transformers() {
    let Some(model) = model() else { return };
    for case in fixture("qwen2.5-0.5b-chat.json")["cases"]
        .as_array()
        .unwrap()
    {
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        if case["add_generation_prompt"].as_bool().unwrap() {
            let rendered = model.render(&PromptInput::Chat(messages)).unwrap();
            assert_eq!(rendered, case["rendered"].as_str().unwrap());
        }
    }
}

#[test]
fn qwen2_5_logits_and_greedy_tokens_match_transformers() {
    let Some(local) = model() else { return };
    compare_with_transformers(local, 5, 1e-2);
}

/// With the activations rounded to bytes (`DRPO_CPU_INT8`) the logits move by the rounding;
/// the first token and every greedy token stay the reference's.
#[test]
fn qwen2_5_with_byte_activations_keeps_the_greedy_tokens_of_transformers() {
    let kernels = KernelOptions {
        cpu_int8_activations: true,
        ..KernelOptions::default()
    };
    let Some(local) = load(kernels) else { return };
    compare_with_transformers(&local, 1, BYTE_ACTIVATIONS_LOGIT_BOUND);
}

/// The worst logit distance from the reference allowed with byte activations.
const BYTE_ACTIVATIONS_LOGIT_BOUND: f32 = 0.5;

/// The fixture's prompts through `local`: prompt ids equal, the first `top` ids of the first
/// step's logits in the reference's order, its logits within `bound`, every greedy token equal.
fn compare_with_transformers(local: &LocalModel, top: usize, bound: f32) {
    let model = local.cpu_model().expect("loaded on the CPU");
    let fixture = fixture("qwen2.5-0.5b-logits.json");
    for case in fixture["cases"].as_array().unwrap() {
        let prompt = match case["prompt"].get("chat") {
            Some(chat) => PromptInput::Chat(serde_json::from_value(chat.clone()).unwrap()),
            None => PromptInput::Raw(case["prompt"]["raw"].as_str().unwrap().into()),
        };
        let ids = local.prompt_ids(&prompt).unwrap();
        assert_eq!(ids, ids_of(&case["ids"]), "prompt ids of {}", case["text"]);
        let expected = ids_of(&case["greedy"]);
        let mut cache = model.new_cache(&[0], ids.len() + expected.len());
        let mut input: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
        let mut greedy = Vec::new();
        for step in 0..expected.len() {
            let len = input.len();
            let tokens = Tensor::<B, 2, Int>::from_data(
                TensorData::new(std::mem::take(&mut input), [1, len]),
                model.device(),
            );
            let logits = model
                .forward(tokens, &mut cache, Logits::Last)
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            if step == 0 {
                let mut order: Vec<u32> = (0..logits.len() as u32).collect();
                order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
                assert_eq!(
                    order[..top].to_vec(),
                    ids_of(&case["top5"])[..top],
                    "top-{top} of {}",
                    case["text"]
                );
                let mut worst = 0f32;
                for (id, value) in case["logits"].as_object().unwrap() {
                    let id: usize = id.parse().unwrap();
                    worst = worst.max((logits[id] - value.as_f64().unwrap() as f32).abs());
                }
                eprintln!("{}: max |logit - reference| = {worst:.2e}", case["text"]);
                assert!(
                    worst < bound,
                    "logits of {} differ by up to {worst}",
                    case["text"]
                );
            }
            let next = argmax(&logits);
            greedy.push(next);
            input.push(next as i32);
        }
        assert_eq!(greedy, expected, "greedy tokens of {}", case["text"]);
    }
}
