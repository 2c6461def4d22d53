//! A finished run in MLflow's file-store layout (an `mlruns` directory), so that `mlflow ui` and
//! MLflow's own client read it with the runs of other tools: the options and models as
//! parameters, the reward per level and the result as metrics, the best prompt and the report
//! as artefacts.
//!
//! The layout, as MLflow's `FileStore` reads it: `ROOT/EXPERIMENT_ID/meta.yaml` names an
//! experiment; `ROOT/EXPERIMENT_ID/RUN_ID/` holds the run's `meta.yaml`, `params/KEY` (the
//! value), `metrics/KEY` (lines of `TIMESTAMP VALUE STEP`), `tags/KEY` and `artifacts/`. The run
//! id is taken from the run log's final chain hash, so exporting a run again replaces it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

use crate::report::RunReport;
use crate::runlog::Header;

/// The longest parameter value written as a parameter; longer ones (a long initial prompt) are
/// in the `options.json` artefact only.
const MAX_PARAM_CHARS: usize = 500;

/// What the export writes about one run, besides its report.
pub struct RunFacts<'a> {
    /// The run log's header: options, seed, models, start time.
    pub header: &'a Header,
    /// How long the run took, when it ended.
    pub elapsed_ms: Option<u64>,
    /// The run's name in MLflow (its directory's name).
    pub name: String,
    /// The run log's final chain hash, in hex.
    pub chain_hash: String,
}

/// Writes the run into the file store at `root` (created if missing), in the experiment named
/// `experiment` (created if missing). Returns the run's directory.
pub fn write(
    root: &Path,
    experiment: &str,
    report: &RunReport,
    facts: &RunFacts,
) -> anyhow::Result<PathBuf> {
    let root = absolute(root)?;
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let now = facts.header.started_unix_ms;
    if !root.join("0").exists() {
        // MLflow creates its default experiment with a new store; a store made here has it too.
        write_experiment(&root, "0", "Default", now)?;
    }
    let experiment_id = match find_experiment(&root, experiment)? {
        Some(id) => id,
        None => {
            let id = next_experiment_id(&root)?;
            write_experiment(&root, &id, experiment, now)?;
            id
        }
    };
    let run_id: String = facts.chain_hash.chars().take(32).collect();
    // MLflow finds a run by its id in any experiment: an earlier export of this run, under this
    // experiment or another, is replaced.
    for experiment in experiment_dirs(&root)? {
        let earlier = experiment.join(&run_id);
        if earlier.is_dir() {
            std::fs::remove_dir_all(&earlier)
                .with_context(|| format!("cannot replace {}", earlier.display()))?;
        }
    }
    let run = root.join(&experiment_id).join(&run_id);
    for folder in ["params", "metrics", "tags", "artifacts"] {
        std::fs::create_dir_all(run.join(folder))
            .with_context(|| format!("cannot create {}", run.join(folder).display()))?;
    }
    let end = facts.elapsed_ms.map(|ms| now + ms);
    let status = match report.status.name() {
        "finished" => 3,
        "failed" => 4,
        _ => 5,
    };
    let artifacts = run.join("artifacts");
    write_file(
        &run.join("meta.yaml"),
        &yaml(&[
            ("artifact_uri", quoted(&file_uri(&artifacts))),
            ("end_time", end.map_or("null".into(), |t| t.to_string())),
            ("entry_point_name", quoted("")),
            ("experiment_id", quoted(&experiment_id)),
            ("lifecycle_stage", "active".into()),
            ("run_id", quoted(&run_id)),
            ("run_name", quoted(&facts.name)),
            ("run_uuid", quoted(&run_id)),
            ("source_name", quoted("")),
            ("source_type", "4".into()),
            ("source_version", quoted("")),
            ("start_time", now.to_string()),
            ("status", status.to_string()),
            ("tags", "[]".into()),
            ("user_id", quoted("drpo-host")),
        ]),
    )?;
    for (key, value) in params(report, facts.header) {
        write_file(&run.join("params").join(&key), &value)?;
    }
    for (key, points) in metrics(report) {
        let lines: String = points
            .iter()
            .map(|(step, value)| format!("{} {value} {step}\n", end.unwrap_or(now)))
            .collect();
        write_file(&run.join("metrics").join(&key), &lines)?;
    }
    for (key, value) in [
        ("mlflow.runName", facts.name.as_str()),
        ("mlflow.source.name", "drpo-host"),
        ("mlflow.user", "drpo-host"),
        ("drpo.status", report.status.name()),
        ("drpo.chain_hash", facts.chain_hash.as_str()),
    ] {
        write_file(&run.join("tags").join(key), value)?;
    }
    if let Some(prompt) = &report.best_prompt {
        write_file(&artifacts.join("best_prompt.txt"), prompt)?;
    }
    write_file(
        &artifacts.join("result.json"),
        &(serde_json::to_string_pretty(report)? + "\n"),
    )?;
    let options: Value = serde_json::from_str(&facts.header.options).unwrap_or(Value::Null);
    write_file(
        &artifacts.join("options.json"),
        &(serde_json::to_string_pretty(&options)? + "\n"),
    )?;
    Ok(run)
}

