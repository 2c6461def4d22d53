//! `LocalModel` on a Hugging Face directory: a random tiny Llama with a small SentencePiece-style
//! `tokenizer.json` and a `tokenizer_config.json` carrying the chat template and special tokens.

use std::path::PathBuf;

use drpo_models::chat::ChatMessage;
use drpo_models::load::hf::{self, StoreDtype};
use drpo_models::{GenerationRequest, LlamaConfig, LocalModel, ModelError, PromptInput};

fn model_dir(name: &str, with_tokenizer: bool) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("drpo-local-hf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = LlamaConfig::preset("tiny-llama").unwrap();
    hf::write_random(&config, &dir, 21, StoreDtype::F32, usize::MAX).unwrap();
    if with_tokenizer {
        // One user-defined token (`<extra>`) past the model's 512 embeddings.
        hf::write_small_tokenizer(&dir, 601).unwrap();
    }
    dir
}

#[test]
fn a_hugging_face_directory_generates() {
    let dir = model_dir("ok", true);
    let model = LocalModel::load(&dir).unwrap();
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        model.identity().starts_with(&format!("{name}@sha256:")),
        "{}",
        model.identity()
    );

    let tok = model.tokenizer();
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_ids(), &[2]);
    let raw = PromptInput::Raw("hello world".into());
    let ids = model.prompt_ids(&raw).unwrap();
    let id = |t: &str| tok.token_to_id(t).unwrap();
    assert_eq!(ids, vec![1, id("▁hello"), id("▁world")]);

    let chat = PromptInput::Chat(vec![
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "hello"),
    ]);
    assert_eq!(
        model.render(&chat).unwrap(),
        "<s>[system] Be brief.\n[user] hello\n[assistant]"
    );

    let requests = vec![
        GenerationRequest::greedy(raw.clone(), 6),
        GenerationRequest::greedy(chat, 4),
    ];
    let together = model.generate(&requests).unwrap();
    for (req, out) in requests.iter().zip(&together) {
        assert_eq!(model.generate(std::slice::from_ref(req)).unwrap()[0], *out);
        assert!(out.completion_tokens >= 1 && out.completion_tokens <= req.max_tokens);
    }
    assert_eq!(together[0].prompt_tokens, 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tokenizer_larger_than_the_model_is_a_clear_error() {
    let dir = model_dir("big-vocab", true);
    let model = LocalModel::load(&dir).unwrap();
    let err = model
        .generate(&[GenerationRequest::greedy(
            PromptInput::Raw("<extra>".into()),
            2,
        )])
        .unwrap_err();
    assert!(err.to_string().contains("embeddings"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_files_are_clear_errors() {
    let dir = model_dir("no-tokenizer", false);
    let err = LocalModel::load(&dir).unwrap_err();
    assert!(matches!(err, ModelError::Format { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let err = LocalModel::load(&dir).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
    let err = LocalModel::load(&dir.join("absent.gguf")).unwrap_err();
    assert!(err.to_string().contains("absent.gguf"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A SentencePiece tokenizer (as Llama 2's and Mistral's) puts a `▁` before the text it encodes:
/// llguidance forced that space before the `{` of every answer under a schema, and decoding
/// failed at the first token. The tokens forced now spell exactly the bytes the grammar forces.
#[cfg(feature = "structured")]
#[test]
fn schema_constrained_answers_parse_with_a_sentencepiece_tokenizer() {
    let dir = model_dir("schema", true);
    let model = LocalModel::load(&dir).unwrap();
    let schema = r#"{"type": "object", "properties": {"score": {"type": "integer"},
        "why": {"type": "string", "maxLength": 12}}, "required": ["score", "why"]}"#;
    let requests: Vec<GenerationRequest> = ["hello world", "hello"]
        .iter()
        .map(|text| GenerationRequest {
            json_schema: Some(schema.into()),
            ..GenerationRequest::greedy(
                PromptInput::Chat(vec![ChatMessage::new("user", *text)]),
                40,
            )
        })
        .collect();
    for out in model.generate(&requests).unwrap() {
        let text = &out.choices[0];
        let value: serde_json::Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("constrained answer {text:?} does not parse: {e}"));
        assert!(value["score"].is_i64(), "{text}");
        assert!(value["why"].is_string(), "{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
