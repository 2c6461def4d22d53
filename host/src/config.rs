//! A run's configuration: flags, an optional TOML file, the strategy's option defaults, all
//! resolved into one [`RunConfig`] that is saved as the run directory's `config.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use drpo_models::DeviceSpec;

use crate::bindings::types::Role;
use crate::calls::budget::BudgetFlags;
use crate::calls::grants::Grants;
use crate::endpoints::EndpointFlags;
use crate::provider::PromptForm;
use crate::runtime::{
    DEFAULT_ERROR_KIB, DEFAULT_LOG_LINE_KIB, DEFAULT_NODE_KIB, DEFAULT_RECORDS_MIB, Limits,
    RecordLimits,
};
use crate::spending::pricing::Price;

/// The search options of the published DRPO implementation, under their published names.
/// They are strategy options: they reach the plugin in its options object.
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchFlags {
    /// Starting system prompt, or the path of a file holding it.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_system_prompt: Option<String>,
    /// Candidate prompts the optimizer writes per expansion (published default 3).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_actions: Option<u32>,
    /// Optimizer sampling temperature (published default 0.2).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Search depth: prompt versions along a path (published default 20).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    /// Beams kept per level (published default 2).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beam_size: Option<u32>,
    /// Extra levels granted for queries the prompt already handles well (published default 10).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_depth_increase: Option<u32>,
    /// Training queries sampled from the data (published default 180).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_training_examples: Option<u32>,
    /// Retrieve in-context examples by embedding similarity (published default true).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ret_icl: Option<bool>,
    /// In-context examples retrieved per query (published default 2).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k: Option<u32>,
    /// End the search once its best score has not improved for this many levels (not
    /// published; beam; default 0, never).
    #[arg(long, value_name = "LEVELS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patience: Option<u32>,
    /// Training queries held out of the search (drawn with the seed); at the end the best
    /// distinct prompts (option `validation_candidates`, default 3) and the initial prompt are
    /// judged on them, and the best held-out mean is the result (not published; beam, greedy,
    /// mcts; default 0, none).
    #[arg(long, value_name = "QUERIES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<u32>,
    /// The judge's sampling temperature (published: 0, greedy).
    #[arg(long, value_name = "T")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judge_temperature: Option<f64>,
    /// Judgements asked per answer, each with its own seed: the reward is their mean, and the
    /// run reports how much they disagree (per aspect standard deviation, agreement). More than
    /// one needs --judge-temperature above 0 (not published; default 1).
    #[arg(long, value_name = "R")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judge_repeats: Option<u32>,
    /// Judge each aspect in a request of its own, an answer's aspects side by side in one batch,
    /// each with the judge's token limit (not published: one request rates every aspect). A
    /// small judge then writes one short verdict at a time, and a local one decodes the aspects
    /// together; the judge's prompt is sent once per aspect.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judge_per_aspect: Option<bool>,
    /// What ranks the search's paths: `absolute`, each answer's mean aspect score (published),
    /// or `pairwise`, each candidate prompt's answer compared with its parent prompt's answer to
    /// the same query, in both orders (1 a win, 0.5 a tie, 0 a loss). A small judge that grades
    /// nearly everything 5 can still tell two answers apart; pairwise asks it that (not
    /// published; beam).
    #[arg(long, value_name = "REWARD", value_parser = ["absolute", "pairwise"])]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward: Option<String>,
}

/// Where the four roles' models come from.
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelFlags {
    /// Model being aligned: an OpenAI-compatible model name, or `local:PATH`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_model_name: Option<String>,
    /// Judge model (scores each aspect).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_model_name: Option<String>,
    /// Metrics model (chooses the aspects per query).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_model_name: Option<String>,
    /// Optimizer model (writes new prompts).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimize_model_name: Option<String>,
    /// Embedding model for example retrieval (an OpenAI-compatible `/v1/embeddings` model).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_model_name: Option<String>,
    /// Base URL of the OpenAI-compatible server, up to `/v1` [env: OPENAI_BASE_URL].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_base: Option<String>,
    /// How the base model is prompted: `chat` (system and user messages, under the model's chat
    /// template), `raw` (one completion string, system text then user text), or `auto` (the
    /// default): chat for a model over HTTP and for a local model with a chat template, raw for
    /// a local model without one. A server that refuses the form for the model switches to the
    /// other once (noted on the terminal and in the run log).
    #[arg(long, value_enum, value_name = "FORM")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_format: Option<BaseFormat>,
    /// Where `local:` models run: `cpu` (the default), or `cuda` / `cuda:N` (the GPU with index
    /// N) in a drpo-host built with `--features cuda`. Embedding models run on the CPU.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Prompt tokens whose keys and values a `local:` model keeps, so that prompts beginning
    /// the same way (a system prompt, a judge's instructions) skip them in prefill; 0 keeps
    /// none. The logits agree to f32 rounding. Default: what 512 MiB holds for the model.
    #[arg(long, value_name = "TOKENS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_cache_tokens: Option<usize>,
}

