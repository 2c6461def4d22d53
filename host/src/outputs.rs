//! The `view` and `export` commands: a run's readable outputs, rebuilt from its run log alone
//! (so replayed, older and interrupted runs get them too).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::cli::read_run;
use crate::report::{RunReport, RunStatus};
use crate::rundir::{RunDir, write_viewer};

/// What `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// The published implementation's `output.json`: `{"level i": {"Prompt": ...,
    /// "Evaluation of the prompt": ...}}` along the best path.
    Published,
}

fn report_of(dir: &RunDir) -> anyhow::Result<RunReport> {
    let recorded = read_run(dir)?;
    RunReport::from_log(&recorded.contents.entries)
        .with_context(|| format!("{} holds no header frame", dir.run_log().display()))
}

/// `view DIR`: (re)writes `tree.html`, and `trace.txt` when the run has a best path.
pub fn view(dir: &Path) -> anyhow::Result<()> {
    let dir = RunDir::new(dir);
    let report = report_of(&dir)?;
    write_viewer(&dir, &report)?;
    if !report.best_path.is_empty() {
        std::fs::write(dir.trace(), report.trace())
            .with_context(|| format!("cannot write {}", dir.trace().display()))?;
    }
    let state = match report.status {
        RunStatus::Interrupted => "interrupted: the nodes recorded so far",
        status => status.name(),
    };
    println!(
        "{} ({} nodes, {state})",
        dir.tree_html().display(),
        report.tree.len()
    );
    Ok(())
}

/// `export DIR --format F [--output FILE]`: writes the best path in another tool's shape to
/// FILE, or to stdout.
pub fn export(dir: &Path, format: ExportFormat, output: Option<&PathBuf>) -> anyhow::Result<()> {
    let dir = RunDir::new(dir);
    let report = report_of(&dir)?;
    if report.best_path.is_empty() {
        let why = match (&report.status, &report.error) {
            (RunStatus::Interrupted, _) => format!(
                "it was interrupted; finish it with `drpo-host resume {}`",
                dir.root().display()
            ),
            (RunStatus::Failed, Some(error)) => format!("it failed: {error}"),
            (status, _) => format!("it {} without one", status.name()),
        };
        bail!(
            "the run in {} has no best path to export: {why}",
            dir.root().display()
        );
    }
    let text = match format {
        ExportFormat::Published => serde_json::to_string_pretty(&report.published())? + "\n",
    };
    match output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
        }
        None => {
            print!("{text}");
            Ok(())
        }
    }
}
