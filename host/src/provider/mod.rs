//! Providers execute model requests; the [`Router`] sends each request to its role's provider.
//!
//! A provider is anything that implements [`Provider`]: the OpenAI-compatible HTTP client
//! ([`openai`]), an in-process local model, or the [`scripted`] provider that tests use. The
//! runtime only sees the router, so new providers slot in without touching it.

pub mod embedder;
pub mod local;
pub mod openai;
pub mod rate;
pub mod scripted;

use std::sync::Arc;

use futures::future::{BoxFuture, join_all};

use crate::bindings::types::{Completion, LlmError, Request, Role};

/// The answer to one request of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub result: Result<Completion, LlmError>,
    /// The cache answered (nothing was billed).
    pub cache_hit: bool,
}

impl Answer {
    /// A freshly computed answer.
    pub fn fresh(result: Result<Completion, LlmError>) -> Answer {
        Answer {
            result,
            cache_hit: false,
        }
    }
}

/// Executes model requests.
pub trait Provider: Send + Sync {
    /// Identifies the model and where it runs (endpoint URL and model name, or a local file and
    /// its hash), for the run log header. Never contains a secret.
    fn identity(&self) -> String;

    /// Answers a batch, in order. Requests are independent; a provider may run them
    /// concurrently or decode them together.
    fn complete(&self, batch: Vec<Request>) -> BoxFuture<'_, Vec<Answer>>;

    /// Embeds texts (L2-normalised vectors, in order).
    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, LlmError>> {
        let _ = texts;
        Box::pin(async {
            Err(LlmError::Unavailable(
                "this provider does not serve embeddings".into(),
            ))
        })
    }
}

/// Which provider serves each role, and which serves embeddings.
#[derive(Clone)]
pub struct Router {
    base: Arc<dyn Provider>,
    metrics: Arc<dyn Provider>,
    judge: Arc<dyn Provider>,
    optimizer: Arc<dyn Provider>,
    embedder: Option<Arc<dyn Provider>>,
}

impl Router {
    /// One provider per role; `embedder` serves `embed` (none: `embed` reports that no
    /// embedding model is configured, and strategies fall back to fixed examples).
    pub fn new(
        base: Arc<dyn Provider>,
        metrics: Arc<dyn Provider>,
        judge: Arc<dyn Provider>,
        optimizer: Arc<dyn Provider>,
        embedder: Option<Arc<dyn Provider>>,
    ) -> Router {
        Router {
            base,
            metrics,
            judge,
            optimizer,
            embedder,
        }
    }

    /// The same provider for every role.
    pub fn uniform(provider: Arc<dyn Provider>) -> Router {
        Router::new(
            provider.clone(),
            provider.clone(),
            provider.clone(),
            provider,
            None,
        )
    }

    /// The provider serving `role`.
    pub fn provider(&self, role: Role) -> &Arc<dyn Provider> {
        match role {
            Role::Base => &self.base,
            Role::Metrics => &self.metrics,
            Role::Judge => &self.judge,
            Role::Optimizer => &self.optimizer,
        }
    }

    /// Answers a mixed batch: each provider gets its share as one sub-batch (so a model that
    /// serves several roles decodes them together), all providers concurrently, and the answers
    /// come back in the batch's order.
    pub async fn complete(&self, batch: Vec<Request>) -> Vec<Answer> {
        let total = batch.len();
        // (provider, positions in the batch, its requests)
        type Group<'a> = (&'a Arc<dyn Provider>, Vec<usize>, Vec<Request>);
        let mut groups: Vec<Group> = Vec::new();
        for (index, request) in batch.into_iter().enumerate() {
            let provider = self.provider(request.role);
            match groups.iter_mut().find(|(p, _, _)| Arc::ptr_eq(p, provider)) {
                Some((_, indices, requests)) => {
                    indices.push(index);
                    requests.push(request);
                }
                None => groups.push((provider, vec![index], vec![request])),
            }
        }
        let mut calls = Vec::with_capacity(groups.len());
        let mut placements = Vec::with_capacity(groups.len());
        for (provider, indices, requests) in groups {
            calls.push(provider.complete(requests));
            placements.push(indices);
        }
        let mut answers: Vec<Option<Answer>> = vec![None; total];
        for (indices, group_answers) in placements.into_iter().zip(join_all(calls).await) {
            for (index, answer) in indices.into_iter().zip(group_answers) {
                answers[index] = Some(answer);
            }
        }
        answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| {
                    Answer::fresh(Err(LlmError::Unavailable(
                        "the provider returned fewer answers than requests".into(),
                    )))
                })
            })
            .collect()
    }

    /// Whether an embedding model is configured.
    pub fn has_embedder(&self) -> bool {
        self.embedder.is_some()
    }

    /// Embeds texts with the configured embedder.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, LlmError> {
        match &self.embedder {
            Some(embedder) => embedder.embed(texts).await,
            None => Err(LlmError::Unavailable(
                "no embedding model is configured for this run".into(),
            )),
        }
    }
}
