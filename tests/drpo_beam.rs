//! `beam.wasm` end to end through `drpo-host run`, against an OpenAI-compatible server on
//! loopback whose answers follow each request's JSON schema.

use std::path::Path;

use drpo_host::runlog::{CallRequest, CallResponse, EndStatus, Entry, read_log};
use drpo_tests::server::Server;
use drpo_tests::{assert_replays, host, output, plugin, roles_at, text};

#[derive(Debug, Default, PartialEq)]
struct Counts {
    optimizer_requests: usize,
    optimizer_candidates: usize,
    base: usize,
    judge: usize,
    metrics: usize,
}

fn counts(dir: &Path) -> Counts {
    let mut counts = Counts::default();
    for entry in read_log(&dir.join("run.log")).unwrap().entries {
        let Entry::Call(call) = entry else { continue };
        let (CallRequest::Complete(batch), CallResponse::Complete(results)) =
            (&call.request, &call.response)
        else {
            continue;
        };
        for (request, result) in batch.iter().zip(results) {
            use drpo_host::bindings::types::Role;
            match request.role {
                Role::Optimizer => {
                    counts.optimizer_requests += 1;
                    counts.optimizer_candidates += result.as_ref().map_or(0, |c| c.choices.len());
                }
                Role::Base => counts.base += 1,
                Role::Judge => counts.judge += 1,
                Role::Metrics => counts.metrics += 1,
            }
        }
    }
    counts
}

fn beam_run(server: &Server, work: &Path, name: &str, extra: &[&str]) -> std::process::Output {
    let mut command = host(&work.join("cache"));
    command
        .arg("run")
        .arg("--strategy")
        .arg(plugin("beam"))
        .arg("--log-dir")
        .arg(work.join(name))
        .args(roles_at(server.url()))
        .args(extra);
    output(&mut command)
}

#[test]
fn published_call_counts_at_depth_20_beam_2_three_actions_and_a_warm_metrics_cache() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let cache_file = work.path().join("metrics_cache.json");
    let cache_flag = cache_file.display().to_string();
    let flags = [
        "--depth",
        "20",
        "--beam-size",
        "2",
        "--n-actions",
        "3",
        "--metrics-cache-path",
        &cache_flag,
    ];
    let cold = beam_run(&server, work.path(), "cold", &flags);
    assert!(cold.status.success(), "{}", text(&cold));
    assert_eq!(
        counts(&work.path().join("cold")),
        Counts {
            optimizer_requests: 37,
            optimizer_candidates: 111,
            base: 112,
            judge: 112,
            metrics: 20,
        }
    );

    let warm = beam_run(&server, work.path(), "warm", &flags);
    assert!(warm.status.success(), "{}", text(&warm));
    let warm_counts = counts(&work.path().join("warm"));
    assert_eq!(
        warm_counts.metrics, 0,
        "every query's aspects come from the cache"
    );
    assert_eq!(warm_counts.base, 112);

    assert_replays(&work.path().join("cache"), &work.path().join("cold"));
}

#[test]
fn the_outcome_holds_the_best_prompt_its_reward_the_path_and_the_whole_tree() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let out = beam_run(
        &server,
        work.path(),
        "run",
        &["--depth", "3", "--beam-size", "2", "--n-actions", "2"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let dir = work.path().join("run");
    let result = drpo_tests::result_json(&dir);
    // Root, 2 children, then 2 beams × 2 children.
    assert_eq!(result["tree"].as_array().unwrap().len(), 1 + 2 + 4);
    let path = result["best_path"].as_array().unwrap();
    assert_eq!(path.len(), 3, "root → level 1 → level 2: {result}");
    assert_eq!(path[0], 0);
    // The server's judgements are all 3s.
    assert_eq!(result["best_score"].as_f64(), Some(3.0));
    assert!(
        result["best_prompt"]
            .as_str()
            .is_some_and(|p| !p.is_empty())
    );

    let entries = read_log(&dir.join("run.log")).unwrap().entries;
    let Some(Entry::End(end)) = entries.last() else {
        panic!("no end frame")
    };
    let EndStatus::Finished(outcome) = &end.status else {
        panic!("{end:?}")
    };
    assert_eq!(
        Some(outcome.best_prompt.clone().unwrap()),
        result["best_prompt"].as_str().map(str::to_owned)
    );
    let log = std::fs::read_to_string(dir.join("log.txt")).unwrap();
    assert!(log.contains("[node 0]"), "{log}");
}

#[test]
fn in_context_examples_are_retrieved_through_the_hosts_embedding_endpoint() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let out = beam_run(
        &server,
        work.path(),
        "run",
        &[
            "--depth",
            "2",
            "--beam-size",
            "1",
            "--n-actions",
            "1",
            "--k",
            "2",
            "--embedding-model-name",
            "test-embedder",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let embeddings: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|(path, _)| path.ends_with("/embeddings"))
        .collect();
    assert!(
        !embeddings.is_empty(),
        "the strategy embedded its queries and examples"
    );
    assert_eq!(embeddings[0].1["model"], "test-embedder");
    assert!(
        !text(&out).contains("no embeddings"),
        "retrieval was used, not the fixed examples: {}",
        text(&out)
    );
    // Without an embedding model the run says so once and uses the fixed examples.
    let out = beam_run(
        &server,
        work.path(),
        "fixed",
        &["--depth", "2", "--beam-size", "1", "--n-actions", "1"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        text(&out).matches("no embeddings").count(),
        1,
        "{}",
        text(&out)
    );
}