/// The parameters: the strategy, the seed, every option whose value is a short scalar, and
/// each role's model.
fn params(report: &RunReport, header: &Header) -> Vec<(String, String)> {
    let mut params = vec![
        ("strategy".to_owned(), report.strategy.name.clone()),
        (
            "strategy_version".to_owned(),
            report.strategy.version.clone(),
        ),
        ("seed".to_owned(), header.seed.to_string()),
    ];
    if let Ok(Value::Object(options)) = serde_json::from_str::<Value>(&header.options) {
        for (key, value) in options {
            let text = match value {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => continue,
            };
            if text.chars().count() <= MAX_PARAM_CHARS && safe_key(&key) && key != "seed" {
                params.push((key, text));
            }
        }
    }
    for model in &header.models {
        let key = format!("model.{}", model.role);
        if safe_key(&key) && model.model.chars().count() <= MAX_PARAM_CHARS {
            params.push((key, model.model.clone()));
        }
    }
    params
}

/// The metrics: each level's best and mean reward and node count (the level as the step), the
/// best score, the judgements and, with a validation split, the chosen prompt's held-out mean
/// beside the search's own best.
fn metrics(report: &RunReport) -> Vec<(String, Vec<(u64, f64)>)> {
    let per_level = |value: fn(&crate::report::LevelSummary) -> f64| {
        report
            .levels
            .iter()
            .map(|l| (u64::from(l.depth), value(l)))
            .collect::<Vec<_>>()
    };
    let mut metrics = vec![
        ("level.best_reward".to_owned(), per_level(|l| l.best_reward)),
        ("level.mean_reward".to_owned(), per_level(|l| l.mean_reward)),
        ("level.nodes".to_owned(), per_level(|l| l.nodes as f64)),
    ];
    let details = &report.details;
    let mut single = |key: &str, value: Option<f64>| {
        if let Some(value) = value.filter(|v| v.is_finite()) {
            metrics.push((key.to_owned(), vec![(0, value)]));
        }
    };
    single("best_score", report.best_score);
    single("judgements.asked", details["judgements"]["asked"].as_f64());
    single(
        "judgements.usable",
        details["judgements"]["usable"].as_f64(),
    );
    let validation = &details["validation"];
    let candidate = |node: &Value| {
        validation["candidates"]
            .as_array()
            .and_then(|all| all.iter().find(|c| &c["node"] == node))
    };
    if let Some(chosen) = candidate(&validation["chosen_node"]) {
        single(
            "validation.chosen.held_out_mean",
            chosen["validation_score"].as_f64(),
        );
        single(
            "validation.chosen.search_score",
            chosen["search_score"].as_f64(),
        );
    }
    if let Some(best) = candidate(&validation["best_by_search_node"]) {
        single(
            "validation.best_by_search.held_out_mean",
            best["validation_score"].as_f64(),
        );
        single(
            "validation.best_by_search.search_score",
            best["search_score"].as_f64(),
        );
    }
    metrics
}

/// Whether MLflow accepts `key` as a parameter, metric or tag name (and it is a plain file
/// name here).
fn safe_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-. ".contains(c))
}

/// The store's experiment folders, deleted ones (under `.trash`) included.
fn experiment_dirs(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for folder in [root.to_owned(), root.join(".trash")] {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries {
            let path = entry
                .with_context(|| format!("cannot read {}", folder.display()))?
                .path();
            if path.join("meta.yaml").is_file() {
                dirs.push(path);
            }
        }
    }
    Ok(dirs)
}

