//! What reads a run directory's log: `replay` (the plugin again, every call answered from the
//! log and compared), `resume` (the same, then live), `inspect` (a summary), and `view` and
//! `export` (a run's readable outputs, rebuilt from its run log alone, so replayed, older and
//! interrupted runs get them too).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};

use super::run::{LiveRun, observer_for, run_to_end};
use super::{load, runtime, short_hash};
use crate::catalog::Catalog;
use crate::cli::ExportFormat;
use crate::config::RunConfig;
use crate::report::{RunReport, RunStatus};
use crate::rundir::{RunDir, RunObserver, write_viewer};
use crate::runlog::{
    CallRecord, End, EndStatus, Entry, Header, LogContents, Preflight, read_log, same_encoding,
};
use crate::runtime::{Limits, Plugin, Runtime, Session};
use crate::services;
use crate::spending::accounting::Spend;
use crate::spending::pricing::PriceTable;
use crate::terminal;
use crate::verdict::Judgements;

/// The verified log of a run directory, its header, calls and end.
pub(crate) struct RecordedRun {
    pub(crate) header: Header,
    preflight: Option<Preflight>,
    pub(crate) calls: Vec<CallRecord>,
    pub(crate) end: Option<End>,
    pub(crate) contents: LogContents,
}

/// Reads and verifies a run directory's log, and checks its format version.
pub(crate) fn read_run(dir: &RunDir) -> anyhow::Result<RecordedRun> {
    let contents = read_log(&dir.run_log())?;
    let mut header = None;
    let mut preflight = None;
    let mut calls = Vec::new();
    let mut end = None;
    for entry in &contents.entries {
        match entry {
            Entry::Header(h) => header = Some(h.clone()),
            Entry::Preflight(p) => preflight = Some(p.clone()),
            Entry::Call(call) => calls.push(call.clone()),
            Entry::End(e) => end = Some(e.clone()),
        }
    }
    let header = header
        .with_context(|| format!("{} holds no complete header frame", dir.run_log().display()))?;
    Ok(RecordedRun {
        header,
        preflight,
        calls,
        end,
        contents,
    })
}

/// Loads the plugin that recorded a run and checks it is the same file.
fn load_recorded_plugin(
    runtime: &Runtime,
    dir: &RunDir,
    header: &Header,
    strategy: Option<&Path>,
) -> anyhow::Result<Plugin> {
    let path = match strategy {
        Some(path) => Catalog::of_this_process().find(path)?,
        None => RunConfig::load(&dir.config())?.strategy,
    };
    let plugin = load(runtime, &path)?;
    if plugin.sha256() != header.plugin_sha256 {
        if strategy.is_none() {
            bail!(
                "{} has changed since the run was recorded (sha256 {} now, {} in the run log); \
                 pass --strategy to replay with a different plugin on purpose",
                path.display(),
                short_hash(plugin.sha256()),
                short_hash(&header.plugin_sha256)
            );
        }
        eprintln!(
            "note: {} is not the recorded plugin (sha256 {} vs {}); the replay shows whether it behaves the same",
            path.display(),
            short_hash(plugin.sha256()),
            short_hash(&header.plugin_sha256)
        );
    }
    Ok(plugin)
}

fn limits_of(dir: &RunDir) -> Limits {
    RunConfig::load(&dir.config()).map_or_else(|_| Limits::default(), |config| config.limits())
}

pub async fn replay(dir: &Path, strategy: Option<&Path>) -> anyhow::Result<()> {
    let dir = RunDir::new(dir);
    let recorded = read_run(&dir)?;
    let runtime = runtime()?;
    let plugin = load_recorded_plugin(&runtime, &dir, &recorded.header, strategy)?;
    match replay_run(&runtime, &dir, recorded, &plugin).await? {
        Replayed::Reproduced(report) => {
            println!("{report}");
            Ok(())
        }
        Replayed::Diverged(error) => Err(error),
    }
}

/// What replaying a run showed.
pub(crate) enum Replayed {
    /// Every call matched and the run ended as recorded; the text says so.
    Reproduced(String),
    /// The plugin asked something the log does not hold, or ended otherwise; the error says
    /// where.
    Diverged(anyhow::Error),
}

