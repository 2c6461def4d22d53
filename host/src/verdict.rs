//! What a run's exit code says. A run that finished is a success only if its judge produced
//! usable judgements; a run that stopped because a role failed for good, or because a budget
//! was spent, says so with its own code, its results written all the same.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | the run finished with usable judgements |
//! | 1 | an error: bad input, a failing plugin, an unreadable file |
//! | 2 | the command line itself is wrong |
//! | 3 | nothing could be scored: no judgement was usable |
//! | 4 | a role failed permanently (in the preflight, or every request of a role in a level) |
//! | 5 | a budget stopped the run |
//!
//! `verify` has its own: 0 verified, 1 an error that left it unable to say, and
//!
//! | code | meaning |
//! |---|---|
//! | 10 | tampered: the log is corrupt or was altered, or its signature does not vouch for it |
//! | 11 | diverged: the replay asked for something the log does not hold, or ended otherwise |
//! | 12 | unsigned: a public key was given, and the run is not signed (with it) |
//! | 13 | another plugin: the plugin given is not the one the run recorded |
//! | 14 | unfinished: the run has not ended |

use serde_json::Value;

use crate::bindings::types::{LlmError, Outcome};
use crate::runlog::{CallRecord, CallResponse};

/// The exit code of a run that could not be scored.
pub const NOTHING_SCORED: u8 = 3;
/// The exit code of a run stopped by a role that failed permanently.
pub const ROLE_FAILED: u8 = 4;
/// The exit code of a run stopped by a budget.
pub const BUDGET_STOPPED: u8 = 5;

/// `verify`: the log is corrupt or altered, or its signature does not vouch for it.
pub const TAMPERED: u8 = 10;
/// `verify`: the replay diverged.
pub const DIVERGED: u8 = 11;
/// `verify`: a key was given and the run is not signed with it.
pub const UNSIGNED: u8 = 12;
/// `verify`: the plugin given is not the recorded one.
pub const OTHER_PLUGIN: u8 = 13;
/// `verify`: the run has not ended.
pub const UNFINISHED: u8 = 14;

/// An error that carries its exit code; every other error exits with 1.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

/// How many judgements a strategy asked for and how many it could use, as it reports them in
/// its outcome's details (`"judgements": {"asked": A, "usable": U}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judgements {
    pub asked: u64,
    pub usable: u64,
}

impl Judgements {
    /// The counts in an outcome's details, if the strategy reports them.
    pub fn of(outcome: &Outcome) -> Option<Judgements> {
        let details: Value = serde_json::from_str(&outcome.details).ok()?;
        let counts = details.get("judgements")?;
        Some(Judgements {
            asked: counts.get("asked")?.as_u64()?,
            usable: counts.get("usable")?.as_u64()?,
        })
    }

    /// The line `run` and `inspect` print.
    pub fn line(&self) -> String {
        format!("usable judgements: {} of {}", self.usable, self.asked)
    }
}

/// Why the strategy ended its search before its limits without failing (its outcome's details'
/// `"ended_early"`: a rule such as beam's `patience`), if it did.
pub fn ended_early(outcome: &Outcome) -> Option<String> {
    let details: Value = serde_json::from_str(&outcome.details).ok()?;
    details.get("ended_early")?.as_str().map(str::to_owned)
}

/// What a validation split decided (its outcome's details' `validation.summary`), if the
/// strategy held queries out.
pub fn validation(outcome: &Outcome) -> Option<String> {
    summary_of(outcome, "validation")
}

/// How much the judge disagreed with itself (its outcome's details' `judge_spread.summary`),
/// if it was asked more than once per answer.
pub fn judge_spread(outcome: &Outcome) -> Option<String> {
    summary_of(outcome, "judge_spread")
}

/// How the candidates fared against their parent prompts under a pairwise reward (its
/// outcome's details' `comparisons.summary`), if the search compared them.
pub fn comparisons(outcome: &Outcome) -> Option<String> {
    summary_of(outcome, "comparisons")
}

fn summary_of(outcome: &Outcome, field: &str) -> Option<String> {
    let details: Value = serde_json::from_str(&outcome.details).ok()?;
    details[field]["summary"].as_str().map(str::to_owned)
}

/// Whether the best score is the chosen prompt's mean on held-out queries rather than the
/// search's own score.
pub fn score_is_held_out(outcome: &Outcome) -> bool {
    serde_json::from_str::<Value>(&outcome.details)
        .is_ok_and(|details| !details["validation"]["chosen_node"].is_null())
}