/// `--base-format`: a prompt form, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseFormat {
    Auto,
    Chat,
    Raw,
}

impl BaseFormat {
    /// The form of the base prompts, given the form the base model's provider prefers.
    pub fn resolve(self, natural: PromptForm) -> PromptForm {
        match self {
            BaseFormat::Auto => natural,
            BaseFormat::Chat => PromptForm::Chat,
            BaseFormat::Raw => PromptForm::Raw,
        }
    }
}

impl ModelFlags {
    /// The model named for `role`, and the flag that names it.
    pub fn for_role(&self, role: Role) -> (Option<&str>, &'static str) {
        let (named, flag) = match role {
            Role::Base => (&self.base_model_name, "--base-model-name"),
            Role::Metrics => (&self.metrics_model_name, "--metrics-model-name"),
            Role::Judge => (&self.eval_model_name, "--eval-model-name"),
            Role::Optimizer => (&self.optimize_model_name, "--optimize-model-name"),
        };
        (named.as_deref(), flag)
    }

    /// The device of `local:` models, checked against this build: a bad name, or `cuda` in a
    /// build without CUDA, is an error that names the flag and the config key.
    pub fn device(&self) -> anyhow::Result<DeviceSpec> {
        let Some(name) = &self.device else {
            return Ok(DeviceSpec::Cpu);
        };
        let at = || format!("--device {name} (config key `device`)");
        let device: DeviceSpec = name.parse().with_context(at)?;
        device.check_available().with_context(at)?;
        Ok(device)
    }
}

/// Everything else a run needs.
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostFlags {
    /// Training queries: a JSONL file (`{"id","text","tags"}` per line) or a directory in the
    /// published layout. Default: the demo set shipped with drpo-host.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// In-context examples: a JSON object `{query: answer}` or a list of `{query, answer}`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub examples: Option<PathBuf>,
    /// The published per-query metrics cache (JSON); read before and updated after the run.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_cache_path: Option<PathBuf>,
    /// Seed of the run: the query shuffle, sampling seeds, and the plugin's random numbers.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Log level of `log.txt`: INFO, or DEBUG for every full prompt.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logging_level: Option<String>,
    /// Plugin instruction budget (wasmtime fuel).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Plugin memory limit in MiB (default 1024).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit_mib: Option<u64>,
    /// Plugin wall-clock deadline in seconds (default one day).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<u64>,
    /// Size of one node the plugin records, in KiB, as encoded in the run log (default 1024);
    /// a larger node ends the run.
    #[arg(long, value_name = "KIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_node_kib: Option<u64>,
    /// Size of one line the plugin logs, in KiB (default 64); a longer line is cut, with a note.
    #[arg(long, value_name = "KIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_log_line_kib: Option<u64>,
    /// Size of the error the plugin returns (or its panic message), in KiB (default 64); a
    /// longer one is cut, with a note.
    #[arg(long, value_name = "KIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_error_kib: Option<u64>,
    /// Size of everything the plugin records (nodes, log lines, its outcome), in MiB (default
    /// 64); a record past it ends the run.
    #[arg(long, value_name = "MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_records_mib: Option<u64>,
    /// Roles the plugin may call, comma-separated (default all); a request for another role is
    /// answered `rejected`.
    #[arg(long, value_delimiter = ',', value_name = "ROLES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_roles: Option<Vec<String>>,
    /// Sign the run when it ends with this ed25519 secret key (`drpo-host keygen` writes one):
    /// `run.sig` beside the run log, which `drpo-host verify --public-key` checks.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sign_key: Option<PathBuf>,
    /// Most model requests the plugin may make (each request of a batch, each embedding call);
    /// past it, requests are answered `budget-exhausted`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_plugin_calls: Option<u64>,
}

impl HostFlags {
    /// The plugin's grant these flags set (`--allow-roles`, `--max-plugin-calls`).
    pub fn grants(&self) -> anyhow::Result<Grants> {
        Grants::new(self.allow_roles.as_deref(), self.max_plugin_calls)
    }

