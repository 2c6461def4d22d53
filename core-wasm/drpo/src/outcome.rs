//! What a strategy reports about how its run went, in its outcome's details, for the host to
//! act on: why it stopped before finishing (`stop`), and how many of the judgements it asked
//! for it could use (`judgements`).
//!
//! The rule that stops a run lives here, once, for every strategy: a spent budget, or a role
//! whose every request in one batch was rejected with the same message. A rejection is the
//! provider saying the request cannot succeed as sent (an unknown model, a parameter the server
//! refuses); when all of a role's requests meet the same one, the next batch would too, and
//! going on would only fill the tree with failures. `unavailable` is transient and never stops.

use std::fmt;

use serde::Serialize;
use serde_json::{Value, json};

use crate::parse::Judgement;
use crate::types::{Completion, LlmError, Outcome, Role};

/// Why a run ended before it finished; the strategy returns its best result so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A budget is spent: every further request would be refused.
    BudgetExhausted,
    /// Every request of `role` in one batch was rejected with the message `error`.
    RoleFailed {
        /// The role that fails.
        role: Role,
        /// The provider's message, as the rejection carried it.
        error: String,
    },
}

impl Stop {
    /// Whether one batch's answers stop the run: `results[i]` answers a request of `roles[i]`.
    /// A spent budget comes first; then the first role, in [`Role::ALL`] order, whose every
    /// request was rejected with the same message.
    pub fn check(roles: &[Role], results: &[Result<Completion, LlmError>]) -> Option<Stop> {
        if results.contains(&Err(LlmError::BudgetExhausted)) {
            return Some(Stop::BudgetExhausted);
        }
        Role::ALL.into_iter().find_map(|role| {
            let mut rejections = roles
                .iter()
                .zip(results)
                .filter(|(asked, _)| **asked == role)
                .map(|(_, result)| match result {
                    Err(LlmError::Rejected(message)) => Some(message),
                    _ => None,
                });
            let first = rejections.next()??;
            rejections
                .all(|message| message == Some(first))
                .then(|| Stop::RoleFailed {
                    role,
                    error: first.clone(),
                })
        })
    }

    /// The machine-readable `stop` field of an outcome's details: `{"kind":
    /// "budget-exhausted"}`, `{"kind": "role-failed", "role": ROLE, "error": MESSAGE}`, or
    /// `null` for a run that finished.
    pub fn details(stop: Option<&Stop>) -> Value {
        match stop {
            None => Value::Null,
            Some(Stop::BudgetExhausted) => json!({"kind": "budget-exhausted"}),
            Some(Stop::RoleFailed { role, error }) => {
                json!({"kind": "role-failed", "role": role.name(), "error": error})
            }
        }
    }

    /// The outcome of a search stopped before its first prompt was scored: that prompt, no
    /// score, and why, so the host writes the results and names the cause in its exit code.
    pub fn before_any_score(&self, prompt: String, judgements: Judgements) -> Outcome {
        Outcome {
            best_prompt: Some(prompt),
            best_score: None,
            best_path: Vec::new(),
            details: json!({
                "stopped": self.to_string(),
                "stop": Stop::details(Some(self)),
                "judgements": judgements,
            })
            .to_string(),
        }
    }
}

/// The human-readable reason, as logs and the `stopped` field show it.
impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::BudgetExhausted => write!(f, "the budget is exhausted"),
            Stop::RoleFailed { role, error } => write!(
                f,
                "the {} role failed: every one of its requests was rejected ({error})",
                role.name()
            ),
        }
    }
}

/// How many judgements a strategy asked for and how many it could use; serialized as the
/// details field `{"asked": A, "usable": U}`. The host shows "usable judgements: U of A" and
/// fails the run when U is 0, since a search without a single usable judgement chose nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Judgements {
    /// Judgements the strategy needed: one per answer to judge, even when the answer or the
    /// request to judge it failed.
    pub asked: u32,
    /// Judgements that gave a score for every selected aspect.
    pub usable: u32,
}

impl Judgements {
    /// Counts `n` judgements about to be asked for.
    pub fn ask(&mut self, n: usize) {
        self.asked += n as u32;
    }

    /// Counts one judgement received (usable or not).
    pub fn received(&mut self, judgement: &Judgement) {
        if judgement.is_usable() {
            self.usable += 1;
        }
    }

    /// Adds the counts of another phase of the same run.
    pub fn add(&mut self, other: Judgements) {
        self.asked += other.asked;
        self.usable += other.usable;
    }
}

/// How much the judge disagrees with itself when asked the same question again (with
/// `judge_repeats` above 1): per aspect, the mean standard deviation of the repeats' scores of
/// one answer, and the share of (answer, aspect) pairs on which every repeat gave the same
/// score. Serialized as the details field `judge_spread`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JudgeSpread {
    /// Per aspect name: the sum of the per-answer standard deviations, and how many answers.
    per_aspect: std::collections::BTreeMap<&'static str, (f64, u32)>,
    /// (answer, aspect) pairs whose repeats all agreed.
    agreeing: u32,
    /// (answer, aspect) pairs with at least two usable repeats.
    pairs: u32,
}

