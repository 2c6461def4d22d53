//! The sentence encoder against the reference: all-MiniLM-L6-v2's vectors for ten sentences
//! (written by `models/scripts/minilm_reference.py` with `transformers`, pooled and normalised
//! as the model's sentence-transformers modules say) within 1e-4, retrieval of the expected
//! neighbours, and clear errors for an incomplete model directory. Needs the model:
//! `scripts/fetch-minilm.sh`.

use std::path::PathBuf;

use drpo_models::bert::SentenceEncoder;
use serde_json::Value;

fn model_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run scripts/fetch-minilm.sh",
        dir.display()
    );
    dir
}

fn fixture() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn vectors_match_the_reference_and_retrieval_finds_the_neighbours() {
    let encoder = SentenceEncoder::load(&model_dir()).unwrap();
    let fixture = fixture();
    let sentences: Vec<String> = fixture["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sentences.len(), 10);
    let vectors = encoder.embed(&sentences).unwrap();
    assert_eq!(encoder.dimension(), 384);
    for (i, (ours, reference)) in vectors
        .iter()
        .zip(fixture["vectors"].as_array().unwrap())
        .enumerate()
    {
        let reference: Vec<f32> = reference
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(ours.len(), reference.len());
        let worst = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let cosine = drpo::icl::cosine(ours, &reference);
        eprintln!("sentence {i}: max |difference| {worst:.2e}, cosine {cosine:.7}");
        assert!(worst <= 1e-4, "sentence {i}: max difference {worst}");
        assert!(cosine >= 0.9999, "sentence {i}: cosine {cosine}");
        let norm: f32 = ours.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "sentence {i}: norm {norm}");
    }

    // A small constructed set: each query's nearest example is the one on its topic.
    let examples: Vec<String> = [
        "How should I look after a new puppy?",
        "What is the best way to learn a programming language?",
        "Explain how vaccines train the immune system.",
    ]
    .map(String::from)
    .to_vec();
    let queries: Vec<String> = [
        "Tips for raising a young dog",
        "How do immunisations protect the body?",
        "I want to get good at coding in Rust",
    ]
    .map(String::from)
    .to_vec();
    let example_vectors = encoder.embed(&examples).unwrap();
    let query_vectors = encoder.embed(&queries).unwrap();
    let nearest: Vec<usize> = query_vectors
        .iter()
        .map(|q| drpo::icl::top_k(q, &example_vectors, 1)[0])
        .collect();
    assert_eq!(nearest, [0, 2, 1]);
}

#[test]
fn a_missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "tokenizer.json", "modules.json"] {
        std::fs::copy(model_dir().join(file), dir.path().join(file)).unwrap();
    }
    let err = SentenceEncoder::load(dir.path())
        .err()
        .expect("the pooling config is missing");
    let message = err.to_string();
    assert!(message.contains("1_Pooling/config.json"), "{message}");
    assert!(message.contains("missing"), "{message}");
}
