//! Recording, replaying, resuming and auditing runs.

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use drpo_host::bindings::types::Outcome;
use drpo_host::runlog::{CallRequest, EndStatus, Entry, read_log};
use drpo_host::runtime::{Limits, PluginError, Runtime, Session, SessionFailure};
use drpo_tests::server::{Reply, Server, default_reply};
use drpo_tests::{assert_replays, host, output, plugin, roles_at, text};

fn run_args(server: &Server, dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "run".to_owned(),
        "--strategy".into(),
        plugin("testkit").display().to_string(),
        "--log-dir".into(),
        dir.display().to_string(),
    ];
    args.extend(roles_at(server.url()));
    // These runs compare what reaches the server and the logs of repeated runs: the response
    // cache would answer the repeats (tests/spending.rs covers it).
    args.push("--no-cache".into());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn entries(dir: &Path) -> Vec<Entry> {
    read_log(&dir.join("run.log")).unwrap().entries
}

fn outcome(dir: &Path) -> Outcome {
    match entries(dir).last() {
        Some(Entry::End(end)) => match &end.status {
            EndStatus::Finished(outcome) => outcome.clone(),
            EndStatus::Failed(message) => panic!("the run failed: {message}"),
        },
        other => panic!("the run has no end: {other:?}"),
    }
}

/// Chat message contents of every `complete` request recorded in a log.
fn recorded_prompts(entries: &[Entry]) -> Vec<String> {
    let mut prompts = Vec::new();
    for entry in entries {
        if let Entry::Call(call) = entry
            && let CallRequest::Complete(batch) = &call.request
        {
            for request in batch {
                if let drpo_host::bindings::types::Prompt::Chat(messages) = &request.prompt {
                    prompts.push(messages[0].content.clone());
                }
            }
        }
    }
    prompts
}