    /// The plugin's limits these flags set, the defaults where they are silent.
    pub fn limits(&self) -> Limits {
        let defaults = Limits::default();
        Limits {
            fuel: self.fuel.unwrap_or(defaults.fuel),
            memory_bytes: self
                .memory_limit_mib
                .map_or(defaults.memory_bytes, |mib| (mib as usize) << 20),
            deadline: self
                .deadline_secs
                .map_or(defaults.deadline, std::time::Duration::from_secs),
            records: RecordLimits {
                node_bytes: kib(self.max_node_kib, DEFAULT_NODE_KIB),
                log_line_bytes: kib(self.max_log_line_kib, DEFAULT_LOG_LINE_KIB),
                error_bytes: kib(self.max_error_kib, DEFAULT_ERROR_KIB),
                total_bytes: self
                    .max_records_mib
                    .unwrap_or(DEFAULT_RECORDS_MIB)
                    .saturating_mul(1 << 20),
            },
        }
    }
}

/// The TOML config file: the same keys as the flags (snake_case), plus an `[options]` table for
/// options of third-party strategies.
#[derive(Debug, Default)]
struct ConfigFile {
    search: SearchFlags,
    models: ModelFlags,
    host: HostFlags,
    budget: BudgetFlags,
    endpoints: EndpointFlags,
    options: Map<String, Value>,
    prices: BTreeMap<String, Price>,
}

impl ConfigFile {
    fn parse(text: &str) -> anyhow::Result<ConfigFile> {
        let mut table: Map<String, Value> = toml::from_str(text)?;
        let options = match table.remove("options") {
            None => Map::new(),
            Some(Value::Object(options)) => options,
            Some(_) => bail!("`options` must be a table"),
        };
        let prices = match table.remove("prices") {
            None => BTreeMap::new(),
            Some(prices) => serde_json::from_value(prices).context(
                "`prices` must be a table of `\"model\" = { input = USD, output = USD }` \
                 (USD per million input and output tokens)",
            )?,
        };
        let mut parts: [Map<String, Value>; 5] = Default::default();
        for (key, value) in table {
            let single = Value::Object(Map::from_iter([(key.clone(), value.clone())]));
            let attempts = [
                serde_json::from_value::<SearchFlags>(single.clone()).err(),
                serde_json::from_value::<ModelFlags>(single.clone()).err(),
                serde_json::from_value::<HostFlags>(single.clone()).err(),
                serde_json::from_value::<BudgetFlags>(single.clone()).err(),
                serde_json::from_value::<EndpointFlags>(single).err(),
            ];
            match attempts.iter().position(Option::is_none) {
                Some(part) => {
                    parts[part].insert(key, value);
                }
                None => {
                    let wrong_type = attempts
                        .into_iter()
                        .flatten()
                        .find(|e| !e.to_string().contains("unknown field"));
                    match wrong_type {
                        Some(error) => bail!("key `{key}`: {error}"),
                        None => bail!(
                            "unknown key `{key}` (keys are the flags' names in snake_case, \
                             e.g. `beam_size`; put strategy-specific options under [options])"
                        ),
                    }
                }
            }
        }
        let [search, models, host, budget, endpoints] = parts;
        Ok(ConfigFile {
            search: serde_json::from_value(Value::Object(search))?,
            models: serde_json::from_value(Value::Object(models))?,
            host: serde_json::from_value(Value::Object(host))?,
            budget: serde_json::from_value(Value::Object(budget))?,
            endpoints: serde_json::from_value(Value::Object(endpoints))?,
            options,
            prices,
        })
    }
}

/// A fully resolved run configuration (saved as `config.json`). It holds no secret: the API key
/// is read from the environment each time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunConfig {
    /// The strategy plugin.
    pub strategy: PathBuf,
    pub models: ModelFlags,
    pub host: HostFlags,
    /// Spending limits.
    #[serde(default)]
    pub budget: BudgetFlags,
    /// Rate limits, endpoint overrides and the response cache.
    #[serde(default)]
    pub endpoints: EndpointFlags,
    /// The options object passed to the plugin's `run`.
    pub options: Map<String, Value>,
    /// The config file's `[prices]` (on top of [`crate::spending::pricing::DEFAULT_PRICES`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prices: BTreeMap<String, Price>,
}

impl RunConfig {
    /// Reads a saved `config.json`.
    pub fn load(path: &Path) -> anyhow::Result<RunConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the run configuration {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid run configuration", path.display()))
    }

