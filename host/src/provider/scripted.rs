//! An in-process provider whose answers come from a function: for tests and benchmarks that
//! exercise the runtime without a model.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, join_all};

use super::{Answer, Provider};
use crate::bindings::types::{Completion, LlmError, Request};

type Script = dyn Fn(&Request) -> Result<Completion, LlmError> + Send + Sync;

/// Answers each request with a function of the request, optionally after a fixed latency, and
/// keeps every request it was asked.
pub struct ScriptedProvider {
    script: Box<Script>,
    latency: Duration,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl ScriptedProvider {
    /// A provider answering with `script`.
    pub fn new(
        script: impl Fn(&Request) -> Result<Completion, LlmError> + Send + Sync + 'static,
    ) -> ScriptedProvider {
        ScriptedProvider {
            script: Box::new(script),
            latency: Duration::ZERO,
            seen: Arc::default(),
        }
    }

    /// Adds a fixed latency to every request (requests of a batch wait concurrently).
    pub fn with_latency(mut self, latency: Duration) -> ScriptedProvider {
        self.latency = latency;
        self
    }

    /// Every request answered so far, in order of arrival.
    pub fn requests(&self) -> Arc<Mutex<Vec<Request>>> {
        self.seen.clone()
    }
}

impl Provider for ScriptedProvider {
    fn identity(&self) -> String {
        "scripted (in-process)".into()
    }

    fn complete(&self, batch: Vec<Request>) -> BoxFuture<'_, Vec<Answer>> {
        Box::pin(async move {
            self.seen
                .lock()
                .expect("request list")
                .extend(batch.iter().cloned());
            join_all(batch.iter().map(|request| async move {
                if !self.latency.is_zero() {
                    tokio::time::sleep(self.latency).await;
                }
                (self.script)(request)
            }))
            .await
        })
    }
}
