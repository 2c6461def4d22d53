//! Budgets: the most model calls, tokens, money and wall time a run may spend.
//!
//! The [`Meter`] is asked before each batch goes out. Once a budget is spent, every further
//! request is answered `budget-exhausted` without reaching a provider, and the strategy ends
//! with its best result so far. The refusal is an ordinary answer in the run log, so `replay`
//! reproduces it without looking at any clock or counter.
//!
//! What counts: every request sent to a provider is a call (cache hits are free and do not
//! count); tokens and money come from the providers' `usage` after each batch. The call budget
//! is exact. For the token and money budgets each request's worst case ([`Worst`]) is reserved
//! before it goes out, and a request whose worst case does not fit in what remains is refused,
//! so a run overshoots them only by the error of the prompt's estimate. The time budget cuts
//! requests still in flight when it runs out. On `resume`, what the recorded calls spent counts.
//!
//! Whatever the budgets, one request may ask for at most `max_choices` choices and one batch may
//! hold at most `max_batch` requests; past a limit a request is answered `rejected`.

use std::time::Duration;

use tokio::time::Instant;

use anyhow::bail;
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::bindings::types::{LlmError, Prompt, Request, Role, Usage};
use crate::roles::PerRole;
use crate::runlog::{CallRecord, CallRequest, CallResponse};
use crate::spending::pricing::Price;

/// Spending limits of a run (flags, or the same keys in the config file).
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetFlags {
    /// Stop after this many model requests (cache hits are free).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_calls: Option<u64>,
    /// Stop once this many tokens (prompt plus completion, all roles) are spent.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Stop once this much money (USD, from the price table) is spent; every role's model
    /// needs a price.
    #[arg(long, value_name = "USD")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cost: Option<f64>,
    /// Stop sending requests after this much wall time: seconds, or a number with s, m or h
    /// (e.g. 90s, 15m, 2h).
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_time: Option<String>,
    /// Choices (`n`) one request may ask for (default 16); past it the request is rejected.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_choices: Option<u32>,
    /// Requests one batch may hold (default 4096); the requests past it are rejected.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<usize>,
}

/// Choices one request may ask for, unless `--max-choices` says otherwise.
pub const DEFAULT_MAX_CHOICES: u32 = 16;
/// Requests one batch may hold, unless `--max-batch` says otherwise: the shipped `eval` and
/// `generate` strategies send a whole data set in one batch (AlpacaEval's 805 queries, twice
/// when two answer sets are compared).
pub const DEFAULT_MAX_BATCH: usize = 4096;

/// The limits, parsed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub max_calls: Option<u64>,
    pub max_tokens: Option<u64>,
    pub max_cost: Option<f64>,
    pub max_time: Option<Duration>,
    pub max_choices: u32,
    pub max_batch: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_calls: None,
            max_tokens: None,
            max_cost: None,
            max_time: None,
            max_choices: DEFAULT_MAX_CHOICES,
            max_batch: DEFAULT_MAX_BATCH,
        }
    }
}

impl Budget {
    /// Why the request at `position` of a batch of `size` may not be sent whatever is left of
    /// the budgets; `None` when its size is within the limits.
    pub fn refuse(&self, request: &Request, position: usize, size: usize) -> Option<LlmError> {
        if position >= self.max_batch {
            return Some(LlmError::Rejected(format!(
                "a batch may hold at most {} requests (--max-batch, config key max_batch), this \
                 one holds {size}: the requests past the {}th are refused",
                self.max_batch, self.max_batch
            )));
        }
        let n = request.sampling.n;
        (n > self.max_choices).then(|| {
            LlmError::Rejected(format!(
                "a request may ask for at most {} choices (--max-choices, config key \
                 max_choices), this one asks for n = {n}",
                self.max_choices
            ))
        })
    }
}

impl BudgetFlags {
    /// The parsed limits; an unreadable duration or a negative cost is an error naming the key.
    pub fn budget(&self) -> anyhow::Result<Budget> {
        if let Some(cost) = self.max_cost
            && (cost.is_nan() || cost < 0.0)
        {
            bail!("max_cost must be a number of USD, at least 0 (got {cost})");
        }
        if self.max_choices == Some(0) || self.max_batch == Some(0) {
            bail!("max_choices and max_batch must be at least 1");
        }
        Ok(Budget {
            max_calls: self.max_calls,
            max_tokens: self.max_tokens,
            max_cost: self.max_cost,
            max_time: self
                .max_time
                .as_deref()
                .map(|text| {
                    parse_duration(text).ok_or_else(|| {
                        anyhow::anyhow!(
                            "max_time {text:?} is not a duration (seconds, or e.g. 90s, 15m, 2h)"
                        )
                    })
                })
                .transpose()?,
            max_choices: self.max_choices.unwrap_or(DEFAULT_MAX_CHOICES),
            max_batch: self.max_batch.unwrap_or(DEFAULT_MAX_BATCH),
        })
    }
}