/// Replays `recorded` with `plugin`. An error is a run that cannot be replayed to its end (it was
/// interrupted), not a divergence.
pub(crate) async fn replay_run(
    runtime: &Runtime,
    dir: &RunDir,
    recorded: RecordedRun,
    plugin: &Plugin,
) -> anyhow::Result<Replayed> {
    if let Some(tail) = recorded.contents.torn_tail_bytes {
        bail!(
            "{}: frame {} (at byte {}) is incomplete ({tail} bytes): the run was killed while \
             writing it, or the file was cut or altered; `drpo-host resume` can finish a killed run",
            dir.run_log().display(),
            recorded.contents.entries.len(),
            recorded.contents.valid_len
        );
    }
    let calls = recorded.calls.len();
    let session = Session::replay(recorded.calls);
    let finished = runtime
        .run(
            plugin,
            &recorded.header.options,
            recorded.header.seed,
            limits_of(dir),
            session,
            RunObserver::silent(),
        )
        .await;
    let leftover = finished.session.unreplayed_calls();
    let diverged = |message: String| Ok(Replayed::Diverged(anyhow::anyhow!(message)));
    match (&recorded.end, finished.result) {
        (None, Err(error)) => bail!(
            "the run was interrupted after call {calls} and cannot be replayed to its end ({error}); \
             finish it with `drpo-host resume {}`",
            dir.root().display()
        ),
        (_, Err(error)) => {
            if let Some(End {
                status: EndStatus::Failed(message),
                ..
            }) = &recorded.end
                && leftover == 0
            {
                return Ok(Replayed::Reproduced(format!(
                    "replay reproduced the recorded failure after {calls} calls:\n{}",
                    terminal::error(message)
                )));
            }
            Ok(Replayed::Diverged(
                anyhow::Error::from(error).context("replay failed"),
            ))
        }
        (end, Ok(outcome)) => {
            if leftover > 0 {
                return diverged(format!(
                    "replay diverged: the plugin finished after {} calls, but the run log has {leftover} more",
                    calls - leftover
                ));
            }
            match end {
                Some(End {
                    status: EndStatus::Finished(recorded_outcome),
                    ..
                }) if same_encoding(recorded_outcome, &outcome) => {
                    Ok(Replayed::Reproduced(format!(
                        "replay reproduced the run: {calls} calls matched, same outcome{}",
                        outcome
                            .best_score
                            .map(|s| format!(" (best score {s:.4})"))
                            .unwrap_or_default()
                    )))
                }
                Some(End {
                    status: EndStatus::Finished(recorded_outcome),
                    ..
                }) => diverged(format!(
                    "replay diverged: every call matched but the outcome differs\nrecorded: {recorded_outcome:?}\nreplayed: {outcome:?}"
                )),
                Some(End {
                    status: EndStatus::Failed(message),
                    ..
                }) => diverged(format!(
                    "replay diverged: the recorded run failed ({message}) but the replay finished"
                )),
                None => diverged("the run log has no end, yet the replay finished".into()),
            }
        }
    }
}

