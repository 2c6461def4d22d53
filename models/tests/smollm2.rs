//! The real SmolLM2-135M-Instruct (Q4_1 GGUF) against fixtures written by `transformers`
//! (models/scripts/reference.py): tokenizer, chat template, last-position logits, greedy tokens;
//! against greedy tokens of llama.cpp (models/scripts/llama_cpp_reference.py); and the
//! generation API: batched equals one by one, seeded sampling, stop strings.
//!
//! The model comes from `scripts/fetch-smollm2.sh` (or the path in `DRPO_SMOLLM2`).

use std::path::PathBuf;
use std::sync::OnceLock;

use burn::tensor::{Int, Tensor, TensorData};
use drpo_models::chat::ChatMessage;
use drpo_models::device::CpuBackend;
use drpo_models::generate::argmax;
use drpo_models::llama::Logits;
use drpo_models::{GenerationRequest, LocalModel, PromptInput};
use serde_json::Value;

fn model_path() -> PathBuf {
    if let Some(path) = std::env::var_os("DRPO_SMOLLM2") {
        return PathBuf::from(path);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn model() -> &'static LocalModel {
    static MODEL: OnceLock<LocalModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = model_path();
        assert!(
            path.is_file(),
            "the test model {} is missing: run scripts/fetch-smollm2.sh (or set DRPO_SMOLLM2 to \
             the SmolLM2-135M-Instruct.Q4_1.gguf file)",
            path.display()
        );
        LocalModel::load(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
    })
}

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn prompt_of(case: &Value) -> PromptInput {
    let prompt = &case["prompt"];
    match prompt.get("chat") {
        Some(chat) => {
            PromptInput::Chat(serde_json::from_value::<Vec<ChatMessage>>(chat.clone()).unwrap())
        }
        None => PromptInput::Raw(prompt["raw"].as_str().unwrap().to_string()),
    }
}

#[test]
fn tokenizer_matches_transformers() {
    let tok = model().tokenizer();
    for case in fixture("smollm2-tokenizer.json")["cases"]
        .as_array()
        .unwrap()
    {
        let text = case["text"].as_str().unwrap();
        let expected = ids_of(&case["ids"]);
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(ids, expected, "encode({text:?})");
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
    assert_eq!(tok.eos_ids().first(), Some(&2), "<|im_end|> ends a turn");
}

#[test]
fn chat_template_matches_transformers() {
    let model = model();
    for case in fixture("smollm2-chat.json")["cases"].as_array().unwrap() {
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        if case["add_generation_prompt"].as_bool().unwrap() {
            let rendered = model.render(&PromptInput::Chat(messages)).unwrap();
            assert_eq!(rendered, case["rendered"].as_str().unwrap());
        }
    }
    // Raw prompts pass through untouched.
    let raw = "  <|im_start|>raw text\n";
    assert_eq!(model.render(&PromptInput::Raw(raw.into())).unwrap(), raw);
}

/// Left-pads `prompts` into one batch and returns each row's last-position logits, then
/// `steps` greedy tokens per row (all rows decoded together).
fn batch_greedy(prompts: &[Vec<u32>], steps: usize) -> (Vec<Vec<f32>>, Vec<Vec<u32>>) {
    let model = model().cpu_model().expect("loaded on the CPU");
    let vocab = model.config().vocab_size;
    let longest = prompts.iter().map(Vec::len).max().unwrap();
    let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let mut cache = model.new_cache(&pads, longest + steps);
    let ids: Vec<i32> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(0, longest - p.len()).chain(p.iter().map(|&t| t as i32)))
        .collect();
    let input = Tensor::<CpuBackend, 2, Int>::from_data(
        TensorData::new(ids, [prompts.len(), longest]),
        model.device(),
    );
    let mut logits = model.forward(input, &mut cache, Logits::Last);
    let mut first = Vec::new();
    let mut tokens = vec![Vec::new(); prompts.len()];
    for step in 0..steps {
        let values = logits.into_data().to_vec::<f32>().unwrap();
        if step == 0 {
            first = values.chunks(vocab).map(<[f32]>::to_vec).collect();
        }
        let next: Vec<u32> = values.chunks(vocab).map(argmax).collect();
        for (row, &t) in tokens.iter_mut().zip(&next) {
            row.push(t);
        }
        if step + 1 == steps {
            break;
        }
        let input = Tensor::<CpuBackend, 2, Int>::from_data(
            TensorData::new(
                next.iter().map(|&t| t as i32).collect::<Vec<_>>(),
                [prompts.len(), 1],
            ),
            model.device(),
        );
        logits = model.forward(input, &mut cache, Logits::Last);
    }
    (first, tokens)
}

