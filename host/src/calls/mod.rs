//! How a live call of a plugin is answered: the one pipeline every model request passes on its
//! way to a provider, in order — the plugin's grant (`grants`), the size limits and budgets
//! (`budget`), the response cache (`cache`), then the [`Router`] and its providers.
//!
//! A batch is split once, into a `Batch` whose slots the stages fill: a request outside the
//! grant is answered `rejected` or `budget-exhausted`; one past a size limit `rejected`; a cached
//! answer comes back at no cost, flagged as a hit; a request a spent budget forbids, or whose
//! worst case the budget cannot cover, is answered `budget-exhausted`; the rest go to the router
//! together, and what they spent is counted. Those still unanswered when the time budget runs out
//! are answered `budget-exhausted` too. The runtime sees none of this: it hands live calls to
//! [`Calls`] through [`crate::runtime::Live`].

pub mod budget;
pub mod cache;
pub mod grants;
pub mod preflight;

use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;

pub use ::drpo::data::TrainingData;

use crate::bindings::types::{Example, LlmError, Query, Request};
use crate::provider::{Answer, Evidence, Router};
use crate::runlog::{CallRecord, Preflight, billed_calls};
use crate::runtime::{Answered, Live};
use budget::{Meter, Worst};
use cache::ResponseCache;
use grants::Grants;

/// Everything that answers a run's live calls: the pipeline's stages and the run's data.
pub struct Calls {
    grants: Grants,
    meter: Meter,
    cache: Option<ResponseCache>,
    router: Router,
    /// What answers `queries` and `examples`.
    data: RunData,
    /// The first budget refusal is announced on stderr; later ones only in the run's logs.
    refusal_announced: AtomicBool,
}

/// The run's data: what answers the `queries` and `examples` imports.
#[derive(Default)]
pub struct RunData {
    /// The training queries, drawn from per `queries` call.
    pub training: TrainingData<Query>,
    /// The seed of the published draw (the run's seed).
    pub seed: u64,
    /// The pool of in-context examples.
    pub examples: Vec<Example>,
}

/// One batch on its way through the stages: each request's answer once a stage gives one.
struct Batch {
    requests: Vec<Request>,
    answers: Vec<Option<Answer>>,
    cache_hits: Vec<bool>,
    evidence: Vec<Option<Evidence>>,
}

impl Batch {
    fn new(requests: Vec<Request>) -> Batch {
        let size = requests.len();
        Batch {
            requests,
            answers: vec![None; size],
            cache_hits: vec![false; size],
            evidence: vec![None; size],
        }
    }

    /// The positions of the requests no stage has answered yet.
    fn open(&self) -> Vec<usize> {
        (0..self.requests.len())
            .filter(|&i| self.answers[i].is_none())
            .collect()
    }

    /// The answers in the batch's order, which the cache gave, and what servers said.
    fn finish(self) -> Answered {
        let answers = self
            .answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| {
                    Err(LlmError::Unavailable(
                        "the router returned no answer".to_owned(),
                    ))
                })
            })
            .collect();
        Answered {
            answers,
            cache_hits: self.cache_hits,
            evidence: self.evidence,
        }
    }
}

impl Calls {
    /// The pipeline of a run: `grants`, then `meter`'s limits and budgets, then `cache` (none:
    /// every request goes out), then `router`; `data` answers `queries` and `examples`.
    pub fn new(
        grants: Grants,
        meter: Meter,
        cache: Option<ResponseCache>,
        router: Router,
        data: RunData,
    ) -> Calls {
        Calls {
            grants,
            meter,
            cache,
            router,
            data,
            refusal_announced: AtomicBool::new(false),
        }
    }

    /// The pipeline of `router` alone: no grant limit, no budget, no cache, no queries or
    /// examples (tests and benchmarks of what lies below).
    pub fn unlimited(router: Router) -> Calls {
        Calls::new(
            Grants::default(),
            Meter::default(),
            None,
            router,
            RunData::default(),
        )
    }

    /// The router (the preflight checks its providers).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The plugin's grant.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// Counts what a resumed run recorded: the model requests its plugin asked for (`calls`, for
    /// the grant's call cap) and what those and its `preflight` spent, time included (for the
    /// budgets).
    pub fn count_recorded(&mut self, preflight: Option<&Preflight>, calls: &[CallRecord]) {
        self.meter.count_recorded(&billed_calls(preflight, calls));
        self.meter.ask(
            calls
                .iter()
                .map(|call| grants::model_requests(&call.request))
                .sum(),
        );
    }

    /// Answers a plugin's `complete` batch through every stage.
    pub async fn complete(&self, requests: Vec<Request>) -> Answered {
        let mut batch = Batch::new(requests);
        self.grant(&mut batch);
        self.spend(&mut batch, self.cache.as_ref()).await;
        batch.finish()
    }

