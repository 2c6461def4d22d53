//! The request options every DRPO-scored search shares (the seed, the optimizer's temperature,
//! the token limits, the in-context examples), declared once for every strategy that offers
//! them.

use drpo::engine::{RequestSettings, request_sizes};
use drpo::icl::BASELINE_PROMPT;
use drpo::prompts::LINEAGE_WINDOW;
use drpo::types::{Role, RoleEstimate};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The request settings every DRPO-scored search shares, as options: put them in a strategy's
/// options struct with `#[serde(flatten)]`. Their defaults are the published ones, the
/// optimizer's temperature the strategy's own (set it in the strategy's `Default`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct Settings {
    /// The system prompt the search starts from.
    pub initial_system_prompt: String,
    /// Seed of every request.
    pub seed: u64,
    /// Sampling temperature of the optimizer.
    #[schemars(range(min = 0.0))]
    pub temperature: f64,
    /// Token limit of a base-model answer.
    #[schemars(range(min = 1))]
    pub base_max_tokens: u32,
    /// Token limit of an aspect selection.
    #[schemars(range(min = 1))]
    pub metrics_max_tokens: u32,
    /// Token limit of a judgement.
    #[schemars(range(min = 1))]
    pub judge_max_tokens: u32,
    /// The judge's sampling temperature (published: 0, greedy).
    #[schemars(range(min = 0.0))]
    pub judge_temperature: f64,
    /// Judgements asked per answer, each with its own seed; the reward is their mean, and the
    /// outcome reports how much they disagree (published: 1). More than one needs a
    /// judge_temperature above 0.
    #[schemars(range(min = 1))]
    pub judge_repeats: u32,
    /// Judge each aspect in a request of its own, the aspects of an answer side by side in one
    /// batch, each with judge_max_tokens (published: one request rates every aspect).
    pub judge_per_aspect: bool,
    /// Drop an optimizer candidate that repeats this many consecutive words of the query it was
    /// written from, or reuses this many of its words of four letters or more when they are at
    /// least half of them, or repeats twice this many consecutive words of the answer it was
    /// shown: a prompt for that query, not for every query. When every candidate is dropped so,
    /// the optimizer is asked once more, told why (0 keeps every candidate).
    pub query_quote_words: u32,
    /// Token limit of each optimizer candidate.
    #[schemars(range(min = 1))]
    pub optimizer_max_tokens: u32,
    /// In-context examples the base model sees: the first k of the pool.
    #[schemars(range(min = 1))]
    pub k: u32,
}

impl Settings {
    /// The published settings, the optimizer sampling at `temperature`.
    pub fn with_temperature(temperature: f64) -> Self {
        let defaults = RequestSettings::default();
        Settings {
            initial_system_prompt: BASELINE_PROMPT.to_owned(),
            seed: defaults.seed,
            temperature,
            base_max_tokens: defaults.base_max_tokens,
            metrics_max_tokens: defaults.metrics_max_tokens,
            judge_max_tokens: defaults.judge_max_tokens,
            judge_temperature: defaults.judge_temperature,
            judge_repeats: defaults.judge_repeats,
            judge_per_aspect: defaults.judge_per_aspect,
            query_quote_words: defaults.query_quote_words,
            optimizer_max_tokens: defaults.optimizer_max_tokens,
            k: defaults.k,
        }
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
            judge_temperature: self.judge_temperature,
            judge_repeats: self.judge_repeats,
            judge_per_aspect: self.judge_per_aspect,
            query_quote_words: self.query_quote_words,
            optimizer_max_tokens: self.optimizer_max_tokens,
            k: self.k,
            ..RequestSettings::default()
        }
    }

    /// Checks what the schema cannot: more than one judge repeat needs a judge that samples.
    pub fn check(&self) -> Result<(), String> {
        drpo::engine::check_judge_repeats(self.judge_repeats, self.judge_temperature)
    }
}

/// The validation split every search offers, as options: put it in a strategy's options struct
/// with `#[serde(flatten)]`, call [`drpo::validation::split`] on the queries the host gives, and
/// [`drpo::validation::validate`] on the search's best candidates at the end.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default)]
pub struct HeldOut {
    /// Training queries held out of the search (drawn with the seed) to choose the final prompt
    /// on: the best distinct prompts and the initial prompt are judged on them and the best
    /// held-out mean wins. 0: none; the search's own score chooses, as published.
    pub validation: u32,
    /// With validation: how many of the search's best distinct prompts are judged on the
    /// held-out queries (the initial prompt is judged too).
    #[schemars(range(min = 1))]
    pub validation_candidates: u32,
}

impl Default for HeldOut {
    fn default() -> Self {
        HeldOut {
            validation: 0,
            validation_candidates: 3,
        }
    }
}

impl HeldOut {
    /// Extra calls per role, in [`drpo::types::Role::ALL`] order (base, metrics, judge,
    /// optimizer), that the validation adds to a projection: each candidate answered and judged
    /// on every held-out query, and one aspect selection per held-out query. Fewest: the search
    /// stopped early and nothing was validated.
    pub fn extra_calls(&self) -> [(u64, u64); 4] {
        let queries = u64::from(self.validation);
        let answers = queries.saturating_mul(u64::from(self.validation_candidates) + 1);
        [(0, answers), (0, queries), (0, answers), (0, 0)]
    }
}

/// The projection of a search that judges its initial prompt and then one new prompt per step,
/// each on the same `queries` training queries (the judge `judge_repeats` times per answer, and
/// per aspect with `judge_per_aspect`), with one optimizer request per step, one aspect
/// selection per query, and the validation split's own calls. Fewest: every optimizer answer
/// unusable, so only the initial prompt is judged.
pub fn stepwise_estimate(
    settings: &Settings,
    held_out: &HeldOut,
    steps: u32,
    queries: u32,
) -> Vec<RoleEstimate> {
    let steps = u64::from(steps);
    let judged = u64::from(queries);
    let requests = settings.request_settings(1);
    request_sizes(&requests, &settings.initial_system_prompt, LINEAGE_WINDOW)
        .into_iter()
        .zip(held_out.extra_calls())
        .map(|(mut e, (extra_min, extra_max))| {
            let (min, max) = match e.role {
                Role::Base | Role::Judge => (judged, (1 + steps).saturating_mul(judged)),
                Role::Metrics => (1, judged),
                Role::Optimizer => (steps, steps),
            };
            (e.min_calls, e.max_calls) = requests.requests_of(
                e.role,
                (min.saturating_add(extra_min), max.saturating_add(extra_max)),
            );
            e
        })
        .collect()
}
