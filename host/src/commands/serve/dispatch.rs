//! How requests reach the model: admitted within the server's limits, then, for a model in
//! process, decoded together with the others waiting; for an upstream endpoint, sent on their
//! own, a bounded number at a time.
//!
//! A model in process decodes a batch to its end before the next one starts: requests that
//! arrive meanwhile wait and form the next batch (up to `--max-concurrent` rows, a request
//! taking one row per choice). Every answer is the one the request gets alone: the decoder's
//! answers do not depend on the batch they are in, and a batch that fails as a whole is tried
//! again request by request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::StatusCode;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::api::ApiError;
use crate::bindings::types::{LlmError, Request};
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
    /// A model in process: the requests waiting are decoded as one batch.
    Batched(mpsc::UnboundedSender<Job>),
    /// An upstream endpoint: each request on its own, at most `slots` at a time.
    Direct {
        router: Router,
        slots: Arc<Semaphore>,
    },
}

/// Told `(choice, text so far)` as a request's answer grows (a streamed request's).
pub type Watcher = mpsc::UnboundedSender<(u32, String)>;

/// A request waiting for the batch it will be decoded in.
pub struct Job {
    request: Request,
    watcher: Option<Watcher>,
    reply: oneshot::Sender<Answered>,
}

impl Dispatch {
    /// Batches of at most `rows` rows (a request takes one per choice), decoded one after the
    /// other by a task of their own.
    pub fn batched(router: Router, rows: usize) -> Dispatch {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(decode_batches(router, receiver, rows));
        Dispatch::Batched(sender)
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
        let gone = || {
            let why = "the server is shutting down".to_owned();
            (Err(LlmError::Unavailable(why)), None)
        };
        match self {
            Dispatch::Batched(sender) => {
                let (reply, answer) = oneshot::channel();
                let job = Job {
                    request,
                    watcher,
                    reply,
                };
                if sender.send(job).is_err() {
                    return gone();
                }
                answer.await.unwrap_or_else(|_| gone())
            }
            Dispatch::Direct { router, slots } => {
                let Ok(_slot) = slots.acquire().await else {
                    return gone();
                };
                let mut answers = complete(router, vec![request], vec![watcher]).await;
                answers.pop().unwrap_or_else(gone)
            }
        }
    }
}

/// Decodes the waiting requests batch after batch until every sender is gone.
async fn decode_batches(router: Router, mut waiting: mpsc::UnboundedReceiver<Job>, rows: usize) {
    let mut next: Option<Job> = None;
    loop {
        let first = match next.take() {
            Some(job) => job,
            None => match waiting.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut taken = first.request.sampling.n.max(1) as usize;
        let mut batch = vec![first];
        while let Ok(job) = waiting.try_recv() {
            let wanted = job.request.sampling.n.max(1) as usize;
            if taken + wanted > rows {
                next = Some(job);
                break;
            }
            taken += wanted;
            batch.push(job);
        }
        let mut requests = Vec::with_capacity(batch.len());
        let mut watchers = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for job in batch {
            requests.push(job.request);
            watchers.push(job.watcher);
            replies.push(job.reply);
        }
        let mut answers = complete(&router, requests.clone(), watchers).await;
        // The model takes a batch whole or not at all (a prompt too long for it fails every
        // row): when all failed, each is tried alone, so that one client's request cannot fail
        // the others'.
        if requests.len() > 1 && answers.iter().all(|(answer, _)| answer.is_err()) {
            answers.clear();
            for request in requests {
                answers.extend(router.complete(vec![request]).await);
            }
        }
        for (reply, answer) in replies.into_iter().zip(answers) {
            // A client that has gone no longer waits for its answer.
            let _ = reply.send(answer);
        }
    }
}

/// The answers to `requests`, each request's watcher (if any) told its choices' texts.
async fn complete(
    router: &Router,
    requests: Vec<Request>,
    watchers: Vec<Option<Watcher>>,
) -> Vec<Answered> {
    if watchers.iter().all(Option::is_none) {
        return router.complete(requests).await;
    }
    let progress: Progress = Arc::new(move |request, choice, text| {
        if let Some(Some(watcher)) = watchers.get(request) {
            // A client that has gone no longer reads its stream.
            let _ = watcher.send((choice, text.to_owned()));
        }
    });
    router.complete_observed(requests, progress).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::types::{Completion, Prompt, Role, Sampling, Usage};
    use crate::provider::Provider;
    use futures::future::BoxFuture;
    use std::sync::Mutex;

    /// Answers each request with its prompt once the test lets a batch through (`gate`), and
    /// remembers the size of each batch.
    struct Echo {
        batches: Mutex<Vec<usize>>,
        gate: Semaphore,
    }

    impl Provider for Echo {
        fn identity(&self) -> String {
            "echo".into()
        }

        fn complete(&self, batch: Vec<Request>) -> BoxFuture<'_, Vec<Answer>> {
            Box::pin(async move {
                self.batches.lock().unwrap().push(batch.len());
                self.gate.acquire().await.unwrap().forget();
                batch
                    .into_iter()
                    .map(|r| {
                        let Prompt::Raw(text) = r.prompt else {
                            unreachable!()
                        };
                        Ok(Completion {
                            choices: vec![text],
                            usage: Usage {
                                prompt_tokens: 1,
                                completion_tokens: 1,
                            },
                        })
                    })
                    .collect()
            })
        }
    }

    fn request(text: &str, n: u32) -> Request {
        Request {
            role: Role::Base,
            prompt: Prompt::Raw(text.into()),
            sampling: Sampling {
                temperature: 0.0,
                top_p: 1.0,
                max_tokens: 4,
                n,
                seed: 0,
                stop: Vec::new(),
            },
            json_schema: None,
        }
    }

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

    #[tokio::test]
    async fn requests_waiting_during_a_batch_form_the_next_one_within_its_rows() {
        let echo = Arc::new(Echo {
            batches: Mutex::new(Vec::new()),
            gate: Semaphore::new(0),
        });
        let dispatch = Arc::new(Dispatch::batched(Router::uniform(echo.clone()), 4));
        let send = |text: &'static str, n: u32| {
            let dispatch = dispatch.clone();
            tokio::spawn(async move { dispatch.answer(request(text, n), None).await })
        };
        let first = send("a", 1);
        while echo.batches.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        // Sent while the first batch decodes: 1 + 2 rows fit in 4, the third request's 2 do not.
        let waiting = [send("b", 1), send("c", 2), send("d", 2)];
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        echo.gate.add_permits(3);
        let mut texts = vec![first.await.unwrap().0.unwrap().choices[0].clone()];
        for handle in waiting {
            texts.push(handle.await.unwrap().0.unwrap().choices[0].clone());
        }
        assert_eq!(texts, ["a", "b", "c", "d"]);
        assert_eq!(*echo.batches.lock().unwrap(), [1, 2, 1]);
    }
}