pub async fn resume(dir: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = RunDir::new(dir);
    // Held while the log is read too: what is read is what is appended to.
    let _lock = dir.lock()?;
    let recorded = read_run(&dir)?;
    if recorded.end.is_some() {
        bail!(
            "the run in {} has already ended; nothing to resume (`drpo-host replay {}` checks it)",
            dir.root().display(),
            dir.root().display()
        );
    }
    let config = RunConfig::load(&dir.config())?;
    let runtime = runtime()?;
    let plugin = load_recorded_plugin(&runtime, &dir, &recorded.header, None)?;
    let built = services::build(&config, &recorded.calls, recorded.preflight.as_ref())?;
    if let Some(tail) = recorded.contents.torn_tail_bytes {
        eprintln!(
            "note: dropping an incomplete last frame ({tail} bytes) left by the interrupted run"
        );
    }
    let frames = recorded.contents.entries.len() as u64;
    let writer = crate::runlog::RunLogWriter::reopen(
        &dir.run_log(),
        recorded.contents.valid_len,
        recorded.contents.last_hash,
        frames,
    )?;
    let calls = recorded.calls.len();
    // The plan is not recorded: `estimate` is asked again, as the run asked it.
    let levels = runtime
        .estimate(&plugin, &recorded.header.options, config.limits())
        .await
        .result
        .ok()
        .and_then(|plan| plan.levels);
    let workers: std::sync::Arc<dyn crate::progress::Workers> = built.calls.clone();
    let mut observer = observer_for(
        &dir,
        &config,
        &recorded.header,
        levels,
        false,
        Some(workers),
    )?;
    observer.line(&format!(
        "[resume] replaying {calls} recorded calls, then continuing live"
    ));
    eprintln!("resuming {}: {calls} recorded calls", dir.root().display());
    let session = Session::resume(recorded.calls, built.calls, writer);
    let run = LiveRun {
        plugin: &plugin,
        header: &recorded.header,
        config: &config,
        dir: &dir,
    };
    run_to_end(&runtime, run, session, observer, started).await
}