/// Each case's prompt ids, asserted equal to the reference's.
fn checked_prompt_ids(cases: &[Value]) -> Vec<Vec<u32>> {
    let model = model();
    cases
        .iter()
        .map(|case| {
            let ids = model.prompt_ids(&prompt_of(case)).unwrap();
            assert_eq!(ids, ids_of(&case["ids"]), "prompt ids of {}", case["text"]);
            ids
        })
        .collect()
}

#[test]
fn logits_and_greedy_tokens_match_transformers() {
    let fixture = fixture("smollm2-logits.json");
    let cases = fixture["cases"].as_array().unwrap();
    let prompts = checked_prompt_ids(cases);
    let steps = 32;
    let (logits, greedy) = batch_greedy(&prompts, steps);
    for ((case, logits), greedy) in cases.iter().zip(&logits).zip(&greedy) {
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        assert_eq!(
            order[..5].to_vec(),
            ids_of(&case["top5"]),
            "top-5 of {}",
            case["text"]
        );
        let mut worst = 0f32;
        for (id, value) in case["logits"].as_object().unwrap() {
            let id: usize = id.parse().unwrap();
            worst = worst.max((logits[id] - value.as_f64().unwrap() as f32).abs());
        }
        assert!(
            worst < 1e-2,
            "logits of {} differ by up to {worst}",
            case["text"]
        );
        assert_eq!(
            greedy,
            &ids_of(&case["greedy"]),
            "greedy tokens of {}",
            case["text"]
        );
    }
}

/// How far apart llama.cpp's two best logits may be at a step where our greedy token differs
/// from its one. llama.cpp quantizes the activations to 8 bits for its Q4_1 dot products, where
/// we multiply in f32: on the fixture's chat prompt its logits of "L" and "The" were 24.91 and
/// 24.56, transformers' (which ours match within 1e-2) 25.24 and 25.33, so a gap of 0.35 went
/// the other way there.
const LLAMA_CPP_NEAR_TIE: f64 = 0.5;

