//! The request options every DRPO-scored search shares (the seed, the optimizer's temperature,
//! the token limits, the in-context examples), declared once for every strategy that offers
//! them.

use drpo::engine::RequestSettings;
use drpo::icl::BASELINE_PROMPT;
use serde::Deserialize;

use crate::OptionsSchema;

/// The request settings every DRPO-scored search shares, as options: put them in a strategy's
/// options struct with `#[serde(flatten)]` and in its schema with [`Settings::add_to`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Settings {
    /// The prompt the search starts from.
    pub initial_system_prompt: String,
    /// Seed of every request.
    pub seed: u64,
    /// The optimizer's sampling temperature.
    pub temperature: f64,
    /// Token limit of a base-model answer.
    pub base_max_tokens: u32,
    /// Token limit of an aspect selection.
    pub metrics_max_tokens: u32,
    /// Token limit of a judgement.
    pub judge_max_tokens: u32,
    /// Token limit of each optimizer candidate.
    pub optimizer_max_tokens: u32,
    /// In-context examples the base model sees: the first `k` of the pool.
    pub k: u32,
}

impl Settings {
    /// Adds the settings to `schema`; `temperature` is the optimizer's default temperature.
    pub fn add_to(schema: OptionsSchema, temperature: f64) -> OptionsSchema {
        let defaults = RequestSettings::default();
        schema
            .string(
                "initial_system_prompt",
                BASELINE_PROMPT,
                "The system prompt the search starts from.",
            )
            .integer("seed", 0, 0, "Seed of every request.")
            .number(
                "temperature",
                temperature,
                0.0,
                "Sampling temperature of the optimizer.",
            )
            .integer(
                "base_max_tokens",
                defaults.base_max_tokens.into(),
                1,
                "Token limit of a base-model answer.",
            )
            .integer(
                "metrics_max_tokens",
                defaults.metrics_max_tokens.into(),
                1,
                "Token limit of an aspect selection.",
            )
            .integer(
                "judge_max_tokens",
                defaults.judge_max_tokens.into(),
                1,
                "Token limit of a judgement.",
            )
            .integer(
                "optimizer_max_tokens",
                defaults.optimizer_max_tokens.into(),
                1,
                "Token limit of each optimizer candidate.",
            )
            .integer(
                "k",
                defaults.k.into(),
                1,
                "In-context examples the base model sees: the first k of the pool.",
            )
    }

    /// The engine's request settings for these options, the optimizer writing `candidates`
    /// prompts per request.
    pub fn request_settings(&self, candidates: u32) -> RequestSettings {
        RequestSettings {
            n_actions: candidates.max(1),
            temperature: self.temperature,
            seed: self.seed,
            base_max_tokens: self.base_max_tokens,
            metrics_max_tokens: self.metrics_max_tokens,
            judge_max_tokens: self.judge_max_tokens,
            optimizer_max_tokens: self.optimizer_max_tokens,
            k: self.k,
            ..RequestSettings::default()
        }
    }
}
