//! What a run spent, per role, computed from its run log: requests, tokens, money, cache hits.
//! `inspect` and the end of `run` print the same table.

use crate::bindings::types::{LlmError, Role};
use crate::runlog::{CallRecord, CallRequest, CallResponse, RoleModel};
use crate::spending::pricing::{Money, PriceTable};

/// The model serving `role`, from the run log header's list of models.
pub fn model_of(models: &[RoleModel], role: Role) -> Option<&str> {
    models
        .iter()
        .find(|m| m.role == role.name())
        .map(|m| m.model.as_str())
}

/// What one role spent.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleSpend {
    pub role: Role,
    /// The model serving the role (from the run log header), if recorded.
    pub model: Option<String>,
    /// Requests made (a request counts once, however many choices it asked for).
    pub requests: u64,
    /// Choices received.
    pub choices: u64,
    /// Requests that got no answer, budget refusals included.
    pub failed: u64,
    /// Requests refused because a budget was spent.
    pub refused: u64,
    /// Requests answered by the response cache (no tokens billed).
    pub cache_hits: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub money: Money,
}

/// What a run spent, per role and in all.
#[derive(Debug, Clone, PartialEq)]
pub struct Spend {
    pub roles: Vec<RoleSpend>,
    /// `embed` calls made.
    pub embed_calls: u64,
}

impl Spend {
    /// Adds up `calls`; `models` is the run log header's list, `prices` prices them.
    pub fn of(calls: &[CallRecord], models: &[RoleModel], prices: &PriceTable) -> Spend {
        let mut roles: Vec<RoleSpend> = Role::ALL
            .into_iter()
            .map(|role| RoleSpend {
                role,
                model: model_of(models, role).map(str::to_owned),
                requests: 0,
                choices: 0,
                failed: 0,
                refused: 0,
                cache_hits: 0,
                prompt_tokens: 0,
                completion_tokens: 0,
                money: Money::ZERO,
            })
            .collect();
        let mut embed_calls = 0;
        for call in calls {
            match (&call.request, &call.response) {
                (CallRequest::Complete(batch), CallResponse::Complete(results)) => {
                    for (position, (request, result)) in batch.iter().zip(results).enumerate() {
                        let Some(slot) = roles.iter_mut().find(|r| r.role == request.role) else {
                            continue;
                        };
                        slot.requests += 1;
                        if call.provenance.cache_hits.get(position) == Some(&true) {
                            slot.cache_hits += 1;
                        }
                        match result {
                            Ok(completion) => {
                                slot.choices += completion.choices.len() as u64;
                                slot.prompt_tokens = slot
                                    .prompt_tokens
                                    .saturating_add(completion.usage.prompt_tokens.into());
                                slot.completion_tokens = slot
                                    .completion_tokens
                                    .saturating_add(completion.usage.completion_tokens.into());
                            }
                            Err(error) => {
                                slot.failed += 1;
                                if *error == LlmError::BudgetExhausted {
                                    slot.refused += 1;
                                }
                            }
                        }
                    }
                }
                (CallRequest::Embed(_), _) => embed_calls += 1,
                _ => {}
            }
        }
        for slot in &mut roles {
            slot.money = match &slot.model {
                Some(model) => prices.cost(model, slot.prompt_tokens, slot.completion_tokens),
                None if slot.prompt_tokens == 0 && slot.completion_tokens == 0 => Money::ZERO,
                None => Money::Unknown,
            };
        }
        Spend { roles, embed_calls }
    }

    /// All roles' money together (unknown if any role's is).
    pub fn total_money(&self) -> Money {
        self.roles
            .iter()
            .fold(Money::ZERO, |sum, role| sum.plus(role.money))
    }

    /// All roles' tokens together (prompt, completion).
    pub fn total_tokens(&self) -> (u64, u64) {
        (
            saturating_sum(self.roles.iter().map(|r| r.prompt_tokens)),
            saturating_sum(self.roles.iter().map(|r| r.completion_tokens)),
        )
    }