#[test]
fn prompt_ids_and_greedy_tokens_match_llama_cpp() {
    let fixture = fixture("smollm2-llama-cpp.json");
    let cases = fixture["cases"].as_array().unwrap();
    let prompts = checked_prompt_ids(cases);
    let steps = 32;
    let (_, greedy) = batch_greedy(&prompts, steps);
    let mut compared = 0;
    for (case, ours) in cases.iter().zip(&greedy) {
        let theirs = ids_of(&case["greedy"]);
        let gaps: Vec<f64> = case["top2_gaps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_f64().unwrap())
            .collect();
        assert_eq!((theirs.len(), gaps.len()), (steps, steps));
        for step in 0..steps {
            if ours[step] != theirs[step] {
                assert!(
                    gaps[step] < LLAMA_CPP_NEAR_TIE,
                    "greedy tokens of {} differ at step {step} ({} here, {} in llama.cpp), \
                     where llama.cpp's best logit led by {}: ours {ours:?}, llama.cpp's \
                     {theirs:?}",
                    case["text"],
                    ours[step],
                    theirs[step],
                    gaps[step]
                );
                // The continuations differ from here on.
                break;
            }
            compared += 1;
        }
    }
    // The steps up to each case's first near-tie must agree (38 with the committed fixture), so
    // a test that compares nothing cannot pass.
    let clear: usize = cases
        .iter()
        .map(|case| {
            case["top2_gaps"]
                .as_array()
                .unwrap()
                .iter()
                .position(|g| g.as_f64().unwrap() < LLAMA_CPP_NEAR_TIE)
                .unwrap_or(steps)
        })
        .sum();
    assert!(clear >= 30, "the fixture has only {clear} clear steps");
    assert!(
        compared >= clear,
        "{compared} of {clear} clear steps agreed"
    );
}

#[test]
fn generation_api_greedy_stop_and_batching() {
    let fixture = fixture("smollm2-logits.json");
    let cases = fixture["cases"].as_array().unwrap();
    let model = model();
    let max_tokens = 10;
    let requests: Vec<GenerationRequest> = cases
        .iter()
        .map(|case| GenerationRequest::greedy(prompt_of(case), max_tokens))
        .collect();
    let together = model.generate(&requests).unwrap();
    for ((req, out), case) in requests.iter().zip(&together).zip(cases) {
        let alone = model.generate(std::slice::from_ref(req)).unwrap();
        assert_eq!(
            alone[0], *out,
            "batched and alone differ for {}",
            case["text"]
        );
        // Beside a sampling row, every row's logits come back and this greedy row is chosen on
        // the host; alone, its choices are taken on the device (burn's argmax): the same answer.
        let sampled = GenerationRequest {
            temperature: 0.8,
            seed: 3,
            ..req.clone()
        };
        let mixed = model.generate(&[req.clone(), sampled]).unwrap();
        assert_eq!(
            mixed[0], *out,
            "host and device choices differ for {}",
            case["text"]
        );
        // The fixture's greedy continuation, cut at the end of the turn.
        let tok = model.tokenizer();
        let reference = ids_of(&case["greedy"]);
        let end = reference
            .iter()
            .position(|t| tok.eos_ids().contains(t))
            .map_or(max_tokens as usize, |p| p.min(max_tokens as usize));
        let expected = tok.decode(&reference[..end], true).unwrap();
        assert_eq!(out.choices, vec![expected]);
        assert_eq!(out.prompt_tokens as usize, ids_of(&case["ids"]).len());
        assert_eq!(
            out.completion_tokens as usize,
            (end + 1).min(max_tokens as usize)
        );
    }
    assert_eq!(together[0].choices[0], "The capital of France is Paris.");

    let mut stop = requests[0].clone();
    stop.stop = vec!["Paris".into(), "nothing".into()];
    let out = model.generate(&[stop]).unwrap();
    assert_eq!(
        out[0].choices,
        vec!["The capital of France is ".to_string()]
    );
}

#[test]
fn sampling_is_seeded() {
    let model = model();
    let request = GenerationRequest {
        prompt: PromptInput::Raw("Once upon a time".into()),
        temperature: 1.0,
        top_p: 0.95,
        max_tokens: 6,
        n: 3,
        seed: 42,
        stop: Vec::new(),
        json_schema: None,
    };
    let a = model.generate(std::slice::from_ref(&request)).unwrap();
    let b = model.generate(&[request.clone(), request.clone()]).unwrap();
    assert_eq!(a[0], b[0]);
    assert_eq!(a[0], b[1]);
    assert_eq!(a[0].choices.len(), 3);
    // Choice i uses seed + i: choice 1 of seed 42 is choice 0 of seed 43.
    let shifted = GenerationRequest {
        seed: 43,
        n: 1,
        ..request
    };
    let c = model.generate(&[shifted]).unwrap();
    assert_eq!(c[0].choices[0], a[0].choices[1]);
    let distinct: std::collections::HashSet<_> = a[0].choices.iter().collect();
    assert!(
        distinct.len() > 1,
        "three samples at temperature 1 all equal: {:?}",
        a[0].choices
    );
}

#[test]
fn identity_names_the_file_and_its_hash() {
    let id = model().identity();
    assert!(
        id.starts_with("SmolLM2-135M-Instruct.Q4_1.gguf@sha256:"),
        "{id}"
    );
    assert_eq!(
        id.len(),
        "SmolLM2-135M-Instruct.Q4_1.gguf@sha256:".len() + 16
    );
}

#[cfg(feature = "structured")]
#[test]
fn schema_constrained_answers_parse() {
    let schema = r#"{"type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40},
                       "population_millions": {"type": "number"}},
        "required": ["city", "population_millions"], "additionalProperties": false}"#;
    let ask = |question: &str, seed: u64, temperature: f32| GenerationRequest {
        json_schema: Some(schema.into()),
        temperature,
        seed,
        ..GenerationRequest::greedy(
            PromptInput::Chat(vec![ChatMessage::new(
                "user",
                format!("{question} Answer in JSON with the keys city and population_millions."),
            )]),
            48,
        )
    };
    let requests = vec![
        ask("What is the capital of France?", 0, 0.0),
        ask("Name a large city in Japan.", 1, 0.7),
    ];
    for out in model().generate(&requests).unwrap() {
        let text = &out.choices[0];
        eprintln!("constrained answer: {text}");
        let value: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("constrained answer {text:?} does not parse: {e}"));
        assert!(value["city"].is_string(), "{text}");
        assert!(value["population_millions"].is_number(), "{text}");
        assert_eq!(value.as_object().unwrap().len(), 2, "{text}");
    }
}

