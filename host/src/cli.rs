//! The `drpo-host` command line.

use std::any::Any;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, Subcommand};

use crate::bindings::types::{Outcome, Role, RoleEstimate};
use crate::calls::budget::BudgetFlags;
use crate::catalog::{Catalog, PLUGIN_PATH_VARIABLE};
use crate::config::{ConfigInputs, HostFlags, ModelFlags, RunConfig, SearchFlags};
use crate::endpoints::EndpointFlags;
use crate::outputs::ExportFormat;
use crate::progress::{Progress, RolePrices};
use crate::report::{RunReport, StrategyName};
use crate::rundir::{RunDir, RunObserver, write_result, write_viewer};
use crate::runlog::{
    CallRecord, End, EndStatus, Entry, FORMAT_VERSION, Header, LogContents, Preflight, read_log,
    same_encoding,
};
use crate::runtime::{Compiled, Finished, Limits, Plugin, Runtime, Session};
use crate::services;
use crate::spending::accounting::Spend;
use crate::spending::pricing::PriceTable;
use crate::spending::projection::Projection;
use crate::terminal;
use crate::verdict::{Exit, Judgements};

/// Searches for better system prompts with DRPO (Dynamic Rewarding with Prompt Optimization).
///
/// The search runs as a sandboxed WebAssembly strategy plugin (e.g. beam.wasm); every model
/// call it makes is recorded in the run directory's `run.log`, so any run can be replayed bit
/// for bit (`replay`), finished after a crash (`resume`) and audited (`inspect`).
#[derive(Debug, Parser)]
#[command(name = "drpo-host", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a strategy plugin live, recording every call in LOG_DIR/run.log.
    Run(Box<RunArgs>),
    /// Run the plugin again against its run log, checking every request; nothing is sent to
    /// any model.
    Replay {
        /// The run directory.
        dir: PathBuf,
        /// Replay with this plugin instead of the recorded one (its hash may differ: the
        /// replay then shows whether it behaves the same).
        #[arg(long)]
        strategy: Option<PathBuf>,
    },
    /// Finish an interrupted run: replay its log, then continue live, appending.
    Resume {
        /// The run directory.
        dir: PathBuf,
    },
    /// Summarise a run: its header, calls and tokens per role, and the outcome.
    Inspect {
        /// The run directory.
        dir: PathBuf,
    },
    /// (Re)write a run's tree.html (and trace.txt) from its run log; works for older,
    /// replayed and interrupted runs too.
    View {
        /// The run directory.
        dir: PathBuf,
    },
    /// Write a run's best path in another tool's format, to stdout or --output.
    Export {
        /// The run directory.
        dir: PathBuf,
        /// The format: `published` is the published DRPO's output.json.
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Write here instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Show a strategy's name, version, description and options schema; with no strategy,
    /// list the strategies found by name and where.
    Describe {
        /// The strategy plugin: a `.wasm` file, or a name as for `run --strategy`.
        strategy: Option<PathBuf>,
    },
    /// Answer queries with an optimized prompt and retrieved in-context examples (the published
    /// inference format), or under a system prompt of your choice.
    Generate(Box<crate::generate::GenerateArgs>),
    /// Judge a JSONL of answers on helpfulness, clarity, factuality, depth and engagement (safety
    /// for harmful queries) with eval.wasm; compare two answer files side by side.
    Eval(Box<crate::eval::EvalArgs>),
    /// Print a shell completion script for drpo-host, e.g.
    /// `drpo-host completions bash > ~/.local/share/bash-completion/completions/drpo-host`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print drpo-host's man page (roff), e.g. `drpo-host man > ~/.local/share/man/man1/drpo-host.1`.
    Man,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The strategy plugin: a `.wasm` file, or a name (`beam`, `beam.wasm`, `greedy`, ...)
    /// looked up in $DRPO_PLUGIN_PATH, then beside the installed binary
    /// (PREFIX/share/drpo/plugins), then in the checkout's target/plugins.
    #[arg(long)]
    pub strategy: PathBuf,
    /// Directory for the run's outputs; created if missing, must not hold a run already.
    #[arg(long, required_unless_present = "estimate_only")]
    pub log_dir: Option<PathBuf>,
    /// TOML file with the same keys as the flags (snake_case) and an [options] table; flags win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub search: SearchFlags,
    #[command(flatten)]
    pub models: ModelFlags,
    #[command(flatten)]
    pub host: HostFlags,
    #[command(flatten)]
    pub budget: BudgetFlags,
    #[command(flatten)]
    pub endpoints: EndpointFlags,
    /// Print the projected calls, tokens and cost per role (from the strategy's estimate of
    /// its options and the price table), then exit without running.
    #[arg(long)]
    pub estimate_only: bool,
    /// A strategy option as KEY=VALUE (VALUE is JSON, or else a string); repeatable.
    #[arg(long = "option", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
    /// Show neither the progress display nor the plugin's log lines on the terminal.
    #[arg(long, alias = "disable-tqdm")]
    pub quiet: bool,
}

