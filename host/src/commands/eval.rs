//! `drpo-host eval`: judges a JSONL file of answers (and optionally a second one to the same
//! queries) with the `eval.wasm` strategy. The answers travel in the strategy's options, so the
//! evaluation is an ordinary recorded run: `replay`, `resume` and `inspect` work on its
//! directory. Prints the per-aspect table and writes the per-query results.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

use super::made_run::outcome_details;
use crate::bindings::types::Role;
use crate::cli::{EvalArgs, RunArgs};
use crate::terminal;

/// The file in the run directory that holds the per-query results.
pub const RESULTS_FILE: &str = "evaluation.jsonl";

/// Runs the evaluation and prints its report.
pub async fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let mut run = RunArgs::with_flags(&args.strategy, &args.log_dir, &args.run_flags)?;
    let sets = [
        ("answers", "label", Some(&args.answers)),
        ("compare", "compare_label", args.compare.as_ref()),
    ];
    for (option, label_option, path) in sets {
        let Some(path) = path else { continue };
        let options = &mut run.option_values;
        options.insert(option.into(), Value::Array(read_answers(path)?));
        options.insert(label_option.into(), Value::from(label(path)));
    }
    let options = &mut run.option_values;
    if let Some(rubric) = args.rubric {
        options.insert("rubric".into(), Value::from(rubric.option()));
    }
    if args.pairwise {
        options.insert("pairwise".into(), Value::Bool(true));
    }
    let default_judge = crate::services::default_model(Role::Judge, "").ok();
    judge_only(&mut run, default_judge);
    // Read before anything is spent, so that a wrong directory costs nothing.
    let trained_by = match &args.training_run {
        Some(training) => Some((training, judge_of(training)?)),
        None => None,
    };
    Box::pin(super::run::run(run)).await?;
    if let Some((training, trained_by)) = trained_by {
        println!(
            "{}",
            judges_compared(&judge_of(&args.log_dir)?, training, &trained_by)
        );
    }
    report(&args.log_dir, args.output.as_deref())
}

/// The line that says whether the evaluation's judge (`graded_by`) is the model the search
/// in `training` optimised against (`trained_by`).
fn judges_compared(graded_by: &str, training: &Path, trained_by: &str) -> String {
    if graded_by == trained_by {
        format!(
            "NOTE: the judge grading these answers, {}, is the judge the search in {} optimised \
             its prompt against, so a gain here may be the search fitting its judge; grade with \
             another model too (-- --eval-model-name NAME).",
            terminal::line(graded_by),
            training.display()
        )
    } else {
        format!(
            "judge: {} (the search in {} optimised against {})",
            terminal::line(graded_by),
            training.display(),
            terminal::line(trained_by)
        )
    }
}

/// The judge's model of a recorded run, from its run log's header.
fn judge_of(dir: &Path) -> anyhow::Result<String> {
    let recorded = super::recorded::read_run(&crate::rundir::RunDir::new(dir))?;
    recorded
        .header
        .models
        .iter()
        .find(|m| m.role == Role::Judge.name())
        .map(|m| m.model.clone())
        .with_context(|| format!("the run in {} names no judge", dir.display()))
}

/// The judge's model (the one named, else `default_judge`, the built-in one) for every role
/// that names none (eval.wasm asks only the judge, so nothing else is loaded, needs a key or
/// must have been fetched), and a grant of the judge role alone unless the user gave one.
fn judge_only(run: &mut RunArgs, default_judge: Option<String>) {
    let models = &mut run.models;
    if let Some(judge) = models.eval_model_name.clone().or(default_judge) {
        for named in [
            &mut models.base_model_name,
            &mut models.metrics_model_name,
            &mut models.optimize_model_name,
        ] {
            named.get_or_insert_with(|| judge.clone());
        }
    }
    run.host
        .allow_roles
        .get_or_insert_with(|| vec![Role::Judge.name().to_owned()]);
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

    fn judged(flags: &[&str]) -> RunArgs {
        judged_by_default(flags, None)
    }

    fn judged_by_default(flags: &[&str], default_judge: Option<&str>) -> RunArgs {
        let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        let mut run = RunArgs::with_flags(Path::new("eval"), Path::new("out"), &flags).unwrap();
        judge_only(&mut run, default_judge.map(str::to_owned));
        run
    }

    #[test]
    fn the_built_in_judge_serves_the_roles_left_unnamed() {
        // An evaluation with the built-in judge once asked for the built-in base model too,
        // which it never uses, and failed where that had not been fetched.
        let run = judged_by_default(&[], Some("local:judge.gguf"));
        let models = &run.models;
        for named in [
            &models.base_model_name,
            &models.metrics_model_name,
            &models.optimize_model_name,
        ] {
            assert_eq!(named.as_deref(), Some("local:judge.gguf"));
        }
        let named = judged_by_default(&["--eval-model-name", "gpt-4o"], Some("local:judge.gguf"));
        assert_eq!(named.models.base_model_name.as_deref(), Some("gpt-4o"));
    }

    #[test]
    fn the_judge_model_serves_the_roles_left_unnamed_and_only_the_judge_is_granted() {
        let run = judged(&[
            "--eval-model-name",
            "gpt-4o",
            "--base-model-name=local:x.gguf",
        ]);
        let models = &run.models;
        assert_eq!(models.base_model_name.as_deref(), Some("local:x.gguf"));
        for named in [
            &models.eval_model_name,
            &models.metrics_model_name,
            &models.optimize_model_name,
        ] {
            assert_eq!(named.as_deref(), Some("gpt-4o"));
        }
        assert_eq!(run.host.allow_roles, Some(vec!["judge".to_owned()]));
        let own_grant = judged(&["--allow-roles", "judge,base"]);
        assert_eq!(
            own_grant.host.allow_roles,
            Some(vec!["judge".to_owned(), "base".to_owned()])
        );
    }

    #[test]
    fn a_flag_run_does_not_take_is_an_error_naming_it() {
        let flags = vec!["--no-such-flag".to_owned()];
        let error = RunArgs::with_flags(Path::new("eval"), Path::new("out"), &flags)
            .unwrap_err()
            .to_string();
        assert!(error.contains("--no-such-flag"), "{error}");
    }
}
