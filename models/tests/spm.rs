//! A Llama-style SentencePiece tokenizer (BPE, byte fallback, `▁` dummy prefix) against outside
//! references (models/scripts/spm_reference.py): the tokenizer built from GGUF metadata against
//! the `sentencepiece` library, and a Hugging Face directory's tokenizer.json (written by
//! `transformers`) against `transformers`. The two references differ on leading spaces (the
//! Hugging Face conversion of Llama tokenizers marks only the first piece), so each path is held
//! to its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use drpo_models::gguf::MetaValue;
use drpo_models::tokenizer::Tokenizer;
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture() -> Value {
    let text = std::fs::read_to_string(fixtures().join("spm-tiny.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The vocabulary as a GGUF of a `llama` tokenizer holds it.
fn gguf_metadata(vocab: &Value) -> BTreeMap<String, MetaValue> {
    let array = |key: &str, f: &dyn Fn(&Value) -> MetaValue| {
        MetaValue::Array(vocab[key].as_array().unwrap().iter().map(f).collect())
    };
    let id = |key: &str| MetaValue::U32(vocab[key].as_u64().unwrap() as u32);
    BTreeMap::from([
        (
            "tokenizer.ggml.model".to_string(),
            MetaValue::String("llama".into()),
        ),
        (
            "tokenizer.ggml.tokens".to_string(),
            array("tokens", &|t| MetaValue::String(t.as_str().unwrap().into())),
        ),
        (
            "tokenizer.ggml.scores".to_string(),
            array("scores", &|s| MetaValue::F32(s.as_f64().unwrap() as f32)),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            array("types", &|t| MetaValue::I32(t.as_i64().unwrap() as i32)),
        ),
        ("tokenizer.ggml.bos_token_id".to_string(), id("bos")),
        ("tokenizer.ggml.eos_token_id".to_string(), id("eos")),
        ("tokenizer.ggml.unknown_token_id".to_string(), id("unk")),
    ])
}

#[test]
fn gguf_vocabulary_encodes_as_sentencepiece_does() {
    let fixture = fixture();
    let tok =
        Tokenizer::from_gguf_metadata(&gguf_metadata(&fixture["vocab"]), Path::new("spm.gguf"))
            .unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected = ids(&case["ids"]);
        let ours = tok.encode(text, true).unwrap();
        assert_eq!(ours, expected, "encode({text:?})");
        assert_eq!(
            tok.decode(&ours, true).unwrap(),
            case["decoded"].as_str().unwrap(),
            "decode({text:?})"
        );
    }
    // The fixture exercises what makes such a tokenizer hard: byte fallback and the prefix space.
    let byte_pieces = cases
        .iter()
        .flat_map(|c| ids(&c["ids"]))
        .filter(|&i| fixture["vocab"]["types"][i as usize] == 6)
        .count();
    assert!(byte_pieces > 0, "no case falls back to bytes");
}

#[test]
fn hugging_face_directory_encodes_as_transformers_does() {
    let fixture = fixture();
    let tok = Tokenizer::from_hf_dir(&fixtures().join("spm-tiny")).unwrap();
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_ids(), &[2]);
    for case in fixture["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let expected = ids(&case["hf_ids"]);
        let ours = tok.encode(text, true).unwrap();
        assert_eq!(ours, expected, "encode({text:?})");
        assert_eq!(
            tok.decode(&ours, true).unwrap(),
            case["hf_decoded"].as_str().unwrap(),
            "decode({text:?})"
        );
    }
}
