//! The options of the DRPO beam search: every published CLI default, the extra switches this
//! implementation adds, parsing with validation, and the JSON Schema `describe` returns.

use std::collections::BTreeMap;

use drpo_kit::drpo::engine::{self, RequestSettings};
use drpo_kit::{HeldOut, JsonSchema, StrategyOptions, derived_schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The options `run` accepts, declared once: the schema `describe` publishes is derived from
/// this type (doc comments, defaults, minimums). Missing fields take the published defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "drpo_kit::schemars", title = "DRPO beam search options")]
#[serde(default)]
pub struct Options {
    /// Candidate prompts the optimizer writes per expansion (its n).
    #[schemars(range(min = 1))]
    pub n_actions: u32,
    /// Sampling temperature of the optimizer.
    pub temperature: f64,
    /// Nucleus mass of the optimizer.
    pub optimizer_top_p: f64,
    /// Initial maximum path length, the root included.
    #[schemars(range(min = 1))]
    pub depth: u32,
    /// Beam width; 1 ranks paths by their last reward, more by their mean reward.
    #[schemars(range(min = 1))]
    pub beam_size: u32,
    /// Most extra levels that skipped (already good) steps may add to depth, one per level.
    pub max_depth_increase: u32,
    /// Training queries to use; the host samples them, the search uses at most this many.
    pub num_training_examples: u32,
    /// Retrieve in-context examples by embedding similarity; otherwise use the first k.
    pub ret_icl: bool,
    /// In-context examples per query: the k most similar, or the first k without retrieval.
    #[schemars(range(min = 1))]
    pub k: u32,
    /// The system prompt the search starts from.
    pub initial_system_prompt: String,
    /// Seed of every request and of the query shuffle.
    pub seed: u64,
    /// Send one request per call like the published code, instead of batching each level.
    pub sequential: bool,
    /// Token limit of a base-model answer.
    pub base_max_tokens: u32,
    /// Token limit of an aspect selection.
    pub metrics_max_tokens: u32,
    /// Token limit of a judgement.
    pub judge_max_tokens: u32,
    /// The judge's sampling temperature (published: 0, greedy).
    pub judge_temperature: f64,
    /// Judgements asked per answer, each with its own seed; the reward is their mean, and the
    /// outcome reports how much they disagree (published: 1). More than one needs a
    /// judge_temperature above 0.
    #[schemars(range(min = 1))]
    pub judge_repeats: u32,
    /// Judge each aspect in a request of its own, the aspects of an answer side by side in one
    /// batch, each with judge_max_tokens (published: one request rates every aspect).
    pub judge_per_aspect: bool,
    /// Token limit of each optimizer candidate.
    pub optimizer_max_tokens: u32,
    /// What ranks the paths: `absolute`, each answer's mean aspect score (published), or
    /// `pairwise`, each candidate's answer compared with its parent prompt's answer to the same
    /// query in both orders (1 a win, 0.5 a tie or a flip, 0 a loss; the parent, kept as a
    /// child, 0.5). Pairwise never keeps a prompt for its high scores: every beam is optimized.
    pub reward: Reward,
    /// Published behaviour: an unusable judgement counts as a skip that grants an extra level.
    pub unusable_judgement_extends_depth: bool,
    /// End the search once the best path score has not improved for this many levels (0: run
    /// to the depth limit, as published).
    pub patience: u32,
    /// Drop an optimizer candidate that repeats this many consecutive words of the query it was
    /// written from, or reuses this many of its words of four letters or more when they are at
    /// least half of them, or repeats twice this many consecutive words of the answer it was
    /// shown: a prompt for that query, not for every query. When every candidate is dropped so,
    /// the optimizer is asked once more, told why (0 keeps every candidate, as published).
    pub query_quote_words: u32,
    /// The validation split: queries held out of the search to choose its result on.
    #[serde(flatten)]
    pub held_out: HeldOut,
    /// With validation: also judge the beam's prompts on the held-out queries after every this
    /// many levels, and let patience count validations without a better held-out mean instead
    /// of levels without a better path score (0: validate only at the end).
    pub validation_every: u32,
    /// Known aspect selections, {query text: {query_analysis, aspects_selection}}.
    pub metrics_cache: BTreeMap<String, Value>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            n_actions: 3,
            temperature: 0.2,
            optimizer_top_p: 0.95,
            depth: 20,
            beam_size: 2,
            max_depth_increase: 10,
            num_training_examples: 180,
            ret_icl: true,
            k: 2,
            initial_system_prompt: drpo_kit::drpo::icl::BASELINE_PROMPT.to_string(),
            seed: 0,
            sequential: false,
            base_max_tokens: 2048,
            metrics_max_tokens: 2048,
            judge_max_tokens: 2048,
            judge_temperature: 0.0,
            judge_repeats: 1,
            judge_per_aspect: false,
            optimizer_max_tokens: 2048,
            reward: Reward::Absolute,
            unusable_judgement_extends_depth: false,
            patience: 0,
            query_quote_words: RequestSettings::default().query_quote_words,
            held_out: HeldOut::default(),
            validation_every: 0,
            metrics_cache: BTreeMap::new(),
        }
    }
}

