//! What a run spends, end to end through `drpo-host run` against a loopback server: budgets
//! stop a beam search cleanly with its best result (and `replay` reproduces the stop), the
//! response cache answers a repeated run without a single HTTP request, the projection is shown
//! before a run, and the API key never reaches a file or the terminal.

use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use drpo_host::bindings::types::LlmError;
use drpo_host::runlog::{CallResponse, Entry, read_log};
use drpo_tests::server::{Reply, Server, default_reply};
use drpo_tests::{
    assert_budget_stopped, assert_replays, host, output, plugin, preflight_requests, result_json,
    roles_at, testkit_run, text,
};

/// A beam search long enough for every budget below to cut it short.
const SEARCH: [&str; 8] = [
    "--depth",
    "8",
    "--beam-size",
    "2",
    "--n-actions",
    "2",
    "--max-depth-increase",
    "0",
];

fn beam_run(server: &Server, work: &Path, name: &str, extra: &[&str]) -> Output {
    drpo_tests::beam_run(work, server.url(), name, &[&SEARCH[..], extra].concat())
}

/// testkit's `ask` mode: one batch of requests shaped by `ask` (`width=`, `n=`, `max_tokens=`).
fn ask_run(server: &Server, work: &Path, ask: &[&str], extra: &[&str]) -> Output {
    testkit_run(work, server.url(), &[&["mode=ask"], ask].concat(), extra)
}

/// The errors testkit's `ask` mode met, as it reported them.
fn ask_errors(work: &Path) -> Vec<String> {
    let result = result_json(&work.join("run"));
    let details: serde_json::Value = match &result["details"] {
        serde_json::Value::String(text) => serde_json::from_str(text).unwrap(),
        details => details.clone(),
    };
    details["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{result}"))
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect()
}

/// The tokens the answered requests of the run reported.
fn tokens_spent(dir: &Path) -> u64 {
    read_log(&dir.join("run.log"))
        .unwrap()
        .entries
        .iter()
        .filter_map(|entry| match entry {
            Entry::Call(call) => match &call.response {
                CallResponse::Complete(results) => Some(
                    results
                        .iter()
                        .flatten()
                        .map(|c| u64::from(c.usage.prompt_tokens + c.usage.completion_tokens))
                        .sum::<u64>(),
                ),
                _ => None,
            },
            _ => None,
        })
        .sum()
}

#[test]
fn a_request_whose_worst_case_the_money_budget_cannot_cover_is_never_sent() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    // $20 per million tokens: 16 choices of up to 4,096 tokens may cost $1.31.
    let config = priced_config(work.path());
    let out = ask_run(
        &server,
        work.path(),
        &["width=1", "n=16", "max_tokens=4096"],
        &["--config", &config, "--max-cost", "0.05"],
    );
    assert_budget_stopped(&out);
    assert!(
        text(&out).contains("--max-cost 0.05 cannot cover the next request"),
        "{}",
        text(&out)
    );
    assert_eq!(server.requests().len(), 0, "nothing was sent");
    assert_eq!(ask_errors(work.path()), ["LlmError::BudgetExhausted"]);
    assert_replays(&work.path().join("cache"), &work.path().join("run"));
}

#[test]
fn max_tokens_admits_of_a_large_batch_only_what_its_worst_cases_leave_room_for() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let out = ask_run(
        &server,
        work.path(),
        &["width=2000", "max_tokens=64"],
        &["--max-tokens", "1000"],
    );
    assert_budget_stopped(&out);
    let sent = server.requests().len();
    // Each request may spend 2 prompt tokens (`ask N`, estimated) and 64 completion tokens.
    assert_eq!(
        sent,
        1000 / 66,
        "those whose worst cases fit in 1000 tokens"
    );
    assert_eq!(ask_errors(work.path()).len(), 2000 - sent);
    assert!(tokens_spent(&work.path().join("run")) <= 1000);
    assert!(
        text(&out).contains("--max-tokens 1000 cannot cover"),
        "{}",
        text(&out)
    );
    assert_replays(&work.path().join("cache"), &work.path().join("run"));
}

