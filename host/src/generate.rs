//! `drpo-host generate`: answers queries the way the published DRPO answers them after a search
//! (§1.9 of the reference): the optimized system prompt, then the top-k in-context examples
//! retrieved by embedding similarity, then `# Query:` … `# Answer:` `<START>`; generation stops
//! at `<END>`. `--no-optimized-prompt` and `--no-examples` give the baselines.
//!
//! The answering is an ordinary recorded run of `generate.wasm` (like `eval`'s of eval.wasm):
//! the queries, the system prompt and the examples travel in the strategy's options, the
//! strategy embeds for retrieval and asks the base role, and this command writes the answers
//! from the run's outcome. `replay`, `resume` and `inspect` work on its run directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use drpo::icl::BASELINE_PROMPT;

use crate::services;
use crate::subrun::{RunCommand, flag_value, fresh_run_dir, outcome_details};

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// `local:PATH` (a GGUF file or a Hugging Face directory) or an OpenAI-compatible model
    /// name; default: the built-in SmolLM2 model.
    #[arg(long)]
    pub model: Option<String>,
    /// Base URL of the OpenAI-compatible server, up to `/v1` [env: OPENAI_BASE_URL].
    #[arg(long)]
    pub api_base: Option<String>,
    /// Where a `local:` model runs: `cpu` (the default), or `cuda` / `cuda:N` in a drpo-host
    /// built with `--features cuda`.
    #[arg(long)]
    pub device: Option<String>,
    /// System prompt (or the path of a file holding it); overrides --run and --prompt-file.
    #[arg(long, conflicts_with_all = ["run", "prompt_file"])]
    pub system: Option<String>,
    /// A run directory: its result.json's best prompt is the system prompt.
    #[arg(long, conflicts_with = "prompt_file")]
    pub run: Option<PathBuf>,
    /// A file holding the system prompt.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// The baseline: answer under "You are a helpful assistant." instead of the optimized prompt.
    #[arg(long, conflicts_with_all = ["system", "run", "prompt_file"])]
    pub no_optimized_prompt: bool,
    /// In-context examples: `{query: answer}` JSON (what icl.wasm writes) or an array of
    /// `{query, answer}`; default: the built-in demo examples.
    #[arg(long)]
    pub examples: Option<PathBuf>,
    /// The baseline: no in-context examples.
    #[arg(long, conflicts_with = "examples")]
    pub no_examples: bool,
    /// How many retrieved examples each query gets (1 to 5).
    #[arg(short, long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub k: u8,
    /// The embedding model that retrieves examples: `local:DIR` (a sentence-transformers
    /// directory) or an OpenAI-compatible name (`/v1/embeddings` at --api-base); default:
    /// all-MiniLM-L6-v2 when `scripts/fetch-minilm.sh` has fetched it, else the first k
    /// examples are used.
    #[arg(long)]
    pub embedding_model: Option<String>,
    /// Send one raw text (system part, blank line, query part) instead of chat messages: the
    /// published format for a model without a chat template.
    #[arg(long)]
    pub raw: bool,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: u32,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Sampling seed (also the run's seed).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A JSONL file of queries (`{"id", "text" or "query", "tags"}` per line) to answer instead
    /// of the arguments.
    #[arg(long, conflicts_with = "queries")]
    pub input: Option<PathBuf>,
    /// Write the answers as JSONL (`{"id", "query", "answer", "tags"}` per line, the input of
    /// `eval`) instead of printing them.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Directory for the generation run (replayable); created if missing, must not hold a run
    /// already. Default: `runs/generate-N`, the first N not taken.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// The generation strategy: a `.wasm` file, or a name as for `run --strategy`.
    #[arg(long, default_value = "generate")]
    pub strategy: PathBuf,
    /// The queries; all are answered as one batch.
    #[arg(required_unless_present = "input")]
    pub queries: Vec<String>,
    /// Flags of `run` (budgets, endpoints, --no-cache, --quiet, ...), after `--`.
    #[arg(last = true)]
    pub run_flags: Vec<String>,
}