/// `90`, `90s`, `1.5m`, `2h` → a duration.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let seconds = match unit.trim() {
        "s" | "sec" | "secs" => 1.0,
        "m" | "min" | "mins" => 60.0,
        "h" | "hour" | "hours" => 3600.0,
        _ => return None,
    };
    let value: f64 = number.trim().parse().ok()?;
    (value >= 0.0 && value.is_finite()).then(|| Duration::from_secs_f64(value * seconds))
}

#[derive(Debug, Default)]
struct Spent {
    /// Model requests the plugin asked for (each of a batch, and each embedding call), refused
    /// ones included: what the grant's call cap counts.
    asked: u64,
    /// Model requests sent (or about to be): what the call budget counts.
    calls: u64,
    tokens: u64,
    usd: f64,
    /// The worst cases of the requests in flight.
    reserved_tokens: u64,
    reserved_usd: f64,
    /// Why a request was refused for want of budget: from then on every request is, as the
    /// contract promises the strategy.
    refused: Option<String>,
}

/// The most one request may spend: its prompt's tokens, estimated as a quarter of its text's
/// bytes (messages and schema) rounded up, plus `n × max_tokens` completion tokens, priced at
/// its role's model's price. Tokenizers differ; the estimate is rough, the completion bound is
/// not.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Worst {
    prompt_tokens: u64,
    choices: u32,
    max_tokens: u32,
    usd: f64,
}

impl Worst {
    fn tokens(&self) -> u64 {
        self.prompt_tokens + u64::from(self.choices) * u64::from(self.max_tokens)
    }

    fn describe(&self) -> String {
        format!(
            "about {} prompt tokens plus {} × {} completion tokens",
            self.prompt_tokens, self.choices, self.max_tokens
        )
    }
}

/// Counts what a run spends and decides whether further requests may go out.
#[derive(Debug)]
pub struct Meter {
    budget: Budget,
    /// Per role; `None`: no price known.
    prices: PerRole<Option<Price>>,
    started: Instant,
    /// Wall time spent before this process (by the recorded calls of a resumed run).
    earlier: Duration,
    spent: std::sync::Mutex<Spent>,
}

impl Default for Meter {
    fn default() -> Self {
        Meter {
            budget: Budget::default(),
            prices: PerRole::default(),
            started: Instant::now(),
            earlier: Duration::ZERO,
            spent: Default::default(),
        }
    }
}

impl Meter {
    /// A meter for `budget`; `models` names each role's model (for the error below), `prices`
    /// prices it. A money budget with a role whose model has no price is refused: it could
    /// never be enforced.
    pub fn new(budget: Budget, models: PerRole<(&str, Option<Price>)>) -> anyhow::Result<Meter> {
        if budget.max_cost.is_some()
            && let Some((role, (model, _))) = models.iter().find(|(_, (_, price))| price.is_none())
        {
            bail!(
                "--max-cost needs the price of every model, but `{model}` ({} role) has none; \
                 add it under [prices] in the config file (USD per million input and output tokens)",
                role.name()
            );
        }
        Ok(Meter {
            budget,
            prices: models.map(|_, (_, price)| price),
            ..Meter::default()
        })
    }

    /// The limits this meter enforces.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Model requests asked for so far (see [`Meter::ask`]).
    pub fn asked(&self) -> u64 {
        self.spent.lock().expect("meter lock").asked
    }

    /// Counts `requests` more model requests asked for, whatever becomes of them.
    pub fn ask(&self, requests: u64) {
        self.spent.lock().expect("meter lock").asked += requests;
    }

    /// Counts what the recorded calls of a resumed run spent, time included (the preflight's
    /// among them: see [`crate::runlog::billed_calls`]).
    pub fn count_recorded(&mut self, calls: &[CallRecord]) {
        for call in calls {
            self.earlier += Duration::from_micros(call.provenance.elapsed_us);
            if let (CallRequest::Complete(batch), CallResponse::Complete(results)) =
                (&call.request, &call.response)
            {
                for (position, (request, result)) in batch.iter().zip(results).enumerate() {
                    let hit = call.provenance.cache_hits.get(position) == Some(&true);
                    if !hit && result != &Err(crate::bindings::types::LlmError::BudgetExhausted) {
                        self.spent.get_mut().expect("not shared yet").calls += 1;
                    }
                    if let Ok(completion) = result {
                        self.charge(request.role, &completion.usage);
                    }
                }
            }
        }
    }

