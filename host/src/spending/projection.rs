//! The projection shown before a run: calls, tokens and money per role, from the strategy's
//! own `estimate` of its options and the price table.

use crate::bindings::types::{Role, RoleEstimate};
use crate::spending::accounting::saturating_sum;
use crate::spending::pricing::{Money, PriceTable};

/// The projected spending of one role.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleProjection {
    pub role: Role,
    /// The role's model, if known.
    pub model: Option<String>,
    pub min_calls: u64,
    pub max_calls: u64,
    /// Fewest tokens: the fewest calls' prompts.
    pub min_tokens: u64,
    /// Most tokens: the most calls' prompts and full completions.
    pub max_tokens: u64,
    pub min_money: Money,
    pub max_money: Money,
}

/// The projection of a whole run.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    pub roles: Vec<RoleProjection>,
}

impl Projection {
    /// Prices the strategy's estimates; `model_of` names each role's model.
    pub fn new(
        estimates: &[RoleEstimate],
        model_of: impl Fn(Role) -> Option<String>,
        prices: &PriceTable,
    ) -> Projection {
        let roles = estimates
            .iter()
            .map(|e| {
                let model = model_of(e.role);
                let cost = |prompt: u64, completion: u64| match &model {
                    Some(model) => prices.cost(model, prompt, completion),
                    None => Money::Unknown,
                };
                let min_prompt = e.min_calls.saturating_mul(e.prompt_tokens_per_call);
                let max_prompt = e.max_calls.saturating_mul(e.prompt_tokens_per_call);
                let max_completion = e.max_calls.saturating_mul(e.max_completion_tokens_per_call);
                RoleProjection {
                    role: e.role,
                    min_calls: e.min_calls,
                    max_calls: e.max_calls,
                    min_tokens: min_prompt,
                    max_tokens: max_prompt.saturating_add(max_completion),
                    min_money: cost(min_prompt, 0),
                    max_money: cost(max_prompt, max_completion),
                    model,
                }
            })
            .collect();
        Projection { roles }
    }

    /// The projection as text lines, a total line last.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "{:<10} {:>15} {:>23} {:>21}  model",
            "role", "calls", "tokens", "cost"
        )];
        let range = |low: String, high: String| {
            if low == high {
                low
            } else {
                format!("{low}–{high}")
            }
        };
        for role in &self.roles {
            lines.push(format!(
                "{:<10} {:>15} {:>23} {:>21}  {}",
                role.role.name(),
                range(role.min_calls.to_string(), role.max_calls.to_string()),
                range(role.min_tokens.to_string(), role.max_tokens.to_string()),
                range(role.min_money.to_string(), role.max_money.to_string()),
                role.model.as_deref().unwrap_or("?")
            ));
        }
        let sum = |field: fn(&RoleProjection) -> u64| saturating_sum(self.roles.iter().map(field));
        let money = |field: fn(&RoleProjection) -> Money| {
            self.roles
                .iter()
                .fold(Money::ZERO, |total, role| total.plus(field(role)))
        };
        lines.push(format!(
            "{:<10} {:>15} {:>23} {:>21}",
            "total",
            range(
                sum(|r| r.min_calls).to_string(),
                sum(|r| r.max_calls).to_string()
            ),
            range(
                sum(|r| r.min_tokens).to_string(),
                sum(|r| r.max_tokens).to_string()
            ),
            range(
                money(|r| r.min_money).to_string(),
                money(|r| r.max_money).to_string()
            )
        ));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn ranges_follow_calls_tokens_and_prices() {
        let estimates = [
            RoleEstimate {
                role: Role::Judge,
                min_calls: 2,
                max_calls: 10,
                prompt_tokens_per_call: 1000,
                max_completion_tokens_per_call: 100,
            },
            RoleEstimate {
                role: Role::Base,
                min_calls: 2,
                max_calls: 10,
                prompt_tokens_per_call: 50,
                max_completion_tokens_per_call: 50,
            },
        ];
        let projection = Projection::new(
            &estimates,
            |role| {
                Some(match role {
                    Role::Judge => "gpt-4o".into(),
                    _ => "mystery".into(),
                })
            },
            &PriceTable::new(&BTreeMap::new()),
        );
        let judge = &projection.roles[0];
        assert_eq!((judge.min_tokens, judge.max_tokens), (2000, 11_000));
        assert_eq!(judge.min_money, Money::Usd(0.005));
        assert_eq!(judge.max_money, Money::Usd(0.035));
        assert_eq!(projection.roles[1].max_money, Money::Unknown);
        let text = projection.lines().join("\n");
        assert!(text.contains("2–10"), "{text}");
        assert!(text.contains("unknown"), "{text}");
    }

    #[test]
    fn totals_past_the_largest_count_are_capped() {
        let most = RoleEstimate {
            role: Role::Judge,
            min_calls: u64::MAX,
            max_calls: u64::MAX,
            prompt_tokens_per_call: 2,
            max_completion_tokens_per_call: 2,
        };
        let estimates = [
            most,
            RoleEstimate {
                role: Role::Base,
                ..most
            },
        ];
        let projection = Projection::new(&estimates, |_| None, &PriceTable::new(&BTreeMap::new()));
        let total = projection.lines().pop().unwrap();
        assert_eq!(
            total.split_whitespace().take(3).collect::<Vec<_>>(),
            ["total", &u64::MAX.to_string(), &u64::MAX.to_string()],
            "{total}"
        );
    }
}
