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

    /// Answers a batch: cache hits first, then as many misses as the budget admits. Once a
    /// budget is spent nothing succeeds any more, hits included, as the contract promises the
    /// strategy.
    pub async fn complete(&self, router: &Router, batch: Vec<Request>) -> Vec<Answer> {
        self.answer(router, batch, self.cache.as_ref()).await
    }

    /// Answers requests the host sends on its own to check the models (the preflight): never
    /// from the cache, which would check nothing, but within the budget and counted in it.
    pub async fn check(&self, router: &Router, batch: Vec<Request>) -> Vec<Answer> {
        self.answer(router, batch, None).await
    }

    async fn answer(
        &self,
        router: &Router,
        batch: Vec<Request>,
        cache: Option<&ResponseCache>,
    ) -> Vec<Answer> {
        if self.meter.exhausted().is_some() {
            self.announce_refusal();
            return batch
                .iter()
                .map(|_| Answer::fresh(Err(LlmError::BudgetExhausted)))
                .collect();
        }
        let mut answers: Vec<Option<Answer>> = vec![None; batch.len()];
        let keys: Vec<cache::Key> = match cache {
            Some(cache) => {
                let keys: Vec<cache::Key> = batch
                    .iter()
                    .map(|request| {
                        cache::key(
                            &router.answer_identity(request.role),
                            &router.shape(request.clone()),
                        )
                    })
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
                    if cache.is_some() && !answer.cache_hit {
                        to_store.push((keys[index], completion));
                    }
                }
            }
            if let Some(cache) = cache
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
        if self.meter.exhausted().is_some() || (router.has_embedder() && self.meter.admit(1) == 0) {
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

#[cfg(test)]
mod tests {
    use crate::testing::chat_request;
    use std::sync::Arc;

    use super::*;
    use crate::bindings::types::{Completion, Prompt, Role, Usage};
    use crate::budget::Budget;
    use crate::cache::{FILE_NAME, Opened};
    use crate::provider::scripted::ScriptedProvider;

    fn request(text: &str) -> Request {
        chat_request(Role::Judge, text)
    }

    fn batch(texts: &[&str]) -> Vec<Request> {
        texts.iter().map(|t| request(t)).collect()
    }

    fn scripted() -> (Router, Arc<std::sync::Mutex<Vec<Request>>>) {
        let provider = ScriptedProvider::new(|request| {
            let Prompt::Chat(messages) = &request.prompt else {
                unreachable!()
            };
            Ok(Completion {
                choices: vec![format!("re: {}", messages[0].content)],
                usage: Usage {
                    prompt_tokens: 10,
                    completion_tokens: 5,
                },
            })
        });
        let seen = provider.requests();
        (Router::uniform(Arc::new(provider)), seen)
    }

    fn meter(max_calls: u64) -> Meter {
        let price = Some(crate::pricing::Price {
            input: 0.0,
            output: 0.0,
        });
        Meter::new(
            Budget {
                max_calls: Some(max_calls),
                ..Budget::default()
            },
            [Role::Base, Role::Metrics, Role::Judge, Role::Optimizer].map(|r| (r, "m", price)),
        )
        .unwrap()
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn the_call_budget_cuts_a_batch_and_refuses_everything_after() {
        let (router, seen) = scripted();
        let gate = Gate::new(meter(3), None);
        let answers = block_on(gate.complete(&router, batch(&["a", "b", "c", "d", "e"])));
        let refused: Vec<bool> = answers
            .iter()
            .map(|a| a.result == Err(LlmError::BudgetExhausted))
            .collect();
        assert_eq!(refused, [false, false, false, true, true]);
        assert_eq!(seen.lock().unwrap().len(), 3);
        let later = block_on(gate.complete(&router, batch(&["f"])));
        assert_eq!(later[0].result, Err(LlmError::BudgetExhausted));
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[test]
    fn cache_hits_are_free_and_marked_until_a_budget_is_spent() {
        let dir = tempfile::tempdir().unwrap();
        let (Opened::Ready(cache), _) = ResponseCache::open(&dir.path().join(FILE_NAME)) else {
            panic!("opens")
        };
        let (router, seen) = scripted();
        let gate = Gate::new(meter(3), Some(cache));
        let first = block_on(gate.complete(&router, batch(&["a", "b"])));
        assert!(first.iter().all(|a| a.result.is_ok() && !a.cache_hit));
        let again = block_on(gate.complete(&router, batch(&["a", "b", "c"])));
        assert_eq!(
            again.iter().map(|a| a.cache_hit).collect::<Vec<_>>(),
            [true, true, false]
        );
        let hit = again[0].result.as_ref().unwrap();
        assert_eq!(hit.choices, ["re: a"]);
        assert_eq!(
            (hit.usage.prompt_tokens, hit.usage.completion_tokens),
            (0, 0)
        );
        assert_eq!(seen.lock().unwrap().len(), 3, "hits cost no call");
        // The budget is spent now: even a cached answer is refused.
        let spent = block_on(gate.complete(&router, batch(&["a"])));
        assert_eq!(spent[0].result, Err(LlmError::BudgetExhausted));
    }
}
