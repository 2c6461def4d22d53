//! A sentence encoder in process: `local:DIR` for the embedding model names a
//! sentence-transformers directory (e.g. all-MiniLM-L6-v2, fetched by `scripts/fetch-minilm.sh`),
//! run by `drpo-models` on the CPU. It serves `embed` only.

use std::path::Path;
use std::sync::Arc;

use drpo_models::bert::SentenceEncoder;
use futures::future::BoxFuture;

use super::{Answer, Provider};
use crate::bindings::types::{LlmError, Request};

/// An embedding model loaded in this process.
pub struct LocalEmbedder {
    encoder: Arc<SentenceEncoder>,
    path: String,
}

impl LocalEmbedder {
    /// Loads the encoder in `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<LocalEmbedder> {
        let encoder = SentenceEncoder::load(dir).map_err(|e| {
            anyhow::anyhow!("cannot load the embedding model {}: {e}", dir.display())
        })?;
        Ok(LocalEmbedder {
            encoder: Arc::new(encoder),
            path: dir.display().to_string(),
        })
    }
}

impl Provider for LocalEmbedder {
    fn identity(&self) -> String {
        format!("local embedder {}", self.path)
    }

    fn complete(&self, batch: Vec<Request>) -> BoxFuture<'_, Vec<Answer>> {
        let why = format!(
            "{} is an embedding model; it answers no completions",
            self.path
        );
        Box::pin(async move {
            batch
                .iter()
                .map(|_| Answer::fresh(Err(LlmError::Unavailable(why.clone()))))
                .collect()
        })
    }

    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, LlmError>> {
        let encoder = self.encoder.clone();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || encoder.embed(&texts)).await {
                Ok(Ok(vectors)) => Ok(vectors),
                Ok(Err(e)) => Err(LlmError::Unavailable(format!("local embedder: {e}"))),
                Err(panic) => Err(LlmError::Unavailable(format!(
                    "local embedder failed: {panic}"
                ))),
            }
        })
    }
}