/// Where `generate` puts its run directory when given none: `runs/generate-N`.
pub const DEFAULT_RUNS_DIR: &str = "runs";

/// Answers the queries as a recorded run of generate.wasm, then prints or writes the answers.
pub async fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let queries = read_queries(&args)?;
    let system_prompt = system_prompt(&args)?;
    let examples = examples(&args)?;
    let model = match &args.model {
        Some(model) => model.clone(),
        None => services::default_model("answering", "--model")?,
    };
    let embedder = embedding_model(&args, &examples);
    let (dir, chosen_here) = match &args.log_dir {
        Some(dir) => (dir.clone(), false),
        None => (
            fresh_run_dir(Path::new(DEFAULT_RUNS_DIR), "generate")?,
            true,
        ),
    };
    let mut command = RunCommand::new(&args.strategy, &dir);
    command.option("queries", &serde_json::to_value(&queries)?);
    command.option("system_prompt", &Value::from(system_prompt));
    command.option("examples", &serde_json::to_value(&examples)?);
    command.option("k", &Value::from(args.k));
    command.option("retrieve", &Value::from(embedder.is_some()));
    command.option("raw", &Value::from(args.raw));
    command.option("max_tokens", &Value::from(args.max_tokens));
    // Through their shortest decimal form, so the options say 0.7 rather than 0.699999988.
    for (name, value) in [("temperature", args.temperature), ("top_p", args.top_p)] {
        command.option(name, &serde_json::from_str(&value.to_string())?);
    }
    command.flags(run_flags(&args, &model, embedder.as_deref()));
    if let Err(error) = command.execute().await {
        if chosen_here {
            // A run that failed before it began leaves the directory empty: no litter. Any
            // other keeps its files (remove_dir refuses a directory that is not empty).
            let _ = std::fs::remove_dir(&dir);
        }
        return Err(error);
    }
    deliver(&dir, args.output.as_deref())
}

/// The flags of the generation run: the seed, the answering model for every role the user's
/// flags after `--` leave unnamed (generate.wasm asks only the base role, so nothing else is
/// loaded), the endpoint and embedding model, and a grant of the base role alone unless the
/// user gave one.
fn run_flags(args: &GenerateArgs, model: &str, embedder: Option<&str>) -> Vec<String> {
    let given = &args.run_flags;
    let mut flags = vec!["--seed".to_owned(), args.seed.to_string()];
    for flag in [
        "--base-model-name",
        "--metrics-model-name",
        "--eval-model-name",
        "--optimize-model-name",
    ] {
        if flag_value(given, flag).is_none() {
            flags.extend([flag.to_owned(), model.to_owned()]);
        }
    }
    if let Some(api_base) = &args.api_base {
        flags.extend(["--api-base".to_owned(), api_base.clone()]);
    }
    if let Some(device) = &args.device
        && flag_value(given, "--device").is_none()
    {
        flags.extend(["--device".to_owned(), device.clone()]);
    }
    if let Some(embedder) = embedder {
        flags.extend(["--embedding-model-name".to_owned(), embedder.to_owned()]);
    }
    if flag_value(given, "--allow-roles").is_none() {
        flags.extend(["--allow-roles".to_owned(), "base".to_owned()]);
    }
    flags.extend(given.iter().cloned());
    flags
}

