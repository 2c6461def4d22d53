//! How requests reach the model: admitted within the server's limits, then, for a model in
//! process, decoded together with the others; for an upstream endpoint, sent on their own, a
//! bounded number at a time.
//!
//! A model in process batches continuously: a request joins the batch being decoded at its
//! next step, while it has fewer than `--max-concurrent` rows (a request takes one row per
//! choice), and leaves it with its answer as soon as its choices are done. Every answer is the
//! one the request gets alone: the decoder's answers do not depend on the batch they are in,
//! and a request the model cannot take is refused on its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::StatusCode;
use drpo_models::ChoiceObserver;
use tokio::sync::{Semaphore, mpsc};

use super::api::ApiError;
use crate::bindings::types::{LlmError, Request, Role};
use crate::provider::local::Continuous;
use crate::provider::{Answer, Evidence, Progress, Router};

/// The answer to one request, with what its server said about it.
pub type Answered = (Answer, Option<Evidence>);

/// Counts the requests in the server (answered or waiting) against its limits.
pub struct Admission {
    inside: AtomicUsize,
    concurrent: usize,
    queue: usize,
}

/// A request's place in the server, given back when dropped.
pub struct Ticket(Arc<Admission>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.inside.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Admission {
    /// Room for `concurrent` requests answered and `queue` more waiting.
    pub fn new(concurrent: usize, queue: usize) -> Arc<Admission> {
        Arc::new(Admission {
            inside: AtomicUsize::new(0),
            concurrent,
            queue,
        })
    }

    /// A place for one more request, or a 429 that says which limits are reached.
    pub fn admit(self: &Arc<Self>) -> Result<Ticket, ApiError> {
        let limit = self.concurrent + self.queue;
        let admitted = self
            .inside
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |inside| {
                (inside < limit).then_some(inside + 1)
            });
        match admitted {
            Ok(_) => Ok(Ticket(self.clone())),
            Err(_) => Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!(
                    "the server is full: {} requests answered at once (--max-concurrent) and {} \
                     waiting (--max-queue) are its limits; retry shortly",
                    self.concurrent, self.queue
                ),
            )
            .with_code("server_full")),
        }
    }
}

/// Sends admitted requests to the model.
pub enum Dispatch {
    /// A model in process: each request joins the batch it is decoding.
    Continuous { router: Router, batch: Continuous },
    /// An upstream endpoint: each request on its own, at most `slots` at a time.
    Direct {
        router: Router,
        slots: Arc<Semaphore>,
    },
}

/// Told `(choice, text so far)` as a request's answer grows (a streamed request's).
pub type Watcher = mpsc::UnboundedSender<(u32, String)>;

impl Dispatch {
    /// Requests joining the batch `router`'s base model decodes, up to `rows` rows at once;
    /// `None` when that model is not one that decodes batches in process.
    pub fn continuous(router: Router, rows: usize) -> Option<Dispatch> {
        let batch = router.provider(Role::Base).continuous(rows)?;
        Some(Dispatch::Continuous { router, batch })
    }

    /// At most `concurrent` requests sent at a time.
    pub fn direct(router: Router, concurrent: usize) -> Dispatch {
        Dispatch::Direct {
            router,
            slots: Arc::new(Semaphore::new(concurrent)),
        }
    }

    /// The model's answer to `request`; `watcher`, if given, is told its text as it grows
    /// (by a model in process).
    pub async fn answer(&self, request: Request, watcher: Option<Watcher>) -> Answered {
        match self {
            Dispatch::Continuous { router, batch } => {
                let observer = watcher.map(|watcher| -> ChoiceObserver {
                    Arc::new(move |choice, text: &str| {
                        // A client that has gone no longer reads its stream.
                        let _ = watcher.send((choice, text.to_owned()));
                    })
                });
                (batch.answer(&router.shape(request), observer).await, None)
            }
            Dispatch::Direct { router, slots } => {
                let Ok(_slot) = slots.acquire().await else {
                    let why = "the server is shutting down".to_owned();
                    return (Err(LlmError::Unavailable(why)), None);
                };
                let answers = match watcher {
                    None => router.complete(vec![request]).await,
                    Some(watcher) => {
                        let progress: Progress = Arc::new(move |_, choice, text| {
                            let _ = watcher.send((choice, text.to_owned()));
                        });
                        router.complete_observed(vec![request], progress).await
                    }
                };
                answers.into_iter().next().unwrap_or_else(|| {
                    let missing = "the model returned no answer".to_owned();
                    (Err(LlmError::Unavailable(missing)), None)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_refuses_past_concurrent_plus_queue_and_frees_a_place_on_drop() {
        let admission = Admission::new(2, 1);
        let tickets: Vec<Ticket> = (0..3).map(|_| admission.admit().unwrap()).collect();
        let refused = admission.admit().err().unwrap();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(
            refused.message.contains("--max-concurrent") && refused.message.contains("--max-queue")
        );
        drop(tickets);
        assert!(admission.admit().is_ok());
    }
}
