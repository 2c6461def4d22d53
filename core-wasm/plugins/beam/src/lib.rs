//! `beam.wasm`: the DRPO beam-search strategy as a WebAssembly component.
//!
//! The beam search ([`search`]), its options ([`options`]) and its projection ([`estimate`])
//! live here; what a node is worth (aspect selection, judging, reward, the stop rule) is the
//! DRPO library's scoring engine (`drpo::engine`). The plugin kit turns the search into the
//! component's exports and gives it the host's imports.

pub mod estimate;
pub mod options;
pub mod search;

use drpo_kit::drpo::validation;
use drpo_kit::prelude::*;
use options::Options;

/// The exported strategy.
struct Beam;

impl Strategy for Beam {
    type Options = Options;
    const NAME: &'static str = "beam";
    const DESCRIPTION: &'static str = "DRPO (Dynamic Rewarding with Prompt Optimization) beam \
search: from an initial system prompt, each level answers one training query with the base \
model, judges the answer on the aspects a metrics model picked for that query, and has an \
optimizer write n_actions better prompts for every beam that is not already good (mean score \
above 4.5); the best beam_size paths by mean reward survive. Returns the best prompt, its path's \
mean reward, the path and the new metrics-cache entries. With `validation` queries held out, the \
best distinct prompts and the initial one are judged on them at the end, and the best held-out \
mean wins. With `reward: pairwise`, a candidate is ranked by whether the judge, shown its \
answer beside its parent prompt's answer to the same query in both orders, prefers it.";

    fn run<H: StrategyHost>(host: &mut H, options: Options) -> Result<Outcome, String> {
        let held_out = options.held_out.validation;
        let queries = host.queries(Some(options.num_training_examples.saturating_add(held_out)));
        let (queries, held_out) = validation::split(queries, held_out, options.seed)?;
        let examples = host.examples();
        search::run_and_validate(host, &options, &queries, &held_out, &examples)
    }

    fn estimate(options: &Options) -> Result<Vec<RoleEstimate>, String> {
        Ok(estimate::estimate(options))
    }

    fn levels(options: &Options) -> Option<u32> {
        Some(options.depth)
    }
}

export_strategy!(Beam);
