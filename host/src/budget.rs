//! Budgets: the most model calls, tokens, money and wall time a run may spend.
//!
//! The [`Meter`] is asked before each batch goes out. Once a budget is spent, every further
//! request is answered `budget-exhausted` without reaching a provider, and the strategy ends
//! with its best result so far. The refusal is an ordinary answer in the run log, so `replay`
//! reproduces it without looking at any clock or counter.
//!
//! What counts: every request sent to a provider is a call (cache hits are free and do not
//! count); tokens and money come from the providers' `usage` after each batch. The call budget
//! is exact; the token, money and time budgets are checked before each batch, so the batch that
//! crosses one may overshoot it. On `resume`, what the recorded calls spent counts.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::bindings::types::{Role, Usage};
use crate::pricing::Price;
use crate::runlog::{CallRecord, CallRequest, CallResponse};

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
}

/// The limits, parsed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Budget {
    pub max_calls: Option<u64>,
    pub max_tokens: Option<u64>,
    pub max_cost: Option<f64>,
    pub max_time: Option<Duration>,
}

impl BudgetFlags {
    /// The parsed limits; an unreadable duration or a negative cost is an error naming the key.
    pub fn budget(&self) -> anyhow::Result<Budget> {
        if let Some(cost) = self.max_cost
            && (cost.is_nan() || cost < 0.0)
        {
            bail!("max_cost must be a number of USD, at least 0 (got {cost})");
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
    calls: u64,
    tokens: u64,
    usd: f64,
}

/// Counts what a run spends and decides whether further requests may go out.
#[derive(Debug)]
pub struct Meter {
    budget: Budget,
    /// Per role, in [`crate::accounting::ROLES`] order; `None`: no price known.
    prices: [Option<Price>; 4],
    started: Instant,
    /// Wall time spent before this process (by the recorded calls of a resumed run).
    earlier: Duration,
    spent: std::sync::Mutex<Spent>,
}

impl Default for Meter {
    fn default() -> Self {
        Meter {
            budget: Budget::default(),
            prices: [None; 4],
            started: Instant::now(),
            earlier: Duration::ZERO,
            spent: Default::default(),
        }
    }
}

fn role_slot(role: Role) -> usize {
    match role {
        Role::Base => 0,
        Role::Metrics => 1,
        Role::Judge => 2,
        Role::Optimizer => 3,
    }
}

impl Meter {
    /// A meter for `budget`; `models` names each role's model (for the error below), `prices`
    /// prices it. A money budget with a role whose model has no price is refused: it could
    /// never be enforced.
    pub fn new(budget: Budget, models: [(Role, &str, Option<Price>); 4]) -> anyhow::Result<Meter> {
        if budget.max_cost.is_some()
            && let Some((role, model, _)) = models.iter().find(|(_, _, price)| price.is_none())
        {
            bail!(
                "--max-cost needs the price of every model, but `{model}` ({} role) has none; \
                 add it under [prices] in the config file (USD per million input and output tokens)",
                crate::rundir::role_name(*role)
            );
        }
        let mut prices = [None; 4];
        for (role, _, price) in models {
            prices[role_slot(role)] = price;
        }
        Ok(Meter {
            budget,
            prices,
            ..Meter::default()
        })
    }

    /// The limits this meter enforces.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Counts what the recorded calls of a resumed run spent, time included.
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

    /// How many of `wanted` requests may go out now (they are counted as calls): none once a
    /// budget is spent, else as many as the call budget has left.
    pub fn admit(&self, wanted: usize) -> usize {
        if wanted == 0 || self.exhausted().is_some() {
            return 0;
        }
        let mut spent = self.spent.lock().expect("meter lock");
        let admitted = match self.budget.max_calls {
            Some(max) => (max.saturating_sub(spent.calls)).min(wanted as u64) as usize,
            None => wanted,
        };
        spent.calls += admitted as u64;
        admitted
    }

    /// Adds what one answered request of `role` spent.
    pub fn charge(&self, role: Role, usage: &Usage) {
        let prompt = u64::from(usage.prompt_tokens);
        let completion = u64::from(usage.completion_tokens);
        let mut spent = self.spent.lock().expect("meter lock");
        spent.tokens += prompt + completion;
        if let Some(price) = self.prices[role_slot(role)] {
            spent.usd += price.cost(prompt, completion);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free(role: Role) -> (Role, &'static str, Option<Price>) {
        (
            role,
            "m",
            Some(Price {
                input: 1.0,
                output: 1.0,
            }),
        )
    }

    fn all_free() -> [(Role, &'static str, Option<Price>); 4] {
        [
            free(Role::Base),
            free(Role::Metrics),
            free(Role::Judge),
            free(Role::Optimizer),
        ]
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
        assert_eq!(meter.admit(3), 3);
        assert_eq!(meter.exhausted(), None);
        assert_eq!(meter.admit(3), 2);
        assert!(meter.exhausted().unwrap().contains("--max-calls 5"));
        assert_eq!(meter.admit(1), 0);
    }

    #[test]
    fn tokens_and_money_stop_the_next_batch() {
        let meter = Meter::new(
            Budget {
                max_tokens: Some(100),
                ..Budget::default()
            },
            all_free(),
        )
        .unwrap();
        meter.charge(Role::Judge, &usage(60));
        assert_eq!(meter.admit(2), 2);
        meter.charge(Role::Judge, &usage(60));
        assert!(meter.exhausted().unwrap().contains("--max-tokens"));
        assert_eq!(meter.admit(2), 0);

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
        models[2] = (Role::Judge, "mystery", None);
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
            },
        }]);
        assert_eq!(meter.admit(5), 1, "one recorded call, one left");
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
            request: CallRequest::Queries,
            response: CallResponse::Queries(vec![]),
            provenance: crate::runlog::Provenance {
                elapsed_us: 11_000_000,
                cache_hits: vec![],
            },
        }]);
        assert!(meter.exhausted().unwrap().contains("--max-time"));
    }
}
