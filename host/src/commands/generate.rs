//! `drpo-host generate`: answers queries the way the published DRPO answers them after a search
//! (§1.9 of the reference): the optimized system prompt, then the top-k in-context examples
//! retrieved by embedding similarity, then `# Query:` … `# Answer:` `<START>`; generation stops
//! at `<END>`. `--no-optimized-prompt` and `--no-examples` give the baselines.
//!
//! The answering is an ordinary recorded run of `generate.wasm` (like `eval`'s of eval.wasm):
//! the queries, the system prompt and the examples travel in the strategy's options, the
//! strategy embeds for retrieval and asks the base role, and this command writes the answers
//! from the run's outcome. `replay`, `resume` and `inspect` work on its run directory.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::aligned;
use super::made_run::{fresh_run_dir, outcome_details};
use crate::bindings::types::Role;
use crate::cli::{GenerateArgs, RunArgs};

/// Where `generate` puts its run directory when given none: `runs/generate-N`.
pub const DEFAULT_RUNS_DIR: &str = "runs";

/// Answers the queries as a recorded run of generate.wasm, then prints or writes the answers.
pub async fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let queries = read_queries(&args)?;
    let system_prompt = aligned::system_prompt(&args.aligned)?;
    let examples = aligned::examples(&args.aligned)?;
    let model = aligned::model(&args.aligned)?;
    let embedder = aligned::embedding_model(&args.aligned, &examples);
    let (dir, chosen_here) = match &args.log_dir {
        Some(dir) => (dir.clone(), false),
        None => (
            fresh_run_dir(Path::new(DEFAULT_RUNS_DIR), "generate")?,
            true,
        ),
    };
    let mut run = run_args(&args, &dir, &model, embedder.as_deref())?;
    let options = &mut run.option_values;
    options.insert("queries".into(), serde_json::to_value(&queries)?);
    options.insert("system_prompt".into(), Value::from(system_prompt));
    options.insert("examples".into(), serde_json::to_value(&examples)?);
    options.insert("k".into(), Value::from(args.aligned.k));
    options.insert("retrieve".into(), Value::from(embedder.is_some()));
    options.insert("raw".into(), Value::from(args.aligned.raw));
    options.insert("max_tokens".into(), Value::from(args.max_tokens));
    // Through their shortest decimal form, so the options say 0.7 rather than 0.699999988.
    for (name, value) in [("temperature", args.temperature), ("top_p", args.top_p)] {
        options.insert(name.into(), serde_json::from_str(&value.to_string())?);
    }
    if let Err(error) = Box::pin(super::run::run(run)).await {
        if chosen_here {
            // A run that failed before it began leaves the directory empty: no litter. Any
            // other keeps its files (remove_dir refuses a directory that is not empty).
            let _ = std::fs::remove_dir(&dir);
        }
        return Err(error);
    }
    deliver(&dir, args.output.as_deref())
}

/// The generation run: the user's `run` flags (after `--`), the seed, the answering model for
/// every role they leave unnamed (generate.wasm asks only the base role, so nothing else is
/// loaded), the endpoint, device and embedding model, and a grant of the base role alone unless
/// the user gave one.
fn run_args(
    args: &GenerateArgs,
    dir: &Path,
    model: &str,
    embedder: Option<&str>,
) -> anyhow::Result<RunArgs> {
    let mut run = RunArgs::with_flags(&args.strategy, dir, &args.run_flags)?;
    run.host.seed.get_or_insert(args.seed);
    let models = &mut run.models;
    for named in [
        &mut models.base_model_name,
        &mut models.metrics_model_name,
        &mut models.eval_model_name,
        &mut models.optimize_model_name,
    ] {
        named.get_or_insert_with(|| model.to_owned());
    }
    if let Some(api_base) = &args.aligned.api_base {
        models.api_base = Some(api_base.clone());
    }
    if models.device.is_none() {
        models.device = args.aligned.device.clone();
    }
    if models.prefix_cache_tokens.is_none() {
        models.prefix_cache_tokens = args.aligned.prefix_cache_tokens;
    }
    if let Some(embedder) = embedder {
        models.embedding_model_name = Some(embedder.to_owned());
    }
    run.host
        .allow_roles
        .get_or_insert_with(|| vec![Role::Base.name().to_owned()]);
    Ok(run)
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
