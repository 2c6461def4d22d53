//! What every live model request passes on its way to a provider: the response cache, then
//! the budget. A request past a size limit is answered `rejected`; a cached answer is returned
//! at no cost; a request a spent budget forbids, or whose worst case the budget cannot cover, is
//! answered `budget-exhausted`; the rest go to the router, and what they spent is counted. Those
//! still unanswered when the time budget runs out are answered `budget-exhausted` too.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::bindings::types::{LlmError, Request};
use crate::budget::{Meter, Worst};
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
        let budget = self.meter.budget();
        let mut answers: Vec<Option<Answer>> = batch
            .iter()
            .enumerate()
            .map(|(position, request)| {
                budget
                    .refuse(request, position, batch.len())
                    .map(|refusal| Answer::fresh(Err(refusal)))
            })
            .collect();
        let open: Vec<usize> = (0..batch.len()).filter(|&i| answers[i].is_none()).collect();
        if self.meter.exhausted().is_some() {
            if !open.is_empty() {
                self.announce_refusal();
            }
            for index in open {
                answers[index] = Some(Answer::fresh(Err(LlmError::BudgetExhausted)));
            }
            return finished(answers);
        }
        let mut keys: Vec<Option<cache::Key>> = vec![None; batch.len()];
        if let Some(cache) = cache {
            for &index in &open {
                let request = &batch[index];
                keys[index] = Some(cache::key(
                    &router.answer_identity(request.role),
                    &router.shape(request.clone()),
                ));
            }
            let looked_up: Vec<cache::Key> = open.iter().filter_map(|&i| keys[i]).collect();
            for (&index, hit) in open.iter().zip(cache.get(&looked_up)) {
                answers[index] = hit.map(|completion| Answer {
                    result: Ok(completion),
                    cache_hit: true,
                });
            }
        }
        let misses: Vec<usize> = open.into_iter().filter(|&i| answers[i].is_none()).collect();
        let worst: Vec<Worst> = misses
            .iter()
            .map(|&i| self.meter.worst_case(&batch[i]))
            .collect();
        let admitted = self.meter.admit(&worst);
        if admitted < misses.len() {
            self.announce_refusal();
        }
        for &index in &misses[admitted..] {
            answers[index] = Some(Answer::fresh(Err(LlmError::BudgetExhausted)));
        }
        let sent = &misses[..admitted];
        if sent.is_empty() {
            return finished(answers);
        }
        let requests: Vec<Request> = sent.iter().map(|&i| batch[i].clone()).collect();
        let fresh = match self.within_time(router.complete(requests)).await {
            Some(fresh) => fresh,
            None => {
                self.announce_refusal();
                vec![Answer::fresh(Err(LlmError::BudgetExhausted)); sent.len()]
            }
        };
        let mut to_store = Vec::new();
        for ((&index, answer), worst) in sent.iter().zip(&fresh).zip(&worst) {
            let completion = answer.result.as_ref().ok();
            self.meter
                .settle(worst, batch[index].role, completion.map(|c| &c.usage));
            if let (Some(completion), Some(key)) = (completion, keys[index])
                && !answer.cache_hit
            {
                to_store.push((key, completion));
            }
        }
        if let Some(cache) = cache
            && let Err(error) = cache.put(&to_store)
        {
            // The answers are good and recorded in the run log; only the cache missed out.
            eprintln!("warning: {error:#}");
        }
        for (&index, answer) in sent.iter().zip(fresh) {
            answers[index] = Some(answer);
        }
        finished(answers)
    }

    /// Embeds texts, unless a budget is spent (an embedding request counts as one call; with
    /// no embedding model there is no request, and the router says so).
    pub async fn embed(
        &self,
        router: &Router,
        texts: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, LlmError> {
        if self.meter.exhausted().is_some()
            || (router.has_embedder() && self.meter.admit(&[Worst::default()]) == 0)
        {
            self.announce_refusal();
            return Err(LlmError::BudgetExhausted);
        }
        match self.within_time(router.embed(texts)).await {
            Some(result) => result,
            None => {
                self.announce_refusal();
                Err(LlmError::BudgetExhausted)
            }
        }
    }

    /// `work`, unless the time budget runs out first (`None`): then `work` is dropped, and with
    /// it the requests in flight and the retries pending, so a server that never answers cannot
    /// hold the run past its time budget.
    async fn within_time<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        match self.meter.time_left() {
            Some(left) => tokio::time::timeout(left, work).await.ok(),
            None => Some(work.await),
        }
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

fn finished(answers: Vec<Option<Answer>>) -> Vec<Answer> {
    answers
        .into_iter()
        .map(|answer| answer.expect("every request is answered above"))
        .collect()
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

    fn meter_of(budget: Budget) -> Meter {
        let price = Some(crate::pricing::Price {
            input: 1.0,
            output: 1.0,
        });
        Meter::new(
            budget,
            [Role::Base, Role::Metrics, Role::Judge, Role::Optimizer].map(|r| (r, "m", price)),
        )
        .unwrap()
    }

    #[test]
    fn requests_past_a_limit_are_rejected_and_those_the_budget_cannot_cover_are_not_sent() {
        let (router, seen) = scripted();
        let gate = Gate::new(
            meter_of(Budget {
                max_tokens: Some(1000),
                max_choices: 4,
                max_batch: 3,
                ..Budget::default()
            }),
            None,
        );
        let mut asks = batch(&["small", "too many choices", "too long", "past the batch"]);
        asks[1].sampling.n = 5;
        asks[2].sampling.n = 4;
        asks[2].sampling.max_tokens = 300;
        let answers = block_on(gate.complete(&router, asks));
        assert!(answers[0].result.is_ok());
        let rejected = |i: usize, flag: &str| matches!(&answers[i].result, Err(LlmError::Rejected(why)) if why.contains(flag));
        assert!(rejected(1, "--max-choices"), "{:?}", answers[1]);
        assert!(rejected(3, "--max-batch"), "{:?}", answers[3]);
        // 4 × 300 completion tokens may not fit in the 985 left: refused, never sent.
        assert_eq!(answers[2].result, Err(LlmError::BudgetExhausted));
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert!(
            gate.meter
                .exhausted()
                .unwrap()
                .contains("--max-tokens 1000")
        );
    }

    /// A provider whose answers never come.
    struct Hung;

    impl crate::provider::Provider for Hung {
        fn identity(&self) -> String {
            "hung".into()
        }

        fn complete(&self, _: Vec<Request>) -> futures::future::BoxFuture<'_, Vec<Answer>> {
            Box::pin(futures::future::pending())
        }
    }

    #[test]
    fn the_time_budget_answers_requests_a_provider_never_answers() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let router = Router::uniform(Arc::new(Hung));
            let gate = Gate::new(
                meter_of(Budget {
                    max_time: Some(std::time::Duration::from_secs(5)),
                    ..Budget::default()
                }),
                None,
            );
            let started = tokio::time::Instant::now();
            // Paused time: the hour passes at once if the gate waits on the provider for good.
            let answers = tokio::time::timeout(
                std::time::Duration::from_secs(3600),
                gate.complete(&router, batch(&["a", "b"])),
            )
            .await
            .expect("the gate answers without the provider");
            assert!(
                answers
                    .iter()
                    .all(|a| a.result == Err(LlmError::BudgetExhausted))
            );
            // The paused clock moved exactly to the budget's end.
            assert_eq!(started.elapsed(), std::time::Duration::from_secs(5));
            assert!(gate.meter.exhausted().unwrap().contains("--max-time"));
        });
    }
}