pub fn inspect(dir: &Path) -> anyhow::Result<()> {
    let dir = RunDir::new(dir);
    let recorded = read_run(&dir)?;
    let header = &recorded.header;
    println!("run            {}", dir.root().display());
    header_lines(header)
        .iter()
        .for_each(|line| println!("{line}"));
    if let Some(preflight) = &recorded.preflight {
        println!("{}", preflight_line(preflight));
    }

    let mut imports: Vec<(&str, u64)> = Vec::new();
    for call in &recorded.calls {
        let name = call.request.import_name();
        match imports.iter_mut().find(|(n, _)| *n == name) {
            Some((_, count)) => *count += 1,
            None => imports.push((name, 1)),
        }
    }
    println!(
        "\ncalls          {} ({})",
        recorded.calls.len(),
        imports
            .iter()
            .map(|(name, count)| format!("{name} {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let prices = RunConfig::load(&dir.config()).map_or_else(
        |_| PriceTable::new(&Default::default()),
        |config| PriceTable::new(&config.prices),
    );
    let spend = Spend::of(&recorded.contents.billed_calls(), &header.models, &prices);
    println!();
    spend.table().iter().for_each(|line| println!("{line}"));
    // The grant is in the run's configuration; a run directory without one ran unrestricted.
    let grants = match RunConfig::load(&dir.config()) {
        Ok(config) => config.host.grants()?,
        Err(_) => crate::calls::grants::Grants::default(),
    };
    println!();
    for line in crate::calls::grants::usage_lines(&grants, &recorded.calls) {
        println!("{line}");
    }
    println!();
    match &recorded.end {
        Some(End {
            status: EndStatus::Finished(outcome),
            elapsed_ms,
        }) => {
            println!(
                "outcome        finished in {:.1}s",
                *elapsed_ms as f64 / 1000.0
            );
            if let Some(exit) = crate::verdict::failure(outcome, &recorded.contents.billed_calls())
            {
                println!("not a success  {} (exit code {})", exit.message, exit.code);
            }
            if let Some(why) = crate::verdict::ended_early(outcome) {
                println!("ended early    {}", terminal::line(&why));
            }
            if let Some(summary) = crate::verdict::validation(outcome) {
                println!("validation     {}", terminal::line(&summary));
            }
            if let Some(summary) = crate::verdict::judge_spread(outcome) {
                println!("judge spread   {}", terminal::line(&summary));
            }
            if let Some(summary) = crate::verdict::comparisons(outcome) {
                println!("comparisons    {}", terminal::line(&summary));
            }
            if let Some(judgements) = Judgements::of(outcome) {
                println!("{}", judgements.line());
            }
            if let Some(score) = outcome.best_score {
                println!(
                    "best score     {score:.4}{}",
                    super::run::held_out_note(outcome)
                );
            }
            if !outcome.best_path.is_empty() {
                println!("best path      {:?}", outcome.best_path);
            }
            if let Some(prompt) = &outcome.best_prompt {
                println!(
                    "{}\n{}",
                    crate::verdict::best_prompt_heading(outcome, &header.options),
                    terminal::block(prompt)
                );
            }
        }
        Some(End {
            status: EndStatus::Failed(message),
            elapsed_ms,
        }) => println!(
            "outcome        failed after {:.1}s: {}",
            *elapsed_ms as f64 / 1000.0,
            terminal::error(message)
        ),
        None => println!(
            "outcome        none yet: the run was interrupted{} (finish it with `drpo-host resume`)",
            recorded
                .contents
                .torn_tail_bytes
                .map(|b| format!(", with a {b}-byte incomplete last frame"))
                .unwrap_or_default()
        ),
    }
    Ok(())
}

/// What a run's header says, a line each: the strategy, the host, the seed, each role's model
/// and the options. What the plugin chose (its name, version, options) is escaped. Served
/// traffic (`serve --record`) has no plugin, and no hash.
pub(crate) fn header_lines(header: &Header) -> Vec<String> {
    let plugin = match header.plugin_sha256.as_str() {
        "" => "no plugin".to_owned(),
        hash => format!("sha256 {}", short_hash(hash)),
    };
    let mut lines = vec![
        format!(
            "strategy       {} {} ({}, {plugin})",
            terminal::line(&header.plugin_name),
            terminal::line(&header.plugin_version),
            terminal::line(&header.wit_package),
        ),
        format!(
            "host           drpo-host {} (log format {})",
            terminal::line(&header.host_version),
            header.format_version
        ),
        format!("seed           {}", header.seed),
    ];
    for model in &header.models {
        lines.push(format!(
            "{:<14} {} via {}",
            model.role,
            terminal::line(&model.model),
            terminal::line(&model.provider)
        ));
    }
    lines.push(format!(
        "options        {}",
        terminal::line(&header.options)
    ));
    lines
}

/// The preflight, in one line.
pub(crate) fn preflight_line(preflight: &Preflight) -> String {
    let mut parts = vec![format!(
        "{} check request(s), {} failed",
        preflight.requests.len(),
        preflight.results.iter().filter(|r| r.is_err()).count()
    )];
    if let Some(form) = preflight.base_form {
        parts.push(format!("base prompts {}", form.name()));
    }
    for role in &preflight.settings {
        let settled = role.settings.describe();
        if !settled.is_empty() {
            parts.push(format!("{}: {settled}", role.role));
        }
    }
    format!("preflight      {}", parts.join("; "))
}

fn report_of(dir: &RunDir) -> anyhow::Result<RunReport> {
    let recorded = read_run(dir)?;
    RunReport::from_log(&recorded.contents.entries)
        .with_context(|| format!("{} holds no header frame", dir.run_log().display()))
}

/// `export --format mlflow`: the run into the MLflow file store at `store`.
fn export_mlflow(dir: &RunDir, store: &Path, experiment: &str) -> anyhow::Result<()> {
    let recorded = read_run(dir)?;
    let report = RunReport::from_log(&recorded.contents.entries)
        .with_context(|| format!("{} holds no header frame", dir.run_log().display()))?;
    let name = dir
        .root()
        .file_name()
        .map_or_else(|| "run".to_owned(), |n| n.to_string_lossy().into_owned());
    let facts = crate::mlflow::RunFacts {
        header: &recorded.header,
        elapsed_ms: recorded.end.as_ref().map(|e| e.elapsed_ms),
        name,
        chain_hash: hex::encode(recorded.contents.last_hash),
    };
    let run = crate::mlflow::write(store, experiment, &report, &facts)?;
    println!("MLflow run: {}", run.display());
    Ok(())
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
pub fn export(
    dir: &Path,
    format: ExportFormat,
    output: Option<&PathBuf>,
    experiment: &str,
) -> anyhow::Result<()> {
    let dir = RunDir::new(dir);
    if format == ExportFormat::Mlflow {
        let store = output.context(
            "--format mlflow writes into an MLflow store: name its directory with --output \
             (e.g. --output mlruns)",
        )?;
        return export_mlflow(&dir, store, experiment);
    }
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
    let text = serde_json::to_string_pretty(&report.published())? + "\n";
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
