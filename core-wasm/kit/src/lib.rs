//! `drpo-kit`: write a `drpo-host` search strategy in plain Rust.
//!
//! A strategy implements [`Strategy`] against the [`StrategyHost`] trait and exports itself
//! with [`export_strategy!`]; built for
//! `wasm32-wasip2` the crate is a component of the `drpo:strategy` contract
//! (`wit/strategy.wit`), ready for `drpo-host run --strategy`. The kit pins the contract version
//! (the WIT file is compiled in), so a plugin states the version it was built for and the host
//! can refuse an incompatible one by name.
//!
//! What the kit gives a strategy:
//! - the host's imports as a value, [`ComponentHost`], which implements [`StrategyHost`] (the
//!   DRPO library's [`Host`] and the run's data): write the search generic over
//!   `H: StrategyHost` and test it natively with [`testing::ScriptedHost`], no WebAssembly
//!   involved;
//! - [`HostExt`]: batched completion with answers parsed into serde types, node recording,
//!   logging one-liners;
//! - [`StrategyOptions`]: declare options once, as a type whose JSON Schema is derived
//!   ([`derived_schema`]: doc comments as descriptions, `Default` as defaults, minimums from
//!   `#[schemars(range(min = ...))]`); `run` receives them parsed, with the defaults filled in;
//! - [`engine`]: the DRPO scoring engine (the library's [`drpo::engine`]): the reward of a
//!   candidate prompt (base answer, aspect selection, judge), the optimizer's proposals and the
//!   one [`Stop`] type, so every strategy is scored the same way; [`Settings`] declares its
//!   request options;
//! - [`testing`]: a scripted host for native tests;
//! - the whole DRPO library as [`drpo`] (aspects, meta-prompts, tolerant parsing, rewards).
//!
//! `templates/strategy` is a complete strategy to copy; `docs/writing-a-strategy.md` walks
//! through it.

#![warn(missing_docs)]

mod component;
mod ext;
mod options;
mod settings;

pub use component::ComponentHost;
pub use drpo;
pub use drpo::engine::{self, Stop};
pub use drpo::testing;
pub use drpo::types::{
    Completion, Example, Host, Info, LlmError, LogLevel, Message, Node, Outcome, Prompt, Query,
    Request, Role, RoleEstimate, Sampling, Usage,
};
pub use ext::{HostExt, Typed, chat_request};
pub use options::{OptionsSchema, StrategyOptions, derived_schema, parse_with_schema};
pub use schemars::{self, JsonSchema};
pub use settings::{HeldOut, Settings, stepwise_estimate};

/// The version of the `drpo:strategy` contract this kit builds plugins for (read from the WIT
/// file; see [`drpo::contract`]).
pub use drpo::contract::WIT_VERSION;

/// Everything a strategy usually needs, in one `use`.
pub mod prelude {
    pub use crate::{
        Completion, ComponentHost, Example, HeldOut, Host, HostExt, Info, JsonSchema, LlmError,
        LogLevel, Message, Node, OptionsSchema, Outcome, Prompt, Query, Request, Role,
        RoleEstimate, Sampling, Settings, Stop, Strategy, StrategyHost, StrategyOptions, Typed,
        chat_request, derived_schema, export_strategy,
    };
}

/// What a strategy may ask of the host: the DRPO library's [`Host`] (completions, embeddings,
/// nodes, logs) and the run's data. A strategy is written against this trait, so the same code
/// runs in the component ([`ComponentHost`]) and in native tests ([`testing::ScriptedHost`]).
pub trait StrategyHost: Host {
    /// The training queries, at most `limit` of them (all when `None`), in the order the run
    /// uses them (see the `queries` import in `wit/strategy.wit`).
    fn queries(&mut self, limit: Option<u32>) -> Vec<Query>;
    /// The pool of in-context examples.
    fn examples(&mut self) -> Vec<Example>;
}

impl StrategyHost for testing::ScriptedHost {
    /// The scripted queries as a list: the first `limit` of them.
    fn queries(&mut self, limit: Option<u32>) -> Vec<Query> {
        drpo::data::TrainingData::Listed(self.queries.clone()).draw(limit, 0)
    }
    fn examples(&mut self) -> Vec<Example> {
        self.examples.clone()
    }
}

/// A search strategy. The kit turns an implementation into the component's three exports:
/// `describe` publishes the name, the crate's version, the description and the options schema
/// ([`StrategyOptions::schema`]); `run` and `estimate` receive the options parsed.
pub trait Strategy {
    /// The options, declared once (see [`StrategyOptions`]).
    type Options: StrategyOptions + serde::de::DeserializeOwned;
    /// The strategy's name, as `drpo-host describe` shows it.
    const NAME: &'static str;
    /// What the strategy does, for `drpo-host describe`.
    const DESCRIPTION: &'static str;

    /// Runs the search. An `Err` is shown to the user as the reason the run failed.
    fn run<H: StrategyHost>(host: &mut H, options: Self::Options) -> Result<Outcome, String>;

    /// The calls a run with these options may make, per role, for the host's projection.
    /// The default says nothing (an empty list); the host then shows no projection.
    fn estimate(options: &Self::Options) -> Result<Vec<RoleEstimate>, String> {
        let _ = options;
        Ok(Vec::new())
    }

    /// For a strategy that searches level by level, the levels a run with these options means
    /// to complete (as [`Node::depth`] counts them); the host shows progress against it. The
    /// default: `None`, no levels.
    fn levels(options: &Self::Options) -> Option<u32> {
        let _ = options;
        None
    }
}

/// The generated bindings of `wit/strategy.wit`. Public for [`export_strategy!`] only: a
/// strategy uses the kit's types, never these.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "strategy",
        pub_export_macro: true,
        export_macro_name: "export_component",
        default_bindings_module: "drpo_kit::bindings",
    });
}

/// Exports a [`Strategy`] as the component's `describe`, `run` and `estimate`. Use it once, at
/// the crate root of a `cdylib` crate: `drpo_kit::export_strategy!(MyStrategy);`.
#[macro_export]
macro_rules! export_strategy {
    ($strategy:ty) => {
        #[doc(hidden)]
        struct __DrpoKitExports;

        impl $crate::bindings::Guest for __DrpoKitExports {
            fn describe() -> $crate::bindings::drpo::strategy::types::Info {
                $crate::__export::describe::<$strategy>(env!("CARGO_PKG_VERSION"))
            }
            fn run(
                options: ::std::string::String,
            ) -> ::std::result::Result<
                $crate::bindings::drpo::strategy::types::Outcome,
                ::std::string::String,
            > {
                $crate::__export::run::<$strategy>(&options)
            }
            fn estimate(
                options: ::std::string::String,
            ) -> ::std::result::Result<
                $crate::bindings::drpo::strategy::types::Plan,
                ::std::string::String,
            > {
                $crate::__export::estimate::<$strategy>(&options)
            }
        }

        $crate::bindings::export_component!(__DrpoKitExports with_types_in $crate::bindings);
    };
}

/// The conversions behind [`export_strategy!`].
#[doc(hidden)]
pub mod __export {
    pub use crate::component::{describe, estimate, run};
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_stated_contract_version_is_the_wit_files() {
        let wit = include_str!("../../../wit/strategy.wit");
        let package = format!("package drpo:strategy@{};", super::WIT_VERSION);
        assert!(wit.contains(&package), "the kit states {package}");
    }
}