    /// The run's seed (default 0, as the published code passes `seed=0` everywhere).
    pub fn seed(&self) -> u64 {
        self.host.seed.unwrap_or(0)
    }

    /// The plugin's limits.
    pub fn limits(&self) -> Limits {
        self.host.limits()
    }
}

/// A size given in KiB (or its default), in bytes.
fn kib(given: Option<u64>, default: u64) -> u64 {
    given.unwrap_or(default).saturating_mul(1 << 10)
}

/// Merges flags over the config file and resolves the strategy options against its schema.
pub struct ConfigInputs<'a> {
    pub strategy: &'a Path,
    pub config_file: Option<&'a Path>,
    pub search: &'a SearchFlags,
    pub models: &'a ModelFlags,
    pub host: &'a HostFlags,
    pub budget: &'a BudgetFlags,
    pub endpoints: &'a EndpointFlags,
    /// Options set by the command that makes the run (`generate`, `eval`).
    pub option_values: &'a Map<String, Value>,
    /// `--option KEY=VALUE` pairs (VALUE parsed as JSON, else taken as a string): they win over
    /// `option_values`.
    pub extra_options: &'a [String],
}

impl ConfigInputs<'_> {
    /// The plugin's limits, from the flags over the config file: known before the strategy's
    /// `describe` runs, so that it runs under them too.
    pub fn limits(&self) -> anyhow::Result<Limits> {
        let file = self.file()?;
        Ok(overlay(&file.host, self.host)?.limits())
    }

    /// Resolves everything; `options_schema` is the strategy's (from `describe`).
    pub fn resolve(&self, options_schema: &str) -> anyhow::Result<RunConfig> {
        let file = self.file()?;
        let models: ModelFlags = overlay(&file.models, self.models)?;
        models.device()?;
        let host: HostFlags = overlay(&file.host, self.host)?;
        let budget: BudgetFlags = overlay(&file.budget, self.budget)?;
        budget.budget()?;
        let endpoints: EndpointFlags = overlay(&file.endpoints, self.endpoints)?;
        let mut search: SearchFlags = overlay(&file.search, self.search)?;
        if let Some(prompt) = &search.initial_system_prompt {
            // As published: a value naming an existing file means the file's contents.
            let path = Path::new(prompt);
            if path.is_file() {
                search.initial_system_prompt = Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                );
            }
        }

        let mut given = file.options;
        if let Value::Object(flags) = serde_json::to_value(&search)? {
            given.extend(flags);
        }
        if let Some(seed) = host.seed {
            given.insert("seed".into(), seed.into());
        }
        for (key, value) in self.option_values {
            given.insert(key.clone(), value.clone());
        }
        for pair in self.extra_options {
            let (key, value) = pair
                .split_once('=')
                .with_context(|| format!("--option {pair:?} is not KEY=VALUE"))?;
            let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
            given.insert(key.replace('-', "_"), value);
        }
        let options = resolve_options(options_schema, given)?;
        Ok(RunConfig {
            strategy: self.strategy.to_owned(),
            models,
            host,
            budget,
            endpoints,
            options,
            prices: file.prices,
        })
    }

    fn file(&self) -> anyhow::Result<ConfigFile> {
        let Some(path) = self.config_file else {
            return Ok(ConfigFile::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        ConfigFile::parse(&text)
            .with_context(|| format!("config file {} is not valid", path.display()))
    }
}

/// `top` over `bottom`, field by field.
fn overlay<T: Serialize + serde::de::DeserializeOwned>(bottom: &T, top: &T) -> anyhow::Result<T> {
    let mut merged = serde_json::to_value(bottom)?;
    if let (Value::Object(merged), Value::Object(top)) = (&mut merged, serde_json::to_value(top)?) {
        merged.extend(top);
    }
    Ok(serde_json::from_value(merged)?)
}

/// Fills the schema's defaults under the given options and refuses options the schema does not
/// know (when it lists its properties). The seed is dropped silently for strategies that take
/// none: it still seeds their random numbers.
pub fn resolve_options(
    options_schema: &str,
    mut given: Map<String, Value>,
) -> anyhow::Result<Map<String, Value>> {
    let schema: Value = serde_json::from_str(options_schema)
        .context("the strategy's options schema (from `describe`) is not JSON")?;
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        given.remove("seed");
        return Ok(given);
    };
    if !properties.contains_key("seed") {
        given.remove("seed");
    }
    let unknown: Vec<&String> = given
        .keys()
        .filter(|key| !properties.contains_key(*key))
        .collect();
    if !unknown.is_empty() {
        let mut known: Vec<&String> = properties.keys().collect();
        known.sort();
        bail!(
            "the strategy has no option {}; its options are: {}",
            unknown
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", "),
            known
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut resolved = Map::new();
    for (key, property) in properties {
        if let Some(value) = given
            .remove(key)
            .or_else(|| property.get("default").cloned())
        {
            resolved.insert(key.clone(), value);
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SCHEMA: &str = r#"{"type":"object","properties":{
        "depth":{"type":"integer","default":20},
        "beam_size":{"type":"integer","default":2},
        "seed":{"type":"integer","default":0},
        "note":{"type":"string"}}}"#;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn schema_defaults_fill_what_is_not_given() {
        let resolved = resolve_options(SCHEMA, map(json!({"depth": 3}))).unwrap();
        assert_eq!(
            Value::Object(resolved),
            json!({"depth": 3, "beam_size": 2, "seed": 0})
        );
    }

    #[test]
    fn unknown_options_are_refused_by_name() {
        let error = resolve_options(SCHEMA, map(json!({"n_actions": 3}))).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("`n_actions`"), "{text}");
        assert!(text.contains("beam_size, depth, note, seed"), "{text}");
    }

    #[test]
    fn schemaless_strategies_get_what_was_given_without_the_seed() {
        let resolved = resolve_options("{}", map(json!({"mode": "x", "seed": 4}))).unwrap();
        assert_eq!(Value::Object(resolved), json!({"mode": "x"}));
    }

    #[test]
    fn flags_win_over_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("drpo.toml");
        std::fs::write(
            &file,
            "depth = 7\nbeam_size = 4\nseed = 9\n[options]\nnote = \"from file\"\n",
        )
        .unwrap();
        let search = SearchFlags {
            depth: Some(3),
            ..SearchFlags::default()
        };
        let inputs = ConfigInputs {
            strategy: Path::new("s.wasm"),
            config_file: Some(&file),
            search: &search,
            models: &ModelFlags::default(),
            host: &HostFlags::default(),
            budget: &BudgetFlags::default(),
            endpoints: &EndpointFlags::default(),
            option_values: &Map::new(),
            extra_options: &[],
        };
        let config = inputs.resolve(SCHEMA).unwrap();
        assert_eq!(
            Value::Object(config.options.clone()),
            json!({"depth": 3, "beam_size": 4, "seed": 9, "note": "from file"})
        );
        assert_eq!(config.seed(), 9);
    }

    #[test]
    fn budgets_endpoint_settings_and_prices_come_from_the_config_file_too() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("drpo.toml");
        std::fs::write(
            &file,
            "max_calls = 50\nmax_time = \"15m\"\nrequests_per_minute = 60\nno_cache = true\n\
             [prices]\n\"my-model\" = { input = 1.5, output = 2.0 }\n",
        )
        .unwrap();
        let budget = BudgetFlags {
            max_calls: Some(10),
            ..BudgetFlags::default()
        };
        let inputs = ConfigInputs {
            strategy: Path::new("s.wasm"),
            config_file: Some(&file),
            search: &SearchFlags::default(),
            models: &ModelFlags::default(),
            host: &HostFlags::default(),
            budget: &budget,
            endpoints: &EndpointFlags::default(),
            option_values: &Map::new(),
            extra_options: &[],
        };
        let config = inputs.resolve(SCHEMA).unwrap();
        assert_eq!(config.budget.max_calls, Some(10), "the flag wins");
        assert_eq!(config.budget.max_time.as_deref(), Some("15m"));
        assert_eq!(config.endpoints.requests_per_minute, Some(60));
        assert!(
            config.endpoints.no_cache,
            "a false flag does not undo the file"
        );
        assert_eq!(config.prices["my-model"].output, 2.0);
        let saved: RunConfig =
            serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(saved, config);
    }

    #[test]
    fn a_misspelt_config_key_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("drpo.toml");
        std::fs::write(&file, "detph = 7\n").unwrap();
        let inputs = ConfigInputs {
            strategy: Path::new("s.wasm"),
            config_file: Some(&file),
            search: &SearchFlags::default(),
            models: &ModelFlags::default(),
            host: &HostFlags::default(),
            budget: &BudgetFlags::default(),
            endpoints: &EndpointFlags::default(),
            option_values: &Map::new(),
            extra_options: &[],
        };
        let error = format!("{:#}", inputs.resolve(SCHEMA).unwrap_err());
        assert!(error.contains("drpo.toml"), "{error}");
        assert!(error.contains("detph"), "{error}");
    }
}
