//! `drpo-host` runs DRPO search strategies — WebAssembly components implementing the
//! `drpo:strategy` WIT contract — in a deterministic sandbox, routes their model calls to
//! providers, and records every call in a hash-chained run log for replay, resume and audit.
//!
//! | module | concern |
//! |---|---|
//! | [`bindings`] | the WIT contract, as Rust types |
//! | [`runtime`] | loading plugins, the sandbox, limits, answering import calls |
//! | [`runlog`] | the run log format: record, verify, read |
//! | [`provider`] | model providers and the per-role router |
//! | [`config`] | flags, config file and strategy options resolved into one configuration |
//! | [`metrics_cache`] | the published per-query metrics cache file |
//! | [`services`] | building the providers and reading the data of a run |
//! | [`rundir`] | the files a run leaves |
//! | [`outputs`] | the `view` and `export` commands |
//! | [`progress`] | the progress display of a run |
//! | [`report`] | `result.json`, `trace.txt` and the published `output.json`, from the node records |
//! | [`viewer`] | `tree.html`, the self-contained tree viewer |
//! | [`cli`] | the command line |

pub mod bindings;
pub mod cli;
pub mod config;
pub mod metrics_cache;
pub mod outputs;
pub mod progress;
pub mod provider;
pub mod report;
pub mod rundir;
pub mod runlog;
pub mod runtime;
pub mod services;
pub mod viewer;
