//! `pareto.wasm`: a search that keeps a Pareto frontier over DRPO's aspects, as GEPA does over
//! examples and objectives. Every prompt is judged on the same training queries, each on the
//! aspects the metrics model chose for it; a prompt's objectives are its mean score per aspect.
//! The frontier holds the prompts no other beats on every aspect. Each step improves one
//! frontier prompt (in turn) from the judge's feedback, or, every `merge_every` steps, asks the
//! optimizer to merge the two frontier prompts that lead on different aspects into one. The
//! result is the frontier prompt with the best mean reward (or, with `validation`, the best
//! held-out mean among the frontier and the initial prompt).
//!
//! [`frontier`] holds the dominance rules with no model calls; [`search`] grows the frontier
//! through any [`drpo_kit::Host`], so both are tested natively.

pub mod frontier;
pub mod search;

use drpo_kit::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The options `run` accepts, declared once: the schema `describe` publishes is derived from
/// this type (doc comments, defaults, minimums).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[schemars(crate = "drpo_kit::schemars", title = "Pareto search options")]
#[serde(default)]
pub struct Options {
    /// New prompts to try, one optimizer call each.
    #[schemars(range(min = 1))]
    pub steps: u32,
    /// Training queries every prompt is judged on.
    #[schemars(range(min = 1))]
    pub eval_queries: u32,
    /// Every this many steps, merge two frontier prompts instead of improving one (0: never).
    pub merge_every: u32,
    /// Seed, token limits, the optimizer's temperature, the initial prompt.
    #[serde(flatten)]
    pub requests: Settings,
    /// The validation split: queries held out of the search to choose its result on.
    #[serde(flatten)]
    pub held_out: HeldOut,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            steps: 8,
            eval_queries: 3,
            merge_every: 3,
            requests: Settings::with_temperature(0.7),
            held_out: HeldOut::default(),
        }
    }
}

impl StrategyOptions for Options {
    fn schema() -> Value {
        derived_schema::<Self>()
    }
}

/// The calls per role ([`drpo_kit::stepwise_estimate`]): each step's prompt is judged on
/// `eval_queries` queries, like the initial prompt.
pub fn estimate_calls(options: &Options) -> Vec<RoleEstimate> {
    let mut estimate = drpo_kit::stepwise_estimate(
        &options.requests,
        &options.held_out,
        options.steps,
        options.eval_queries,
    );
    // An improving step asks once more when every candidate was a prompt for its query.
    for role in &mut estimate {
        if role.role == Role::Optimizer {
            role.max_calls = role.max_calls.saturating_add(u64::from(options.steps));
        }
    }
    estimate
}

/// The exported strategy.
struct Pareto;

impl Strategy for Pareto {
    type Options = Options;
    const NAME: &'static str = "pareto";
    const DESCRIPTION: &'static str = "Pareto search over DRPO's aspects (as GEPA keeps a \
frontier): every prompt is judged on the same eval_queries training queries, on the aspects \
chosen per query; the frontier holds the prompts no other beats on every aspect's mean. Each \
step improves one frontier prompt in turn from the judge's feedback, or every merge_every steps \
merges the two frontier prompts that lead on different aspects. Returns the frontier prompt with \
the best mean reward (with validation, the best held-out mean).";

    fn run<H: StrategyHost>(host: &mut H, options: Options) -> Result<Outcome, String> {
        let queries = host.queries(None);
        let examples = host.examples();
        search::run(host, &options, &queries, examples)
    }

    fn estimate(options: &Options) -> Result<Vec<RoleEstimate>, String> {
        Ok(estimate_calls(options))
    }
}

export_strategy!(Pareto);
