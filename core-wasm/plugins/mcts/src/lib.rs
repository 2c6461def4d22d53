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
use serde::Deserialize;

/// The options `run` accepts; defaults and bounds come from [`schema`].
#[derive(Clone, Debug, Deserialize)]
pub struct Options {
    /// Selection–expansion–backpropagation rounds.
    pub iterations: u32,
    /// UCT's exploration constant (rewards are on the judge's 1–5 scale).
    pub exploration: f64,
    /// The deepest level a node may have (the root is level 0).
    pub depth: u32,
    /// Children per expansion (the optimizer's number of choices).
    pub width: u32,
    /// Seed, token limits, the optimizer's temperature, the initial prompt.
    #[serde(flatten)]
    pub requests: Settings,
}

/// The options, their defaults and bounds.
pub fn schema() -> OptionsSchema {
    let schema = OptionsSchema::new("Monte-Carlo tree search options")
        .integer(
            "iterations",
            8,
            1,
            "Selection, expansion and backpropagation rounds.",
        )
        .number(
            "exploration",
            2.5,
            0.0,
            "UCT exploration constant (rewards are 1 to 5).",
        )
        .integer(
            "depth",
            4,
            1,
            "Deepest level of the tree; the root is level 0.",
        )
        .integer(
            "width",
            3,
            1,
            "Children per expansion: candidate prompts the optimizer writes.",
        );
    Settings::add_to(schema, 0.7)
}

/// The calls per role a search with `options` makes: the root is answered and judged once;
/// each iteration expands at most one node (one optimizer request, `width` answers and
/// judgements); aspect selection is once per query, and a path of `depth + 1` levels reaches at
/// most that many queries. Fewest: only the root's expansion (every later selection may reach a
/// leaf at the depth limit). Token sizes are the DRPO prompts' ([`request_sizes`]).
pub fn estimate_calls(options: &Options) -> Vec<RoleEstimate> {
    let iterations = u64::from(options.iterations);
    let width = u64::from(options.width);
    let levels = u64::from(options.depth) + 1;
    request_sizes(
        &options.requests.request_settings(options.width),
        &options.requests.initial_system_prompt,
        LINEAGE_WINDOW,
    )
    .into_iter()
    .map(|mut e| {
        (e.min_calls, e.max_calls) = match e.role {
            Role::Base | Role::Judge => (1 + width, 1 + iterations * width),
            Role::Metrics => (1, levels.min(1 + iterations)),
            Role::Optimizer => (1, iterations),
        };
        e
    })
    .collect()
}

/// The exported strategy.
struct Mcts;

impl Strategy for Mcts {
    fn describe() -> Info {
        Info {
            name: "mcts".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Monte-Carlo tree search over system prompts (as in PromptAgent), scored \
with DRPO's reward: each iteration selects a node by UCT (mean reward plus exploration · \
sqrt(ln N(parent) / N(child))), expands it into `width` prompts the optimizer writes from the \
node's answer and judgement, judges each on the next training query, and backpropagates the best \
new reward to the root. Returns the node whose path has the best mean reward."
                .into(),
            options_schema: schema().to_json(),
        }
    }

    fn run(host: &mut ComponentHost, options: &str) -> Result<Outcome, String> {
        let options: Options = schema().parse(options)?;
        let queries = host.queries();
        let examples = host.examples();
        search::run(host, &options, &queries, examples)
    }

    fn estimate(options: &str) -> Result<Vec<RoleEstimate>, String> {
        Ok(estimate_calls(&schema().parse(options)?))
    }
}

export_strategy!(Mcts);
