//! The DRPO library: everything Dynamic Rewarding with Prompt Optimization decides, and nothing
//! it does to the outside world.
//!
//! The crate is pure: no I/O, no clocks, no threads and no ambient randomness. Model calls,
//! embeddings, the node tree and logs go through the [`types::Host`] trait, so the same code runs
//! natively (unit tests, the host's helpers) and inside a `wasm32-wasip2` strategy component
//! (the plugin kit implements [`types::Host`] over the WIT bindings).
//!
//! Modules, in the order a run uses them ([`contract`]: the WIT contract's version, read from
//! the WIT file):
//! - [`data`]: training-query loaders, the published proportional sampling and a seeded shuffle;
//! - [`aspects`]: the catalogue of 14 reward aspects with their rubrics;
//! - [`prompts`]: the three meta-prompts (aspect selection, judging, optimizing), their schemas
//!   and requests;
//! - [`icl`]: in-context example retrieval, the base model's training and inference prompts,
//!   and the prompt that rewrites the examples' answers;
//! - [`parse`]: tolerant parsing of the models' JSON answers;
//! - [`reward`]: the reward, the skip rule and the depth extension;
//! - [`pairwise`]: two answers to one query compared by the judge, in both orders;
//! - [`engine`]: the scoring engine every strategy uses: request settings, batched calls and
//!   the stop rule, aspect selection with its fallback, judging and proposals;
//! - [`outcome`]: what every strategy reports on how its run went: why it stopped early, and
//!   how many judgements it could use;
//! - [`patience`]: ending a search whose best score has stopped improving;
//! - [`validation`]: holding queries out of a search and choosing its result on them;
//! - [`testing`]: a scripted [`types::Host`] for native tests of a search.
//!
//! How the space of prompts is searched is not here: each strategy plugin owns its search
//! (`core-wasm/plugins/beam`, `greedy`, `mcts`, `icl`) and scores through [`engine`].

#![warn(missing_docs)]

pub mod aspects;
pub mod contract;
pub mod data;
pub mod engine;
pub mod icl;
pub mod outcome;
pub mod pairwise;
pub mod parse;
pub mod patience;
pub mod prompts;
pub mod reward;
pub mod testing;
pub mod types;
pub mod validation;
