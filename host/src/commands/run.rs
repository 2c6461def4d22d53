//! `run`: a live run of a strategy (options resolved, spending projected, models checked,
//! every call recorded, the outputs written), and `describe`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use super::{load, runtime};
use crate::bindings::types::{Outcome, Role, RoleEstimate};
use crate::catalog::{Catalog, PLUGIN_PATH_VARIABLE};
use crate::cli::RunArgs;
use crate::config::{ConfigInputs, RunConfig};
use crate::progress::{Progress, RolePrices, Workers};
use crate::report::{RunReport, StrategyName};
use crate::rundir::{RunDir, RunObserver, write_result, write_viewer};
use crate::runlog::{CallRecord, End, EndStatus, Entry, FORMAT_VERSION, Header, read_log};
use crate::runtime::{Finished, Limits, Plugin, Runtime, Session};
use crate::services;
use crate::spending::accounting::Spend;
use crate::spending::pricing::PriceTable;
use crate::spending::projection::Projection;
use crate::terminal;
use crate::verdict::{Exit, Judgements};

/// `describe` with no argument: the strategies found by name, and the folders searched.
pub fn list_strategies() {
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

pub async fn describe(strategy: &Path) -> anyhow::Result<()> {
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

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
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
        option_values: &args.option_values,
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
    if let Some(key) = &config.host.sign_key {
        crate::signing::check_secret_key(key).context("--sign-key")?;
    }
    let options = plugin_options(&config, &info.name)?;
    let options_json = serde_json::Value::Object(options).to_string();
    let plan = runtime
        .estimate(&plugin, &options_json, limits)
        .await
        .result
        .context("the strategy's estimate failed");
    let projection = plan.as_ref().map(|p| projection_lines(&p.roles, &config));
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
    let roles: Vec<Role> = match &plan {
        Ok(plan) => plan
            .roles
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
    let levels = plan.as_ref().ok().and_then(|plan| plan.levels);
    let workers: Arc<dyn Workers> = built.calls.clone();
    let observer = observer_for(&dir, &config, &header, levels, args.quiet, Some(workers))?;
    eprintln!(
        "running {} {} in {}",
        info.name,
        info.version,
        dir.root().display()
    );
    let session = Session::live(built.calls, writer);
    let run = LiveRun {
        plugin: &plugin,
        header: &header,
        config: &config,
        dir: &dir,
    };
    run_to_end(&runtime, run, session, observer, started).await
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

/// A run being made (or resumed): its plugin, header, configuration and directory.
pub(crate) struct LiveRun<'a> {
    pub plugin: &'a Plugin,
    pub header: &'a Header,
    pub config: &'a RunConfig,
    pub dir: &'a RunDir,
}

/// Runs the plugin on a live (or resuming) session seen by `observer`, and closes the run: the
/// end frame, the output files, the metrics cache, the summary on stdout.
pub(crate) async fn run_to_end(
    runtime: &Runtime,
    run: LiveRun<'_>,
    session: Session,
    observer: RunObserver,
    started: Instant,
) -> anyhow::Result<()> {
    let LiveRun {
        plugin,
        header,
        config,
        dir,
    } = run;
    let finished = runtime
        .run(
            plugin,
            &header.options,
            header.seed,
            config.limits(),
            session,
            observer,
        )
        .await;
    let outcome = finish(dir, header, config, finished, started);
    let calls = print_spend(dir, header, config);
    let outcome = outcome?;
    save_metrics_cache(config, &outcome)?;
    print_outcome(dir, &outcome, &header.options);
    match crate::verdict::failure(&outcome, &calls) {
        Some(exit) => Err(exit.into()),
        None => Ok(()),
    }
}

/// Prints what the run spent per role (from its run log), and returns the calls it paid for.
pub(crate) fn print_spend(dir: &RunDir, header: &Header, config: &RunConfig) -> Vec<CallRecord> {
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

/// The run's observer: `log.txt`, and unless `quiet` the progress display, which counts
/// `levels` (the strategy's plan) when the strategy searches by levels and shows what `workers`
/// do.
pub(crate) fn observer_for(
    dir: &RunDir,
    config: &RunConfig,
    header: &Header,
    levels: Option<u32>,
    quiet: bool,
    workers: Option<Arc<dyn Workers>>,
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
    let prices = RolePrices::new(&header.models, PriceTable::new(&config.prices));
    let progress = Progress::on_stderr(levels, prices);
    Ok(observer.with_display(match workers {
        Some(workers) => progress.with_workers(workers),
        None => progress,
    }))
}

/// Closes a run: the end frame, the plugin's output in `log.txt`, `result.json`, `trace.txt`
/// and `tree.html` (only `tree.html` when the run failed).
fn finish(
    dir: &RunDir,
    header: &Header,
    config: &RunConfig,
    finished: Finished<Outcome, RunObserver>,
    started: Instant,
) -> anyhow::Result<Outcome> {
    let Finished {
        result,
        mut session,
        mut observer,
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
    let final_hash = session.writer_mut().map(|writer| writer.last_hash());
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
            if let Some(hash) = &final_hash
                && let Err(seal_error) = seal(dir, header, config, hash)
            {
                eprintln!("error: {}", terminal::error(&format!("{seal_error:#}")));
            }
            return Err(error.into());
        }
    };
    write_result(
        dir,
        &RunReport::new(strategy, Ok(&outcome), observer.tree(), observer.refused()),
    )?;
    if let Some(hash) = &final_hash {
        seal(dir, header, config, hash)?;
    }
    Ok(outcome)
}

/// Shows the ended log's final chain hash (to keep elsewhere: it vouches for every frame), and
/// signs the run when a key is configured.
fn seal(
    dir: &RunDir,
    header: &Header,
    config: &RunConfig,
    final_hash: &crate::runlog::Hash,
) -> anyhow::Result<()> {
    eprintln!("run log chain hash: {}", hex::encode(final_hash));
    if let Some(key) = &config.host.sign_key {
        let signature = crate::signing::sign(key, final_hash, &header.plugin_sha256)
            .context("cannot sign the run (its log and results are complete)")?;
        std::fs::write(
            dir.signature(),
            serde_json::to_string_pretty(&signature)? + "\n",
        )
        .with_context(|| format!("cannot write {}", dir.signature().display()))?;
        eprintln!(
            "signed with the key {} in {}",
            signature.public_key,
            dir.signature().display()
        );
    }
    Ok(())
}

/// What `best score` means when a validation split chose the result.
pub(crate) fn held_out_note(outcome: &Outcome) -> &'static str {
    if crate::verdict::score_is_held_out(outcome) {
        " (mean on the held-out queries)"
    } else {
        ""
    }
}

pub(crate) fn print_outcome(dir: &RunDir, outcome: &Outcome, options: &str) {
    if let Some(why) = crate::verdict::ended_early(outcome) {
        println!("ended early: {}", terminal::line(&why));
    }
    for summary in [
        crate::verdict::validation(outcome),
        crate::verdict::judge_spread(outcome),
        crate::verdict::comparisons(outcome),
    ]
    .into_iter()
    .flatten()
    {
        println!("{}", terminal::line(&summary));
    }
    if let Some(judgements) = Judgements::of(outcome) {
        println!("{}", judgements.line());
    }
    if let Some(score) = outcome.best_score {
        println!("best score: {score:.4}{}", held_out_note(outcome));
    }
    if let Some(prompt) = &outcome.best_prompt {
        println!(
            "{}:\n{}",
            crate::verdict::best_prompt_heading(outcome, options),
            terminal::block(prompt)
        );
    }
    println!("run directory: {}", dir.root().display());
}
