//! Builds what answers a run's live calls from its configuration: a provider per role, the
//! training queries and the in-context examples.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::bindings::types::{Example, Query, Role};
use crate::budget::Meter;
use crate::cache::{Opened, ResponseCache};
use crate::config::{BaseFormat, ModelFlags, RunConfig};
use crate::endpoints::EndpointFlags;
use crate::gate::Gate;
use crate::grants::Grants;
use crate::pricing::PriceTable;
use crate::provider::embedder::LocalEmbedder;
use crate::provider::local::LocalProvider;
use crate::provider::openai::{Endpoint, OpenAiProvider};
use crate::provider::{Provider, Router};
use crate::runlog::{CallRecord, Preflight, RoleModel};
use crate::runtime::{Runtime, Services};

/// The services of a run, and which model serves each role (for the run log header).
pub struct Built {
    pub services: Arc<Services>,
    pub models: Vec<RoleModel>,
}

/// Builds the providers, the budget meter (counting what `recorded` calls of a resumed run
/// spent) and the response cache, and reads the data. A resumed run's providers take over what
/// its `preflight` settled.
pub fn build(
    config: &RunConfig,
    recorded: &[CallRecord],
    preflight: Option<&Preflight>,
) -> anyhow::Result<Built> {
    let (mut router, models) = build_router(&config.models, &config.endpoints)?;
    if let Some(preflight) = preflight {
        crate::preflight::restore(&router, preflight);
        if let Some(form) = preflight.base_form {
            router = router.with_base_form(form);
        }
    }
    let mut gate = Gate::new(meter(config, &models)?, open_cache(&config.endpoints));
    gate.meter_mut().count_recorded(recorded);
    let queries = load_queries(config.host.data.as_deref(), config.seed(), &config.options)?;
    let examples = load_examples(config.host.examples.as_deref())?;
    Ok(Built {
        services: Arc::new(Services {
            router,
            queries,
            examples,
            gate,
            grants: Grants::from_flags(&config.host)?,
        }),
        models,
    })
}

/// The budget meter, pricing each role's model.
fn meter(config: &RunConfig, models: &[RoleModel]) -> anyhow::Result<Meter> {
    let prices = PriceTable::new(&config.prices);
    let roles = [
        (Role::Base, "base"),
        (Role::Metrics, "metrics"),
        (Role::Judge, "judge"),
        (Role::Optimizer, "optimizer"),
    ]
    .map(|(role, name)| {
        let model = models
            .iter()
            .find(|m| m.role == name)
            .map_or("", |m| m.model.as_str());
        (role, model, prices.price(model))
    });
    Meter::new(config.budget.budget()?, roles)
}

/// The response cache file: `responses.redb` in the cache directory.
pub fn response_cache_path() -> Option<std::path::PathBuf> {
    Runtime::cache_root().map(|root| root.join(crate::cache::FILE_NAME))
}

/// The response cache, unless switched off or unusable (then with a warning on stderr).
fn open_cache(flags: &EndpointFlags) -> Option<ResponseCache> {
    if flags.no_cache {
        return None;
    }
    let Some(path) = response_cache_path() else {
        eprintln!(
            "warning: no cache directory ($DRPO_CACHE_DIR, $XDG_CACHE_HOME and $HOME are unset); running without the response cache"
        );
        return None;
    };
    let (opened, warning) = ResponseCache::open(&path);
    if let Some(warning) = warning {
        eprintln!("warning: {warning}");
    }
    match opened {
        Opened::Ready(cache) => Some(cache),
        Opened::Skipped(why) => {
            eprintln!("warning: {why}");
            None
        }
    }
}

