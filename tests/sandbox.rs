//! The sandbox: every limit ends a plugin with a named error, the host survives, and a plugin
//! that reaches for the world through WASI gets nothing.

use drpo_tests::server::Server;
use drpo_tests::{host, output, plugin, testkit_run, text};

fn run_testkit(server: &Server, extra: &[&str]) -> (std::process::Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (testkit_run(dir.path(), server.url(), &[], extra), dir)
}

#[test]
fn an_endless_loop_ends_with_a_fuel_error_naming_the_limit() {
    let server = Server::start();
    let (out, _dir) = run_testkit(&server, &["--option", "mode=spin", "--fuel", "200000000"]);
    assert!(!out.status.success());
    let text = text(&out);
    assert!(text.contains("ran out of fuel"), "{text}");
    assert!(text.contains("200000000 instructions"), "{text}");
    assert!(
        text.contains("testkit.wasm"),
        "the error names the plugin: {text}"
    );
}

#[test]
fn unbounded_allocation_ends_with_a_memory_error() {
    let server = Server::start();
    let (out, _dir) = run_testkit(
        &server,
        &["--option", "mode=alloc", "--memory-limit-mib", "64"],
    );
    assert!(!out.status.success());
    let text = text(&out);
    assert!(
        text.contains("exceeded its memory limit of 67108864 bytes"),
        "{text}"
    );
}

#[test]
fn a_plugin_that_outruns_the_deadline_with_fuel_to_spare_ends_with_a_deadline_error() {
    let server = Server::start();
    let (out, _dir) = run_testkit(
        &server,
        &[
            "--option",
            "mode=spin",
            "--deadline-secs",
            "1",
            "--fuel",
            "1000000000000000",
        ],
    );
    assert!(!out.status.success());
    let text = text(&out);
    assert!(
        text.contains("exceeded its wall-clock deadline of 1s"),
        "{text}"
    );
}

#[test]
fn a_plugin_waiting_on_a_slow_model_past_the_deadline_is_stopped() {
    let server = Server::with_script(|path, request| drpo_tests::server::Reply {
        status: 200,
        body: drpo_tests::server::default_reply(path, request).to_string(),
        delay: std::time::Duration::from_secs(60),
        retry_after: None,
    });
    let (out, _dir) = run_testkit(&server, &["--option", "mode=wait", "--deadline-secs", "1"]);
    assert!(!out.status.success());
    let text = text(&out);
    assert!(text.contains("wall-clock deadline"), "{text}");
    assert_eq!(
        server.in_flight(),
        1,
        "the run ended while its request was still unanswered"
    );
}

#[test]
fn a_panicking_plugin_reports_its_panic_message() {
    let server = Server::start();
    let (out, dir) = run_testkit(
        &server,
        &["--option", "mode=panic", "--option", "message=out of ideas"],
    );
    assert!(!out.status.success());
    let text = text(&out);
    assert!(text.contains("panicked: out of ideas"), "{text}");
    // The failure is recorded as the run's end, so the run directory tells what happened.
    let inspect = output(
        host(&dir.path().join("cache"))
            .arg("inspect")
            .arg(dir.path().join("run")),
    );
    assert!(inspect.status.success());
    assert!(
        drpo_tests::text(&inspect).contains("failed after"),
        "{}",
        drpo_tests::text(&inspect)
    );
}

