//! What every live model request passes on its way to a provider: the response cache, then
//! the budget. A cached answer is returned at no cost; a request a spent budget forbids is
//! answered `budget-exhausted`; the rest go to the router, and what they spent is counted.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::bindings::types::{LlmError, Request};
use crate::budget::Meter;
use crate::cache::{self, ResponseCache};
use crate::provider::{Answer, Router};

/// The cache and the budget of a run.
#[derive(Default)]
pub struct Gate {
    meter: Meter,
    cache: Option<ResponseCache>,
    /// The first refusal is announced on stderr; later ones only in the run's logs.
    refusal_announced: AtomicBool,
}

impl Gate {
    /// A gate enforcing `meter`, answering from `cache` when there is one.
    pub fn new(meter: Meter, cache: Option<ResponseCache>) -> Gate {
        Gate {
            meter,
            cache,
            refusal_announced: AtomicBool::new(false),
        }
    }

    /// The budget meter (a resumed run counts its recorded calls into it).
    pub fn meter_mut(&mut self) -> &mut Meter {
        &mut self.meter
    }

    /// Answers a batch: cache hits first, then as many misses as the budget admits.
    pub async fn complete(&self, router: &Router, batch: Vec<Request>) -> Vec<Answer> {
        let mut answers: Vec<Option<Answer>> = vec![None; batch.len()];
        let keys: Vec<cache::Key> = match &self.cache {
            Some(cache) => {
                let keys: Vec<cache::Key> = batch
                    .iter()
                    .map(|request| cache::key(&router.provider(request.role).identity(), request))
                    .collect();
                for (slot, hit) in answers.iter_mut().zip(cache.get(&keys)) {
                    *slot = hit.map(|completion| Answer {
                        result: Ok(completion),
                        cache_hit: true,
                    });
                }
                keys
            }
            None => Vec::new(),
        };
        let misses: Vec<usize> = (0..batch.len()).filter(|&i| answers[i].is_none()).collect();
        let admitted = self.meter.admit(misses.len());
        if admitted < misses.len() {
            self.announce_refusal();
        }
        for &index in &misses[admitted..] {
            answers[index] = Some(Answer::fresh(Err(LlmError::BudgetExhausted)));
        }
        let sent: Vec<usize> = misses[..admitted].to_vec();
        if !sent.is_empty() {
            let requests: Vec<Request> = sent.iter().map(|&i| batch[i].clone()).collect();
            let fresh = router.complete(requests).await;
            let mut to_store = Vec::new();
            for (&index, answer) in sent.iter().zip(&fresh) {
                if let Ok(completion) = &answer.result {
                    self.meter.charge(batch[index].role, &completion.usage);
                    if self.cache.is_some() && !answer.cache_hit {
                        to_store.push((keys[index], completion));
                    }
                }
            }
            if let Some(cache) = &self.cache
                && let Err(error) = cache.put(&to_store)
            {
                // The answers are good and recorded in the run log; only the cache missed out.
                eprintln!("warning: {error:#}");
            }
            for (index, answer) in sent.into_iter().zip(fresh) {
                answers[index] = Some(answer);
            }
        }
        answers
            .into_iter()
            .map(|answer| answer.expect("every request is answered above"))
            .collect()
    }

    /// Embeds texts, unless a budget is spent (an embedding request counts as one call; with
    /// no embedding model there is no request, and the router says so).
    pub async fn embed(
        &self,
        router: &Router,
        texts: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, LlmError> {
        if router.has_embedder() && self.meter.admit(1) == 0 {
            self.announce_refusal();
            return Err(LlmError::BudgetExhausted);
        }
        router.embed(texts).await
    }

    fn announce_refusal(&self) {
        if !self.refusal_announced.swap(true, Ordering::SeqCst) {
            let reason = self
                .meter
                .exhausted()
                .unwrap_or_else(|| "a budget is spent".into());
            eprintln!(
                "budget: {reason}; further requests are refused and the strategy ends with its best result so far"
            );
        }
    }
}
