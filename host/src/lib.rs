//! `drpo-host` runs DRPO search strategies — WebAssembly components implementing the
//! `drpo:strategy` WIT contract — in a deterministic sandbox, routes their model calls to
//! providers, and records every call in a hash-chained run log for replay, resume and audit.
//!
//! | module | concern |
//! |---|---|
//! | [`bindings`] | the WIT contract, as Rust types |
//! | [`catalog`] | strategies found by name: `$DRPO_PLUGIN_PATH`, beside the binary, the checkout |
//! | [`runtime`] | loading plugins, the sandbox, limits, answering import calls |
//! | [`runlog`] | the run log format: record, verify, read |
//! | [`provider`] | model providers and the per-role router |
//! | [`config`] | flags, config file and strategy options resolved into one configuration |
//! | [`metrics_cache`] | the published per-query metrics cache file |
//! | [`services`] | building the providers and reading the data of a run |
//! | [`grants`] | the roles and model calls a plugin is granted |
//! | [`roles`] | the roles of model requests, their names, one value per role |
//! | [`rundir`] | the files a run leaves |
//! | [`pricing`] | the price table: USD per million tokens per model |
//! | [`projection`] | the calls, tokens and money a run is projected to spend |
//! | [`accounting`] | what a run spent per role, from its run log |
//! | [`budget`] | call, token, money and time budgets |
//! | [`cache`] | the persistent response cache |
//! | [`endpoints`] | per-role endpoints and keys, rate limits, concurrency, cache switch |
//! | [`eval`] | judging answer files with eval.wasm, the side-by-side report |
//! | [`gate`] | what live requests pass: the cache, then the budget |
//! | [`preflight`] | checking each remote model before a run spends anything |
//! | [`outputs`] | the `view` and `export` commands |
//! | [`progress`] | the progress display of a run |
//! | [`tree`] | the search tree a strategy reports, checked node by node |
//! | [`report`] | `result.json`, `trace.txt` and the published `output.json`, from the node records |
//! | [`viewer`] | `tree.html`, the self-contained tree viewer |
//! | [`generate`] | answering queries with an optimized prompt and retrieved examples |
//! | [`subrun`] | commands that are recorded runs of a shipped strategy (`eval`, `generate`) |
//! | [`terminal`] | plugin-supplied text made safe to print |
//! | [`verdict`] | what a run's exit code says |
//! | [`cli`] | the command line |

pub mod bindings;
pub mod calls;
pub mod catalog;
pub mod cli;
pub mod commands;
pub mod config;
pub mod endpoints;
pub mod metrics_cache;
pub mod progress;
pub mod provider;
pub mod report;
pub mod roles;
pub mod rundir;
pub mod runlog;
pub mod runtime;
pub mod services;
pub mod spending;
pub mod terminal;
#[cfg(test)]
mod testing;
pub mod tree;
pub mod verdict;
pub mod viewer;
