//! What an auditor runs on run directories: `drpo-host log`, `verify`, `diff` and `keygen`.

use std::path::Path;

use drpo_host::runlog::{CallResponse, Entry, RunLogWriter, read_log};
use drpo_tests::server::Server;
use drpo_tests::{host, output, plugin, roles_at, strategy_in, testkit_run, text};
use serde_json::Value;

/// A beam run against the scripted server, in `work/name`, with `flags`.
fn beam_run(server: &Server, work: &Path, name: &str, flags: &[&str]) -> std::process::Output {
    let search = ["--depth", "2", "--beam-size", "2", "--n-actions", "2"];
    let out = drpo_tests::beam_run(work, server.url(), name, &[&search[..], flags].concat());
    assert!(out.status.success(), "{}", text(&out));
    out
}

/// Rewrites a run's log with `change` applied to its entries, chained anew (what a forger
/// with the file, and no key, can do).
fn rechain(dir: &Path, change: impl FnOnce(&mut Vec<Entry>)) {
    let log = dir.join("run.log");
    let mut entries = read_log(&log).unwrap().entries;
    change(&mut entries);
    std::fs::remove_file(&log).unwrap();
    let mut writer = RunLogWriter::create(&log, &entries[0]).unwrap();
    for entry in &entries[1..] {
        writer.append(entry).unwrap();
    }
}

/// The index of the first call whose answer is a `complete` answer with text, and that text
/// changed, in `entries`.
fn change_first_answer(entries: &mut [Entry]) -> u64 {
    for entry in entries.iter_mut() {
        if let Entry::Call(call) = entry
            && let CallResponse::Complete(results) = &mut call.response
            && let Some(Ok(answer)) = results.first_mut()
            && let Some(choice) = answer.choices.first_mut()
        {
            choice.push_str(" (rewritten)");
            return call.index;
        }
    }
    panic!("no answer to change")
}

fn verify(work: &Path, dir: &Path, flags: &[&str]) -> std::process::Output {
    output(host(&work.join("cache")).arg("verify").arg(dir).args(flags))
}

fn log(work: &Path, args: &[&str]) -> std::process::Output {
    output(host(&work.join("cache")).arg("log").args(args))
}

