//! The plugin runtime's own costs (issue goals in brackets):
//! - one host import round trip with a 1 KiB request and a 1 KiB answer, recorded [< 20 µs];
//! - instantiating a cached plugin and calling `describe` [< 5 ms]; the first compile, reported;
//! - replaying a 1,000-call run log [< 0.5 s].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use drpo_host::bindings::types::{Completion, Usage};
use drpo_host::calls::Calls;
use drpo_host::provider::Router;
use drpo_host::provider::scripted::ScriptedProvider;
use drpo_host::runlog::{Entry, FORMAT_VERSION, Header, RunLogWriter, read_log};
use drpo_host::runtime::{Limits, Plugin, Runtime, Session};

fn plugin_path(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/plugins")
        .join(format!("{name}.wasm"));
    assert!(path.is_file(), "run ./scripts/build-plugins first");
    path
}

fn calls() -> Arc<Calls> {
    let answer = "y".repeat(1024);
    let provider = ScriptedProvider::new(move |_| {
        Ok(Completion {
            choices: vec![answer.clone()],
            usage: Usage {
                prompt_tokens: 256,
                completion_tokens: 256,
            },
        })
    });
    Arc::new(Calls::unlimited(Router::uniform(Arc::new(provider))))
}

fn header(plugin: &Plugin, options: &str) -> Entry {
    Entry::Header(Header {
        format_version: FORMAT_VERSION,
        host_version: "bench".into(),
        wit_package: plugin.wit_package().into(),
        plugin_sha256: plugin.sha256().into(),
        plugin_name: "testkit".into(),
        plugin_version: "0".into(),
        options: options.into(),
        seed: 0,
        models: vec![],
        started_unix_ms: 0,
    })
}

/// Runs testkit's echo mode live with `count` calls; returns the wall time and the log path.
fn echo_run(
    rt: &tokio::runtime::Runtime,
    runtime: &Runtime,
    plugin: &Plugin,
    count: u64,
    dir: &std::path::Path,
) -> (Duration, PathBuf) {
    let options = format!(r#"{{"mode":"echo","count":{count},"size":1024}}"#);
    let log = dir.join(format!("echo-{}.log", rand_suffix()));
    let writer = RunLogWriter::create(&log, &header(plugin, &options)).unwrap();
    let started = Instant::now();
    let finished = rt.block_on(runtime.run(
        plugin,
        &options,
        0,
        Limits::default(),
        Session::live(calls(), writer),
        (),
    ));
    let elapsed = started.elapsed();
    finished.result.unwrap();
    (elapsed, log)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(Some(cache.path().to_owned())).unwrap();
    let testkit = runtime.load(&plugin_path("testkit")).unwrap();
    let work = tempfile::tempdir().unwrap();

    // Round trip: a run making N calls minus a run making none, so that instantiation is not
    // counted.
    c.bench_function(
        "import round trip, 1 KiB each way, recorded (per call)",
        |b| {
            b.iter_custom(|iterations| {
                let (with_calls, _) = echo_run(&rt, &runtime, &testkit, iterations, work.path());
                let (without, _) = echo_run(&rt, &runtime, &testkit, 0, work.path());
                with_calls.saturating_sub(without)
            })
        },
    );

    c.bench_function("instantiate a cached plugin and call describe", |b| {
        b.iter(|| {
            rt.block_on(runtime.describe(&testkit, Limits::default()))
                .result
                .unwrap()
        })
    });

    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    for name in ["testkit", "beam"] {
        let uncached = Runtime::new(None).unwrap();
        let path = plugin_path(name);
        group.bench_function(format!("first compile of {name}.wasm"), |b| {
            b.iter(|| uncached.load(&path).unwrap())
        });
    }
    group.finish();

    // A 1,000-call log: 999 echo calls plus `describe`-free bookkeeping.
    let (_, log) = echo_run(&rt, &runtime, &testkit, 1000, work.path());
    let calls = read_log(&log).unwrap().calls();
    assert_eq!(calls.len(), 1000);
    let options = r#"{"mode":"echo","count":1000,"size":1024}"#;
    let mut group = c.benchmark_group("replay");
    group.sample_size(20);
    group.bench_function("replay a 1,000-call run log (read, verify, re-run)", |b| {
        b.iter(|| {
            let calls = read_log(&log).unwrap().calls();
            let finished = rt.block_on(runtime.run(
                &testkit,
                options,
                0,
                Limits::default(),
                Session::replay(calls),
                (),
            ));
            finished.result.unwrap()
        })
    });
    group.finish();
}

criterion_group!(runtime_benches, benches);
criterion_main!(runtime_benches);
