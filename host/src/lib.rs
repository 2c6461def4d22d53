//! `drpo-host` runs DRPO search strategies — WebAssembly components implementing the
//! `drpo:strategy` WIT contract — in a deterministic sandbox, routes their model calls to
//! providers, and records every call in a hash-chained run log for replay, resume and audit.
//!
//! The modules are layered; which may import which is stated once, in `docs/design.md`
//! ("The host, module by module").

pub mod bindings;
pub mod calls;
pub mod catalog;
pub mod cli;
pub mod commands;
pub mod config;
pub mod endpoints;
pub mod metrics_cache;
pub mod mlflow;
pub mod progress;
pub mod provider;
pub mod report;
pub mod roles;
pub mod rundir;
pub mod runlog;
pub mod runtime;
pub mod services;
pub mod signing;
pub mod spending;
pub mod terminal;
#[cfg(test)]
mod testing;
pub mod tree;
pub mod verdict;
pub mod viewer;
