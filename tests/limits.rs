//! Bounded host memory: a plugin that records huge nodes, log lines, errors or too many records,
//! and a server that sends huge replies, meet limits that name their flag; what the run wrote
//! is bounded by them, and `replay` and `inspect` still work on it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use drpo_tests::server::{Reply, Server, completion};
use drpo_tests::{host, output, result_json, testkit_run, text};

fn run_log_bytes(work: &Path) -> u64 {
    std::fs::metadata(work.join("run/run.log")).unwrap().len()
}

/// Asserts that `replay` reproduces the run in `work/run` (its end, a failure or an outcome) and
/// that `inspect` reads it; returns what `inspect` printed.
fn assert_replays_and_inspects(work: &Path, expected: &str) -> String {
    let cache = work.join("cache");
    let replay = output(host(&cache).arg("replay").arg(work.join("run")));
    let printed = text(&replay);
    assert!(replay.status.success(), "{printed}");
    assert!(printed.contains(expected), "{printed}");
    let inspect = output(host(&cache).arg("inspect").arg(work.join("run")));
    assert!(inspect.status.success(), "{}", text(&inspect));
    text(&inspect)
}

#[test]
fn a_node_past_its_limit_ends_the_run_naming_the_flag() {
    let work = tempfile::tempdir().unwrap();
    let out = testkit_run(
        work.path(),
        "http://127.0.0.1:9/v1",
        &["mode=flood", "count=3", "size=3000"],
        &["--max-node-kib", "2"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let printed = text(&out);
    assert!(printed.contains("node 0 is 3"), "{printed}");
    assert!(
        printed.contains("a node may hold at most 2 KiB (--max-node-kib"),
        "{printed}"
    );
    assert!(
        run_log_bytes(work.path()) < 3000,
        "the refused node is not in the run log"
    );
    assert!(work.path().join("run/tree.html").is_file());
    let inspected = assert_replays_and_inspects(work.path(), "reproduced the recorded failure");
    assert!(inspected.contains("--max-node-kib"), "{inspected}");
}

#[test]
fn a_log_line_past_its_limit_is_cut_with_a_note_and_replays() {
    let work = tempfile::tempdir().unwrap();
    let out = testkit_run(
        work.path(),
        "http://127.0.0.1:9/v1",
        &["mode=flood", "count=2", "size=10", "log_size=100000"],
        &["--max-log-line-kib", "4"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let log = std::fs::read_to_string(work.path().join("run/log.txt")).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("[info] l")).collect();
    assert_eq!(lines.len(), 2, "{log}");
    for line in lines {
        assert!(line.len() < 4096 + 200, "{} bytes", line.len());
        assert!(
            line.ends_with(
                "[… cut: 100000 bytes; a log line may hold at most 4 KiB (--max-log-line-kib)]"
            ),
            "{}",
            &line[4000..]
        );
    }
    assert!(run_log_bytes(work.path()) < 2 * 4096 + 4096);
    assert_replays_and_inspects(work.path(), "replay reproduced the run");
}

#[test]
fn an_error_past_its_limit_is_cut_in_the_record_and_on_screen() {
    let work = tempfile::tempdir().unwrap();
    let out = testkit_run(
        work.path(),
        "http://127.0.0.1:9/v1",
        &["mode=fail", "size=100000"],
        // Under the 4 KiB the terminal shows of an error, so the record's own note is seen.
        &["--max-error-kib", "2"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let printed = text(&out);
    assert!(
        printed
            .contains("[… cut: 100000 bytes; an error may hold at most 2 KiB (--max-error-kib)]"),
        "{printed}"
    );
    assert!(printed.len() < 20_000, "{} bytes printed", printed.len());
    assert!(run_log_bytes(work.path()) < 8192);
    let inspected = assert_replays_and_inspects(work.path(), "reproduced the recorded failure");
    assert!(
        inspected.len() < 20_000,
        "{} bytes inspected",
        inspected.len()
    );
    assert!(inspected.contains("--max-error-kib"), "{inspected}");
}

#[test]
fn the_records_of_a_run_are_bounded_together() {
    let work = tempfile::tempdir().unwrap();
    let out = testkit_run(
        work.path(),
        "http://127.0.0.1:9/v1",
        &["mode=flood", "count=1000", "size=2000", "log_size=1000"],
        &["--max-records-mib", "1"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let printed = text(&out);
    assert!(
        printed.contains("a run may record at most 1 MiB (--max-records-mib"),
        "{printed}"
    );
    // The nodes and lines recorded before the refusal, and their frames, fit in the limit.
    let bytes = run_log_bytes(work.path());
    assert!(
        ((1 << 20) - 10_000..(1 << 20) + 100_000).contains(&bytes),
        "{bytes} bytes"
    );
    let inspected = assert_replays_and_inspects(work.path(), "reproduced the recorded failure");
    assert!(inspected.contains("record-node 3"), "{inspected}");
}

/// The errors testkit's asks met, as it reported them in its outcome.
fn ask_errors(work: &Path) -> Vec<String> {
    let details = &result_json(&work.join("run"))["details"];
    details["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{details}"))
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect()
}

/// A completion whose one choice is `bytes` long.
fn huge_completion(request: &serde_json::Value, bytes: usize) -> String {
    completion(request, vec!["x".repeat(bytes)], "stop").to_string()
}

#[test]
fn a_reply_declared_past_the_body_limit_fails_its_request_naming_the_flag() {
    let server =
        Server::with_script(|_, request| Reply::new(200, huge_completion(request, 3 << 20)));
    let work = tempfile::tempdir().unwrap();
    let out = testkit_run(
        work.path(),
        server.url(),
        &["mode=flood", "asks=2", "count=1", "size=10"],
        &["--max-reply-mib", "2", "--no-cache"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let errors = ask_errors(work.path());
    assert_eq!(errors.len(), 2, "{errors:?}");
    for error in errors {
        assert!(
            error.contains("more than the 2 MiB a reply may hold (--max-reply-mib"),
            "{error}"
        );
        // The declared length (3 MiB and the JSON around it) is refused before any byte is read.
        assert!(error.contains("the reply's body is 3145"), "{error}");
    }
    assert_eq!(
        server.requests().len(),
        2,
        "a reply past the limit is not retried"
    );
    assert!(run_log_bytes(work.path()) < 64 << 10);
    assert_replays_and_inspects(work.path(), "replay reproduced the run");
}

/// The 64 KiB chunks the endless server sends at most, per reply.
const ENDLESS_CHUNKS: u64 = 512;

/// A server that answers every request with a chunked body (no declared length) that does not
/// end, and counts the bytes it managed to send.
fn endless_server(sent: Arc<AtomicU64>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let sent = sent.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some((name, value)) = line.trim_end().split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap();
                    }
                    if line.trim_end().is_empty() {
                        break;
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                            transfer-encoding: chunked\r\n\r\n";
                let chunk = format!("{:x}\r\n{}\r\n", 64 << 10, "x".repeat(64 << 10));
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                // At most 32 MiB, so that a host that reads on without a limit still ends.
                for _ in 0..ENDLESS_CHUNKS {
                    if stream.write_all(chunk.as_bytes()).is_err() {
                        return;
                    }
                    sent.fetch_add(64 << 10, Ordering::SeqCst);
                }
                let _ = stream.write_all(b"0\r\n\r\n");
            });
        }
    });
    url
}

#[test]
fn sixteen_endless_replies_at_once_are_each_cut_at_the_body_limit() {
    let sent = Arc::new(AtomicU64::new(0));
    let url = endless_server(sent.clone());
    let work = tempfile::tempdir().unwrap();
    let out = testkit_run(
        work.path(),
        &url,
        &["mode=flood", "asks=16", "count=1", "size=10"],
        &[
            "--max-reply-mib",
            "1",
            "--no-cache",
            "--max-concurrency",
            "16",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let errors = ask_errors(work.path());
    assert_eq!(errors.len(), 16, "{errors:?}");
    for error in errors {
        assert!(error.contains("is over 1048576 bytes"), "{error}");
        assert!(
            error.contains("(--max-reply-mib, config key max_reply_mib)"),
            "{error}"
        );
    }
    // The host stopped reading each body past its limit; what the sockets held besides is not
    // the host's memory.
    let sent = sent.load(Ordering::SeqCst);
    assert!(sent < 16 * ENDLESS_CHUNKS * (64 << 10), "{sent} bytes sent");
    assert!(run_log_bytes(work.path()) < 64 << 10);
    assert_replays_and_inspects(work.path(), "replay reproduced the run");
}

#[test]
fn the_answers_of_a_batch_are_bounded_together() {
    let server =
        Server::with_script(|_, request| Reply::new(200, huge_completion(request, 600 << 10)));
    let work = tempfile::tempdir().unwrap();
    let out = testkit_run(
        work.path(),
        server.url(),
        &["mode=flood", "asks=8", "count=1", "size=10"],
        &["--max-answers-mib", "2", "--no-cache"],
    );
    assert!(out.status.success(), "{}", text(&out));
    // Three answers of 600 KiB fit in 2 MiB, a fourth does not.
    let errors = ask_errors(work.path());
    assert_eq!(errors.len(), 5, "{errors:?}");
    for error in &errors {
        assert!(
            error.contains("past the 2 MiB they may hold (--max-answers-mib"),
            "{error}"
        );
    }
    let bytes = run_log_bytes(work.path());
    assert!(bytes < (2 << 20) + (64 << 10), "{bytes} bytes");
    assert_replays_and_inspects(work.path(), "replay reproduced the run");
}
