//! icl.wasm end to end against a loopback critic and optimizer: the examples file it writes is
//! in the published `{query: answer}` shape, in the input's order, holds the better-scored
//! rewrites, replays, and feeds `generate --examples`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use drpo_tests::server::{Reply, Server, default_reply};
use drpo_tests::{assert_replays, generate_in, output, result_json, strategy_in, text};
use serde_json::{Map, Value, json};

/// The critic gives 5 on every aspect to a reply that says "rewritten", 2 otherwise; the
/// optimizer rewrites an answer as "rewritten: <query>"; anything else gets the default reply.
fn server() -> Server {
    Server::with_script(|path, request| {
        let prompt = request["messages"][0]["content"]
            .as_str()
            .unwrap_or_default();
        let schema = &request["response_format"]["json_schema"]["schema"];
        let content = if prompt.starts_with("You are a ruthless critic of example answers") {
            let reply = prompt.split("## Reply").nth(1).unwrap_or_default();
            let reply = reply.split("## Aspects").next().unwrap_or_default();
            let score = if reply.contains("rewritten") { 5 } else { 2 };
            let verdict: Map<String, Value> = schema["properties"]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| (k.clone(), json!({"rationale": "scripted", "score": score})))
                .collect();
            Some(Value::Object(verdict).to_string())
        } else if prompt.starts_with("You improve example answers") {
            let query = prompt
                .split("## Query\n")
                .nth(1)
                .and_then(|q| q.split("\n\n").next())
                .unwrap_or_default();
            Some(
                json!({"analysis": "a", "thought": "t", "new_response": format!("rewritten: {query}")})
                    .to_string(),
            )
        } else {
            None
        };
        let body = match content {
            Some(content) => json!({"choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}}),
            None => default_reply(path, request),
        };
        Reply {
            status: 200,
            body: body.to_string(),
            delay: Duration::ZERO,
            retry_after: None,
        }
    })
}

/// `drpo-host run` of icl.wasm on the examples file `examples`, every role at `server`, logged
/// into `dir`, without the response cache.
fn icl_run(cache: &Path, server: &Server, examples: &Path, dir: &Path) -> Command {
    let mut command = strategy_in(cache, "run", "icl", dir);
    command
        .arg("--examples")
        .arg(examples)
        .args(drpo_tests::roles_at(server.url()))
        // These tests count the stage's requests; the preflight's checks are tested apart.
        .args(["--no-cache", "--no-preflight"]);
    command
}

#[test]
fn optimized_examples_are_written_replayed_and_used_by_generate() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let input = work.path().join("initial.json");
    // Not in sorted order, to check that the output keeps the input's order.
    std::fs::write(
        &input,
        json!({"Why do leaves fall?": "<START>\nThey just do.\n<END>", "Are cats liquid?": "No."})
            .to_string(),
    )
    .unwrap();
    let server = server();
    let dir = work.path().join("icl");
    let out = output(icl_run(&cache, &server, &input, &dir).args(["--option", "num_iters=3"]));
    assert!(out.status.success(), "{}", text(&out));
    let written = std::fs::read_to_string(dir.join("examples.json")).unwrap();
    let keys: Vec<&str> = written
        .lines()
        .filter_map(|l| l.trim().strip_prefix('"'))
        .filter_map(|l| l.split("\":").next())
        .collect();
    assert_eq!(
        keys,
        ["Why do leaves fall?", "Are cats liquid?"],
        "{written}"
    );
    let examples: Value = serde_json::from_str(&written).unwrap();
    assert_eq!(
        examples["Why do leaves fall?"],
        "<START>\nrewritten: Why do leaves fall?\n<END>"
    );
    // 2 selections, 2 initial judgements, then one rewrite and one judgement each, after which
    // every aspect is 5 and both stop.
    assert_eq!(server.requests().len(), 8);
    let result = result_json(&dir);
    assert_eq!(result["details"]["examples"][1]["rewrites"], 1);
    assert_eq!(result["tree"].as_array().unwrap().len(), 4);

    assert_replays(&cache, &dir);
    assert_eq!(server.requests().len(), 8, "the replay sent nothing");

    let out = output(
        generate_in(&cache, work.path().join("generate"))
            .args(["--model", "base", "--api-base", server.url()])
            .arg("--examples")
            .arg(dir.join("examples.json"))
            .args(["-k", "2", "Do trees sleep?"]),
    );
    assert!(out.status.success(), "{}", text(&out));
    let last = server.requests().pop().unwrap().1;
    let system = last["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.contains(
            "#Query:\nAre cats liquid?\n\n#Answer:\n<START>\nrewritten: Are cats liquid?\n<END>"
        ),
        "{system}"
    );
}

/// How many of the server's requests were the critic's aspect selections.
fn selections(server: &Server) -> usize {
    server
        .requests()
        .iter()
        .filter(|(_, body)| {
            body["messages"][0]["content"]
                .as_str()
                .is_some_and(|p| p.starts_with("You are a ruthless critic about to grade"))
        })
        .count()
}

/// The published `icl_metrics_cache`: `--metrics-cache-path` keeps the critic's aspect choices
/// per query, so a second run asks only for the queries the first did not see, and both runs
/// replay without the file.
#[test]
fn the_metrics_cache_spares_a_second_run_the_known_selections() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let metrics_cache = work.path().join("icl_metrics_cache.json");
    let server = server();
    let run = |name: &str, examples: Value| {
        let input = work.path().join(format!("{name}.json"));
        std::fs::write(&input, examples.to_string()).unwrap();
        let dir = work.path().join(name);
        let out = output(
            icl_run(&cache, &server, &input, &dir)
                .arg("--metrics-cache-path")
                .arg(&metrics_cache)
                .args(["--option", "num_iters=1"]),
        );
        assert!(out.status.success(), "{}", text(&out));
        dir
    };
    let first = run(
        "first",
        json!({"Why do leaves fall?": "They just do.", "Are cats liquid?": "No."}),
    );
    assert_eq!(selections(&server), 2);
    let saved: Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(&metrics_cache).unwrap()).unwrap();
    let mut keys: Vec<&String> = saved.keys().collect();
    keys.sort();
    assert_eq!(keys, ["Are cats liquid?", "Why do leaves fall?"]);

    let second = run(
        "second",
        json!({"Are cats liquid?": "No.", "Do fish sleep?": "Sort of.", "Why do leaves fall?": "Wind."}),
    );
    assert_eq!(selections(&server), 3, "only the new query was asked");
    let sources: Vec<Value> = result_json(&second)["details"]["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["aspects_source"].clone())
        .collect();
    assert_eq!(sources, [json!("cache"), json!("model"), json!("cache")]);
    let saved: Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(&metrics_cache).unwrap()).unwrap();
    assert_eq!(saved.len(), 3);
    assert!(saved.contains_key("Do fish sleep?"));

    std::fs::remove_file(&metrics_cache).unwrap();
    let requests = server.requests().len();
    assert_replays(&cache, &first);
    assert_replays(&cache, &second);
    assert_eq!(
        server.requests().len(),
        requests,
        "the replays sent nothing"
    );
}