/// Prints the answers of a finished generation run, or writes them as JSONL; fails when a
/// query got no answer (after writing the others).
fn deliver(dir: &Path, output: Option<&Path>) -> anyhow::Result<()> {
    let details = outcome_details(dir, "generation", "generate.wasm")?;
    let answers = details["answers"].as_array().map_or(&[][..], Vec::as_slice);
    let mut failed = 0;
    let mut lines = Vec::with_capacity(answers.len());
    for item in answers {
        let Some(answer) = item["answer"].as_str() else {
            failed += 1;
            eprintln!(
                "no answer to {}: {}",
                item["id"],
                crate::terminal::line(item["error"].as_str().unwrap_or("no reason given"))
            );
            continue;
        };
        match output {
            Some(_) => lines.push(
                json!({"id": item["id"], "query": item["query"], "answer": answer, "tags": item["tags"]})
                    .to_string(),
            ),
            None => println!(
                "### {}\n{}\n",
                item["query"].as_str().unwrap_or_default(),
                crate::terminal::block(answer)
            ),
        }
    }
    if let Some(path) = output {
        let mut body = lines.join("\n");
        body.push('\n');
        std::fs::write(path, body)
            .with_context(|| format!("cannot write the answers to {}", path.display()))?;
        eprintln!("wrote {} answer(s) to {}", lines.len(), path.display());
    }
    eprintln!(
        "generation run: {} (`drpo-host replay {}` reproduces it)",
        dir.display(),
        dir.display()
    );
    if failed > 0 {
        bail!("{failed} of {} queries got no answer", answers.len());
    }
    Ok(())
}

fn read_queries(args: &GenerateArgs) -> anyhow::Result<Vec<drpo::types::Query>> {
    match &args.input {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the queries {}", path.display()))?;
            let queries = drpo::data::parse_queries_jsonl(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            if queries.is_empty() {
                bail!("{}: no queries", path.display());
            }
            Ok(queries)
        }
        None => Ok(args
            .queries
            .iter()
            .enumerate()
            .map(|(i, text)| drpo::types::Query {
                id: format!("q{}", i + 1),
                text: text.clone(),
                tags: Vec::new(),
            })
            .collect()),
    }
}

/// The system prompt: `--system`, a prompt file, a run's best prompt, or the baseline.
fn system_prompt(args: &GenerateArgs) -> anyhow::Result<String> {
    if let Some(text) = &args.system {
        return if Path::new(text).is_file() {
            std::fs::read_to_string(text).with_context(|| format!("cannot read {text}"))
        } else {
            Ok(text.clone())
        };
    }
    if let Some(path) = &args.prompt_file {
        return std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the prompt file {}", path.display()));
    }
    if let Some(dir) = &args.run {
        return best_prompt(dir);
    }
    if !args.no_optimized_prompt {
        eprintln!(
            "note: no --run, --prompt-file or --system: answering under the baseline prompt {BASELINE_PROMPT:?}"
        );
    }
    Ok(BASELINE_PROMPT.to_string())
}

/// The best prompt a run found (`best_prompt` in its result.json).
pub fn best_prompt(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("result.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {} (has the run finished?)", path.display()))?;
    let result: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    match result.get("best_prompt").and_then(Value::as_str) {
        Some(prompt) if !prompt.trim().is_empty() => Ok(prompt.to_string()),
        _ => bail!("{} has no \"best_prompt\" string", path.display()),
    }
}

fn examples(args: &GenerateArgs) -> anyhow::Result<Vec<drpo::types::Example>> {
    if args.no_examples {
        return Ok(Vec::new());
    }
    match &args.examples {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the examples {}", path.display()))?;
            drpo::data::parse_examples(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        }
        None => drpo::data::parse_examples(drpo::data::DEMO_EXAMPLES_JSON)
            .map_err(|e| anyhow::anyhow!("the built-in demo examples: {e}")),
    }
}

/// The embedding model that retrieves each query's examples: `--embedding-model`, else the
/// default encoder when fetched; none when there are no examples, or no model (then every query
/// gets the first k examples, said on stderr).
fn embedding_model(args: &GenerateArgs, examples: &[drpo::types::Example]) -> Option<String> {
    if examples.is_empty() {
        return None;
    }
    let model = args
        .embedding_model
        .clone()
        .or_else(services::default_embedder);
    if model.is_none() {
        eprintln!(
            "note: no --embedding-model (and the default embedder is not fetched: \
             scripts/fetch-minilm.sh): every query gets the first {} example(s) of the file",
            examples.len().min(usize::from(args.k))
        );
    }
    model
}
