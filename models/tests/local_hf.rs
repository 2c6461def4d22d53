//! `LocalModel` on a Hugging Face directory: a random tiny Llama with a small SentencePiece-style
//! `tokenizer.json` and a `tokenizer_config.json` carrying the chat template and special tokens.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use drpo_models::chat::ChatMessage;
use drpo_models::gguf::MetaValue;
use drpo_models::hf::{self, StoreDtype};
use drpo_models::tokenizer::Tokenizer;
use drpo_models::{GenerationRequest, LlamaConfig, LocalModel, ModelError, PromptInput};

fn model_dir(name: &str, with_tokenizer: bool) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("drpo-local-hf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = LlamaConfig::preset("tiny-llama").unwrap();
    hf::write_random(&config, &dir, 21, StoreDtype::F32, usize::MAX).unwrap();
    if with_tokenizer {
        write_tokenizer(&dir);
    }
    dir
}

/// A 300-odd-token SentencePiece-style vocabulary, one user-defined token past the model's
/// 512 embeddings.
fn write_tokenizer(dir: &Path) {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    let pieces = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "ll", "▁he", "llo", "▁hello", "▁w", "or",
        "▁wor", "ld", "▁world",
    ];
    tokens.extend(pieces.iter().map(|p| p.to_string()));
    let mut types = vec![2, 3, 3];
    types.extend(std::iter::repeat_n(6, 256));
    types.extend(std::iter::repeat_n(1, pieces.len()));
    while tokens.len() < 600 {
        tokens.push(format!("<filler{}>", tokens.len()));
        types.push(5);
    }
    tokens.push("<extra>".into());
    types.push(4);
    let scores = (0..tokens.len())
        .map(|i| MetaValue::F32(-(i as f32)))
        .collect();
    let meta: BTreeMap<String, MetaValue> = [
        ("tokenizer.ggml.model", MetaValue::String("llama".into())),
        (
            "tokenizer.ggml.tokens",
            MetaValue::Array(tokens.into_iter().map(MetaValue::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            MetaValue::Array(types.into_iter().map(MetaValue::I32).collect()),
        ),
        ("tokenizer.ggml.scores", MetaValue::Array(scores)),
        ("tokenizer.ggml.unknown_token_id", MetaValue::U32(0)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let tok = Tokenizer::from_gguf_metadata(&meta, Path::new("synthetic")).unwrap();
    tok.inner().save(dir.join("tokenizer.json"), false).unwrap();
    let config = serde_json::json!({
        "bos_token": "<s>",
        "eos_token": "</s>",
        "add_bos_token": true,
        "chat_template": "{% for m in messages %}{{ bos_token if loop.first }}[{{ m.role }}] \
                          {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}[assistant]\
                          {% endif %}",
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
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