/// How the best prompt is introduced: said to be the initial one when the search kept it, so
/// that a user need not compare the texts to learn that nothing better was found.
/// `initial_system_prompt` is the option every DRPO-scored strategy shares; a strategy without
/// it is never said to have kept it.
pub fn best_prompt_heading(outcome: &Outcome, options: &str) -> &'static str {
    let initial = serde_json::from_str::<Value>(options)
        .ok()
        .and_then(|options| options["initial_system_prompt"].as_str().map(str::to_owned));
    match (&outcome.best_prompt, initial) {
        (Some(best), Some(initial)) if best.trim() == initial.trim() => {
            "best prompt (unchanged: the search kept the initial prompt)"
        }
        _ => "best prompt",
    }
}

/// Why a finished run is not a success; `None` when it is.
pub fn failure(outcome: &Outcome, calls: &[CallRecord]) -> Option<Exit> {
    let details: Value = serde_json::from_str(&outcome.details).unwrap_or(Value::Null);
    let stop = &details["stop"];
    if stop["kind"] == "role-failed" {
        return Some(Exit {
            code: ROLE_FAILED,
            message: format!(
                "the search stopped: every {} request of a level failed with the same permanent \
                 error: {}",
                stop["role"].as_str().unwrap_or("?"),
                stop["error"].as_str().unwrap_or("?")
            ),
        });
    }
    if stop["kind"] == "budget-exhausted" || refused_for_budget(calls) {
        return Some(Exit {
            code: BUDGET_STOPPED,
            message: "a budget stopped the run; the results so far are written".into(),
        });
    }
    match Judgements::of(outcome) {
        Some(judgements) if judgements.usable == 0 => Some(Exit {
            code: NOTHING_SCORED,
            message: format!(
                "nothing could be scored: none of the {} judgements was usable (see log.txt for \
                 why; a judge model that cannot follow the rubric, or answers cut by \
                 judge_max_tokens, are the usual causes)",
                judgements.asked
            ),
        }),
        _ => None,
    }
}

/// Whether any request of the run was refused because a budget was spent.
fn refused_for_budget(calls: &[CallRecord]) -> bool {
    calls.iter().any(|call| match &call.response {
        CallResponse::Complete(results) => results.contains(&Err(LlmError::BudgetExhausted)),
        CallResponse::Embed(result) => *result == Err(LlmError::BudgetExhausted),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(details: Value) -> Outcome {
        Outcome {
            best_prompt: None,
            best_score: None,
            best_path: Vec::new(),
            details: details.to_string(),
        }
    }

    #[test]
    fn a_run_with_usable_judgements_succeeds() {
        let done =
            outcome(serde_json::json!({"stop": null, "judgements": {"asked": 4, "usable": 1}}));
        assert!(failure(&done, &[]).is_none());
        assert_eq!(
            Judgements::of(&done).unwrap().line(),
            "usable judgements: 1 of 4"
        );
    }

    #[test]
    fn a_kept_initial_prompt_is_said_to_be_unchanged() {
        let options = r#"{"initial_system_prompt": "You are a helpful assistant.", "depth": 2}"#;
        let mut kept = outcome(serde_json::json!({}));
        kept.best_prompt = Some("You are a helpful assistant.\n".into());
        assert_eq!(
            best_prompt_heading(&kept, options),
            "best prompt (unchanged: the search kept the initial prompt)"
        );
        let mut found = kept.clone();
        found.best_prompt = Some("You are a careful, honest assistant.".into());
        assert_eq!(best_prompt_heading(&found, options), "best prompt");
        // A strategy without the option, or options that do not parse, make no claim.
        assert_eq!(best_prompt_heading(&kept, r#"{"depth": 2}"#), "best prompt");
        assert_eq!(best_prompt_heading(&kept, "not json"), "best prompt");
    }

    #[test]
    fn each_kind_of_failure_has_its_code() {
        let none = outcome(serde_json::json!({"judgements": {"asked": 4, "usable": 0}}));
        assert_eq!(failure(&none, &[]).unwrap().code, NOTHING_SCORED);
        let role = outcome(serde_json::json!({
            "stop": {"kind": "role-failed", "role": "judge", "error": "HTTP 404"},
            "judgements": {"asked": 4, "usable": 0},
        }));
        let exit = failure(&role, &[]).unwrap();
        assert_eq!(exit.code, ROLE_FAILED);
        assert!(exit.message.contains("judge") && exit.message.contains("HTTP 404"));
        let budget = outcome(serde_json::json!({"stop": {"kind": "budget-exhausted"}}));
        assert_eq!(failure(&budget, &[]).unwrap().code, BUDGET_STOPPED);
    }
}