#[test]
fn the_sandbox_offers_no_files_no_environment_no_network_and_virtual_time() {
    let server = Server::start();
    // A real listening socket the plugin must not reach.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let probe = |seed: &str| {
        let (out, dir) = run_testkit(
            &server,
            &[
                "--option",
                "mode=probe",
                "--option",
                &format!("port={port}"),
                "--seed",
                seed,
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        let result = drpo_tests::result_json(&dir.path().join("run"));
        result["details"].clone()
    };
    let first = probe("1");
    assert_eq!(first["file_readable"], false, "{first}");
    assert_eq!(first["root_listable"], false, "{first}");
    assert_eq!(first["env_vars"], serde_json::json!([]), "{first}");
    assert_eq!(first["tcp_connected"], false, "{first}");
    // 2024-01-01T00:00:00Z plus a few virtual milliseconds.
    let wall = first["wall_clock_ms"].as_u64().unwrap();
    assert!(
        (1_704_067_200_000..1_704_067_260_000).contains(&wall),
        "{first}"
    );
    // Random numbers come from the run's seed: same seed, same bytes; another seed, others.
    assert_eq!(probe("1")["random"], first["random"]);
    assert_ne!(probe("2")["random"], first["random"]);
    drop(listener);
}

#[test]
fn files_that_are_not_strategies_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let describe = |path: &std::path::Path| {
        let out = output(host(&cache).arg("describe").arg(path));
        assert!(!out.status.success());
        text(&out)
    };

    let text_file = dir.path().join("notes.wasm");
    std::fs::write(&text_file, "not wasm at all").unwrap();
    let error = describe(&text_file);
    assert!(error.contains("is not a WebAssembly file"), "{error}");

    let core_module = dir.path().join("core.wasm");
    std::fs::write(&core_module, b"\0asm\x01\0\0\0").unwrap();
    let error = describe(&core_module);
    assert!(
        error.contains("core WebAssembly module, not a component"),
        "{error}"
    );

    // The same plugin, as if built against drpo:strategy@1.0.0: the version in its import
    // names is the only difference.
    let bytes = std::fs::read(plugin("testkit")).unwrap();
    let version = drpo_host::bindings::WIT_VERSION;
    let old = format!("drpo:strategy/host@{version}").into_bytes();
    let new = b"drpo:strategy/host@1.0.0";
    assert_eq!(old.len(), new.len(), "the patch keeps the file's length");
    let mut patched = bytes.clone();
    let mut count = 0;
    let mut i = 0;
    while i + old.len() <= patched.len() {
        if patched[i..i + old.len()] == old[..] {
            patched[i..i + old.len()].copy_from_slice(new);
            count += 1;
        }
        i += 1;
    }
    assert!(count > 0, "the plugin imports drpo:strategy/host@{version}");
    let future = dir.path().join("future.wasm");
    std::fs::write(&future, patched).unwrap();
    let error = describe(&future);
    assert!(
        error.contains("was built against drpo:strategy@1.0.0"),
        "{error}"
    );
    assert!(
        error.contains(&format!("implements drpo:strategy@{version}")),
        "{error}"
    );
    let minor = version.rsplit_once('.').unwrap().0;
    assert!(
        error.contains(&format!("versions {minor}.x are compatible")),
        "{error}"
    );

    let missing = dir.path().join("missing.wasm");
    let error = describe(&missing);
    assert!(
        error.contains("cannot read plugin") && error.contains("missing.wasm"),
        "{error}"
    );
}

/// Asserts that nothing a terminal acts on reached stdout or stderr raw: no control character
/// but line breaks and tabs, no bidirectional override or isolate.
fn assert_terminal_clean(out: &std::process::Output) {
    for (name, stream) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let printed = String::from_utf8_lossy(stream);
        let raw: Vec<char> = printed
            .chars()
            .filter(|&c| {
                (c.is_control() && c != '\n' && c != '\t')
                    || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
            })
            .collect();
        assert!(raw.is_empty(), "{name} holds {raw:?}:\n{printed}");
    }
}

