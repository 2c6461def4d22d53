//! Builds what answers a run's live calls from its configuration: a provider per role, the
//! training queries and the in-context examples.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use drpo::data::TrainingData;

use crate::bindings::types::{Example, Query, Role};
use crate::calls::budget::Meter;
use crate::calls::cache::{Opened, ResponseCache};
use crate::calls::{Calls, RunData};
use crate::config::{BaseFormat, ModelFlags, RunConfig};
use crate::endpoints::EndpointFlags;
use crate::provider::embedder::LocalEmbedder;
use crate::provider::local::LocalProvider;
use crate::provider::openai::{Endpoint, OpenAiProvider};
use crate::provider::{Embedder, Provider, Router};
use crate::roles::PerRole;
use crate::runlog::{CallRecord, Preflight, RoleModel};
use crate::runtime::Runtime;
use crate::spending::pricing::PriceTable;

/// What answers a run's live calls, and which model serves each role (for the run log header).
pub struct Built {
    pub calls: Arc<Calls>,
    pub models: Vec<RoleModel>,
}

/// Builds the providers, the budget meter (counting what the `recorded` calls and the
/// `preflight` of a resumed run asked and spent) and the response cache, and reads the data. A
/// resumed run's providers take over what its preflight settled.
pub fn build(
    config: &RunConfig,
    recorded: &[CallRecord],
    preflight: Option<&Preflight>,
) -> anyhow::Result<Built> {
    let (mut router, models) = build_router(&config.models, &config.endpoints)?;
    if let Some(preflight) = preflight {
        crate::calls::preflight::restore(&router, preflight);
        if let Some(form) = preflight.base_form {
            router = router.with_base_form(form);
        }
    }
    let mut calls = Calls::new(
        config.host.grants()?,
        meter(config, &models)?,
        open_cache(&config.endpoints),
        router,
        RunData {
            training: load_training(config.host.data.as_deref())?,
            seed: config.seed(),
            examples: load_examples(config.host.examples.as_deref())?,
        },
    );
    calls.count_recorded(preflight, recorded);
    Ok(Built {
        calls: Arc::new(calls),
        models,
    })
}

/// The budget meter, pricing each role's model.
fn meter(config: &RunConfig, models: &[RoleModel]) -> anyhow::Result<Meter> {
    let prices = PriceTable::new(&config.prices);
    let roles = PerRole::from_fn(|role| {
        let model = models
            .iter()
            .find(|m| m.role == role.name())
            .map_or("", |m| m.model.as_str());
        (model, prices.price(model))
    });
    Meter::new(config.budget.budget()?, roles)
}

/// The response cache file: `responses.redb` in the cache directory.
pub fn response_cache_path() -> Option<std::path::PathBuf> {
    Runtime::cache_root().map(|root| root.join(crate::calls::cache::FILE_NAME))
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
    let mut built = Providers::default();
    let mut models = Vec::with_capacity(5);
    let mut providers = Vec::with_capacity(4);
    let mut judging_on_the_small_default = false;
    for role in Role::ALL {
        let (named, flag) = flags.for_role(role);
        let name = match named {
            Some(name) => name.to_owned(),
            None => {
                judging_on_the_small_default |= role != Role::Base && default_judge().is_none();
                default_model(role, flag)?
            }
        };
        let provider = built.provider(&name, role, flags, endpoints)?;
        models.push(RoleModel {
            role: role.name().into(),
            model: name,
            provider: provider.identity(),
        });
        providers.push(provider);
    }
    if judging_on_the_small_default {
        eprintln!(
            "note: the metrics, judge and optimizer roles run on the built-in {DEFAULT_MODEL_FILE}, \
             too small to judge: expect poor results. ./scripts/fetch-qwen.sh 1.5b fetches \
             {DEFAULT_JUDGE_FILE}, which they then use"
        );
    }
    let embedding_model = flags.embedding_model_name.clone().or_else(default_embedder);
    let embedder = match &embedding_model {
        Some(name) => {
            let (embedder, model) = built.embedder(name, flags, endpoints)?;
            models.push(model);
            Some(embedder)
        }
        None => None,
    };
    let mut providers = providers.into_iter();
    let providers = PerRole::from_fn(|_| providers.next().expect("a provider per role"));
    let base_form = flags
        .base_format
        .unwrap_or(BaseFormat::Auto)
        .resolve(providers[Role::Base].natural_form());
    Ok((
        Router::new(providers, embedder).with_base_form(base_form),
        models,
    ))
}