#[test]
fn requests_past_the_choice_and_batch_limits_are_rejected_naming_the_flags() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let out = ask_run(
        &server,
        work.path(),
        &["width=5", "n=5"],
        &["--max-choices", "4", "--max-batch", "3"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(server.requests().len(), 0);
    let errors = ask_errors(work.path());
    assert_eq!(errors.len(), 5);
    assert!(
        errors[..3]
            .iter()
            .all(|e| e.contains("--max-choices") && e.contains("n = 5")),
        "{errors:?}"
    );
    assert!(
        errors[3..]
            .iter()
            .all(|e| e.contains("--max-batch") && e.contains("holds 5")),
        "{errors:?}"
    );
    assert_replays(&work.path().join("cache"), &work.path().join("run"));
}

#[test]
fn max_time_answers_the_requests_a_hung_server_holds_budget_exhausted() {
    // Longer than the test would ever wait: only the time budget can end these requests.
    let server = Server::with_script(|path, body| Reply {
        status: 200,
        body: default_reply(path, body).to_string(),
        delay: Duration::from_secs(24 * 3600),
        retry_after: None,
    });
    let work = tempfile::tempdir().unwrap();
    let out = ask_run(&server, work.path(), &["width=2"], &["--max-time", "1s"]);
    assert_budget_stopped(&out);
    assert!(text(&out).contains("--max-time"), "{}", text(&out));
    assert_eq!(server.requests().len(), 2, "both were sent");
    assert_eq!(refusals(&work.path().join("run")), 2);
    assert_eq!(ask_errors(work.path()), ["LlmError::BudgetExhausted"; 2]);
    assert_replays(&work.path().join("cache"), &work.path().join("run"));
}

/// A config file in `work` pricing test-model at $20 per million tokens in and out; its path.
fn priced_config(work: &Path) -> String {
    let config = work.join("drpo.toml");
    std::fs::write(
        &config,
        "[prices]\n\"test-model\" = { input = 20.0, output = 20.0 }\n",
    )
    .unwrap();
    config.display().to_string()
}

/// Requests of the run answered `budget-exhausted`.
fn refusals(dir: &Path) -> usize {
    read_log(&dir.join("run.log"))
        .unwrap()
        .entries
        .iter()
        .filter_map(|entry| match entry {
            Entry::Call(call) => match &call.response {
                CallResponse::Complete(results) => Some(
                    results
                        .iter()
                        .filter(|r| **r == Err(LlmError::BudgetExhausted))
                        .count(),
                ),
                _ => None,
            },
            _ => None,
        })
        .sum()
}

/// The run finished with a result, said why it stopped, and replays bit for bit.
fn assert_stopped_cleanly_by_the_budget(out: &Output, work: &Path, name: &str) {
    let dir = work.join(name);
    assert_budget_stopped(out);
    assert!(text(out).contains("budget: --max-"), "{}", text(out));
    let result = result_json(&dir);
    assert!(
        result["best_prompt"]
            .as_str()
            .is_some_and(|p| !p.is_empty()),
        "{result}"
    );
    assert!(
        result["details"]["stopped"]
            .as_str()
            .is_some_and(|why| why.contains("budget")),
        "{}",
        result["details"]
    );
    assert!(refusals(&dir) > 0, "the refusal is in the run log");
    assert_replays(&work.join("cache"), &dir);
}

#[test]
fn max_calls_stops_a_beam_run_after_exactly_that_many_requests() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let out = beam_run(
        &server,
        work.path(),
        "run",
        &["--max-calls", "20", "--no-cache"],
    );
    assert_stopped_cleanly_by_the_budget(&out, work.path(), "run");
    assert_eq!(server.requests().len(), 20);
    let inspect = output(
        host(&work.path().join("cache"))
            .arg("inspect")
            .arg(work.path().join("run")),
    );
    assert!(
        text(&inspect).contains("were refused because a budget was spent"),
        "{}",
        text(&inspect)
    );
}