    /// The table as text lines, a total line last.
    pub fn table(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "{:<10} {:>9} {:>8} {:>7} {:>11} {:>11} {:>10} {:>10}",
            "role",
            "requests",
            "choices",
            "failed",
            "tokens in",
            "tokens out",
            "cache hits",
            "cost"
        )];
        for role in &self.roles {
            lines.push(format!(
                "{:<10} {:>9} {:>8} {:>7} {:>11} {:>11} {:>10} {:>10}",
                role.role.name(),
                role.requests,
                role.choices,
                role.failed,
                role.prompt_tokens,
                role.completion_tokens,
                role.cache_hits,
                role.money.to_string()
            ));
        }
        let (prompt, completion) = self.total_tokens();
        let sum = |field: fn(&RoleSpend) -> u64| saturating_sum(self.roles.iter().map(field));
        lines.push(format!(
            "{:<10} {:>9} {:>8} {:>7} {:>11} {:>11} {:>10} {:>10}",
            "total",
            sum(|r| r.requests),
            sum(|r| r.choices),
            sum(|r| r.failed),
            prompt,
            completion,
            sum(|r| r.cache_hits),
            self.total_money().to_string()
        ));
        let refused = sum(|r| r.refused);
        if refused > 0 {
            lines.push(format!(
                "{refused} request(s) were refused because a budget was spent"
            ));
        }
        if let Some(role) = self.roles.iter().find(|r| r.money == Money::Unknown) {
            lines.push(format!(
                "cost unknown: no price for model `{}` ({}); add it under [prices] in the config file",
                role.model.as_deref().unwrap_or("?"),
                role.role.name()
            ));
        }
        lines
    }
}

/// The sum of counts, at most `u64::MAX`: a total of numbers a server or a plugin reported is
/// shown capped rather than wrapped (or, in a debug build, panicking).
pub(crate) fn saturating_sum(values: impl IntoIterator<Item = u64>) -> u64 {
    values.into_iter().fold(0, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::types::{Completion, Request, Usage};
    use crate::runlog::Provenance;
    use crate::testing::chat_request;
    use std::collections::BTreeMap;

    fn request(role: Role) -> Request {
        chat_request(role, "q")
    }

    fn answer(prompt: u32, completion: u32) -> Result<Completion, LlmError> {
        Ok(Completion {
            choices: vec!["a".into()],
            usage: Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
            },
        })
    }

    fn model(role: &str, name: &str) -> RoleModel {
        RoleModel {
            role: role.into(),
            model: name.into(),
            provider: "p".into(),
        }
    }

    #[test]
    fn tokens_money_hits_and_refusals_per_role() {
        let call = CallRecord {
            index: 0,
            request: CallRequest::Complete(vec![
                request(Role::Judge),
                request(Role::Judge),
                request(Role::Base),
                request(Role::Optimizer),
            ]),
            response: CallResponse::Complete(vec![
                answer(1_000_000, 0),
                answer(0, 0),
                answer(500, 20),
                Err(LlmError::BudgetExhausted),
            ]),
            provenance: Provenance {
                elapsed_us: 1,
                cache_hits: vec![false, true, false, false],
                ..Default::default()
            },
        };
        let models = [
            model("base", "local:x.gguf"),
            model("metrics", "gpt-4o"),
            model("judge", "gpt-4o"),
            model("optimizer", "mystery"),
        ];
        let spend = Spend::of(&[call], &models, &PriceTable::new(&BTreeMap::new()));
        let judge = &spend.roles[2];
        assert_eq!((judge.requests, judge.cache_hits), (2, 1));
        assert_eq!(judge.prompt_tokens, 1_000_000);
        assert_eq!(judge.money, Money::Usd(2.5));
        assert_eq!(spend.roles[0].money, Money::ZERO);
        let optimizer = &spend.roles[3];
        assert_eq!((optimizer.failed, optimizer.refused), (1, 1));
        // The optimizer was refused before spending anything: its unknown price costs nothing.
        assert_eq!(optimizer.money, Money::ZERO);
        assert_eq!(spend.total_money(), Money::Usd(2.5));
        let table = spend.table().join("\n");
        assert!(table.contains("1 request(s) were refused"), "{table}");
        assert!(table.contains("$2.50"), "{table}");
    }
}