/// The router of one model answering every request as the base role (what `serve` answers
/// with), with `embedding_model` for retrieval, and the models for a run log's header. The base
/// prompts take the model's natural form, as under `--base-format auto`.
pub fn one_model_router(
    model: &str,
    embedding_model: Option<&str>,
    flags: &ModelFlags,
    endpoints: &EndpointFlags,
) -> anyhow::Result<(Router, Vec<RoleModel>)> {
    let mut built = Providers::default();
    let provider = built.provider(model, Role::Base, flags, endpoints)?;
    let mut models = vec![RoleModel {
        role: Role::Base.name().into(),
        model: model.to_owned(),
        provider: provider.identity(),
    }];
    let embedder = match embedding_model {
        Some(name) => {
            let (embedder, model) = built.embedder(name, flags, endpoints)?;
            models.push(model);
            Some(embedder)
        }
        None => None,
    };
    let form = BaseFormat::Auto.resolve(provider.natural_form());
    let router = Router::new(PerRole::from_fn(|_| provider.clone()), embedder).with_base_form(form);
    Ok((router, models))
}

/// The model serving `role`: the one named, else the built-in default when it is present.
pub fn model_name(flags: &ModelFlags, role: Role) -> Option<String> {
    flags
        .for_role(role)
        .0
        .map(str::to_owned)
        .or_else(|| default_model(role, "").ok())
}

/// The file name of the built-in default model.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The file name of the built-in judge.
pub const DEFAULT_JUDGE_FILE: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";