/// Every DRPO meta-prompt (aspect selection, judging, optimizing) answered by SmolLM2 under its
/// schema parses with the DRPO parsers: with a token limit just above the shortest document the
/// schema allows (the endgame closes the answer in time) and with a roomier one.
#[cfg(feature = "structured")]
#[test]
fn schema_constrained_answers_to_the_drpo_meta_prompts_parse() {
    use drpo::aspects::CATALOGUE;
    use drpo::engine::RequestSettings;
    use drpo::{parse, prompts, types};
    use drpo_models::structured::shortest_document;

    let query = "How do I keep basil alive on a windowsill?";
    let answer = "Water it when the top of the soil is dry and give it six hours of sun.";
    let aspects: Vec<&'static drpo::aspects::Aspect> = CATALOGUE.iter().take(3).collect();
    let options = RequestSettings::default();
    let drpo_requests = [
        prompts::aspect_selection_request(query, &options),
        prompts::judge_request(
            query,
            answer,
            &aspects,
            "they matter for a how-to",
            &options,
        ),
        prompts::optimizer_request(
            "You are a helpful assistant.",
            query,
            answer,
            r#"{"helpfulness": {"rationale": "short", "score": 3}}"#,
            &["You are a helpful assistant.".to_string()],
            &options,
        ),
    ];
    for room in [0, 120] {
        let requests: Vec<GenerationRequest> = drpo_requests
            .iter()
            .map(|r| {
                let schema: Value =
                    serde_json::from_str(r.json_schema.as_deref().unwrap()).unwrap();
                let max_tokens = shortest_document(&schema) as u32 + 8 + room;
                let types::Prompt::Chat(messages) = &r.prompt else {
                    panic!("the meta-prompts are chat prompts")
                };
                GenerationRequest {
                    json_schema: r.json_schema.clone(),
                    ..GenerationRequest::greedy(
                        PromptInput::Chat(
                            messages
                                .iter()
                                .map(|m| ChatMessage::new(&m.role, m.content.clone()))
                                .collect(),
                        ),
                        max_tokens,
                    )
                }
            })
            .collect();
        let outputs = model().generate(&requests).unwrap();
        let texts: Vec<&str> = outputs.iter().map(|o| o.choices[0].as_str()).collect();
        eprintln!("room {room}: {texts:#?}");
        // An answer with no room beyond the shortest document says so, with what it needed.
        for (output, request) in outputs.iter().zip(&requests) {
            let expected = (room == 0).then_some(request.max_tokens);
            assert_eq!(output.cramped_by_schema, expected, "room {room}");
        }

        for (text, request) in texts.iter().zip(&drpo_requests) {
            let answer: Value = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("constrained answer {text:?} is not JSON: {e}"));
            let schema: Value =
                serde_json::from_str(request.json_schema.as_deref().unwrap()).unwrap();
            for key in schema["required"].as_array().unwrap() {
                assert!(
                    answer.get(key.as_str().unwrap()).is_some(),
                    "{key} missing in {text}"
                );
            }
        }
        if room == 0 {
            // Only the shortest document fits: its strings are empty, which the DRPO parsers
            // rightly refuse as an answer; that it is complete JSON is the point.
            continue;
        }
        let selection = parse::extract_object(texts[0])
            .and_then(|object| parse::parse_aspect_selection(&object))
            .unwrap_or_else(|e| panic!("aspect selection {:?}: {e}", texts[0]));
        assert!(!selection.aspects.is_empty(), "{}", texts[0]);

        let judgement = parse::parse_judgement(texts[1], &aspects);
        assert_eq!(
            judgement.scores.len(),
            aspects.len(),
            "judgement {:?}: {:?}",
            texts[1],
            judgement.problems
        );

        // The optimizer's answer is checked as JSON above only: a 135M model often spends its
        // budget on `analysis` and leaves `new_system_prompt` empty, which the search drops.
    }
}

#[cfg(not(feature = "structured"))]
#[test]
fn json_schema_without_the_feature_is_a_clear_error() {
    let request = GenerationRequest {
        json_schema: Some("{}".into()),
        ..GenerationRequest::greedy(PromptInput::Raw("x".into()), 1)
    };
    let err = model().generate(&[request]).unwrap_err();
    assert!(err.to_string().contains("structured"), "{err}");
}
