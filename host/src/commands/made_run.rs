//! Commands that are ordinary recorded runs of a shipped strategy (`eval` runs eval.wasm,
//! `generate` runs generate.wasm): they build a `run` ([`crate::cli::RunArgs`]) with their data
//! in the strategy's options, so the run log's header holds it, and read the outcome back. Their
//! run directories work with `replay`, `resume` and `inspect` like any other.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

/// The `details` of a finished run's outcome (in its `result.json`), which must be of `kind`
/// (the strategy's `details.kind`, e.g. `evaluation`); `strategy` names the plugin that makes
/// such runs, for the error.
pub fn outcome_details(dir: &Path, kind: &str, strategy: &str) -> anyhow::Result<Value> {
    let path = dir.join("result.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut result: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let details = result["details"].take();
    if details["kind"] != kind {
        bail!(
            "{} holds no {kind} (was the run made with {strategy}?)",
            path.display()
        );
    }
    Ok(details)
}

/// A new, empty run directory `PARENT/STEM-N` for the first N from 1 that is not taken; it is
/// created here, so two commands started together never share one.
pub fn fresh_run_dir(parent: &Path, stem: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let mut n = 1u64;
    loop {
        let dir = parent.join(format!("{stem}-{n}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_run_dirs_take_the_first_free_number() {
        let work = tempfile::tempdir().unwrap();
        let parent = work.path().join("runs");
        let first = fresh_run_dir(&parent, "generate").unwrap();
        assert_eq!(first, parent.join("generate-1"));
        std::fs::create_dir(parent.join("generate-3")).unwrap();
        assert_eq!(
            fresh_run_dir(&parent, "generate").unwrap(),
            parent.join("generate-2")
        );
        assert_eq!(
            fresh_run_dir(&parent, "generate").unwrap(),
            parent.join("generate-4")
        );
        assert!(first.is_dir());
    }

    #[test]
    fn details_of_another_kind_of_run_are_refused() {
        let work = tempfile::tempdir().unwrap();
        std::fs::write(
            work.path().join("result.json"),
            r#"{"best_prompt": "p", "details": {"kind": "beam"}}"#,
        )
        .unwrap();
        let error = outcome_details(work.path(), "generation", "generate.wasm")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("result.json holds no generation") && error.contains("generate.wasm"),
            "{error}"
        );
        std::fs::write(
            work.path().join("result.json"),
            r#"{"details": {"kind": "generation", "answers": []}}"#,
        )
        .unwrap();
        let details = outcome_details(work.path(), "generation", "generate.wasm").unwrap();
        assert_eq!(details["answers"], serde_json::json!([]));
    }
}