#[test]
fn nodes_that_break_the_tree_are_refused_and_plugin_text_reaches_the_terminal_escaped() {
    let server = Server::start();
    let (out, dir) = run_testkit(&server, &["--option", "mode=forge"]);
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert_terminal_clean(&out);
    // The log line's break, carriage return and escapes are shown, not obeyed.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\\u{1b}[2J\\u{1b}[31mred\\rbest score: 99.0\\nbest score: 99.0"),
        "{stderr}"
    );
    assert!(
        !stderr.lines().any(|line| line.starts_with("best score")),
        "a forged result line on stderr:\n{stderr}"
    );
    // The host's own result lines come before the prompt, which is the strategy's text.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let prompt_at = stdout
        .find("best prompt:")
        .expect("the best prompt is shown");
    let result_lines: Vec<&str> = stdout[..prompt_at]
        .lines()
        .filter(|line| line.starts_with("best score"))
        .collect();
    assert_eq!(result_lines, ["best score: 99.0000"], "{stdout}");
    // The progress display counts only the tree's levels.
    assert!(!stderr.contains("3 levels"), "{stderr}");
    assert!(!stderr.contains("4294967296"), "{stderr}");
    // One warning on the terminal; every refusal in log.txt and result.json.
    assert_eq!(
        stderr.matches("was refused").count(),
        1,
        "one warning on the terminal: {stderr}"
    );
    let run = dir.path().join("run");
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    for refusal in [
        "[warning] node 1 was refused: a node with id 1 was recorded before",
        "[warning] node 2 was refused: its parent 42 is not a node recorded before it",
        "[warning] node 3 was refused: its parent 4 is not a node recorded before it",
        "[warning] node 4 was refused: its parent 3 is not a node recorded before it",
        "[warning] node 5 was refused: its depth is 4294967295, but 1 is its distance",
        "[warning] node 6 was refused: its depth is 7, but 0 is its distance",
    ] {
        assert!(
            log.contains(refusal),
            "{refusal} missing from log.txt:\n{log}"
        );
    }
    let result = drpo_tests::result_json(&run);
    let ids: Vec<u64> = result["tree"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| node["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [0, 1]);
    assert_eq!(result["best_path"], serde_json::json!([]));
    let refused = result["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 7, "{refused:?}");
    assert_eq!(
        refused[6],
        "best path [0, 3, 4] left out: the best path names node 3, which the tree does not hold"
    );
    // What was written still replays, inspects, and gives the same tree to the viewer.
    let cache = dir.path().join("cache");
    drpo_tests::assert_replays(&cache, &run);
    let inspect = output(host(&cache).arg("inspect").arg(&run));
    assert!(inspect.status.success(), "{}", text(&inspect));
    assert_terminal_clean(&inspect);
    let view = output(host(&cache).arg("view").arg(&run));
    assert!(view.status.success(), "{}", text(&view));
    assert!(
        text(&view).contains("(2 nodes, finished)"),
        "{}",
        text(&view)
    );
    let export = output(
        host(&cache)
            .args(["export", "--format", "published"])
            .arg(&run),
    );
    assert!(
        text(&export).contains("has no best path to export"),
        "{}",
        text(&export)
    );
}

#[test]
fn a_long_hostile_error_is_cut_and_escaped_on_the_terminal_and_kept_whole_in_the_log() {
    let server = Server::start();
    let (out, dir) = run_testkit(
        &server,
        // Under the 64 KiB an error may hold in the record (--max-error-kib).
        &["--option", "mode=fail", "--option", "size=50000"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_terminal_clean(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.len() < 8192, "{} bytes of stderr", stderr.len());
    assert!(stderr.contains("more bytes not shown"), "{stderr}");
    assert!(
        !stderr.lines().any(|line| line.starts_with("best score")),
        "a forged result line on stderr:\n{stderr}"
    );
    let log = std::fs::read_to_string(dir.path().join("run/log.txt")).unwrap();
    assert!(
        log.contains(&format!("{}\n", "x".repeat(49_000))),
        "log.txt holds the whole error"
    );
    let inspect = output(
        host(&dir.path().join("cache"))
            .arg("inspect")
            .arg(dir.path().join("run")),
    );
    assert!(inspect.status.success(), "{}", text(&inspect));
    assert_terminal_clean(&inspect);
    assert!(
        inspect.stdout.len() < 16384,
        "{} bytes",
        inspect.stdout.len()
    );
}

#[test]
fn describe_and_estimate_run_under_the_runs_fuel_and_deadline() {
    let server = Server::start();
    // So little fuel that `describe` itself cannot finish.
    let (out, _dir) = run_testkit(&server, &["--fuel", "1000"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let printed = text(&out);
    assert!(
        printed.contains("the strategy's describe failed"),
        "{printed}"
    );
    assert!(printed.contains("1000 instructions"), "{printed}");

    // An estimate that never returns is stopped by the deadline; the run goes on without a
    // projection, and `--estimate-only` fails.
    let spin = [
        "--option",
        "mode=spin-estimate",
        "--deadline-secs",
        "1",
        "--fuel",
        "1000000000000000",
    ];
    let (out, _dir) = run_testkit(&server, &spin);
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("note: no projection"), "{printed}");
    assert!(printed.contains("wall-clock deadline of 1s"), "{printed}");
    let (out, _dir) = run_testkit(&server, &[&spin[..], &["--estimate-only"]].concat());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("wall-clock deadline of 1s"),
        "{}",
        text(&out)
    );
}
