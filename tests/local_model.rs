//! The offline default: with no model named, every role runs on the small local SmolLM2 model
//! (fetched by `scripts/fetch-smollm2.sh`), in process.

use drpo_host::runlog::{Entry, read_log};
use drpo_tests::{host, output, plugin, text, workspace};

#[test]
fn with_no_model_named_every_role_runs_on_the_local_default_and_replays() {
    let model = workspace()
        .join(".cache/models")
        .join(drpo_host::services::DEFAULT_MODEL_FILE);
    assert!(
        model.is_file(),
        "{} is missing: run ./scripts/fetch-smollm2.sh (./scripts/test does)",
        model.display()
    );
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let dir = work.path().join("run");
    let out = output(
        host(&cache)
            .env("DRPO_DEFAULT_MODEL", &model)
            .arg("run")
            .arg("--strategy")
            .arg(plugin("testkit"))
            .arg("--log-dir")
            .arg(&dir)
            .args(["--option", "steps=1", "--option", "width=2"]),
    );
    assert!(out.status.success(), "{}", text(&out));
    let entries = read_log(&dir.join("run.log")).unwrap().entries;
    let Some(Entry::Header(header)) = entries.first() else {
        panic!("no header")
    };
    assert_eq!(header.models.len(), 4);
    for role in &header.models {
        assert!(role.model.starts_with("local:"), "{role:?}");
        assert!(
            role.provider
                .contains(drpo_host::services::DEFAULT_MODEL_FILE),
            "{role:?}"
        );
    }
    let result = drpo_tests::result_json(&dir);
    let answer = result["best_prompt"].as_str().unwrap();
    assert!(answer.contains(" + "), "two real answers joined: {answer}");
    assert!(
        answer.trim().len() > 10,
        "the model wrote something: {answer}"
    );

    // The replay needs no model at all.
    let replay = output(
        host(&cache)
            .env("DRPO_DEFAULT_MODEL", "/nonexistent")
            .arg("replay")
            .arg(&dir),
    );
    assert!(replay.status.success(), "{}", text(&replay));
}

#[test]
fn generate_answers_queries_by_hand_with_the_local_model_and_over_http() {
    let model = workspace()
        .join(".cache/models")
        .join(drpo_host::services::DEFAULT_MODEL_FILE);
    assert!(model.is_file(), "run ./scripts/fetch-smollm2.sh");
    let work = tempfile::tempdir().unwrap();
    let out = output(
        host(&work.path().join("cache"))
            .arg("generate")
            .arg("--model")
            .arg(format!("local:{}", model.display()))
            .args([
                "--max-tokens",
                "12",
                "--system",
                "You answer in one short sentence.",
                "-k",
                "1",
            ])
            .arg("What is the capital of France?"),
    );
    assert!(out.status.success(), "{}", text(&out));
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.contains("### What is the capital of France?"),
        "{answer}"
    );
    assert!(answer.contains("Paris"), "{answer}");

    let server = drpo_tests::server::Server::start();
    let out = output(
        host(&work.path().join("cache"))
            .arg("generate")
            .args(["--model", "served-model", "--api-base", server.url()])
            .args(["first question", "second question"]),
    );
    assert!(out.status.success(), "{}", text(&out));
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].1["model"], "served-model");
    assert!(String::from_utf8_lossy(&out.stdout).contains("### second question"));
}