    /// Which budget is spent, if one is: the reason, for the user.
    pub fn exhausted(&self) -> Option<String> {
        let spent = self.spent.lock().expect("meter lock");
        if let Some(why) = &spent.refused {
            return Some(why.clone());
        }
        let budget = &self.budget;
        if let Some(max) = budget.max_calls
            && spent.calls >= max
        {
            return Some(format!("--max-calls {max} reached"));
        }
        if let Some(max) = budget.max_tokens
            && spent.tokens >= max
        {
            return Some(format!(
                "--max-tokens {max} reached ({} spent)",
                spent.tokens
            ));
        }
        if let Some(max) = budget.max_cost
            && spent.usd >= max
        {
            return Some(format!(
                "--max-cost {max} reached (${:.4} spent)",
                spent.usd
            ));
        }
        if let Some(max) = budget.max_time {
            let elapsed = self.earlier + self.started.elapsed();
            if elapsed >= max {
                return Some(format!(
                    "--max-time {:?} reached ({:.1}s elapsed)",
                    max,
                    elapsed.as_secs_f64()
                ));
            }
        }
        None
    }

    /// The wall time left to the run, when it has a time budget.
    pub fn time_left(&self) -> Option<Duration> {
        let elapsed = self.earlier + self.started.elapsed();
        self.budget.max_time.map(|max| max.saturating_sub(elapsed))
    }

    /// The most `request` may spend (see [`Worst`]).
    pub fn worst_case(&self, request: &Request) -> Worst {
        let bytes = match &request.prompt {
            Prompt::Chat(messages) => messages.iter().map(|m| m.content.len()).sum(),
            Prompt::Raw(text) => text.len(),
        } + request.json_schema.as_ref().map_or(0, String::len);
        let mut worst = Worst {
            prompt_tokens: (bytes as u64).div_ceil(4),
            choices: request.sampling.n,
            max_tokens: request.sampling.max_tokens,
            usd: 0.0,
        };
        if let Some(price) = self.prices[request.role] {
            let completion = worst.tokens() - worst.prompt_tokens;
            worst.usd = price.cost(worst.prompt_tokens, completion);
        }
        worst
    }

    /// How many of the requests whose worst cases are `worst` may go out now, in order: none
    /// once a budget is spent, else those before the first that the call budget, or what is
    /// left of the token and money budgets, cannot cover. The admitted are counted as calls and
    /// their worst cases reserved until [`Meter::settle`]; a request refused for its worst case
    /// spends the budget for the rest of the run.
    pub fn admit(&self, worst: &[Worst]) -> usize {
        if worst.is_empty() || self.exhausted().is_some() {
            return 0;
        }
        let mut spent = self.spent.lock().expect("meter lock");
        let budget = &self.budget;
        let mut admitted = 0;
        for request in worst {
            if budget.max_calls.is_some_and(|max| spent.calls >= max) {
                break;
            }
            let committed = spent.tokens + spent.reserved_tokens;
            if let Some(max) = budget.max_tokens
                && committed + request.tokens() > max
            {
                spent.refused = Some(format!(
                    "--max-tokens {max} cannot cover the next request: it may spend {} tokens \
                     ({}), {} are left",
                    request.tokens(),
                    request.describe(),
                    max.saturating_sub(committed)
                ));
                break;
            }
            let committed = spent.usd + spent.reserved_usd;
            if let Some(max) = budget.max_cost
                && committed + request.usd > max
            {
                spent.refused = Some(format!(
                    "--max-cost {max} cannot cover the next request: it may cost ${:.4} ({}), \
                     ${:.4} is left",
                    request.usd,
                    request.describe(),
                    (max - committed).max(0.0)
                ));
                break;
            }
            spent.calls += 1;
            spent.reserved_tokens += request.tokens();
            spent.reserved_usd += request.usd;
            admitted += 1;
        }
        admitted
    }

    /// Releases the reservation of an admitted request of `role` and counts what it spent
    /// (`None`: it failed, and nothing was billed).
    pub fn settle(&self, worst: &Worst, role: Role, usage: Option<&Usage>) {
        {
            let mut spent = self.spent.lock().expect("meter lock");
            spent.reserved_tokens = spent.reserved_tokens.saturating_sub(worst.tokens());
            spent.reserved_usd = (spent.reserved_usd - worst.usd).max(0.0);
        }
        if let Some(usage) = usage {
            self.charge(role, usage);
        }
    }

