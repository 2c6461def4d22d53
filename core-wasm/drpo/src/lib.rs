//! The DRPO library: everything Dynamic Rewarding with Prompt Optimization decides, and nothing
//! it does to the outside world.
//!
//! The crate is pure: no I/O, no clocks, no threads and no ambient randomness. Model calls,
//! embeddings, the node tree and logs go through the [`types::Host`] trait, so the same code runs
//! natively (unit tests, the host's helpers) and inside a `wasm32-wasip2` strategy component
//! (the `beam` plugin implements [`types::Host`] over the WIT bindings).
//!
//! Modules, in the order a run uses them:
//! - [`options`]: the strategy's options, their published defaults and their JSON Schema;
//! - [`data`]: training-query loaders, the published proportional sampling and a seeded shuffle;
//! - [`aspects`]: the catalogue of 14 reward aspects with their rubrics;
//! - [`prompts`]: the three meta-prompts (aspect selection, judging, optimizing) and their schemas;
//! - [`icl`]: in-context example retrieval, the base model's training and inference prompts,
//!   and the prompt that rewrites the examples' answers;
//! - [`parse`]: tolerant parsing of the models' JSON answers;
//! - [`reward`]: the reward, the skip rule and the depth extension;
//! - [`search`]: the beam search itself;
//! - [`outcome`]: what every strategy reports on how its run went: why it stopped early, and
//!   how many judgements it could use;
//! - [`estimate`]: the calls and tokens a search may spend, for the projection before a run.

#![warn(missing_docs)]

pub mod aspects;
pub mod data;
pub mod estimate;
pub mod icl;
pub mod options;
pub mod outcome;
pub mod parse;
pub mod prompts;
pub mod reward;
pub mod search;
pub mod types;