/// Runs a parsed command line.
pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run(*args).await,
        Command::Replay { dir, strategy } => replay(&dir, strategy.as_deref()).await,
        Command::Resume { dir } => resume(&dir).await,
        Command::Inspect { dir } => inspect(&dir),
        Command::View { dir } => crate::outputs::view(&dir),
        Command::Export {
            dir,
            format,
            output,
        } => crate::outputs::export(&dir, format, output.as_ref()),
        Command::Describe {
            strategy: Some(strategy),
        } => describe(&strategy).await,
        Command::Describe { strategy: None } => {
            list_strategies();
            Ok(())
        }
        Command::Generate(args) => crate::generate::generate(*args).await,
        Command::Eval(args) => crate::eval::eval(*args).await,
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "drpo-host", &mut script);
            print_all(&script)
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            print_all(&page)
        }
    }
}

/// Writes `bytes` to stdout; a reader that stops early (`| head`) is not an error.
fn print_all(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().write_all(bytes) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(error).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

fn runtime() -> anyhow::Result<Runtime> {
    Runtime::new(Runtime::default_cache_dir())
}

/// Loads a plugin, and says so when its compiled copy in the cache was damaged and compiled
/// again (else a cache that is never read would go unnoticed).
fn load(runtime: &Runtime, path: &Path) -> anyhow::Result<Plugin> {
    let plugin = runtime.load(path)?;
    if let Compiled::Again(_) = plugin.compiled() {
        eprintln!("warning: {}: {}", path.display(), plugin.compiled());
    }
    Ok(plugin)
}

/// `describe` with no argument: the strategies found by name, and the folders searched.
fn list_strategies() {
    let catalog = Catalog::of_this_process();
    let found = catalog.list();
    if found.is_empty() {
        println!("no strategies found");
    }
    for (name, path) in &found {
        println!("{name:<12} {}", path.display());
    }
    println!("\nsearched, in order ({PLUGIN_PATH_VARIABLE} first):");
    for folder in catalog.folders() {
        println!("  {}", folder.display());
    }
}

async fn describe(strategy: &Path) -> anyhow::Result<()> {
    let runtime = runtime()?;
    let strategy = Catalog::of_this_process().find(strategy)?;
    let plugin = load(&runtime, &strategy)?;
    // Bounded by the default fuel: `describe` takes no flags.
    let info = runtime
        .describe(&plugin, Limits::default())
        .await
        .result
        .context("the strategy's describe failed")?;
    println!(
        "{} {} ({})",
        terminal::line(&info.name),
        terminal::line(&info.version),
        plugin.wit_package()
    );
    println!("sha256 {} ({})\n", plugin.sha256(), plugin.compiled());
    println!("{}\n", terminal::block(&info.description));
    let schema: serde_json::Value = serde_json::from_str(&info.options_schema)
        .with_context(|| format!("the options schema of {} is not JSON", strategy.display()))?;
    println!(
        "options schema:\n{}",
        serde_json::to_string_pretty(&schema)?
    );
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let runtime = runtime()?;
    let strategy = Catalog::of_this_process().find(&args.strategy)?;
    let plugin = load(&runtime, &strategy)?;
    let inputs = ConfigInputs {
        strategy: &strategy,
        config_file: args.config.as_deref(),
        search: &args.search,
        models: &args.models,
        host: &args.host,
        budget: &args.budget,
        endpoints: &args.endpoints,
        extra_options: &args.options,
    };
    // The strategy's own code runs under the user's limits from its first call on.
    let limits = inputs.limits()?;
    let info = runtime
        .describe(&plugin, limits)
        .await
        .result
        .context("the strategy's describe failed")?;
    let config = inputs.resolve(&info.options_schema)?;
    let options = plugin_options(&config, &info.name)?;
    let options_json = serde_json::Value::Object(options).to_string();
    let estimates = runtime
        .estimate(&plugin, &options_json, limits)
        .await
        .result
        .context("the strategy's estimate failed");
    let projection = estimates.as_ref().map(|e| projection_lines(e, &config));
    if args.estimate_only {
        for line in projection.map_err(|e| anyhow::anyhow!("{e:#}"))? {
            println!("{line}");
        }
        return Ok(());
    }
    match &projection {
        Ok(lines) => {
            eprintln!("projected spending (the strategy's estimate; tokens are rough):");
            lines.iter().for_each(|line| eprintln!("  {line}"));
        }
        Err(error) => eprintln!(
            "note: no projection: {}",
            terminal::error(&format!("{error:#}"))
        ),
    }

    let dir = RunDir::new(args.log_dir.context("--log-dir is required to run")?);
    // A directory that is there already is locked before anything is spent; a new one right
    // after it is created.
    let lock = dir.root().is_dir().then(|| dir.lock()).transpose()?;
    if dir.run_log().exists() {
        bail!(
            "{} already holds a run; finish it with `drpo-host resume {}`, or choose another --log-dir",
            dir.root().display(),
            dir.root().display()
        );
    }
    let built = services::build(&config, &[], None)?;
    // The roles the strategy says it uses (all of them when it cannot say) and may use.
    let roles: Vec<Role> = match &estimates {
        Ok(estimates) => estimates
            .iter()
            .filter(|e| e.max_calls > 0)
            .map(|e| e.role)
            .collect(),
        Err(_) => Role::ALL.to_vec(),
    }
    .into_iter()
    .filter(|&role| built.calls.grants().allows(role))
    .collect();
    let preflight =
        crate::calls::preflight::run(&built.calls, &roles, config.endpoints.no_preflight)
            .await
            .map_err(|error| Exit {
                code: crate::verdict::ROLE_FAILED,
                message: error.to_string(),
            })?;
    std::fs::create_dir_all(dir.root())
        .with_context(|| format!("cannot create the run directory {}", dir.root().display()))?;
    let _lock = match lock {
        Some(lock) => lock,
        None => dir.lock()?,
    };
    std::fs::write(dir.config(), serde_json::to_string_pretty(&config)? + "\n")
        .with_context(|| format!("cannot write {}", dir.config().display()))?;
    let header = Header {
        format_version: FORMAT_VERSION,
        host_version: env!("CARGO_PKG_VERSION").into(),
        wit_package: plugin.wit_package().into(),
        plugin_sha256: plugin.sha256().into(),
        plugin_name: info.name.clone(),
        plugin_version: info.version.clone(),
        options: options_json,
        seed: config.seed(),
        models: built.models,
        started_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    let mut writer =
        crate::runlog::RunLogWriter::create(&dir.run_log(), &Entry::Header(header.clone()))?;
    writer.append(&Entry::Preflight(preflight))?;
    let observer = observer_for(&dir, &config, &header, args.quiet)?;
    eprintln!(
        "running {} {} in {}",
        info.name,
        info.version,
        dir.root().display()
    );
    let session = Session::live(built.calls, writer).with_observer(Box::new(observer));
    run_to_end(&runtime, &plugin, &header, &config, &dir, session, started).await
}

/// The options object the plugin gets: the resolved options, with the published metrics cache
/// file's contents when one is named.
fn plugin_options(
    config: &RunConfig,
    strategy: &str,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut options = config.options.clone();
    if let Some(path) = &config.host.metrics_cache_path {
        if !options.contains_key("metrics_cache") {
            bail!(
                "--metrics-cache-path is set, but the strategy {strategy} takes no `metrics_cache` option"
            );
        }
        options.insert(
            "metrics_cache".into(),
            serde_json::Value::Object(crate::metrics_cache::load(path)?),
        );
    }
    Ok(options)
}

/// The projection table of a run, from the plugin's estimate.
fn projection_lines(estimates: &[RoleEstimate], config: &RunConfig) -> Vec<String> {
    let prices = PriceTable::new(&config.prices);
    Projection::new(
        estimates,
        |role| services::model_name(&config.models, role),
        &prices,
    )
    .lines()
}

/// Runs the plugin on a live (or resuming) session and closes the run: the end frame, the
/// output files, the metrics cache, the summary on stdout.
async fn run_to_end(
    runtime: &Runtime,
    plugin: &Plugin,
    header: &Header,
    config: &RunConfig,
    dir: &RunDir,
    session: Session,
    started: Instant,
) -> anyhow::Result<()> {
    let finished = runtime
        .run(
            plugin,
            &header.options,
            header.seed,
            config.limits(),
            session,
        )
        .await;
    let outcome = finish(dir, header, finished, started);
    let calls = print_spend(dir, header, config);
    let outcome = outcome?;
    save_metrics_cache(config, &outcome)?;
    print_outcome(dir, &outcome);
    match crate::verdict::failure(&outcome, &calls) {
        Some(exit) => Err(exit.into()),
        None => Ok(()),
    }
}

/// Prints what the run spent per role (from its run log), and returns the calls it paid for.
fn print_spend(dir: &RunDir, header: &Header, config: &RunConfig) -> Vec<CallRecord> {
    match read_log(&dir.run_log()) {
        Ok(contents) => {
            let calls = contents.billed_calls();
            let spend = Spend::of(&calls, &header.models, &PriceTable::new(&config.prices));
            eprintln!("spent:");
            spend.table().iter().for_each(|line| eprintln!("  {line}"));
            calls
        }
        Err(error) => {
            eprintln!("warning: cannot sum up the run's spending: {error}");
            Vec::new()
        }
    }
}

fn save_metrics_cache(config: &RunConfig, outcome: &Outcome) -> anyhow::Result<()> {
    if let Some(path) = &config.host.metrics_cache_path {
        let added = crate::metrics_cache::merge_outcome(path, &outcome.details)?;
        if added > 0 {
            eprintln!("metrics cache {}: {added} new queries", path.display());
        }
    }
    Ok(())
}

fn observer_for(
    dir: &RunDir,
    config: &RunConfig,
    header: &Header,
    quiet: bool,
) -> anyhow::Result<RunObserver> {
    let debug = config
        .host
        .logging_level
        .as_deref()
        .is_some_and(|level| !level.eq_ignore_ascii_case("INFO"));
    let observer = RunObserver::open(dir, !quiet, debug)
        .with_context(|| format!("cannot open {}", dir.human_log().display()))?;
    if quiet {
        return Ok(observer);
    }
    let depth = config
        .options
        .get("depth")
        .and_then(serde_json::Value::as_u64);
    let prices = RolePrices::new(&header.models, PriceTable::new(&config.prices));
    Ok(observer.with_display(Progress::on_stderr(depth, prices)))
}

/// Closes a run: the end frame, the plugin's output in `log.txt`, `result.json`, `trace.txt`
/// and `tree.html` (only `tree.html` when the run failed).
fn finish(
    dir: &RunDir,
    header: &Header,
    finished: Finished<Outcome>,
    started: Instant,
) -> anyhow::Result<Outcome> {
    let Finished {
        result,
        mut session,
        stdout,
        stderr,
        fuel_used,
    } = finished;
    let status = match &result {
        Ok(outcome) => EndStatus::Finished(outcome.clone()),
        Err(error) => EndStatus::Failed(error.to_string()),
    };
    if let Some(writer) = session.writer_mut() {
        writer.append(&Entry::End(End {
            status,
            elapsed_ms: started.elapsed().as_millis() as u64,
        }))?;
        writer.sync()?;
    }
    let mut observer = take_run_observer(&mut session);
    observer.close_display();
    for (name, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        if !text.trim().is_empty() {
            observer.line(&format!("[plugin {name}]\n{}", text.trim_end()));
        }
    }
    observer.line(&format!(
        "[end] {} calls replayed, {} live; fuel used {fuel_used}; {:.1}s",
        session.replayed_calls(),
        session.live_calls(),
        started.elapsed().as_secs_f64()
    ));
    let strategy = StrategyName {
        name: header.plugin_name.clone(),
        version: header.plugin_version.clone(),
    };
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(error) => {
            // Whole here; the terminal shows it cut.
            let message = error.to_string();
            observer.line(&format!("[error] {message}"));
            // The nodes found before the failure are still worth a look.
            let report = RunReport::new(
                strategy,
                Err(Some(&message)),
                observer.tree(),
                observer.refused(),
            );
            if let Err(viewer_error) = write_viewer(dir, &report) {
                eprintln!("note: {viewer_error}");
            }
            return Err(error.into());
        }
    };
    write_result(
        dir,
        &RunReport::new(strategy, Ok(&outcome), observer.tree(), observer.refused()),
    )?;
    Ok(outcome)
}

fn take_run_observer(session: &mut Session) -> RunObserver {
    session
        .take_observer()
        .and_then(|observer| {
            let any: Box<dyn Any> = observer;
            any.downcast::<RunObserver>().ok()
        })
        .map_or_else(RunObserver::silent, |observer| *observer)
}

fn print_outcome(dir: &RunDir, outcome: &Outcome) {
    if let Some(judgements) = Judgements::of(outcome) {
        println!("{}", judgements.line());
    }
    if let Some(score) = outcome.best_score {
        println!("best score: {score:.4}");
    }
    if let Some(prompt) = &outcome.best_prompt {
        println!("best prompt:\n{}", terminal::block(prompt));
    }
    println!("run directory: {}", dir.root().display());
}

/// The verified log of a run directory, its header, calls and end.
pub(crate) struct RecordedRun {
    header: Header,
    preflight: Option<Preflight>,
    calls: Vec<CallRecord>,
    end: Option<End>,
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
    if header.format_version != FORMAT_VERSION {
        bail!(
            "{} was written in run-log format {}; this drpo-host reads format {FORMAT_VERSION}",
            dir.run_log().display(),
            header.format_version
        );
    }
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

async fn replay(dir: &Path, strategy: Option<&Path>) -> anyhow::Result<()> {
    let dir = RunDir::new(dir);
    let recorded = read_run(&dir)?;
    if let Some(tail) = recorded.contents.torn_tail_bytes {
        bail!(
            "{}: frame {} (at byte {}) is incomplete ({tail} bytes): the run was killed while \
             writing it, or the file was cut or altered; `drpo-host resume` can finish a killed run",
            dir.run_log().display(),
            recorded.contents.entries.len(),
            recorded.contents.valid_len
        );
    }
    let runtime = runtime()?;
    let plugin = load_recorded_plugin(&runtime, &dir, &recorded.header, strategy)?;
    let calls = recorded.calls.len();
    let session = Session::replay(recorded.calls).with_observer(Box::new(RunObserver::silent()));
    let finished = runtime
        .run(
            &plugin,
            &recorded.header.options,
            recorded.header.seed,
            limits_of(&dir),
            session,
        )
        .await;
    let leftover = finished.session.unreplayed_calls();
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
                println!(
                    "replay reproduced the recorded failure after {calls} calls:\n{}",
                    terminal::error(message)
                );
                return Ok(());
            }
            Err(error).context("replay failed")
        }
        (end, Ok(outcome)) => {
            if leftover > 0 {
                bail!(
                    "replay diverged: the plugin finished after {} calls, but the run log has {leftover} more",
                    calls - leftover
                );
            }
            match end {
                Some(End {
                    status: EndStatus::Finished(recorded_outcome),
                    ..
                }) if same_encoding(recorded_outcome, &outcome) => {
                    println!(
                        "replay reproduced the run: {calls} calls matched, same outcome{}",
                        outcome
                            .best_score
                            .map(|s| format!(" (best score {s:.4})"))
                            .unwrap_or_default()
                    );
                    Ok(())
                }
                Some(End {
                    status: EndStatus::Finished(recorded_outcome),
                    ..
                }) => bail!(
                    "replay diverged: every call matched but the outcome differs\nrecorded: {recorded_outcome:?}\nreplayed: {outcome:?}"
                ),
                Some(End {
                    status: EndStatus::Failed(message),
                    ..
                }) => bail!(
                    "replay diverged: the recorded run failed ({message}) but the replay finished"
                ),
                None => bail!("the run log has no end, yet the replay finished"),
            }
        }
    }
}