/// What ranks a beam's paths.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "drpo_kit::schemars")]
#[serde(rename_all = "lowercase")]
pub enum Reward {
    /// Each answer's mean aspect score, 1 to 5, as published.
    #[default]
    Absolute,
    /// Each candidate's answer against its parent prompt's answer to the same query, judged
    /// side by side in both orders: 1 a win, 0.5 a tie, 0 a loss.
    Pairwise,
}

impl Options {
    /// Parses an options object. An empty string or `null` means all defaults. Unknown option
    /// names are an error that lists every one of them; so are out-of-range values.
    pub fn from_json(text: &str) -> Result<Options, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed == "null" {
            return Ok(Options::default());
        }
        let value: Value =
            serde_json::from_str(trimmed).map_err(|e| format!("options are not JSON: {e}"))?;
        let Value::Object(map) = value else {
            return Err("options must be a JSON object".to_string());
        };
        let schema = <Options as StrategyOptions>::schema();
        let unknown: Vec<&str> = map
            .keys()
            .map(String::as_str)
            .filter(|k| schema["properties"].get(*k).is_none())
            .collect();
        if !unknown.is_empty() {
            return Err(format!("unknown option(s): {}", unknown.join(", ")));
        }
        let options: Options = serde_json::from_value(Value::Object(map))
            .map_err(|e| format!("invalid options: {e}"))?;
        options.validate()?;
        Ok(options)
    }

    /// What the search's requests are sent with.
    pub fn request_settings(&self) -> RequestSettings {
        RequestSettings {
            seed: self.seed,
            temperature: self.temperature,
            optimizer_top_p: self.optimizer_top_p,
            n_actions: self.n_actions,
            base_max_tokens: self.base_max_tokens,
            metrics_max_tokens: self.metrics_max_tokens,
            judge_max_tokens: self.judge_max_tokens,
            judge_temperature: self.judge_temperature,
            judge_repeats: self.judge_repeats,
            judge_per_aspect: self.judge_per_aspect,
            query_quote_words: self.query_quote_words,
            optimizer_max_tokens: self.optimizer_max_tokens,
            k: self.k,
        }
    }

    /// Checks the values that the types alone do not bound.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        for (name, value) in [
            ("n_actions", self.n_actions),
            ("depth", self.depth),
            ("beam_size", self.beam_size),
            ("k", self.k),
            ("base_max_tokens", self.base_max_tokens),
            ("metrics_max_tokens", self.metrics_max_tokens),
            ("judge_max_tokens", self.judge_max_tokens),
            ("optimizer_max_tokens", self.optimizer_max_tokens),
            ("validation_candidates", self.held_out.validation_candidates),
            ("judge_repeats", self.judge_repeats),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be at least 1"));
            }
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            problems.push("temperature must be a number >= 0".to_string());
        }
        if !(self.optimizer_top_p > 0.0 && self.optimizer_top_p <= 1.0) {
            problems.push("optimizer_top_p must be in (0, 1]".to_string());
        }
        if !(self.judge_temperature.is_finite() && self.judge_temperature >= 0.0) {
            problems.push("judge_temperature must be a number >= 0".to_string());
        }
        if let Err(problem) =
            engine::check_judge_repeats(self.judge_repeats, self.judge_temperature)
        {
            problems.push(problem);
        }
        if self.validation_every > 0 && self.held_out.validation == 0 {
            problems.push("validation_every needs validation queries (validation)".to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// Beam's options keep their own parser, which checks the bounds the schema cannot state
/// (`optimizer_top_p` in (0, 1]).
impl StrategyOptions for Options {
    /// The JSON Schema of the options object, with each option's default and description.
    fn schema() -> Value {
        derived_schema::<Self>()
    }

    fn parse(options: &str) -> Result<Self, String> {
        Options::from_json(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_published_ones() {
        let o = Options::from_json("{}").unwrap();
        assert_eq!(o, Options::default());
        assert_eq!(o.n_actions, 3);
        assert_eq!(o.temperature, 0.2);
        assert_eq!(o.depth, 20);
        assert_eq!(o.beam_size, 2);
        assert_eq!(o.max_depth_increase, 10);
        assert_eq!(o.num_training_examples, 180);
        assert!(o.ret_icl);
        assert_eq!(o.k, 2);
        assert_eq!(o.initial_system_prompt, "You are a helpful assistant.");
        assert_eq!(o.seed, 0);
        assert!(!o.sequential);
        assert_eq!(o.base_max_tokens, 2048);
        assert_eq!(Options::from_json("").unwrap(), o);
        assert_eq!(Options::from_json(" null ").unwrap(), o);
    }

    #[test]
    fn given_values_override_defaults() {
        let o = Options::from_json(r#"{"depth": 5, "sequential": true, "k": 3}"#).unwrap();
        assert_eq!((o.depth, o.sequential, o.k, o.beam_size), (5, true, 3, 2));
    }

    #[test]
    fn unknown_names_are_all_reported() {
        let err = Options::from_json(r#"{"depht": 5, "beam": 2, "k": 1}"#).unwrap_err();
        assert!(err.contains("depht") && err.contains("beam"), "{err}");
        assert!(!err.contains(" k"), "{err}");
    }

    #[test]
    fn invalid_values_are_errors() {
        assert!(
            Options::from_json(r#"{"k": 0}"#)
                .unwrap_err()
                .contains("k must")
        );
        assert!(Options::from_json(r#"{"beam_size": 0}"#).is_err());
        assert!(Options::from_json(r#"{"depth": -1}"#).is_err());
        assert!(Options::from_json(r#"{"temperature": -0.5}"#).is_err());
        assert!(Options::from_json(r#"{"optimizer_top_p": 0}"#).is_err());
        assert!(Options::from_json(r#"{"n_actions": "three"}"#).is_err());
        assert!(Options::from_json("[1]").is_err());
        assert!(Options::from_json("{").is_err());
    }

    #[test]
    fn the_reward_is_absolute_unless_pairwise_is_asked() {
        assert_eq!(Options::default().reward, Reward::Absolute);
        let o = Options::from_json(r#"{"reward": "pairwise"}"#).unwrap();
        assert_eq!(o.reward, Reward::Pairwise);
        let err = Options::from_json(r#"{"reward": "relative"}"#).unwrap_err();
        assert!(err.contains("relative"), "{err}");
        let schema = Options::schema();
        assert_eq!(schema["properties"]["reward"]["default"], "absolute");
    }

    #[test]
    fn metrics_cache_is_accepted() {
        let o = Options::from_json(
            r#"{"metrics_cache": {"Hi?": {"aspects_selection": {"reasoning": "r", "selected_aspects": ["Clarity"]}}}}"#,
        )
        .unwrap();
        assert!(o.metrics_cache.contains_key("Hi?"));
    }

    #[test]
    fn schema_describes_every_field_with_its_default() {
        let schema = Options::schema();
        let props = schema["properties"].as_object().unwrap();
        let defaults = serde_json::to_value(Options::default()).unwrap();
        let fields = defaults.as_object().unwrap();
        assert_eq!(props.len(), fields.len());
        for (name, value) in fields {
            assert_eq!(&props[name]["default"], value, "{name}");
        }
        assert_eq!(props["k"]["minimum"], 1);
        assert_eq!(schema["additionalProperties"], false);
    }
}
