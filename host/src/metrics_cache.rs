//! The published per-query metrics cache: a JSON file `{query: aspect-selection JSON}`.
//!
//! The host reads it before a run and hands it to the strategy in its `metrics_cache` option
//! (so the run log records exactly what the strategy saw), and merges the strategy's
//! `new_metrics_cache` entries back into the file after the run.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Map, Value};

/// Reads the cache; a missing file is an empty cache (and is created, as published).
pub fn load(path: &Path) -> anyhow::Result<Map<String, Value>> {
    if !path.exists() {
        write(path, &Map::new())?;
        return Ok(Map::new());
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the metrics cache {}", path.display()))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(entries)) => Ok(entries),
        Ok(_) => bail!(
            "the metrics cache {} must be a JSON object {{query: metrics}}",
            path.display()
        ),
        Err(error) => bail!(
            "the metrics cache {} is not valid JSON ({error}); fix or delete it",
            path.display()
        ),
    }
}

/// Merges the `new_metrics_cache` object of a strategy's outcome details into the file.
/// Returns how many entries were added.
pub fn merge_outcome(path: &Path, outcome_details: &str) -> anyhow::Result<usize> {
    let details: Value = serde_json::from_str(outcome_details).unwrap_or(Value::Null);
    let Some(new_entries) = details.get("new_metrics_cache").and_then(Value::as_object) else {
        return Ok(0);
    };
    if new_entries.is_empty() {
        return Ok(0);
    }
    let mut entries = load(path)?;
    for (query, metrics) in new_entries {
        entries.insert(query.clone(), metrics.clone());
    }
    write(path, &entries)?;
    Ok(new_entries.len())
}

/// Writes the file whole, through a temporary file, so a crash never leaves half a cache.
fn write(path: &Path, entries: &Map<String, Value>) -> anyhow::Result<()> {
    let mut text = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut text, formatter);
    serde::Serialize::serialize(entries, &mut serializer)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, &text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .with_context(|| format!("cannot write the metrics cache {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_cache_is_created_empty_and_new_entries_are_merged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        assert!(load(&path).unwrap().is_empty());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}");
        let details = r#"{"new_metrics_cache": {"q1": {"a": 1}}}"#;
        assert_eq!(merge_outcome(&path, details).unwrap(), 1);
        let details = r#"{"new_metrics_cache": {"q2": {"a": 2}}}"#;
        assert_eq!(merge_outcome(&path, details).unwrap(), 1);
        let entries = load(&path).unwrap();
        assert_eq!(entries.len(), 2);
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("\n    \"q1\"")
        );
    }

    #[test]
    fn a_broken_cache_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        std::fs::write(&path, "{not json").unwrap();
        let error = load(&path).unwrap_err().to_string();
        assert!(
            error.contains("cache.json") && error.contains("not valid JSON"),
            "{error}"
        );
    }
}
