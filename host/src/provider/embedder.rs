//! A sentence encoder in process: `local:DIR` for the embedding model names a
//! sentence-transformers directory (e.g. all-MiniLM-L6-v2, fetched by `scripts/fetch-minilm.sh`),
//! run by `drpo-models` on the CPU. It serves `embed` only.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use drpo_models::bert::SentenceEncoder;
use futures::future::BoxFuture;

use super::Embedder;
use crate::bindings::types::LlmError;

/// An embedding model run in this process. Its files are checked when the run starts; the
/// weights are loaded on the first `embed`, so a strategy that never embeds pays nothing.
pub struct LocalEmbedder {
    dir: PathBuf,
    /// The encoder, or why it could not be loaded; set by the first `embed`.
    encoder: Arc<OnceLock<Result<Arc<SentenceEncoder>, String>>>,
}

impl LocalEmbedder {
    /// The encoder in `dir`, whose files must all be there.
    pub fn load(dir: &Path) -> anyhow::Result<LocalEmbedder> {
        SentenceEncoder::check_files(dir).map_err(|e| {
            anyhow::anyhow!("cannot load the embedding model {}: {e}", dir.display())
        })?;
        Ok(LocalEmbedder {
            dir: dir.to_owned(),
            encoder: Arc::new(OnceLock::new()),
        })
    }
}

impl Embedder for LocalEmbedder {
    fn identity(&self) -> String {
        format!("local embedder {}", self.dir.display())
    }

    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, LlmError>> {
        let (encoder, dir) = (self.encoder.clone(), self.dir.clone());
        Box::pin(async move {
            let embed = move || {
                let loaded = encoder.get_or_init(|| {
                    SentenceEncoder::load(&dir)
                        .map(Arc::new)
                        .map_err(|e| format!("cannot load {}: {e}", dir.display()))
                });
                match loaded {
                    Ok(encoder) => encoder.embed(&texts).map_err(|e| e.to_string()),
                    Err(why) => Err(why.clone()),
                }
            };
            match tokio::task::spawn_blocking(embed).await {
                Ok(Ok(vectors)) => Ok(vectors),
                Ok(Err(e)) => Err(LlmError::Unavailable(format!("local embedder: {e}"))),
                Err(panic) => Err(LlmError::Unavailable(format!(
                    "local embedder failed: {panic}"
                ))),
            }
        })
    }
}