/// The number `inspect` prints after `calls`.
fn inspected_calls(work: &Path, dir: &Path) -> usize {
    let inspect = output(host(&work.join("cache")).arg("inspect").arg(dir));
    assert!(inspect.status.success(), "{}", text(&inspect));
    let stdout = String::from_utf8_lossy(&inspect.stdout).into_owned();
    let line = stdout
        .lines()
        .find(|l| l.starts_with("calls "))
        .unwrap_or_else(|| panic!("{stdout}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn log_json_has_every_frame_and_as_many_calls_as_inspect_counts() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    beam_run(&server, work.path(), "run", &[]);
    let dir = work.path().join("run");
    let dir_arg = dir.to_str().unwrap();

    let out = log(work.path(), &[dir_arg, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let frames: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let kinds: Vec<&str> = frames
        .iter()
        .map(|f| f["frame"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "header");
    assert_eq!(kinds[1], "preflight");
    assert_eq!(&kinds[kinds.len() - 2..], ["end", "chain"]);
    let calls: Vec<&Value> = frames.iter().filter(|f| f["frame"] == "call").collect();
    assert_eq!(calls.len(), inspected_calls(work.path(), &dir));
    for (i, call) in calls.iter().enumerate() {
        assert_eq!(call["index"], i as u64);
    }
    let judged = calls
        .iter()
        .find(|c| c["roles"].as_array().unwrap().iter().any(|r| r == "judge"))
        .expect("a judge call");
    assert_eq!(judged["import"], "complete");
    assert!(judged["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    // What the server said about each answer: the model it answered with, the reply's id.
    let evidence = &judged["evidence"][0];
    assert_eq!(evidence["model"], "test-model", "{judged}");
    assert_eq!(evidence["system_fingerprint"], "scripted", "{judged}");
    assert!(
        evidence["response_id"]
            .as_str()
            .unwrap()
            .starts_with("cmpl-")
    );
    assert_eq!(
        frames.last().unwrap()["final_hash"].as_str().unwrap().len(),
        64
    );

    // Filters keep only the calls they name.
    let judge_only = log(work.path(), &[dir_arg, "--json", "--role", "judge"]);
    let lines: Vec<Value> = String::from_utf8(judge_only.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty());
    assert!(
        lines
            .iter()
            .all(|c| c["roles"].as_array().unwrap().iter().any(|r| r == "judge"))
    );
    let third = log(work.path(), &[dir_arg, "--json", "--call", "3"]);
    let third = String::from_utf8(third.stdout).unwrap();
    assert_eq!(third.lines().count(), 1, "{third}");
    assert!(third.contains(r#""index":3"#), "{third}");
    let queries = log(work.path(), &[dir_arg, "--grep", "limit"]);
    let queries = String::from_utf8(queries.stdout).unwrap();
    assert!(
        queries.starts_with("[call ") && queries.contains("queries: "),
        "{queries}"
    );

    // Read by a person: each request and answer in full, and the chain's hash.
    let readable = log(work.path(), &[dir_arg]);
    let readable = String::from_utf8(readable.stdout).unwrap();
    assert!(readable.contains("request 1 of "), "{readable}");
    assert!(readable.contains("choice 1:"), "{readable}");
    assert!(
        readable.contains("served as model test-model, reply id cmpl-"),
        "{readable}"
    );
    assert!(
        readable
            .lines()
            .last()
            .unwrap()
            .starts_with("final chain hash: "),
        "{readable}"
    );

    let wrong = log(work.path(), &[dir_arg, "--role", "critic"]);
    assert!(!wrong.status.success());
    assert!(
        text(&wrong).contains("the roles are base, metrics, judge, optimizer"),
        "{}",
        text(&wrong)
    );
}

#[test]
fn log_escapes_what_a_hostile_plugin_recorded() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("forge");
    let out = output(
        strategy_in(&work.path().join("cache"), "run", "testkit", &dir)
            .args(roles_at(server.url()))
            .args(["--option", "mode=forge"]),
    );
    assert!(out.status.success(), "{}", text(&out));
    let inspect = output(host(&work.path().join("cache")).arg("inspect").arg(&dir));
    for (command, printed) in [("run", &out.stdout), ("inspect", &inspect.stdout)] {
        let printed = String::from_utf8_lossy(printed);
        assert!(
            printed.contains("ended early") && printed.contains("[2J"),
            "{command} prints the forged details, escaped: {printed}"
        );
        assert!(
            !printed.contains('\u{1b}'),
            "{command}: no raw escape reaches the terminal"
        );
    }
    let readable = log(work.path(), &[dir.to_str().unwrap()]);
    assert!(readable.status.success(), "{}", text(&readable));
    let stdout = String::from_utf8(readable.stdout).unwrap();
    assert!(stdout.contains("record-node"), "{stdout}");
    assert!(
        !stdout.contains('\u{1b}'),
        "no raw escape reaches the terminal"
    );
    assert!(
        !stdout.lines().any(|l| l.starts_with("best score: 99.0")),
        "no forged line passes for the host's"
    );
}

#[test]
fn log_prints_the_frames_before_a_corrupt_one_and_then_names_it() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let out = testkit_run(work.path(), server.url(), &["steps=3"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let dir = work.path().join("run");
    let log_path = dir.join("run.log");
    let mut bytes = std::fs::read(&log_path).unwrap();
    let last = bytes.len() - 40;
    bytes[last] ^= 1;
    std::fs::write(&log_path, bytes).unwrap();
    let listed = log(work.path(), &[dir.to_str().unwrap(), "--json"]);
    assert!(!listed.status.success());
    let stdout = String::from_utf8(listed.stdout).unwrap();
    assert!(
        stdout
            .lines()
            .next()
            .unwrap()
            .contains(r#""frame":"header""#)
    );
    assert!(stdout.contains(r#""frame":"call""#), "{stdout}");
    let stderr = String::from_utf8(listed.stderr).unwrap();
    assert!(
        stderr.contains("is corrupt or was altered: frame"),
        "{stderr}"
    );
}

#[test]
fn verify_passes_a_signed_run_and_names_each_way_it_can_fail() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("auditor.key");
    let keygen = output(host(&work.path().join("cache")).arg("keygen").arg(&key));
    assert!(keygen.status.success(), "{}", text(&keygen));
    let public = work.path().join("auditor.key.pub");
    let public_flag = public.to_str().unwrap();
    let signed = beam_run(
        &server,
        work.path(),
        "signed",
        &["--sign-key", key.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&signed.stderr);
    assert!(stderr.contains("run log chain hash: "), "{stderr}");
    let dir = work.path().join("signed");
    let ok = verify(work.path(), &dir, &["--public-key", public_flag]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    let line = String::from_utf8(ok.stdout).unwrap();
    assert!(
        line.starts_with("verified: ") && line.contains("signed with the key given"),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1, "{line}");

    // Another plugin than the recorded one.
    let other = verify(
        work.path(),
        &dir,
        &["--plugin", plugin("greedy").to_str().unwrap()],
    );
    assert_eq!(other.status.code(), Some(13), "{}", text(&other));

    // Answers rewritten and the chain recomputed: the chain holds, the signature does not.
    let forged = work.path().join("forged");
    copy_dir(&dir, &forged);
    rechain(&forged, |entries| {
        change_first_answer(entries);
    });
    let tampered = verify(work.path(), &forged, &["--public-key", public_flag]);
    assert_eq!(tampered.status.code(), Some(10), "{}", text(&tampered));
    assert!(
        text(&tampered).contains("changed after it was signed"),
        "{}",
        text(&tampered)
    );
    // Without its signature, an answer rewritten so that the plugin still asks the same next
    // passes the chain and the replay: that is what signatures are for, and verify says the
    // run is not signed; with --public-key, the missing signature fails it.
    std::fs::remove_file(forged.join("run.sig")).unwrap();
    let unsigned = verify(work.path(), &forged, &["--public-key", public_flag]);
    assert_eq!(unsigned.status.code(), Some(12), "{}", text(&unsigned));
    let unchecked = verify(work.path(), &forged, &[]);
    assert_eq!(unchecked.status.code(), Some(0), "{}", text(&unchecked));
    assert!(
        text(&unchecked).contains("; not signed"),
        "{}",
        text(&unchecked)
    );

    // A header rewritten so that the plugin asks otherwise: the replay diverges.
    let rewritten = work.path().join("rewritten");
    copy_dir(&dir, &rewritten);
    std::fs::remove_file(rewritten.join("run.sig")).unwrap();
    rechain(&rewritten, |entries| {
        let Entry::Header(header) = &mut entries[0] else {
            panic!("the header comes first")
        };
        header.options = header.options.replace("\"n_actions\":2", "\"n_actions\":3");
    });
    let diverged = verify(work.path(), &rewritten, &[]);
    assert_eq!(diverged.status.code(), Some(11), "{}", text(&diverged));
    assert!(
        text(&diverged).contains("replay diverged at call"),
        "{}",
        text(&diverged)
    );

    // A flipped byte.
    let flipped = work.path().join("flipped");
    copy_dir(&dir, &flipped);
    let mut bytes = std::fs::read(flipped.join("run.log")).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(flipped.join("run.log"), bytes).unwrap();
    let broken = verify(work.path(), &flipped, &[]);
    assert_eq!(broken.status.code(), Some(10), "{}", text(&broken));

    // A run without its end.
    let cut = work.path().join("cut");
    copy_dir(&dir, &cut);
    std::fs::remove_file(cut.join("run.sig")).unwrap();
    rechain(&cut, |entries| {
        entries.pop();
    });
    let unfinished = verify(work.path(), &cut, &[]);
    assert_eq!(unfinished.status.code(), Some(14), "{}", text(&unfinished));

    // Someone else's key.
    let stranger = work.path().join("stranger.key");
    assert!(
        output(
            host(&work.path().join("cache"))
                .arg("keygen")
                .arg(&stranger)
        )
        .status
        .success()
    );
    let foreign = verify(
        work.path(),
        &dir,
        &[
            "--public-key",
            work.path().join("stranger.key.pub").to_str().unwrap(),
        ],
    );
    assert_eq!(foreign.status.code(), Some(12), "{}", text(&foreign));
}

#[test]
fn diff_names_the_first_call_where_two_runs_part() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    beam_run(&server, work.path(), "a", &[]);
    // Live, as the first: an answer from the response cache bills no tokens, which differs.
    beam_run(&server, work.path(), "b", &["--no-cache"]);
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    let same = output(host(&work.path().join("cache")).arg("diff").arg(&a).arg(&b));
    assert!(same.status.success(), "{}", text(&same));
    let same = String::from_utf8(same.stdout).unwrap();
    assert!(
        same.starts_with("the runs recorded the same header and calls"),
        "{same}"
    );
    assert!(same.contains("best score"), "{same}");

    let mut changed = 0;
    rechain(&b, |entries| changed = change_first_answer(entries));
    let differ = output(host(&work.path().join("cache")).arg("diff").arg(&a).arg(&b));
    assert!(differ.status.success(), "{}", text(&differ));
    let differ = String::from_utf8(differ.stdout).unwrap();
    assert!(
        differ.starts_with(&format!("first difference: call {changed} (`complete`")),
        "{differ}"
    );
    assert!(differ.contains("response"), "{differ}");
    assert!(differ.contains("(rewritten)"), "{differ}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}