/// The model a role uses when none is named, run in process. The model being aligned is the
/// small SmolLM2, from `$DRPO_DEFAULT_MODEL`, else `.cache/models/` under the current directory
/// (where `scripts/fetch-smollm2.sh` puts it). The roles that judge and write (metrics, judge,
/// optimizer) use the built-in judge when it has been fetched ([`default_judge`]), else SmolLM2
/// too. When SmolLM2 is missing, the error names `role` and the `flag` that names a model
/// instead.
pub fn default_model(role: Role, flag: &str) -> anyhow::Result<String> {
    if role != Role::Base
        && let Some(judge) = default_judge()
    {
        return Ok(format!("local:{}", judge.display()));
    }
    let path = std::env::var_os("DRPO_DEFAULT_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(".cache/models").join(DEFAULT_MODEL_FILE));
    if !path.is_file() {
        bail!(
            "no model for the {} role and the built-in default {} is missing: fetch it with \
             ./scripts/fetch-smollm2.sh (or set $DRPO_DEFAULT_MODEL), or name a model with {flag}",
            role.name(),
            path.display()
        );
    }
    Ok(format!("local:{}", path.display()))
}

/// The built-in judge (Qwen2.5-Coder-1.5B-Instruct), from `$DRPO_DEFAULT_JUDGE`, else
/// `.cache/models/` under the current directory (where `scripts/fetch-qwen.sh` puts it), when
/// it is there. `$DRPO_DEFAULT_JUDGE` set to an empty value turns it off.
pub fn default_judge() -> Option<std::path::PathBuf> {
    let path = match std::env::var_os("DRPO_DEFAULT_JUDGE") {
        Some(path) if path.is_empty() => return None,
        Some(path) => std::path::PathBuf::from(path),
        None => Path::new(".cache/models").join(DEFAULT_JUDGE_FILE),
    };
    path.is_file().then_some(path)
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

/// The providers built so far: one per distinct model (a local file; a name, endpoint and key
/// variable), so that a model serving several roles exists once and shares its connection,
/// concurrency and rate limits.
#[derive(Default)]
struct Providers {
    local: HashMap<String, Arc<LocalProvider>>,
    http: HashMap<String, Arc<OpenAiProvider>>,
}

impl Providers {
    /// The model `name` for `role`: `local:PATH` in process, else on its OpenAI-compatible
    /// server.
    fn provider(
        &mut self,
        name: &str,
        role: Role,
        flags: &ModelFlags,
        endpoints: &EndpointFlags,
    ) -> anyhow::Result<Arc<dyn Provider>> {
        Ok(match name.strip_prefix("local:") {
            Some(path) => self.local(path, flags)?,
            None => self.http(name, endpoints, Some(role), flags)?,
        })
    }

    /// The embedding model `name` (`local:DIR` in process, else on its server), and its line
    /// of a run log's header.
    fn embedder(
        &mut self,
        name: &str,
        flags: &ModelFlags,
        endpoints: &EndpointFlags,
    ) -> anyhow::Result<(Arc<dyn Embedder>, RoleModel)> {
        let embedder: Arc<dyn Embedder> = match name.strip_prefix("local:") {
            Some(path) => Arc::new(LocalEmbedder::load(Path::new(path))?),
            None => self.http(name, endpoints, None, flags)?,
        };
        let model = RoleModel {
            role: "embedding".into(),
            model: name.to_owned(),
            provider: embedder.identity(),
        };
        Ok((embedder, model))
    }

    /// The local model in the file or directory `path`.
    fn local(&mut self, path: &str, flags: &ModelFlags) -> anyhow::Result<Arc<LocalProvider>> {
        if let Some(provider) = self.local.get(path) {
            return Ok(provider.clone());
        }
        let provider = Arc::new(LocalProvider::load(
            Path::new(path),
            flags.device()?,
            flags.prefix_cache_tokens,
        )?);
        self.local.insert(path.to_owned(), provider.clone());
        Ok(provider)
    }

    /// The model `name` on its OpenAI-compatible server, for `role` (`None`: embeddings).
    fn http(
        &mut self,
        name: &str,
        endpoints: &EndpointFlags,
        role: Option<Role>,
        flags: &ModelFlags,
    ) -> anyhow::Result<Arc<OpenAiProvider>> {
        let (role_base, role_key) = endpoints.for_role(role);
        let base_url = role_base
            .map(str::to_owned)
            .or_else(|| flags.api_base.clone())
            .or_else(|| std::env::var("OPENAI_BASE_URL").ok())
            .unwrap_or_else(|| "https://api.openai.com/v1".into());
        let key_variable = role_key.unwrap_or("OPENAI_API_KEY");
        let identity = format!("{name}\n{base_url}\n{key_variable}");
        if let Some(provider) = self.http.get(&identity) {
            return Ok(provider.clone());
        }
        let api_key = std::env::var(key_variable).ok().filter(|k| !k.is_empty());
        if let (Some(role), Some(_), None) = (role, role_key, &api_key) {
            bail!(
                "the {} role's API key variable ${key_variable} is not set",
                role.name()
            );
        }
        let provider = Arc::new(OpenAiProvider::with_limits(
            Endpoint {
                base_url,
                model: name.into(),
                api_key,
            },
            endpoints.retry_policy(),
            endpoints.rate_limit(),
        ));
        self.http.insert(identity, provider.clone());
        Ok(provider)
    }
}

/// Reads the training data: a JSONL file (by default the demo queries), or a directory in the
/// published layout. How many queries a run uses is the strategy's to ask (`queries(limit)`).
fn load_training(path: Option<&Path>) -> anyhow::Result<TrainingData<Query>> {
    let listed = |queries: Vec<drpo::types::Query>| TrainingData::Listed(host_queries(queries));
    Ok(match path {
        None => listed(
            drpo::data::parse_queries_jsonl(drpo::data::DEMO_QUERIES_JSONL)
                .map_err(|e| anyhow::anyhow!("the built-in demo queries: {e}"))?,
        ),
        Some(path) if path.is_dir() => {
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
            TrainingData::Published {
                alpaca: host_queries(alpaca),
                lima: host_queries(lima),
                harmful: host_queries(harmful),
            }
        }
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the training queries {}", path.display()))?;
            listed(
                drpo::data::parse_queries_jsonl(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            )
        }
    })
}

/// The DRPO library's queries as the contract's.
fn host_queries(queries: Vec<drpo::types::Query>) -> Vec<Query> {
    queries
        .into_iter()
        .map(|q| Query {
            id: q.id,
            text: q.text,
            tags: q.tags,
        })
        .collect()
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