#[test]
fn max_tokens_stops_a_beam_run() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let out = beam_run(&server, work.path(), "run", &["--max-tokens", "25000"]);
    assert_stopped_cleanly_by_the_budget(&out, work.path(), "run");
}

#[test]
fn max_cost_stops_a_beam_run_and_needs_a_price() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let unpriced = beam_run(&server, work.path(), "unpriced", &["--max-cost", "0.5"]);
    assert!(!unpriced.status.success());
    assert!(
        text(&unpriced).contains("`test-model`") && text(&unpriced).contains("[prices]"),
        "{}",
        text(&unpriced)
    );
    assert_eq!(server.requests().len(), 0);

    // $20 per million tokens: 25,000 tokens cost $0.50.
    let config = priced_config(work.path());
    let out = beam_run(
        &server,
        work.path(),
        "run",
        &["--config", &config, "--max-cost", "0.5"],
    );
    assert_stopped_cleanly_by_the_budget(&out, work.path(), "run");
    let inspect = output(
        host(&work.path().join("cache"))
            .arg("inspect")
            .arg(work.path().join("run")),
    );
    let total = text(&inspect)
        .lines()
        .find(|line| line.starts_with("total"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        total.contains("$0.") || total.contains("$1."),
        "{}",
        text(&inspect)
    );
}

#[test]
fn max_time_stops_a_beam_run_and_the_replay_does_not_look_at_the_clock() {
    let server = Server::with_script(|path, body| Reply {
        status: 200,
        body: default_reply(path, body).to_string(),
        delay: Duration::from_millis(150),
        retry_after: None,
    });
    let work = tempfile::tempdir().unwrap();
    let out = beam_run(&server, work.path(), "run", &["--max-time", "1s"]);
    // The replay below runs far faster than the live run, and still reproduces the stop.
    assert_stopped_cleanly_by_the_budget(&out, work.path(), "run");
}

#[test]
fn a_repeated_run_is_answered_from_the_cache_without_any_request() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let first = beam_run(&server, work.path(), "first", &[]);
    assert!(first.status.success(), "{}", text(&first));
    let served = server.requests().len();
    assert!(served > 0);

    let second = beam_run(&server, work.path(), "second", &[]);
    assert!(second.status.success(), "{}", text(&second));
    let checks = preflight_requests(&work.path().join("second"));
    assert_eq!(
        server.requests().len(),
        served + checks,
        "no HTTP request the second time but the preflight's checks"
    );
    let (a, b) = (
        result_json(&work.path().join("first")),
        result_json(&work.path().join("second")),
    );
    assert_eq!(a["best_prompt"], b["best_prompt"]);
    assert_eq!(a["best_score"], b["best_score"]);
    assert_eq!(a["best_path"], b["best_path"]);
    let inspect = output(
        host(&work.path().join("cache"))
            .arg("inspect")
            .arg(work.path().join("second")),
    );
    let total: Vec<String> = text(&inspect)
        .lines()
        .find(|line| line.starts_with("total"))
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    // total, requests, choices, failed, tokens in, tokens out, cache hits, cost
    let count = |i: usize| total[i].parse::<usize>().unwrap();
    assert_eq!(
        count(1),
        count(6) + checks,
        "every request but the checks was a hit: {total:?}"
    );

    // --no-cache asks the server again.
    let third = beam_run(&server, work.path(), "third", &["--no-cache"]);
    assert!(third.status.success(), "{}", text(&third));
    assert_eq!(server.requests().len(), 2 * served + checks);
}

#[test]
fn a_corrupt_cache_file_is_set_aside_with_a_warning() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join("responses.redb"), vec![0x5Au8; 16384]).unwrap();
    let out = beam_run(&server, work.path(), "run", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("is unreadable"), "{}", text(&out));
    let aside = std::fs::read_dir(&cache)
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".corrupt-")
        })
        .count();
    assert_eq!(aside, 1);
    assert!(result_json(&work.path().join("run"))["best_prompt"].is_string());
}