    /// Adds what one answered request of `role` spent.
    fn charge(&self, role: Role, usage: &Usage) {
        let prompt = u64::from(usage.prompt_tokens);
        let completion = u64::from(usage.completion_tokens);
        let mut spent = self.spent.lock().expect("meter lock");
        spent.tokens += prompt + completion;
        if let Some(price) = self.prices[role] {
            spent.usd += price.cost(prompt, completion);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every role's model `m`, at $1 per million tokens.
    fn all_free() -> PerRole<(&'static str, Option<Price>)> {
        PerRole::from_fn(|_| {
            (
                "m",
                Some(Price {
                    input: 1.0,
                    output: 1.0,
                }),
            )
        })
    }

    /// Requests whose worst case is nothing: only the call budget applies to them.
    fn calls(count: usize) -> Vec<Worst> {
        vec![Worst::default(); count]
    }

    /// A judge request of `bytes` prompt bytes asking `n` choices of `max_tokens` at most.
    fn asking(bytes: usize, n: u32, max_tokens: u32) -> Request {
        let mut request = crate::testing::chat_request(Role::Judge, &"x".repeat(bytes));
        request.sampling.n = n;
        request.sampling.max_tokens = max_tokens;
        request
    }

    fn usage(tokens: u32) -> Usage {
        Usage {
            prompt_tokens: tokens,
            completion_tokens: 0,
        }
    }

    #[test]
    fn durations_in_seconds_minutes_and_hours() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5m"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("2 days"), None);
        assert_eq!(parse_duration("-1"), None);
        let flags = BudgetFlags {
            max_time: Some("soon".into()),
            ..BudgetFlags::default()
        };
        assert!(flags.budget().unwrap_err().to_string().contains("max_time"));
    }

    #[test]
    fn the_call_budget_is_exact_across_batches() {
        let budget = Budget {
            max_calls: Some(5),
            ..Budget::default()
        };
        let meter = Meter::new(budget, all_free()).unwrap();
        assert_eq!(meter.admit(&calls(3)), 3);
        assert_eq!(meter.exhausted(), None);
        assert_eq!(meter.admit(&calls(3)), 2);
        assert!(meter.exhausted().unwrap().contains("--max-calls 5"));
        assert_eq!(meter.admit(&calls(1)), 0);
    }

    #[test]
    fn tokens_and_money_stop_the_next_batch() {
        let meter = token_meter(100);
        meter.charge(Role::Judge, &usage(60));
        assert_eq!(meter.admit(&calls(2)), 2);
        meter.charge(Role::Judge, &usage(60));
        assert!(meter.exhausted().unwrap().contains("--max-tokens"));
        assert_eq!(meter.admit(&calls(2)), 0);

        let meter = Meter::new(
            Budget {
                max_cost: Some(0.5),
                ..Budget::default()
            },
            all_free(),
        )
        .unwrap();
        meter.charge(Role::Base, &usage(400_000));
        assert_eq!(meter.exhausted(), None);
        meter.charge(Role::Base, &usage(100_000));
        assert!(meter.exhausted().unwrap().contains("--max-cost"));
    }

    #[test]
    fn a_money_budget_needs_every_price() {
        let mut models = all_free();
        models[Role::Judge] = ("mystery", None);
        let error = Meter::new(
            Budget {
                max_cost: Some(1.0),
                ..Budget::default()
            },
            models,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("mystery") && error.contains("judge"),
            "{error}"
        );
    }

    #[test]
    fn a_resumed_run_counts_the_recorded_requests_but_not_hits_or_refusals() {
        use crate::bindings::types::{Completion, LlmError};
        let request = crate::testing::chat_request(Role::Judge, "q");
        let answer = Ok(Completion {
            choices: vec!["a".into()],
            usage: usage(40),
        });
        let mut meter = Meter::new(
            Budget {
                max_calls: Some(2),
                max_tokens: Some(100),
                ..Budget::default()
            },
            all_free(),
        )
        .unwrap();
        meter.count_recorded(&[CallRecord {
            index: 0,
            request: CallRequest::Complete(vec![request.clone(), request.clone(), request]),
            response: CallResponse::Complete(vec![
                answer.clone(),
                answer,
                Err(LlmError::BudgetExhausted),
            ]),
            provenance: crate::runlog::Provenance {
                elapsed_us: 0,
                cache_hits: vec![true, false, false],
                ..Default::default()
            },
        }]);
        assert_eq!(meter.admit(&calls(5)), 1, "one recorded call, one left");
        assert_eq!(meter.spent.lock().unwrap().tokens, 80);
    }

    #[test]
    fn the_time_budget_counts_a_resumed_run_s_recorded_time() {
        let mut meter = Meter::new(
            Budget {
                max_time: Some(Duration::from_secs(10)),
                ..Budget::default()
            },
            all_free(),
        )
        .unwrap();
        assert_eq!(meter.exhausted(), None);
        meter.count_recorded(&[CallRecord {
            index: 0,
            request: CallRequest::Queries { limit: None },
            response: CallResponse::Queries(vec![]),
            provenance: crate::runlog::Provenance {
                elapsed_us: 11_000_000,
                cache_hits: vec![],
                ..Default::default()
            },
        }]);
        assert!(meter.exhausted().unwrap().contains("--max-time"));
    }

    /// A meter with a token budget alone, every role free.
    fn token_meter(max_tokens: u64) -> Meter {
        Meter::new(
            Budget {
                max_tokens: Some(max_tokens),
                ..Budget::default()
            },
            all_free(),
        )
        .unwrap()
    }

    #[test]
    fn a_request_whose_worst_case_does_not_fit_is_refused_and_spends_the_budget() {
        let meter = token_meter(100);
        // 41 bytes are about 11 prompt tokens; 3 × 30 completion tokens: 101 in all.
        let big = meter.worst_case(&asking(41, 3, 30));
        assert_eq!(big.tokens(), 101);
        assert_eq!(meter.admit(&[big]), 0);
        let why = meter.exhausted().unwrap();
        assert!(
            why.contains("--max-tokens 100")
                && why.contains("3 × 30")
                && why.contains("100 are left"),
            "{why}"
        );
        // Nothing succeeds after a refusal, however small.
        assert_eq!(meter.admit(&[meter.worst_case(&asking(4, 1, 1))]), 0);
    }

    #[test]
    fn a_batch_is_admitted_in_order_while_its_worst_cases_fit_and_settling_frees_the_rest() {
        let meter = token_meter(100);
        let forty = meter.worst_case(&asking(0, 2, 20));
        assert_eq!(meter.admit(&[forty, forty]), 2);
        // Both answered with less than their worst case: what they did not spend is free again.
        meter.settle(&forty, Role::Judge, Some(&usage(10)));
        meter.settle(&forty, Role::Judge, None);
        assert_eq!(
            meter.admit(&[forty, forty, forty]),
            2,
            "10 + 40 + 40 fit in 100"
        );
        assert!(meter.exhausted().unwrap().contains("cannot cover"));
    }

    #[test]
    fn the_money_budget_prices_the_worst_case_at_the_role_s_price() {
        let mut models = all_free();
        // $20 per million tokens for the judge: its 16 × 4096 completion tokens cost $1.31.
        models[Role::Judge] = (
            "m",
            Some(Price {
                input: 20.0,
                output: 20.0,
            }),
        );
        let meter = Meter::new(
            Budget {
                max_cost: Some(0.001),
                ..Budget::default()
            },
            models,
        )
        .unwrap();
        let worst = meter.worst_case(&asking(400, 16, 4096));
        assert_eq!(worst.tokens(), 100 + 16 * 4096);
        assert_eq!(meter.admit(&[worst]), 0);
        let why = meter.exhausted().unwrap();
        assert!(
            why.contains("--max-cost 0.001") && why.contains("$1.3127"),
            "{why}"
        );
    }

    #[test]
    fn requests_past_the_size_limits_are_rejected_naming_the_flag() {
        let budget = Budget {
            max_choices: 4,
            max_batch: 2,
            ..Budget::default()
        };
        assert_eq!(budget.refuse(&asking(1, 4, 1), 1, 3), None);
        let Some(LlmError::Rejected(why)) = budget.refuse(&asking(1, 5, 1), 0, 3) else {
            panic!("n past the limit")
        };
        assert!(
            why.contains("--max-choices") && why.contains("n = 5"),
            "{why}"
        );
        let Some(LlmError::Rejected(why)) = budget.refuse(&asking(1, 1, 1), 2, 3) else {
            panic!("a request past the batch limit")
        };
        assert!(
            why.contains("--max-batch") && why.contains("holds 3"),
            "{why}"
        );
        let flags = BudgetFlags {
            max_choices: Some(0),
            ..BudgetFlags::default()
        };
        assert!(flags.budget().is_err());
    }
}
