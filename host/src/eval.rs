//! `drpo-host eval`: judges a JSONL file of answers (and optionally a second one to the same
//! queries) with the `eval.wasm` strategy. The answers travel in the strategy's options, so the
//! evaluation is an ordinary recorded run: `replay`, `resume` and `inspect` work on its
//! directory. Prints the per-aspect table and writes the per-query results.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::subrun::{RunCommand, flag_value, outcome_details};

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The answers: JSONL, one `{"id", "query", "answer", "tags"}` per line (what `generate
    /// --output` writes); a query tagged `harmful` (or with `"harmful": true`) is judged on
    /// safety.
    pub answers: PathBuf,
    /// A second answers file for the same queries (matched by id): judged the same way and
    /// compared side by side.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Directory for the evaluation run; created if missing, must not hold a run already.
    #[arg(long)]
    pub log_dir: PathBuf,
    /// The evaluation strategy: a `.wasm` file, or a name as for `run --strategy`.
    #[arg(long, default_value = "eval")]
    pub strategy: PathBuf,
    /// Also write the per-query results (scores, rationales, means) here as JSONL; they are
    /// always in LOG_DIR/evaluation.jsonl.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Flags of `run` (the judge's model, endpoints, budgets, --no-cache, ...), after `--`.
    #[arg(last = true)]
    pub run_flags: Vec<String>,
}

/// The file in the run directory that holds the per-query results.
pub const RESULTS_FILE: &str = "evaluation.jsonl";

/// Runs the evaluation and prints its report.
pub async fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let mut command = RunCommand::new(&args.strategy, &args.log_dir);
    let sets = [
        ("answers", "label", Some(&args.answers)),
        ("compare", "compare_label", args.compare.as_ref()),
    ];
    for (option, label_option, path) in sets {
        let Some(path) = path else { continue };
        command.option(option, &Value::Array(read_answers(path)?));
        command.option(label_option, &Value::from(label(path)));
    }
    command.flags(run_flags(&args.run_flags));
    command.execute().await?;
    report(&args.log_dir, args.output.as_deref())
}

/// The flags of the evaluation run: the user's, plus the judge's model for every role that
/// names none (eval.wasm asks only the judge, so nothing else is loaded or needs a key), and a
/// grant of the judge role alone unless the user gave one.
fn run_flags(given: &[String]) -> Vec<String> {
    let value_of = |flag: &str| flag_value(given, flag);
    let mut flags = given.to_vec();
    if let Some(judge) = value_of("--eval-model-name") {
        for flag in [
            "--base-model-name",
            "--metrics-model-name",
            "--optimize-model-name",
        ] {
            if value_of(flag).is_none() {
                flags.extend([flag.to_owned(), judge.clone()]);
            }
        }
    }
    if value_of("--allow-roles").is_none() {
        flags.extend(["--allow-roles".to_owned(), "judge".to_owned()]);
    }
    flags
}

/// A set's name in the report: its file name without the extension.
fn label(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Reads an answers JSONL file; `"harmful": true` becomes the `harmful` tag.
pub fn read_answers(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the answers {}", path.display()))?;
    let mut answers = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), i + 1);
        let mut item: Value = serde_json::from_str(line).with_context(at)?;
        let Some(object) = item.as_object_mut() else {
            bail!("{}: expected a JSON object", at());
        };
        for field in ["query", "answer"] {
            if !object.get(field).is_some_and(Value::is_string) {
                bail!("{}: no {field:?} string", at());
            }
        }
        if object.remove("harmful") == Some(Value::Bool(true)) {
            let tags = object
                .entry("tags")
                .or_insert_with(|| Value::Array(Vec::new()));
            match tags.as_array_mut() {
                Some(tags) => tags.push(Value::from("harmful")),
                None => bail!("{}: \"tags\" must be a list", at()),
            }
        }
        answers.push(item);
    }
    if answers.is_empty() {
        bail!("{}: no answers", path.display());
    }
    Ok(answers)
}

/// Prints the report of a finished evaluation run and writes its per-query results.
pub fn report(dir: &Path, output: Option<&Path>) -> anyhow::Result<()> {
    let details = outcome_details(dir, "evaluation", "eval.wasm")?;
    let (Some(report), Some(queries)) = (details["report"].as_str(), details["queries"].as_array())
    else {
        bail!(
            "{}: the evaluation has no report or no per-query results",
            dir.join("result.json").display()
        );
    };
    let mut lines: String = queries.iter().map(|q| format!("{q}\n")).collect();
    if lines.is_empty() {
        lines.push('\n');
    }
    let results = dir.join(RESULTS_FILE);
    for target in std::iter::once(results.as_path()).chain(output) {
        std::fs::write(target, &lines)
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    println!("\n{report}");
    eprintln!("per-query results: {}", results.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_judge_model_serves_the_roles_left_unnamed_and_only_the_judge_is_granted() {
        let flags = run_flags(&strings(&[
            "--eval-model-name",
            "gpt-4o",
            "--base-model-name=local:x.gguf",
        ]));
        assert_eq!(
            flags,
            strings(&[
                "--eval-model-name",
                "gpt-4o",
                "--base-model-name=local:x.gguf",
                "--metrics-model-name",
                "gpt-4o",
                "--optimize-model-name",
                "gpt-4o",
                "--allow-roles",
                "judge",
            ])
        );
        let own_grant = run_flags(&strings(&["--allow-roles", "judge,base"]));
        assert_eq!(own_grant, strings(&["--allow-roles", "judge,base"]));
    }
}