fn served_prompts(server: &Server) -> Vec<String> {
    server
        .requests()
        .iter()
        .map(|(_, body)| {
            body["messages"][0]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[test]
fn a_run_replays_to_the_same_outcome_and_same_seed_runs_record_identical_logs() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let (first, second) = (work.path().join("first"), work.path().join("second"));
    for dir in [&first, &second] {
        let out = output(host(&cache).args(run_args(
            &server,
            dir,
            &["--option", "steps=4", "--seed", "5"],
        )));
        assert!(out.status.success(), "{}", text(&out));
    }
    let normalise =
        |dir: &Path| -> Vec<Entry> { entries(dir).iter().map(Entry::without_timings).collect() };
    assert_eq!(
        normalise(&first),
        normalise(&second),
        "same plugin, seed and answers: same log"
    );
    let served = server.requests().len();

    assert_replays(&cache, &first);
    assert_eq!(
        server.requests().len(),
        served,
        "a replay sends nothing to the model"
    );

    let out_of_outcome = outcome(&first);
    assert_eq!(out_of_outcome.best_path, vec![0, 1, 2, 3, 4]);
    let result = drpo_tests::result_json(&first);
    assert_eq!(result["tree"].as_array().unwrap().len(), 5);
    assert_eq!(
        result["best_prompt"].as_str(),
        out_of_outcome.best_prompt.as_deref()
    );

    let inspect = output(host(&cache).arg("inspect").arg(&first));
    let summary = text(&inspect);
    assert!(inspect.status.success(), "{summary}");
    // 4 steps × 2 requests, alternating judge and optimizer, and the preflight's checks.
    let checked_as_judge = drpo_host::runlog::read_log(&first.join("run.log"))
        .unwrap()
        .preflight()
        .unwrap()
        .requests
        .iter()
        .filter(|r| r.role == drpo_host::bindings::types::Role::Judge)
        .count();
    let judged = (4 + checked_as_judge).to_string();
    assert!(
        summary
            .lines()
            .any(|l| l.starts_with("judge") && l.split_whitespace().nth(1) == Some(&judged)),
        "{summary}"
    );
    assert!(summary.contains("best score"), "{summary}");
}

#[test]
fn a_run_with_nan_rewards_replays() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let dir = work.path().join("run");
    let out = output(host(&cache).args(run_args(&server, &dir, &["--option", "reward=nan"])));
    assert!(out.status.success(), "{}", text(&out));
    assert!(outcome(&dir).best_score.unwrap().is_nan());
    assert_replays(&cache, &dir);
}

#[test]
fn a_changed_byte_in_the_run_log_makes_replay_refuse_and_name_the_frame() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let dir = work.path().join("run");
    let out = output(host(&cache).args(run_args(&server, &dir, &[])));
    assert!(out.status.success(), "{}", text(&out));
    let log = dir.join("run.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&log, bytes).unwrap();
    let replay = output(host(&cache).arg("replay").arg(&dir));
    assert!(!replay.status.success());
    let message = text(&replay);
    assert!(
        message.contains("frame") && message.contains("run.log"),
        "{message}"
    );
    assert!(
        message.contains("corrupt or was altered") || message.contains("incomplete"),
        "{message}"
    );
}

/// A changed length field looks like a frame cut short by a kill; taking it for one would let
/// `resume` cut the valid frames after it and send their requests again.
#[test]
fn a_changed_length_field_is_corruption_to_every_command_and_resume_keeps_the_log() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let dir = work.path().join("run");
    let out = output(host(&cache).args(run_args(&server, &dir, &[])));
    assert!(out.status.success(), "{}", text(&out));
    let log = dir.join("run.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let mut start = 8;
    for _ in 0..3 {
        let len = u32::from_le_bytes(bytes[start..start + 4].try_into().unwrap()) as usize;
        start += 4 + len + 32;
    }
    bytes[start + 3] ^= 0x80;
    std::fs::write(&log, &bytes).unwrap();
    let served = server.requests().len();

    for command in [
        vec!["inspect"],
        vec!["replay"],
        vec!["resume"],
        vec!["view"],
        vec!["export", "--format", "published"],
    ] {
        let out = output(host(&cache).args(&command).arg(&dir));
        let message = text(&out);
        assert!(!out.status.success(), "{command:?}: {message}");
        assert!(
            message.contains("run.log")
                && message.contains("corrupt or was altered")
                && message.contains(&format!("frame 3 (at byte {start})")),
            "{command:?}: {message}"
        );
    }
    assert_eq!(
        std::fs::read(&log).unwrap(),
        bytes,
        "resume left the log as it was"
    );
    assert_eq!(server.requests().len(), served, "resume sent nothing");
}

#[test]
fn replay_names_the_call_role_and_field_where_a_plugin_diverges() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("run");
    let out = output(host(&work.path().join("cache")).args(run_args(
        &server,
        &dir,
        &["--option", "width=2"],
    )));
    assert!(out.status.success(), "{}", text(&out));
    let calls = read_log(&dir.join("run.log")).unwrap().calls();

    let runtime = Runtime::new(None).unwrap();
    let testkit = runtime.load(&plugin("testkit")).unwrap();
    // Same plugin, other options: its second request of the first batch now differs in length.
    let options = r#"{"mode":"chain","steps":3,"width":3}"#;
    let finished = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(runtime.run(
            &testkit,
            options,
            0,
            Limits::default(),
            Session::replay(calls),
            (),
        ));
    match finished.result {
        Err(PluginError::Host { failure, .. }) => {
            let SessionFailure::Divergence(divergence) = *failure else {
                panic!("expected a divergence, got {failure}");
            };
            // Call 0 is `queries`, call 1 records the root; call 2 is the first batch, which
            // now has 3 requests.
            assert_eq!(divergence.index, 2);
            assert_eq!(divergence.import, "complete");
            assert_eq!(divergence.field, "batch.length");
            let message = divergence.to_string();
            assert!(
                message.contains("call 2") && message.contains("batch.length"),
                "{message}"
            );
        }
        Err(other) => panic!("expected a divergence, got {other}"),
        Ok(_) => panic!("expected a divergence, the replay finished"),
    }
}