    /// Answers requests the host sends on its own to check the models (the preflight): outside
    /// the plugin's grant, never from the cache, which would check nothing, but within the
    /// budget and counted in it.
    pub async fn check(&self, requests: Vec<Request>) -> Vec<Answer> {
        let mut batch = Batch::new(requests);
        self.spend(&mut batch, None).await;
        batch.finish().answers
    }

    /// Embeds texts, unless the grant or a budget forbids it (an embedding request counts as one
    /// call; with no embedding model there is no request, and the router says so).
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, LlmError> {
        let refusal = self.grants.refuse_call(self.meter.asked());
        self.meter.ask(1);
        if let Some(refusal) = refusal {
            return Err(refusal);
        }
        if self.meter.exhausted().is_some()
            || (self.router.has_embedder() && self.meter.admit(&[Worst::default()]) == 0)
        {
            self.announce_refusal();
            return Err(LlmError::BudgetExhausted);
        }
        match self.within_time(self.router.embed(texts)).await {
            Some(result) => result,
            None => {
                self.announce_refusal();
                Err(LlmError::BudgetExhausted)
            }
        }
    }

    /// The grant's stage: answers the requests the plugin may not make, and counts them all as
    /// asked.
    fn grant(&self, batch: &mut Batch) {
        let asked = self.meter.asked();
        for (position, request) in batch.requests.iter().enumerate() {
            if let Some(refusal) = self.grants.refuse(request, asked + position as u64) {
                batch.answers[position] = Some(Err(refusal));
            }
        }
        self.meter.ask(batch.requests.len() as u64);
    }

