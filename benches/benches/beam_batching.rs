//! DRPO beam search at depth 20, beam 2, 3 actions, against a loopback OpenAI-compatible
//! server that adds a fixed latency L to every request: batched (the default) against
//! `sequential` (one request per call, the published order), side by side.
//!
//! Goals: batched wall time within 1.15× the critical path (about three latencies per level),
//! and at least 4× faster than sequential. Prints the ratios.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drpo_host::bindings::types::{Example, Query};
use drpo_host::calls::{Calls, RunData, TrainingData};
use drpo_host::provider::Router;
use drpo_host::provider::openai::{Endpoint, OpenAiProvider};
use drpo_host::runlog::{Entry, FORMAT_VERSION, Header, RunLogWriter};
use drpo_host::runtime::{Limits, Runtime, Session};
use drpo_tests::server::{Reply, Server, default_reply};

const LATENCY: Duration = Duration::from_millis(25);

fn main() {
    let plugin_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/beam.wasm");
    assert!(plugin_path.is_file(), "run ./scripts/build-plugins first");
    let server = Server::with_script(|path, request| Reply {
        status: 200,
        body: default_reply(path, request).to_string(),
        delay: LATENCY,
        retry_after: None,
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(Some(cache.path().to_owned())).unwrap();
    let beam = runtime.load(&plugin_path).unwrap();
    let queries: Vec<Query> = (0..40)
        .map(|i| Query {
            id: format!("q{i}"),
            text: format!("Question number {i}?"),
            tags: vec![],
        })
        .collect();
    let examples = vec![Example {
        query: "Hi?".into(),
        answer: "<START>\nHello.\n<END>".into(),
    }];

    let mut timings = Vec::new();
    for sequential in [false, true] {
        let provider = Arc::new(OpenAiProvider::new(Endpoint {
            base_url: server.url().into(),
            model: "bench".into(),
            api_key: None,
        }));
        let services = Arc::new(Calls::new(
            Default::default(),
            Default::default(),
            None,
            Router::uniform(provider),
            RunData {
                training: TrainingData::Listed(queries.clone()),
                seed: 0,
                examples: examples.clone(),
            },
        ));
        let options = format!(
            r#"{{"depth":20,"beam_size":2,"n_actions":3,"ret_icl":false,"sequential":{sequential}}}"#
        );
        let dir = tempfile::tempdir().unwrap();
        let writer = RunLogWriter::create(
            &dir.path().join("run.log"),
            &Entry::Header(Header {
                format_version: FORMAT_VERSION,
                host_version: "bench".into(),
                wit_package: beam.wit_package().into(),
                plugin_sha256: beam.sha256().into(),
                plugin_name: "beam".into(),
                plugin_version: "0".into(),
                options: options.clone(),
                seed: 0,
                models: vec![],
                started_unix_ms: 0,
            }),
        )
        .unwrap();
        let before = server.requests().len();
        let started = Instant::now();
        let finished = rt.block_on(runtime.run(
            &beam,
            &options,
            0,
            Limits::default(),
            Session::live(services, writer),
            (),
        ));
        let elapsed = started.elapsed();
        finished.result.expect("the search finishes");
        let requests = server.requests().len() - before;
        println!(
            "{:<10} {:>7.2} s  {requests} requests  {} host calls",
            if sequential { "sequential" } else { "batched" },
            elapsed.as_secs_f64(),
            finished.session.live_calls()
        );
        timings.push(elapsed);
    }
    // Critical path: the first call (aspect selections + the root's answer), the root's
    // judgement, then optimizer → base → judge on each of the 19 levels.
    let critical = LATENCY * (2 + 19 * 3);
    println!(
        "latency L = {LATENCY:?}; critical path ≈ 59 L = {:.2} s",
        critical.as_secs_f64()
    );
    println!(
        "batched / critical path = {:.3}  (goal ≤ 1.15)",
        timings[0].as_secs_f64() / critical.as_secs_f64()
    );
    println!(
        "sequential / batched = {:.2}×  (goal ≥ 4)",
        timings[1].as_secs_f64() / timings[0].as_secs_f64()
    );
}