#[test]
fn the_projection_is_shown_before_a_run_and_alone_with_estimate_only() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let out = beam_run(&server, work.path(), "plan", &["--estimate-only"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(server.requests().len(), 0);
    assert!(!work.path().join("plan").exists(), "nothing is run");
    let without_dir = output(
        host(&work.path().join("cache"))
            .arg("run")
            .arg("--strategy")
            .arg(plugin("beam"))
            .args(roles_at(server.url()))
            .arg("--estimate-only"),
    );
    assert!(without_dir.status.success(), "{}", text(&without_dir));
    assert!(
        String::from_utf8_lossy(&without_dir.stdout).contains("optimizer"),
        "no --log-dir is needed for a projection"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for role in ["base", "metrics", "judge", "optimizer", "total"] {
        assert!(
            stdout.lines().any(|line| line.starts_with(role)),
            "{stdout}"
        );
    }
    // test-model has no price: the money is unknown, not $0.
    assert!(stdout.contains("unknown"), "{stdout}");

    let run = beam_run(&server, work.path(), "run", &[]);
    assert!(run.status.success(), "{}", text(&run));
    assert!(text(&run).contains("projected spending"), "{}", text(&run));
    assert!(text(&run).contains("spent:"), "{}", text(&run));
}

#[test]
fn the_api_key_reaches_no_file_and_no_output_line() {
    const KEY: &str = "sk-drpo-distinctive-5e1f09c4";
    let seen = AtomicUsize::new(0);
    // Some replies fail and quote the Authorization header back, as some proxies do.
    let server = Server::with_request_script(move |incoming| {
        let auth = incoming.authorization.clone().unwrap_or_default();
        match seen.fetch_add(1, Ordering::SeqCst) % 6 {
            1 => Reply {
                status: 400,
                body: format!(r#"{{"error":{{"message":"bad request from {auth}"}}}}"#),
                delay: Duration::ZERO,
                retry_after: None,
            },
            3 => Reply {
                status: 503,
                body: format!("upstream refused header Authorization: {auth}"),
                delay: Duration::ZERO,
                retry_after: Some(0),
            },
            _ => Reply {
                status: 200,
                body: default_reply(&incoming.path, &incoming.body).to_string(),
                delay: Duration::ZERO,
                retry_after: None,
            },
        }
    });
    let work = tempfile::tempdir().unwrap();
    let out = output(
        host(&work.path().join("cache"))
            .env("OPENAI_API_KEY", KEY)
            .arg("run")
            .arg("--strategy")
            .arg(plugin("beam"))
            .arg("--log-dir")
            .arg(work.path().join("run"))
            .args(roles_at(server.url()))
            // The failures are meant for the search's own requests, not the preflight's checks.
            .args(["--depth", "3", "--logging-level", "DEBUG", "--no-preflight"]),
    );
    // Which requests meet the refusals depends on the order they arrive in: a level whose
    // every optimizer request was refused stops the search (code 4); either way the run ends
    // with its files written, which is what is checked here.
    assert!(matches!(out.status.code(), Some(0 | 4)), "{}", text(&out));
    // The second and the fourth request were answered with failures quoting the key (how many
    // more the search sent depends on which requests met them: an early refusal ends it).
    let requests = server.requests().len();
    assert!(
        requests >= 4,
        "both failures quoting the key were sent ({requests} requests)"
    );
    assert!(!text(&out).contains(KEY), "{}", text(&out));
    let inspect = output(
        host(&work.path().join("cache"))
            .arg("inspect")
            .arg(work.path().join("run")),
    );
    assert!(!text(&inspect).contains(KEY));
    let mut checked = 0;
    for entry in std::fs::read_dir(work.path().join("run")).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
            "{} holds the API key",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 4, "config.json, run.log, log.txt, result.json");
    let log = std::fs::read_to_string(work.path().join("run/log.txt")).unwrap();
    assert!(log.contains("[api key]"), "the echoed key was blotted out");
}
