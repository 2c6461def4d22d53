//! `mcts.wasm`: Monte-Carlo tree search over system prompts, as PromptAgent does it, with
//! DRPO's reward. Built only on the public plugin kit.
//!
//! [`tree`] holds the algorithm (UCT selection, expansion, backpropagation) with no model
//! calls; [`search`] grows that tree with the optimizer and the judge through any
//! [`drpo_kit::Host`], so both are tested natively.

pub mod search;
pub mod tree;

use drpo_kit::drpo::prompts::LINEAGE_WINDOW;
use drpo_kit::engine::request_sizes;
use drpo_kit::prelude::*;
use serde::{Deserialize, Serialize};

/// The options `run` accepts, declared once: the schema `describe` publishes is derived from
/// this type (doc comments, defaults, minimums).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[schemars(
    crate = "drpo_kit::schemars",
    title = "Monte-Carlo tree search options"
)]
#[serde(default)]
pub struct Options {
    /// Selection, expansion and backpropagation rounds.
    #[schemars(range(min = 1))]
    pub iterations: u32,
    /// UCT exploration constant (rewards are 1 to 5).
    #[schemars(range(min = 0.0))]
    pub exploration: f64,
    /// Deepest level of the tree; the root is level 0.
    #[schemars(range(min = 1))]
    pub depth: u32,
    /// Children per expansion: candidate prompts the optimizer writes.
    #[schemars(range(min = 1))]
    pub width: u32,
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
            iterations: 8,
            exploration: 2.5,
            depth: 4,
            width: 3,
            requests: Settings::with_temperature(0.7),
            held_out: HeldOut::default(),
        }
    }
}

impl StrategyOptions for Options {
    fn schema() -> serde_json::Value {
        derived_schema::<Self>()
    }
}

/// The calls per role a search with `options` makes: the root is answered and judged once;
/// each iteration expands at most one node (one optimizer request, `width` answers and
/// judgements); aspect selection is once per query, and a path of `depth + 1` levels reaches at
/// most that many queries. Fewest: only the root's expansion (every later selection may reach a
/// leaf at the depth limit). A validation split adds its own calls
/// ([`HeldOut::extra_calls`]). Token sizes are the DRPO prompts' ([`request_sizes`]).
pub fn estimate_calls(options: &Options) -> Vec<RoleEstimate> {
    let iterations = u64::from(options.iterations);
    let width = u64::from(options.width);
    let levels = u64::from(options.depth) + 1;
    let settings = options.requests.request_settings(options.width);
    request_sizes(
        &settings,
        &options.requests.initial_system_prompt,
        LINEAGE_WINDOW,
    )
    .into_iter()
    .zip(options.held_out.extra_calls())
    .map(|(mut e, (extra_min, extra_max))| {
        let (min, max) = match e.role {
            Role::Base | Role::Judge => (1 + width, 1 + iterations.saturating_mul(width)),
            Role::Metrics => (1, levels.min(1 + iterations)),
            // One request per expansion, and once more where every candidate was about the
            // query.
            Role::Optimizer => (1, iterations.saturating_mul(2)),
        };
        (e.min_calls, e.max_calls) = settings.requests_of(
            e.role,
            (min.saturating_add(extra_min), max.saturating_add(extra_max)),
        );
        e
    })
    .collect()
}

/// The exported strategy.
struct Mcts;

impl Strategy for Mcts {
    type Options = Options;
    const NAME: &'static str = "mcts";
    const DESCRIPTION: &'static str = "Monte-Carlo tree search over system prompts (as in \
PromptAgent), scored with DRPO's reward: each iteration selects a node by UCT (mean reward plus \
exploration · sqrt(ln N(parent) / N(child))), expands it into `width` prompts the optimizer \
writes from the node's answer and judgement, judges each on the next training query, and \
backpropagates the best new reward to the root. Returns the node whose path has the best mean \
reward. With `validation` queries held out, the best distinct prompts and the initial one are \
judged on them at the end, and the best held-out mean wins.";

    fn run<H: StrategyHost>(host: &mut H, options: Options) -> Result<Outcome, String> {
        let queries = host.queries(None);
        let examples = host.examples();
        search::run(host, &options, &queries, examples)
    }

    fn estimate(options: &Options) -> Result<Vec<RoleEstimate>, String> {
        Ok(estimate_calls(options))
    }

    fn levels(options: &Options) -> Option<u32> {
        Some(options.depth)
    }
}

export_strategy!(Mcts);