fn build_router(
    flags: &ModelFlags,
    endpoints: &EndpointFlags,
) -> anyhow::Result<(Router, Vec<RoleModel>)> {
    let roles = [
        ("base", &flags.base_model_name, "--base-model-name"),
        ("metrics", &flags.metrics_model_name, "--metrics-model-name"),
        ("judge", &flags.eval_model_name, "--eval-model-name"),
        (
            "optimizer",
            &flags.optimize_model_name,
            "--optimize-model-name",
        ),
    ];
    let mut built: HashMap<String, Arc<dyn Provider>> = HashMap::new();
    let mut providers = Vec::with_capacity(4);
    let mut models = Vec::with_capacity(5);
    for (role, name, flag) in roles {
        let name = match name {
            Some(name) => name.clone(),
            None => default_model(role, flag)?,
        };
        let provider = provider_for(&mut built, &name, flags, endpoints, role)?;
        models.push(RoleModel {
            role: role.into(),
            model: name,
            provider: provider.identity(),
        });
        providers.push(provider);
    }
    let embedding_model = flags.embedding_model_name.clone().or_else(default_embedder);
    let embedder = match &embedding_model {
        Some(name) => {
            let provider = provider_for(&mut built, name, flags, endpoints, "embedding")?;
            models.push(RoleModel {
                role: "embedding".into(),
                model: name.clone(),
                provider: provider.identity(),
            });
            Some(provider)
        }
        None => None,
    };
    let [base, metrics, judge, optimizer]: [Arc<dyn Provider>; 4] = providers
        .try_into()
        .map_err(|_| anyhow::anyhow!("four roles"))?;
    let base_form = flags
        .base_format
        .unwrap_or(BaseFormat::Auto)
        .resolve(base.natural_form());
    Ok((
        Router::new(base, metrics, judge, optimizer, embedder).with_base_form(base_form),
        models,
    ))
}

/// The model serving `role`: the one named, else the built-in default when it is present.
pub fn model_name(flags: &ModelFlags, role: Role) -> Option<String> {
    let named = match role {
        Role::Base => &flags.base_model_name,
        Role::Metrics => &flags.metrics_model_name,
        Role::Judge => &flags.eval_model_name,
        Role::Optimizer => &flags.optimize_model_name,
    };
    named
        .clone()
        .or_else(|| default_model(crate::rundir::role_name(role), "").ok())
}

/// The file name of the built-in default model.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The model a role uses when none is named: the small local SmolLM2, from
/// `$DRPO_DEFAULT_MODEL`, else `.cache/models/` under the current directory (where
/// `scripts/fetch-smollm2.sh` puts it). When it is missing, the error names `role` and the
/// `flag` that names a model instead.
pub fn default_model(role: &str, flag: &str) -> anyhow::Result<String> {
    let path = std::env::var_os("DRPO_DEFAULT_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(".cache/models").join(DEFAULT_MODEL_FILE));
    if !path.is_file() {
        bail!(
            "no model for the {role} role and the built-in default {} is missing: fetch it with \
             ./scripts/fetch-smollm2.sh (or set $DRPO_DEFAULT_MODEL), or name a model with {flag}",
            path.display()
        );
    }
    Ok(format!("local:{}", path.display()))
}

/// The directory name of the built-in default embedding model.
pub const DEFAULT_EMBEDDER_DIR: &str = "all-MiniLM-L6-v2";

/// The embedding model used when none is named: all-MiniLM-L6-v2 from
/// `$DRPO_DEFAULT_EMBEDDER`, else `.cache/models/` under the current directory (where
/// `scripts/fetch-minilm.sh` puts it), when it has been fetched.
pub fn default_embedder() -> Option<String> {
    let dir = std::env::var_os("DRPO_DEFAULT_EMBEDDER")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(".cache/models").join(DEFAULT_EMBEDDER_DIR));
    dir.join("model.safetensors")
        .is_file()
        .then(|| format!("local:{}", dir.display()))
}

