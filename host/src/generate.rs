//! `drpo-host generate`: answers queries the way the published DRPO answers them after a search
//! (§1.9 of the reference): the optimized system prompt, then the top-k in-context examples
//! retrieved by embedding similarity, then `# Query:` … `# Answer:` `<START>`; generation stops
//! at `<END>`. `--no-optimized-prompt` and `--no-examples` give the baselines.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::bindings::types::{Message, Prompt, Request, Role, Sampling};
use crate::services;

/// The system prompt of the `--no-optimized-prompt` baseline (the published initial prompt).
pub const BASELINE_PROMPT: &str = "You are a helpful assistant.";

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// `local:PATH` (a GGUF file or a Hugging Face directory) or an OpenAI-compatible model
    /// name; default: the built-in SmolLM2 model.
    #[arg(long)]
    pub model: Option<String>,
    /// Base URL of the OpenAI-compatible server, up to `/v1` [env: OPENAI_BASE_URL].
    #[arg(long)]
    pub api_base: Option<String>,
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
    /// Sampling seed.
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
    /// The queries; all are answered as one batch.
    #[arg(required_unless_present = "input")]
    pub queries: Vec<String>,
}

/// Answers the queries and prints or writes the answers.
pub async fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let queries = read_queries(&args)?;
    let system_prompt = system_prompt(&args)?;
    let examples = examples(&args)?;
    let chosen = retrieve(&args, &examples, &queries).await?;
    let (name, provider) =
        services::single_provider(args.model.as_deref(), args.api_base.as_deref())?;
    let batch: Vec<Request> = queries
        .iter()
        .zip(&chosen)
        .map(|(query, picks)| {
            let picked: Vec<&drpo::types::Example> = picks.iter().map(|&i| &examples[i]).collect();
            request(&args, &system_prompt, &picked, &query.text)
        })
        .collect();
    eprintln!(
        "answering {} quer{} with {name}",
        batch.len(),
        if batch.len() == 1 { "y" } else { "ies" }
    );
    let answers = provider.complete(batch).await;
    let mut failed = 0;
    let mut lines = Vec::with_capacity(queries.len());
    for (query, answer) in queries.iter().zip(answers) {
        let text = match answer.result {
            Ok(completion) => drpo::icl::clean_answer(
                completion
                    .choices
                    .first()
                    .map(String::as_str)
                    .unwrap_or_default(),
            ),
            Err(error) => {
                failed += 1;
                eprintln!("no answer to {:?}: {error:?}", query.id);
                continue;
            }
        };
        match &args.output {
            Some(_) => lines.push(
                json!({"id": query.id, "query": query.text, "answer": text, "tags": query.tags})
                    .to_string(),
            ),
            None => println!("### {}\n{text}\n", query.text),
        }
    }
    if let Some(path) = &args.output {
        let mut body = lines.join("\n");
        body.push('\n');
        std::fs::write(path, body)
            .with_context(|| format!("cannot write the answers to {}", path.display()))?;
        eprintln!("wrote {} answer(s) to {}", lines.len(), path.display());
    }
    if failed > 0 {
        bail!("{failed} of {} queries got no answer", queries.len());
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

/// The examples each query gets, by index: the top k by cosine similarity of the embedded
/// queries, or, with no embedding model, the first k (said on stderr).
async fn retrieve(
    args: &GenerateArgs,
    examples: &[drpo::types::Example],
    queries: &[drpo::types::Query],
) -> anyhow::Result<Vec<Vec<usize>>> {
    let k = usize::from(args.k);
    let first_k: Vec<usize> = (0..examples.len().min(k)).collect();
    if examples.is_empty() {
        return Ok(vec![Vec::new(); queries.len()]);
    }
    let Some(model) = args
        .embedding_model
        .clone()
        .or_else(services::default_embedder)
    else {
        eprintln!(
            "note: no --embedding-model (and the default embedder is not fetched: \
             scripts/fetch-minilm.sh): every query gets the first {} example(s) of the file",
            first_k.len()
        );
        return Ok(vec![first_k; queries.len()]);
    };
    let embedder = services::embedding_provider(&model, args.api_base.as_deref())?;
    let mut texts: Vec<String> = examples.iter().map(|e| e.query.clone()).collect();
    texts.extend(queries.iter().map(|q| q.text.clone()));
    let wanted = texts.len();
    let mut vectors = embedder
        .embed(texts)
        .await
        .map_err(|e| anyhow::anyhow!("the embedding model {model} failed: {e:?}"))?;
    if vectors.len() != wanted {
        bail!(
            "the embedding model {model} returned {} vectors for {wanted} texts",
            vectors.len()
        );
    }
    let query_vectors = vectors.split_off(examples.len());
    Ok(query_vectors
        .iter()
        .map(|q| drpo::icl::top_k(q, &vectors, k))
        .collect())
}

/// The base model's request in the published inference format.
fn request(
    args: &GenerateArgs,
    system_prompt: &str,
    examples: &[&drpo::types::Example],
    query: &str,
) -> Request {
    let (system, user) = drpo::icl::inference_prompt_parts(system_prompt, examples, query);
    let prompt = if args.raw {
        Prompt::Raw(format!("{system}\n\n{user}"))
    } else {
        Prompt::Chat(vec![
            Message {
                role: "system".into(),
                content: system,
            },
            Message {
                role: "user".into(),
                content: user,
            },
        ])
    };
    Request {
        role: Role::Base,
        prompt,
        sampling: Sampling {
            temperature: args.temperature,
            top_p: args.top_p,
            max_tokens: args.max_tokens,
            n: 1,
            seed: args.seed,
            stop: drpo::icl::STOP.iter().map(|s| s.to_string()).collect(),
        },
        json_schema: None,
    }
}
