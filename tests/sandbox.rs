//! The sandbox: every limit ends a plugin with a named error, the host survives, and a plugin
//! that reaches for the world through WASI gets nothing.

use drpo_tests::server::Server;
use drpo_tests::{host, output, plugin, roles_at, text};

fn run_testkit(server: &Server, extra: &[&str]) -> (std::process::Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = host(&dir.path().join("cache"));
    command
        .arg("run")
        .arg("--strategy")
        .arg(plugin("testkit"))
        .arg("--log-dir")
        .arg(dir.path().join("run"))
        .args(roles_at(server.url()))
        .args(extra);
    (output(&mut command), dir)
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
    let (old, new) = (b"drpo:strategy/host@0.1.0", b"drpo:strategy/host@1.0.0");
    let mut patched = bytes.clone();
    let mut count = 0;
    let mut i = 0;
    while i + old.len() <= patched.len() {
        if &patched[i..i + old.len()] == old {
            patched[i..i + old.len()].copy_from_slice(new);
            count += 1;
        }
        i += 1;
    }
    assert!(count > 0, "the plugin imports drpo:strategy/host@0.1.0");
    let future = dir.path().join("future.wasm");
    std::fs::write(&future, patched).unwrap();
    let error = describe(&future);
    assert!(
        error.contains("was built against drpo:strategy@1.0.0"),
        "{error}"
    );
    assert!(error.contains("implements drpo:strategy@0.1.0"), "{error}");
    assert!(error.contains("versions 0.1.x are compatible"), "{error}");

    let missing = dir.path().join("missing.wasm");
    let error = describe(&missing);
    assert!(
        error.contains("cannot read plugin") && error.contains("missing.wasm"),
        "{error}"
    );
}