/// One provider per distinct model (name, endpoint and key variable), so that a model serving
/// several roles exists once and shares its connection, concurrency and rate limits.
fn provider_for(
    built: &mut HashMap<String, Arc<dyn Provider>>,
    name: &str,
    flags: &ModelFlags,
    endpoints: &EndpointFlags,
    role: &str,
) -> anyhow::Result<Arc<dyn Provider>> {
    if let Some(path) = name.strip_prefix("local:") {
        // The role decides the loader: an embedding model serves `embed` only.
        let key = if role == "embedding" {
            format!("embedding\n{name}")
        } else {
            name.to_owned()
        };
        if let Some(provider) = built.get(&key) {
            return Ok(provider.clone());
        }
        let provider: Arc<dyn Provider> = if role == "embedding" {
            Arc::new(LocalEmbedder::load(Path::new(path))?)
        } else {
            Arc::new(LocalProvider::load(Path::new(path), flags.device()?)?)
        };
        built.insert(key, provider.clone());
        return Ok(provider);
    }
    let (role_base, role_key) = endpoints.for_role(role);
    let base_url = role_base
        .map(str::to_owned)
        .or_else(|| flags.api_base.clone())
        .or_else(|| std::env::var("OPENAI_BASE_URL").ok())
        .unwrap_or_else(|| "https://api.openai.com/v1".into());
    let key_variable = role_key.unwrap_or("OPENAI_API_KEY");
    let identity = format!("{name}\n{base_url}\n{key_variable}");
    if let Some(provider) = built.get(&identity) {
        return Ok(provider.clone());
    }
    let api_key = std::env::var(key_variable).ok().filter(|k| !k.is_empty());
    if role_key.is_some() && api_key.is_none() {
        bail!("the {role} role's API key variable ${key_variable} is not set");
    }
    let provider: Arc<dyn Provider> = Arc::new(OpenAiProvider::with_limits(
        Endpoint {
            base_url,
            model: name.into(),
            api_key,
        },
        endpoints.retry_policy(),
        endpoints.rate_limit(),
    ));
    built.insert(identity, provider.clone());
    Ok(provider)
}

/// Reads the training queries: a JSONL file, or a directory in the published layout.
fn load_queries(
    path: Option<&Path>,
    seed: u64,
    options: &serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<Vec<Query>> {
    let queries = match path {
        None => drpo::data::parse_queries_jsonl(drpo::data::DEMO_QUERIES_JSONL)
            .map_err(|e| anyhow::anyhow!("the built-in demo queries: {e}"))?,
        Some(path) if path.is_dir() => {
            let limit = options
                .get("num_training_examples")
                .and_then(|v| v.as_u64())
                .unwrap_or(180) as usize;
            let read = |name: &str| -> anyhow::Result<String> {
                let file = path.join(name);
                std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {} (the published data layout has alpaca_train.json, lima_subsample_train.json and mal_train.txt)", file.display()))
            };
            let alpaca = drpo::data::parse_alpaca(&read("alpaca_train.json")?)
                .map_err(|e| anyhow::anyhow!("{}/alpaca_train.json: {e}", path.display()))?;
            let lima =
                drpo::data::parse_lima(&read("lima_subsample_train.json")?).map_err(|e| {
                    anyhow::anyhow!("{}/lima_subsample_train.json: {e}", path.display())
                })?;
            let harmful = drpo::data::parse_mal(&read("mal_train.txt")?);
            drpo::data::published_stream(&alpaca, &lima, &harmful, limit, seed)
        }
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the training queries {}", path.display()))?;
            drpo::data::parse_queries_jsonl(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
    };
    Ok(queries
        .into_iter()
        .map(|q| Query {
            id: q.id,
            text: q.text,
            tags: q.tags,
        })
        .collect())
}

/// Reads the in-context examples (default: the demo examples shipped with drpo-host).
fn load_examples(path: Option<&Path>) -> anyhow::Result<Vec<Example>> {
    let examples = match path {
        None => drpo::data::parse_examples(drpo::data::DEMO_EXAMPLES_JSON)
            .map_err(|e| anyhow::anyhow!("the built-in demo examples: {e}"))?,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the examples {}", path.display()))?;
            drpo::data::parse_examples(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
    };
    Ok(examples
        .into_iter()
        .map(|e| Example {
            query: e.query,
            answer: e.answer,
        })
        .collect())
}