    /// The stages that spend: the size limits, the cache (`cache`), the budget, the router. Once
    /// a budget is spent nothing succeeds any more, hits included, as the contract promises the
    /// strategy.
    async fn spend(&self, batch: &mut Batch, cache: Option<&ResponseCache>) {
        let open = batch.open();
        let budget = self.meter.budget();
        for (position, &index) in open.iter().enumerate() {
            if let Some(refusal) = budget.refuse(&batch.requests[index], position, open.len()) {
                batch.answers[index] = Some(Err(refusal));
            }
        }
        let open = batch.open();
        if self.meter.exhausted().is_some() {
            if !open.is_empty() {
                self.announce_refusal();
            }
            for index in open {
                batch.answers[index] = Some(Err(LlmError::BudgetExhausted));
            }
            return;
        }
        let mut keys: Vec<Option<cache::Key>> = vec![None; batch.requests.len()];
        if let Some(cache) = cache {
            for &index in &open {
                let request = &batch.requests[index];
                keys[index] = Some(cache::key(
                    &self.router.answer_identity(request.role),
                    &self.router.shape(request.clone()),
                ));
            }
            let looked_up: Vec<cache::Key> = open.iter().filter_map(|&i| keys[i]).collect();
            for (&index, hit) in open.iter().zip(cache.get(&looked_up)) {
                if let Some(completion) = hit {
                    batch.answers[index] = Some(Ok(completion));
                    batch.cache_hits[index] = true;
                }
            }
        }
        let misses = batch.open();
        let worst: Vec<Worst> = misses
            .iter()
            .map(|&i| self.meter.worst_case(&batch.requests[i]))
            .collect();
        let admitted = self.meter.admit(&worst);
        if admitted < misses.len() {
            self.announce_refusal();
        }
        for &index in &misses[admitted..] {
            batch.answers[index] = Some(Err(LlmError::BudgetExhausted));
        }
        let sent = &misses[..admitted];
        if sent.is_empty() {
            return;
        }
        let requests: Vec<Request> = sent.iter().map(|&i| batch.requests[i].clone()).collect();
        let fresh = match self.within_time(self.router.complete(requests)).await {
            Some(fresh) => fresh,
            None => {
                self.announce_refusal();
                vec![(Err(LlmError::BudgetExhausted), None); sent.len()]
            }
        };
        let mut to_store = Vec::new();
        for ((&index, (answer, _)), worst) in sent.iter().zip(&fresh).zip(&worst) {
            let completion = answer.as_ref().ok();
            self.meter.settle(
                worst,
                batch.requests[index].role,
                completion.map(|c| &c.usage),
            );
            if let (Some(completion), Some(key)) = (completion, keys[index]) {
                to_store.push((key, completion));
            }
        }
        if let Some(cache) = cache
            && let Err(error) = cache.put(&to_store)
        {
            // The answers are good and recorded in the run log; only the cache missed out.
            eprintln!("warning: {error:#}");
        }
        for (&index, (answer, evidence)) in sent.iter().zip(fresh) {
            batch.answers[index] = Some(answer);
            batch.evidence[index] = evidence;
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

impl Live for Calls {
    fn complete(&self, batch: Vec<Request>) -> BoxFuture<'_, Answered> {
        Box::pin(Calls::complete(self, batch))
    }

    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, LlmError>> {
        Box::pin(Calls::embed(self, texts))
    }

    fn queries(&self, limit: Option<u32>) -> Vec<Query> {
        self.data.training.draw(limit, self.data.seed)
    }

    fn examples(&self) -> Vec<Example> {
        self.data.examples.clone()
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::chat_request;
    use std::sync::Arc;

    use super::*;
    use crate::bindings::types::{Completion, Prompt, Role, Usage};
    use crate::calls::budget::Budget;
    use crate::calls::cache::{FILE_NAME, Opened};
    use crate::provider::scripted::ScriptedProvider;
    use crate::roles::PerRole;

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
        let price = Some(crate::spending::pricing::Price {
            input: 0.0,
            output: 0.0,
        });
        Meter::new(
            Budget {
                max_calls: Some(max_calls),
                ..Budget::default()
            },
            PerRole::from_fn(|_| ("m", price)),
        )
        .unwrap()
    }

    /// The pipeline with no grant limits and no data, whose budget is `meter`.
    fn pipeline(router: Router, meter: Meter, cache: Option<ResponseCache>) -> Calls {
        Calls::new(Grants::default(), meter, cache, router, RunData::default())
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
        let calls = pipeline(router, meter(3), None);
        let answers = block_on(calls.complete(batch(&["a", "b", "c", "d", "e"]))).answers;
        let refused: Vec<bool> = answers
            .iter()
            .map(|a| a == &Err(LlmError::BudgetExhausted))
            .collect();
        assert_eq!(refused, [false, false, false, true, true]);
        assert_eq!(seen.lock().unwrap().len(), 3);
        let later = block_on(calls.complete(batch(&["f"]))).answers;
        assert_eq!(later[0], Err(LlmError::BudgetExhausted));
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[test]
    fn cache_hits_are_free_and_marked_until_a_budget_is_spent() {
        let dir = tempfile::tempdir().unwrap();
        let (Opened::Ready(cache), _) = ResponseCache::open(&dir.path().join(FILE_NAME)) else {
            panic!("opens")
        };
        let (router, seen) = scripted();
        let calls = pipeline(router, meter(3), Some(cache));
        let first = block_on(calls.complete(batch(&["a", "b"])));
        assert!(first.answers.iter().all(Result::is_ok));
        assert_eq!(first.cache_hits, [false, false]);
        let again = block_on(calls.complete(batch(&["a", "b", "c"])));
        assert_eq!(again.cache_hits, [true, true, false]);
        let hit = again.answers[0].as_ref().unwrap();
        assert_eq!(hit.choices, ["re: a"]);
        assert_eq!(
            (hit.usage.prompt_tokens, hit.usage.completion_tokens),
            (0, 0)
        );
        assert_eq!(seen.lock().unwrap().len(), 3, "hits cost no call");
        // The budget is spent now: even a cached answer is refused.
        let spent = block_on(calls.complete(batch(&["a"]))).answers;
        assert_eq!(spent[0], Err(LlmError::BudgetExhausted));
    }

    fn meter_of(budget: Budget) -> Meter {
        let price = Some(crate::spending::pricing::Price {
            input: 1.0,
            output: 1.0,
        });
        Meter::new(budget, PerRole::from_fn(|_| ("m", price))).unwrap()
    }

    #[test]
    fn requests_past_a_limit_are_rejected_and_those_the_budget_cannot_cover_are_not_sent() {
        let (router, seen) = scripted();
        let calls = pipeline(
            router,
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
        let answers = block_on(calls.complete(asks)).answers;
        assert!(answers[0].is_ok());
        let rejected = |i: usize, flag: &str| matches!(&answers[i], Err(LlmError::Rejected(why)) if why.contains(flag));
        assert!(rejected(1, "--max-choices"), "{:?}", answers[1]);
        assert!(rejected(3, "--max-batch"), "{:?}", answers[3]);
        // 4 × 300 completion tokens may not fit in the 985 left: refused, never sent.
        assert_eq!(answers[2], Err(LlmError::BudgetExhausted));
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert!(
            calls
                .meter
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
            let calls = pipeline(
                Router::uniform(Arc::new(Hung)),
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
                calls.complete(batch(&["a", "b"])),
            )
            .await
            .expect("the pipeline answers without the provider")
            .answers;
            assert!(answers.iter().all(|a| a == &Err(LlmError::BudgetExhausted)));
            // The paused clock moved exactly to the budget's end.
            assert_eq!(started.elapsed(), std::time::Duration::from_secs(5));
            assert!(calls.meter.exhausted().unwrap().contains("--max-time"));
        });
    }
}