/// The id of the live experiment called `name`, as MLflow (PyYAML: the name plain or quoted)
/// or this module wrote it.
fn find_experiment(root: &Path, name: &str) -> anyhow::Result<Option<String>> {
    for dir in experiment_dirs(root)? {
        if dir.parent() != Some(root) {
            continue;
        }
        let meta = std::fs::read_to_string(dir.join("meta.yaml"))
            .with_context(|| format!("cannot read {}", dir.join("meta.yaml").display()))?;
        let named = meta
            .lines()
            .filter_map(|l| l.strip_prefix("name:"))
            .any(|value| yaml_scalar(value) == name);
        let deleted = meta.lines().any(|l| l.trim() == "lifecycle_stage: deleted");
        if named && !deleted {
            return Ok(dir.file_name().map(|n| n.to_string_lossy().into_owned()));
        }
    }
    Ok(None)
}

/// One more than the highest numeric experiment id, deleted experiments included.
fn next_experiment_id(root: &Path) -> anyhow::Result<String> {
    let highest = experiment_dirs(root)?
        .iter()
        .filter_map(|d| d.file_name()?.to_str()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    Ok((highest + 1).to_string())
}

/// A YAML scalar as written after a key: plain, single-quoted or double-quoted (no escapes
/// but the doubled single quote).
fn yaml_scalar(value: &str) -> String {
    let value = value.trim();
    if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        inner.replace("''", "'")
    } else if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        inner.to_owned()
    } else {
        value.to_owned()
    }
}

fn write_experiment(root: &Path, id: &str, name: &str, now: u64) -> anyhow::Result<()> {
    let dir = root.join(id);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_file(
        &dir.join("meta.yaml"),
        &yaml(&[
            ("artifact_location", quoted(&file_uri(&dir))),
            ("creation_time", now.to_string()),
            ("experiment_id", quoted(id)),
            ("last_update_time", now.to_string()),
            ("lifecycle_stage", "active".into()),
            ("name", quoted(name)),
        ]),
    )
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    Ok(std::env::current_dir()
        .context("cannot read the current directory")?
        .join(path))
}

fn file_uri(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// A YAML mapping of already formatted values, one `key: value` per line.
fn yaml(entries: &[(&str, String)]) -> String {
    entries.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
}

/// A single-quoted YAML scalar (a quote inside is doubled; line breaks are escaped away, which
/// no value written here has).
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''").replace(['\n', '\r'], " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_mlflow_refuses_or_that_escape_the_folder_are_not_written() {
        assert!(safe_key("beam_size") && safe_key("model.judge"));
        for bad in ["", "../x", "a/b", ".hidden", "new\nline"] {
            assert!(!safe_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn yaml_scalars_are_quoted_and_read_back_plain_or_quoted() {
        assert_eq!(quoted("it's"), "'it''s'");
        assert_eq!(yaml(&[("name", quoted("drpo"))]), "name: 'drpo'\n");
        for written in [" drpo", " 'drpo'", " \"drpo\""] {
            assert_eq!(yaml_scalar(written), "drpo");
        }
        assert_eq!(yaml_scalar(&quoted("it's")), "it's");
    }

    #[test]
    fn an_experiment_mlflow_wrote_is_found_by_name_and_ids_skip_deleted_ones() {
        let root = tempfile::tempdir().unwrap();
        for (id, meta, trash) in [
            ("0", "name: Default\nlifecycle_stage: active\n", false),
            (
                "4",
                "experiment_id: '4'\nname: drpo\nlifecycle_stage: active\n",
                false,
            ),
            ("9", "name: old\nlifecycle_stage: deleted\n", true),
        ] {
            let dir = if trash {
                root.path().join(".trash").join(id)
            } else {
                root.path().join(id)
            };
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("meta.yaml"), meta).unwrap();
        }
        assert_eq!(
            find_experiment(root.path(), "drpo").unwrap().as_deref(),
            Some("4")
        );
        assert_eq!(find_experiment(root.path(), "old").unwrap(), None);
        assert_eq!(next_experiment_id(root.path()).unwrap(), "10");
    }
}