async fn resume(dir: &Path) -> anyhow::Result<()> {
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
    let built = services::build(
        &config,
        &recorded.contents.billed_calls(),
        recorded.preflight.as_ref(),
    )?;
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
    let mut observer = observer_for(&dir, &config, &recorded.header, false)?;
    observer.line(&format!(
        "[resume] replaying {calls} recorded calls, then continuing live"
    ));
    eprintln!("resuming {}: {calls} recorded calls", dir.root().display());
    let session =
        Session::resume(recorded.calls, built.calls, writer).with_observer(Box::new(observer));
    run_to_end(
        &runtime,
        &plugin,
        &recorded.header,
        &config,
        &dir,
        session,
        started,
    )
    .await
}

fn inspect(dir: &Path) -> anyhow::Result<()> {
    let dir = RunDir::new(dir);
    let recorded = read_run(&dir)?;
    let header = &recorded.header;
    println!("run            {}", dir.root().display());
    println!(
        "strategy       {} {} ({}, sha256 {})",
        header.plugin_name,
        header.plugin_version,
        header.wit_package,
        short_hash(&header.plugin_sha256)
    );
    println!(
        "host           drpo-host {} (log format {})",
        header.host_version, header.format_version
    );
    println!("seed           {}", header.seed);
    for model in &header.models {
        println!("{:<14} {} via {}", model.role, model.model, model.provider);
    }
    println!("options        {}", header.options);
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
            if let Some(judgements) = Judgements::of(outcome) {
                println!("{}", judgements.line());
            }
            if let Some(score) = outcome.best_score {
                println!("best score     {score:.4}");
            }
            if !outcome.best_path.is_empty() {
                println!("best path      {:?}", outcome.best_path);
            }
            if let Some(prompt) = &outcome.best_prompt {
                println!("best prompt\n{}", terminal::block(prompt));
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

/// What the preflight checked and settled, for `inspect`.
fn preflight_line(preflight: &Preflight) -> String {
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

fn short_hash(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