#[test]
fn a_killed_run_resumes_to_the_uninterrupted_outcome_without_resending_recorded_calls() {
    let slow = || {
        Server::with_script(|path, request| Reply {
            status: 200,
            body: default_reply(path, request).to_string(),
            delay: Duration::from_millis(150),
            retry_after: None,
        })
    };
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let steps = ["--option", "steps=8"];

    let reference_server = slow();
    let reference = work.path().join("reference");
    let out = output(host(&cache).args(run_args(&reference_server, &reference, &steps)));
    assert!(out.status.success(), "{}", text(&out));

    let server = slow();
    let dir = work.path().join("interrupted");
    let mut child = host(&cache)
        .args(run_args(&server, &dir, &steps))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.requests().len() < 7 {
        assert!(Instant::now() < deadline, "the run never got going");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // SIGKILL: no chance to clean up.
    child.kill().unwrap();
    child.wait().unwrap();
    let before = read_log(&dir.join("run.log")).unwrap();
    assert!(
        !matches!(before.entries.last(), Some(Entry::End(_))),
        "the run was killed before its end"
    );
    let recorded: HashSet<String> = recorded_prompts(&before.entries).into_iter().collect();
    assert!(
        !recorded.is_empty(),
        "some calls were recorded before the kill"
    );
    let served_before = server.requests().len();

    let resume = output(host(&cache).arg("resume").arg(&dir));
    assert!(resume.status.success(), "{}", text(&resume));
    assert_eq!(
        outcome(&dir),
        outcome(&reference),
        "resume finishes with the uninterrupted outcome"
    );

    let resent: Vec<String> = served_prompts(&server)[served_before..]
        .iter()
        .filter(|prompt| recorded.contains(*prompt))
        .cloned()
        .collect();
    assert!(
        resent.is_empty(),
        "recorded requests were sent again: {resent:?}"
    );

    assert_replays(&cache, &dir);

    let again = output(host(&cache).arg("resume").arg(&dir));
    assert!(!again.status.success());
    assert!(text(&again).contains("already ended"), "{}", text(&again));
}

#[test]
fn a_run_directory_in_use_refuses_a_second_run_or_resume() {
    let server = Server::with_script(|path, request| Reply {
        status: 200,
        body: default_reply(path, request).to_string(),
        delay: Duration::from_millis(150),
        retry_after: None,
    });
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let dir = work.path().join("run");
    let args = run_args(&server, &dir, &["--option", "steps=20"]);
    let mut child = host(&cache)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.join("run.log").exists() {
        assert!(Instant::now() < deadline, "the run never got going");
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(10));
    }
    let in_use = format!(
        "{} is in use by another drpo-host `run` or `resume` (pid {})",
        dir.display(),
        child.id()
    );
    for second in [vec!["resume".to_owned(), dir.display().to_string()], args] {
        let out = output(host(&cache).args(&second));
        assert!(!out.status.success(), "{}", text(&out));
        assert!(text(&out).contains(&in_use), "{}", text(&out));
    }
    assert!(child.try_wait().unwrap().is_none(), "the run went on");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_second_start_reads_the_compiled_cache_and_a_damaged_one_is_compiled_again_with_a_note() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let describe = || {
        let out = output(host(&cache).arg("describe").arg(plugin("testkit")));
        assert!(out.status.success(), "{}", text(&out));
        out
    };
    let first = describe();
    assert!(text(&first).contains("(compiled now)"), "{}", text(&first));
    let compiled: Vec<_> = std::fs::read_dir(cache.join("components"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(compiled.len(), 1, "{compiled:?}");
    assert!(compiled[0].to_string_lossy().ends_with(".cwasm"));

    let second = describe();
    assert!(
        text(&second).contains("(read from the compiled cache)"),
        "{}",
        text(&second)
    );
    assert!(!text(&second).contains("warning"), "{}", text(&second));

    std::fs::write(&compiled[0], b"not a compiled component").unwrap();
    let damaged = describe();
    let printed = text(&damaged);
    assert!(
        printed.contains("warning: ") && printed.contains("compiled again"),
        "{printed}"
    );
    assert!(
        printed.contains(&compiled[0].display().to_string()),
        "{printed}"
    );
    // The cache was rewritten: the next start reads it again.
    let repaired = describe();
    assert!(
        text(&repaired).contains("(read from the compiled cache)"),
        "{}",
        text(&repaired)
    );
    assert_eq!(repaired.stdout, second.stdout);
}
