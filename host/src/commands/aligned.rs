//! The aligned model as `generate` and `serve` answer with it: which model, which system prompt,
//! which in-context examples and which embedding model retrieves them, from the flags they
//! share ([`AlignedFlags`]).

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

use drpo::icl::BASELINE_PROMPT;

use crate::bindings::types::Role;
use crate::cli::AlignedFlags;
use crate::services;

/// The model that answers: `--model`, else the built-in default of the base role.
pub fn model(flags: &AlignedFlags) -> anyhow::Result<String> {
    match &flags.model {
        Some(model) => Ok(model.clone()),
        None => services::default_model(Role::Base, "--model"),
    }
}

/// The system prompt: `--system`, a prompt file, a run's best prompt, or the baseline.
pub fn system_prompt(flags: &AlignedFlags) -> anyhow::Result<String> {
    if let Some(text) = &flags.system {
        return if Path::new(text).is_file() {
            std::fs::read_to_string(text).with_context(|| format!("cannot read {text}"))
        } else {
            Ok(text.clone())
        };
    }
    if let Some(path) = &flags.prompt_file {
        return std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the prompt file {}", path.display()));
    }
    if let Some(dir) = &flags.run {
        return best_prompt(dir);
    }
    if !flags.no_optimized_prompt {
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

/// The in-context examples: `--examples`, none with `--no-examples`, else the built-in demo
/// examples.
pub fn examples(flags: &AlignedFlags) -> anyhow::Result<Vec<drpo::types::Example>> {
    if flags.no_examples {
        return Ok(Vec::new());
    }
    match &flags.examples {
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
pub fn embedding_model(flags: &AlignedFlags, examples: &[drpo::types::Example]) -> Option<String> {
    if examples.is_empty() {
        return None;
    }
    let model = flags
        .embedding_model
        .clone()
        .or_else(services::default_embedder);
    if model.is_none() {
        eprintln!(
            "note: no --embedding-model (and the default embedder is not fetched: \
             scripts/fetch-minilm.sh): every query gets the first {} example(s) of the file",
            examples.len().min(usize::from(flags.k))
        );
    }
    model
}