impl JudgeSpread {
    /// Takes the repeated judgements of one answer (only usable ones count; fewer than two say
    /// nothing about the spread).
    pub fn observe(&mut self, repeats: &[Judgement]) {
        let usable: Vec<&Judgement> = repeats.iter().filter(|j| j.is_usable()).collect();
        if usable.len() < 2 {
            return;
        }
        for score in &usable[0].scores {
            let values: Vec<f64> = usable
                .iter()
                .filter_map(|j| j.scores.iter().find(|o| o.aspect == score.aspect))
                .map(|o| f64::from(o.score))
                .collect();
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let variance =
                values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
            let entry = self.per_aspect.entry(score.aspect.name).or_default();
            entry.0 += variance.sqrt();
            entry.1 += 1;
            self.pairs += 1;
            if values.iter().all(|v| *v == values[0]) {
                self.agreeing += 1;
            }
        }
    }

    /// Adds what `other` observed, as if this spread had observed it too.
    pub fn absorb(&mut self, other: &JudgeSpread) {
        for (aspect, (sum, answers)) in &other.per_aspect {
            let entry = self.per_aspect.entry(aspect).or_default();
            entry.0 += sum;
            entry.1 += answers;
        }
        self.agreeing += other.agreeing;
        self.pairs += other.pairs;
    }

    /// The details' `judge_spread` for `repeats` repeats: `null` when the judge was asked once
    /// or no answer had two usable repeats; else `{repeats, agreement, pairs, aspects: {name:
    /// {mean_std, answers}}, summary}`.
    pub fn details(&self, repeats: u32) -> Value {
        if repeats < 2 || self.pairs == 0 {
            return Value::Null;
        }
        let aspects: serde_json::Map<String, Value> = self
            .per_aspect
            .iter()
            .map(|(name, (sum, n))| {
                (
                    (*name).to_owned(),
                    json!({"mean_std": sum / f64::from(*n), "answers": n}),
                )
            })
            .collect();
        let agreement = f64::from(self.agreeing) / f64::from(self.pairs);
        let mean_std =
            self.per_aspect.values().map(|(sum, _)| sum).sum::<f64>() / f64::from(self.pairs);
        json!({
            "repeats": repeats,
            "agreement": agreement,
            "pairs": self.pairs,
            "aspects": aspects,
            "summary": format!(
                "judge spread over {repeats} repeats: the repeats agreed on {:.0}% of {} \
                 (answer, aspect) scores; mean standard deviation {mean_std:.2}",
                agreement * 100.0,
                self.pairs
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Usage;

    fn ok() -> Result<Completion, LlmError> {
        Ok(Completion {
            choices: vec!["x".into()],
            usage: Usage::default(),
        })
    }

    fn rejected(message: &str) -> Result<Completion, LlmError> {
        Err(LlmError::Rejected(message.into()))
    }

    #[test]
    fn a_role_stops_the_run_when_all_its_requests_meet_the_same_rejection() {
        let roles = [Role::Metrics, Role::Base, Role::Base];
        let stop = Stop::check(
            &roles,
            &[ok(), rejected("no model x"), rejected("no model x")],
        );
        assert_eq!(
            stop,
            Some(Stop::RoleFailed {
                role: Role::Base,
                error: "no model x".into()
            })
        );
        assert_eq!(
            Stop::details(stop.as_ref()),
            json!({"kind": "role-failed", "role": "base", "error": "no model x"})
        );
        assert!(stop.unwrap().to_string().contains("base role failed"));
    }

    #[test]
    fn a_partial_failure_other_messages_or_transient_errors_do_not_stop() {
        let base = [Role::Base, Role::Base];
        for results in [
            [ok(), rejected("too long")],
            [rejected("too long"), rejected("bad schema")],
            [
                Err(LlmError::Unavailable("503".into())),
                Err(LlmError::Unavailable("503".into())),
            ],
            [
                rejected("too long"),
                Err(LlmError::Unavailable("503".into())),
            ],
        ] {
            assert_eq!(Stop::check(&base, &results), None, "{results:?}");
        }
        assert_eq!(Stop::check(&[], &[]), None);
    }

    #[test]
    fn a_spent_budget_stops_first() {
        let roles = [Role::Judge, Role::Judge];
        let results = [rejected("no"), Err(LlmError::BudgetExhausted)];
        let stop = Stop::check(&roles, &results);
        assert_eq!(stop, Some(Stop::BudgetExhausted));
        assert_eq!(
            Stop::details(stop.as_ref()),
            json!({"kind": "budget-exhausted"})
        );
        assert_eq!(Stop::details(None), Value::Null);
    }

    #[test]
    fn judgements_count_what_was_asked_and_what_was_usable() {
        let mut count = Judgements::default();
        count.ask(2);
        count.received(&Judgement::unusable("no JSON"));
        count.received(&Judgement {
            scores: vec![crate::parse::AspectScore::new(
                crate::aspects::find("Clarity").unwrap(),
                4,
                String::new(),
            )],
            problems: Vec::new(),
        });
        assert_eq!(
            serde_json::to_value(count).unwrap(),
            json!({"asked": 2, "usable": 1})
        );
    }
}
