//! Builds what answers a run's live calls from its configuration: a provider per role, the
//! training queries and the in-context examples.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::bindings::types::{Example, Query};
use crate::config::{ModelFlags, RunConfig};
use crate::grants::Grants;
use crate::provider::local::LocalProvider;
use crate::provider::openai::{Endpoint, OpenAiProvider};
use crate::provider::{Provider, Router};
use crate::runlog::RoleModel;
use crate::runtime::Services;

/// The services of a run, and which model serves each role (for the run log header).
pub struct Built {
    pub services: Arc<Services>,
    pub models: Vec<RoleModel>,
}

/// Builds the providers, reads the data.
pub fn build(config: &RunConfig) -> anyhow::Result<Built> {
    let (router, models) = build_router(&config.models)?;
    let queries = load_queries(config.host.data.as_deref(), config.seed(), &config.options)?;
    let examples = load_examples(config.host.examples.as_deref())?;
    Ok(Built {
        services: Arc::new(Services {
            router,
            queries,
            examples,
            grants: Grants::from_flags(&config.host)?,
        }),
        models,
    })
}

fn build_router(flags: &ModelFlags) -> anyhow::Result<(Router, Vec<RoleModel>)> {
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
        let provider = provider_for(&mut built, &name, flags)?;
        models.push(RoleModel {
            role: role.into(),
            model: name,
            provider: provider.identity(),
        });
        providers.push(provider);
    }
    let embedder = match &flags.embedding_model_name {
        Some(name) => {
            let provider = provider_for(&mut built, name, flags)?;
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
    Ok((
        Router::new(base, metrics, judge, optimizer, embedder),
        models,
    ))
}

/// The file name of the built-in default model.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The model a role uses when none is named: the small local SmolLM2, from
/// `$DRPO_DEFAULT_MODEL`, else `.cache/models/` under the current directory (where
/// `scripts/fetch-smollm2.sh` puts it).
fn default_model(role: &str, flag: &str) -> anyhow::Result<String> {
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

/// The provider for one model named on the command line (`local:PATH`, or an
/// OpenAI-compatible model name at `--api-base`); none named: the built-in default.
pub fn single_provider(
    name: Option<&str>,
    api_base: Option<&str>,
) -> anyhow::Result<(String, Arc<dyn Provider>)> {
    let name = match name {
        Some(name) => name.to_owned(),
        None => default_model("answering", "--model")?,
    };
    let flags = ModelFlags {
        api_base: api_base.map(str::to_owned),
        ..ModelFlags::default()
    };
    let provider = provider_for(&mut HashMap::new(), &name, &flags)?;
    Ok((name, provider))
}

/// One provider per distinct model name, so that a model serving several roles exists once.
fn provider_for(
    built: &mut HashMap<String, Arc<dyn Provider>>,
    name: &str,
    flags: &ModelFlags,
) -> anyhow::Result<Arc<dyn Provider>> {
    if let Some(provider) = built.get(name) {
        return Ok(provider.clone());
    }
    if let Some(path) = name.strip_prefix("local:") {
        let provider: Arc<dyn Provider> = Arc::new(LocalProvider::load(Path::new(path))?);
        built.insert(name.into(), provider.clone());
        return Ok(provider);
    }
    let base_url = flags
        .api_base
        .clone()
        .or_else(|| std::env::var("OPENAI_BASE_URL").ok())
        .unwrap_or_else(|| "https://api.openai.com/v1".into());
    let provider: Arc<dyn Provider> = Arc::new(OpenAiProvider::new(Endpoint {
        base_url,
        model: name.into(),
        api_key: std::env::var("OPENAI_API_KEY")
            .ok()
            .filter(|k| !k.is_empty()),
    }));
    built.insert(name.into(), provider.clone());
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
