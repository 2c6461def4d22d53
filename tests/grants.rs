//! Capabilities: `--allow-roles` and `--max-plugin-calls` through `drpo-host run`. Requests
//! outside the grant never reach the server, the run log records the refusal, `replay`
//! reproduces the run, and `inspect` shows the roles used and the grant.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use drpo_host::bindings::types::{LlmError, Role};
use drpo_host::runlog::{CallRequest, CallResponse, read_log};
use drpo_tests::server::{Reply, Server, default_reply};
use drpo_tests::{
    assert_budget_stopped, assert_replays, host, output, plugin, preflight_requests, result_json,
    roles_at, text,
};

/// Every (role, result) of the run's `complete` requests.
fn answered(dir: &Path) -> Vec<(Role, Result<(), LlmError>)> {
    let calls = read_log(&dir.join("run.log")).unwrap().calls();
    let mut all = Vec::new();
    for call in calls {
        if let (CallRequest::Complete(batch), CallResponse::Complete(results)) =
            (&call.request, &call.response)
        {
            for (request, result) in batch.iter().zip(results) {
                all.push((
                    request.role,
                    result.as_ref().map(|_| ()).map_err(Clone::clone),
                ));
            }
        }
    }
    all
}

fn run(server: &Server, work: &Path, strategy: &str, flags: &[&str]) -> std::process::Output {
    output(
        host(&work.join("cache"))
            .arg("run")
            .arg("--strategy")
            .arg(plugin(strategy))
            .arg("--log-dir")
            .arg(work.join("run"))
            .args(roles_at(server.url()))
            .args(flags),
    )
}

fn replay_and_inspect(work: &Path) -> String {
    let dir = work.join("run");
    assert_replays(&work.join("cache"), &dir);
    let inspect = output(host(&work.join("cache")).arg("inspect").arg(&dir));
    assert!(inspect.status.success(), "{}", text(&inspect));
    text(&inspect)
}

#[test]
fn a_role_that_is_not_granted_is_rejected_recorded_and_replayed() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let out = run(
        &server,
        work.path(),
        "greedy",
        &[
            "--allow-roles",
            "metrics,judge,optimizer",
            "--option",
            "steps=1",
        ],
    );
    // Every base request of the first step is refused the same way: the search stops there.
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("role base is not granted"),
        "{}",
        text(&out)
    );
    let answered = answered(&work.path().join("run"));
    let base: Vec<_> = answered.iter().filter(|(r, _)| *r == Role::Base).collect();
    assert!(!base.is_empty(), "greedy asks the base model");
    for (_, result) in &base {
        assert_eq!(
            result,
            &Err(LlmError::Rejected(
                "role base is not granted to this plugin (--allow-roles metrics,judge,optimizer)"
                    .into()
            ))
        );
    }
    let log = std::fs::read_to_string(work.path().join("run/log.txt")).unwrap();
    assert!(
        log.contains("base failed: LlmError::Rejected(\"role base is not granted"),
        "{log}"
    );
    // Only the granted requests reached the server (the preflight checked granted roles only).
    let granted = answered.iter().filter(|(r, _)| *r != Role::Base).count();
    assert_eq!(
        server.requests().len(),
        granted + preflight_requests(&work.path().join("run"))
    );

    let inspect = replay_and_inspect(work.path());
    assert!(
        inspect.contains("granted        roles metrics,judge,optimizer; no call cap"),
        "{inspect}"
    );
    assert!(
        inspect.contains(&format!("refused        {} request(s)", base.len())),
        "{inspect}"
    );
    assert!(
        inspect.contains(&format!("roles used     base ({})", base.len())),
        "{inspect}"
    );
}

#[test]
fn the_call_cap_stops_a_plugin_cleanly_with_its_best_so_far() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let out = run(
        &server,
        work.path(),
        "mcts",
        &[
            "--max-plugin-calls",
            "5",
            "--option",
            "iterations=10",
            "--option",
            "width=2",
        ],
    );
    assert_budget_stopped(&out);
    assert_eq!(
        server.requests().len(),
        5 + preflight_requests(&work.path().join("run")),
        "the cap counts the plugin's requests"
    );
    let result = result_json(&work.path().join("run"));
    assert!(result["best_prompt"].is_string(), "{result}");
    let answered = answered(&work.path().join("run"));
    assert!(
        answered
            .iter()
            .any(|(_, r)| *r == Err(LlmError::BudgetExhausted))
    );
    let inspect = replay_and_inspect(work.path());
    assert!(
        inspect.contains("granted        roles all roles; at most 5 model calls"),
        "{inspect}"
    );
}

#[test]
fn an_unknown_role_fails_before_the_run() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let out = run(
        &server,
        work.path(),
        "greedy",
        &["--allow-roles", "judge,critic"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("unknown role `critic`"),
        "{}",
        text(&out)
    );
    assert!(server.requests().is_empty());
}

#[test]
fn a_resumed_run_counts_its_recorded_requests_against_the_call_cap() {
    let slow = || {
        Server::with_script(|path, request| Reply {
            status: 200,
            body: default_reply(path, request).to_string(),
            delay: Duration::from_millis(150),
            retry_after: None,
        })
    };
    let flags = [
        "--max-plugin-calls",
        "7",
        "--option",
        "iterations=10",
        "--option",
        "width=1",
    ];
    let reference_work = tempfile::tempdir().unwrap();
    let out = run(&slow(), reference_work.path(), "mcts", &flags);
    assert_budget_stopped(&out);

    let work = tempfile::tempdir().unwrap();
    let server = slow();
    let mut child = host(&work.path().join("cache"))
        .arg("run")
        .arg("--strategy")
        .arg(plugin("mcts"))
        .arg("--log-dir")
        .arg(work.path().join("run"))
        .args(roles_at(server.url()))
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    // The preflight's two checks, then four of the plugin's requests.
    while server.requests().len() < 6 {
        assert!(Instant::now() < deadline, "the run never got going");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended too soon"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let resume = output(
        host(&work.path().join("cache"))
            .arg("resume")
            .arg(work.path().join("run")),
    );
    assert_budget_stopped(&resume);

    let served = |dir: &Path| {
        answered(dir)
            .iter()
            .filter(|(_, result)| result.is_ok())
            .count()
    };
    assert_eq!(
        served(&work.path().join("run")),
        7,
        "the cap holds across the resume"
    );
    assert_eq!(
        result_json(&work.path().join("run"))["best_path"],
        result_json(&reference_work.path().join("run"))["best_path"]
    );
}
