//! The files a run leaves and the commands that read them, on real beam runs against the
//! loopback server: `result.json` against its schema, `tree.html` in headless Chromium,
//! `trace.txt`, `export --format published` and `--format mlflow` (read back with MLflow's own
//! client), the progress display, and no API key anywhere.

use std::path::{Path, PathBuf};
use std::time::Duration;

use drpo_tests::browser::{chromium, rendered_nodes, run_bounded};
use drpo_tests::server::{Reply, Server, default_reply};
use drpo_tests::{host, output, plugin, result_json, roles_at, text, workspace};
use serde_json::Value;

/// Runs beam (depth 3, beam 2, 2 actions) into `work/name`; returns the run directory.
fn beam_run(server: &Server, work: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let search = ["--depth", "3", "--beam-size", "2", "--n-actions", "2"];
    let out = drpo_tests::beam_run(work, server.url(), name, &[&search[..], extra].concat());
    assert!(out.status.success(), "{}", text(&out));
    work.join(name)
}

/// `docs/result.schema.json`, compiled.
fn result_schema() -> jsonschema::Validator {
    let schema_path = workspace().join("docs/result.schema.json");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(&schema_path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).expect("the schema is a valid schema")
}

fn assert_valid(validator: &jsonschema::Validator, result: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(result)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "result.json: {errors:#?}");
}

#[test]
fn another_strategys_result_json_is_valid_too() {
    // testkit's chain mode records a node per step with details of its own.
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("run");
    let out = output(
        host(&work.path().join("cache"))
            .arg("run")
            .arg("--strategy")
            .arg(plugin("testkit"))
            .arg("--log-dir")
            .arg(&dir)
            .args(roles_at(server.url()))
            .args(["--option", "steps=3", "--quiet"]),
    );
    assert!(out.status.success(), "{}", text(&out));
    let result = result_json(&dir);
    assert_valid(&result_schema(), &result);
    assert_eq!(result["strategy"]["name"], "testkit");
    assert_eq!(result["tree"].as_array().unwrap().len(), 4);
    assert_eq!(result["tree"][2]["details"]["step"], 1);
    assert_eq!(result["levels"].as_array().unwrap().len(), 4);
    let page = std::fs::read_to_string(dir.join("tree.html")).unwrap();
    assert!(page.contains(r#""name":"testkit""#));
}

#[test]
fn result_json_is_valid_against_its_documented_schema() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let dir = beam_run(&server, work.path(), "run", &["--quiet"]);
    let validator = result_schema();
    let result = result_json(&dir);
    assert_valid(&validator, &result);

    // The schema rejects what it should: it is not a schema that accepts anything.
    let mut broken = result.clone();
    broken["tree"][0]["details"]["aspects"][0]["score"] = Value::from("high");
    assert!(!validator.is_valid(&broken));

    // Every node carries beam's details: query, answer, and each aspect's score and rationale.
    let tree = result["tree"].as_array().unwrap();
    assert_eq!(tree.len(), 1 + 2 + 4);
    for node in tree {
        let details = &node["details"];
        assert!(
            details["query"].as_str().is_some_and(|q| !q.is_empty()),
            "{node}"
        );
        assert!(details["answer"].is_string(), "{node}");
        let aspects = details["aspects"].as_array().unwrap();
        assert!(!aspects.is_empty(), "{node}");
        assert!(
            aspects
                .iter()
                .all(|a| a["rationale"].is_string() && a["score"].is_u64())
        );
    }
    let rewards: Vec<f64> = tree.iter().map(|n| n["reward"].as_f64().unwrap()).collect();
    assert!(
        rewards.iter().any(|r| *r != rewards[0]),
        "the varied judge gives varied rewards: {rewards:?}"
    );
    let levels = result["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 3);
    assert_eq!(levels[1]["nodes"], 2);

    // trace.txt: the prompt of each step of the best path.
    let trace = std::fs::read_to_string(dir.join("trace.txt")).unwrap();
    let path = result["best_path"].as_array().unwrap();
    for (step, id) in path.iter().enumerate() {
        assert!(trace.contains(&format!(" Step {step} ")), "{trace}");
        let prompt = tree[id.as_u64().unwrap() as usize]["prompt"]
            .as_str()
            .unwrap();
        assert!(trace.contains(prompt.trim_end()), "{trace}");
    }
}

/// Text as an HTML serialiser writes it inside an element.
fn html_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\u{a0}', "&nbsp;")
}

#[test]
fn tree_html_renders_every_node_marks_the_best_path_and_shows_a_selected_node() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let dir = beam_run(&server, work.path(), "run", &["--quiet"]);
    let result = result_json(&dir);
    let tree = result["tree"].as_array().unwrap();
    let best: Vec<u64> = result["best_path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_u64().unwrap())
        .collect();
    // Select a node off the best path, with a parent (so the page shows a diff too).
    let selected = tree
        .iter()
        .rev()
        .find(|n| !best.contains(&n["id"].as_u64().unwrap()))
        .expect("some node is off the best path");
    let selected_id = selected["id"].as_u64().unwrap();

    let page = dir.join("tree.html");
    let url = format!("file://{}#select={selected_id}", page.display());
    let profile = tempfile::tempdir().unwrap();
    let dom = run_bounded(
        chromium(profile.path()).arg("--dump-dom").arg(&url),
        Duration::from_secs(120),
    );

    let nodes = rendered_nodes(&dom);
    assert_eq!(nodes.len(), tree.len(), "rendered nodes: {nodes:?}");
    let mut marked: Vec<u64> = nodes
        .iter()
        .filter(|(_, class)| class.split(' ').any(|c| c == "best"))
        .map(|(id, _)| *id)
        .collect();
    marked.sort_unstable();
    let mut expected = best.clone();
    expected.sort_unstable();
    assert_eq!(marked, expected, "nodes marked as the best path");
    assert!(
        nodes
            .iter()
            .any(|(id, class)| *id == selected_id && class.contains("selected")),
        "node {selected_id} is not marked selected: {nodes:?}"
    );
    let prompt = selected["prompt"].as_str().unwrap();
    assert!(
        dom.contains(&format!(
            "<pre id=\"detail-prompt\">{}</pre>",
            html_text(prompt)
        )),
        "the selected node's prompt is not shown:\n{dom}"
    );
    let answer = selected["details"]["answer"].as_str().unwrap();
    assert!(dom.contains(&format!(
        "<pre id=\"detail-answer\">{}</pre>",
        html_text(answer)
    )));
    assert!(
        dom.contains("id=\"detail-diff\""),
        "no diff from the parent"
    );
    for aspect in selected["details"]["aspects"].as_array().unwrap() {
        let rationale = aspect["rationale"].as_str().unwrap();
        assert!(
            dom.contains(&html_text(rationale)),
            "rationale {rationale} missing"
        );
    }
    assert!(dom.contains("class=\"best-line\""), "no reward chart");

    // The screenshot, kept as a test artefact.
    let artefacts = workspace().join("target/test-artefacts/viewer");
    std::fs::create_dir_all(&artefacts).unwrap();
    let screenshot = artefacts.join("tree.png");
    let _ = std::fs::remove_file(&screenshot);
    run_bounded(
        chromium(profile.path())
            .arg("--window-size=1400,900")
            .arg(format!("--screenshot={}", screenshot.display()))
            .arg(&url),
        Duration::from_secs(120),
    );
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    std::fs::copy(&page, artefacts.join("tree.html")).unwrap();
}

#[test]
fn view_rewrites_tree_html_from_the_run_log() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let dir = beam_run(&server, work.path(), "run", &["--quiet"]);
    let written = std::fs::read_to_string(dir.join("tree.html")).unwrap();
    std::fs::remove_file(dir.join("tree.html")).unwrap();
    std::fs::remove_file(dir.join("trace.txt")).unwrap();
    let trace = {
        let out = output(host(&work.path().join("cache")).arg("view").arg(&dir));
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("7 nodes, finished"), "{}", text(&out));
        std::fs::read_to_string(dir.join("trace.txt")).unwrap()
    };
    assert_eq!(
        std::fs::read_to_string(dir.join("tree.html")).unwrap(),
        written,
        "the page rebuilt from the log is the one the run wrote"
    );
    assert!(trace.contains(" Step 2 "));
}

#[test]
fn view_shows_the_nodes_of_an_interrupted_run_and_export_refuses_it() {
    use drpo_host::runlog::{Entry, RunLogWriter, read_log};
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let dir = beam_run(&server, work.path(), "run", &["--quiet"]);
    // The same run as if killed after its fourth node: the log up to that call, no end.
    let entries = read_log(&dir.join("run.log")).unwrap().entries;
    let nodes_seen = |upto: usize| {
        entries[..upto]
            .iter()
            .filter(|e| matches!(e, Entry::Call(c) if c.request.import_name() == "record-node"))
            .count()
    };
    let cut = (1..entries.len()).find(|&i| nodes_seen(i) == 4).unwrap();
    let killed = work.path().join("killed");
    std::fs::create_dir(&killed).unwrap();
    std::fs::copy(dir.join("config.json"), killed.join("config.json")).unwrap();
    let mut writer = RunLogWriter::create(&killed.join("run.log"), &entries[0]).unwrap();
    for entry in &entries[1..cut] {
        writer.append(entry).unwrap();
    }
    writer.sync().unwrap();
    drop(writer);

    let out = output(host(&work.path().join("cache")).arg("view").arg(&killed));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("4 nodes, interrupted"),
        "{}",
        text(&out)
    );
    let page = std::fs::read_to_string(killed.join("tree.html")).unwrap();
    assert!(page.contains(r#""status":"interrupted""#));
    assert!(!killed.join("trace.txt").exists(), "no best path, no trace");

    let out = output(
        host(&work.path().join("cache"))
            .args(["export", "--format", "published"])
            .arg(&killed),
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("no best path"), "{}", text(&out));
}

#[test]
fn a_failed_run_still_leaves_its_tree_html() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("run");
    let out = output(
        host(&work.path().join("cache"))
            .arg("run")
            .arg("--strategy")
            .arg(plugin("testkit"))
            .arg("--log-dir")
            .arg(&dir)
            .args(roles_at(server.url()))
            .args([
                "--option",
                "mode=panic",
                "--option",
                "message=gave up",
                "--quiet",
            ]),
    );
    assert!(!out.status.success());
    assert!(
        !dir.join("result.json").exists(),
        "no outcome, no result.json"
    );
    let page = std::fs::read_to_string(dir.join("tree.html")).unwrap();
    assert!(page.contains(r#""status":"failed""#), "{page}");
    assert!(page.contains("gave up"), "the page says why");
}

#[test]
fn export_writes_the_published_output_json_shape() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let dir = beam_run(&server, work.path(), "run", &["--quiet"]);
    let result = result_json(&dir);
    let out = output(
        host(&work.path().join("cache"))
            .args(["export", "--format", "published"])
            .arg(&dir),
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let exported: Value = serde_json::from_str(&stdout).unwrap();

    let path = result["best_path"].as_array().unwrap();
    let levels = exported.as_object().unwrap();
    assert_eq!(levels.len(), path.len());
    let mut last_at = 0;
    for (level, id) in path.iter().enumerate() {
        let key = format!("\"level {level}\"");
        let at = stdout.find(&key).unwrap_or_else(|| panic!("{key} missing"));
        assert!(at >= last_at, "levels are written in order");
        last_at = at;
        let entry = exported[format!("level {level}")].as_object().unwrap();
        let keys: Vec<&str> = entry.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 2, "{entry:?}");
        let node = &result["tree"][id.as_u64().unwrap() as usize];
        assert_eq!(entry["Prompt"], node["prompt"]);
        let evaluation = entry["Evaluation of the prompt"].as_object().unwrap();
        let aspects = node["details"]["aspects"].as_array().unwrap();
        assert_eq!(evaluation.len(), aspects.len());
        for aspect in aspects {
            let judged = &evaluation[aspect["name"].as_str().unwrap()];
            assert_eq!(judged["rationale"], aspect["rationale"]);
            // Scores are strings, as the published judge wrote them.
            assert_eq!(judged["score"], Value::String(aspect["score"].to_string()));
        }
    }
    assert_eq!(
        exported[format!("level {}", path.len() - 1)]["Prompt"],
        result["best_prompt"]
    );

    let file = work.path().join("output.json");
    let out = output(
        host(&work.path().join("cache"))
            .args(["export", "--format", "published", "--output"])
            .arg(&file)
            .arg(&dir),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), stdout);
}

#[test]
fn progress_lines_show_on_a_pipe_and_quiet_silences_them() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let loud = output(
        host(&work.path().join("cache"))
            .arg("run")
            .arg("--strategy")
            .arg(plugin("beam"))
            .arg("--log-dir")
            .arg(work.path().join("loud"))
            .args(roles_at(server.url()))
            .args(["--depth", "3", "--beam-size", "2", "--n-actions", "2"]),
    );
    assert!(loud.status.success(), "{}", text(&loud));
    let stderr = String::from_utf8_lossy(&loud.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("progress: "))
        .collect();
    // One line as each level completes, and the totals at the end (stderr is a pipe here, so
    // no bar).
    for level in 1..=3 {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("level {level} of 3"))),
            "{stderr}"
        );
    }
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" calls") && l.contains(" tokens"))
    );
    let last = lines.last().unwrap();
    assert!(
        last.contains("7 nodes") && last.ends_with(", done"),
        "{stderr}"
    );

    for flag in ["--quiet", "--disable-tqdm"] {
        let quiet = output(
            host(&work.path().join("cache"))
                .arg("run")
                .arg("--strategy")
                .arg(plugin("beam"))
                .arg("--log-dir")
                .arg(work.path().join(flag.trim_start_matches('-')))
                .args(roles_at(server.url()))
                .args(["--depth", "3", flag]),
        );
        assert!(quiet.status.success(), "{}", text(&quiet));
        assert!(
            !String::from_utf8_lossy(&quiet.stderr).contains("progress: "),
            "{flag}: {}",
            text(&quiet)
        );
    }
}

#[test]
fn no_output_file_holds_the_api_key_even_when_the_server_echoes_it() {
    const KEY: &str = "sk-drpo-test-3f9c2a7e51b04d8c";
    // Every free-text answer repeats the Authorization header it came with, as a debugging
    // proxy or a careless server might.
    let server = Server::with_request_script(|incoming| {
        let mut reply = default_reply(&incoming.path, &incoming.body);
        let echo = incoming.authorization.clone().unwrap_or_default();
        // In what the reply says about itself too, which the run log keeps as evidence.
        reply["id"] = format!("cmpl (sent with {echo})").into();
        reply["model"] = format!("model (sent with {echo})").into();
        for choice in reply["choices"].as_array_mut().into_iter().flatten() {
            let slot = if choice.get("message").is_some() {
                &mut choice["message"]["content"]
            } else {
                &mut choice["text"]
            };
            if let Some(text) = slot.as_str().filter(|t| !t.starts_with('{')) {
                *slot = format!("{text} (sent with {echo})").into();
            }
        }
        Reply::new(200, reply.to_string())
    });
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("run");
    let out = output(
        host(&work.path().join("cache"))
            .env("OPENAI_API_KEY", KEY)
            .arg("run")
            .arg("--strategy")
            .arg(plugin("beam"))
            .arg("--log-dir")
            .arg(&dir)
            .args(roles_at(server.url()))
            .args(["--depth", "3", "--logging-level", "DEBUG"]),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains(KEY), "the key was printed");
    let exported = dir.join("output.json");
    for command in [
        vec!["view".to_string(), dir.display().to_string()],
        vec![
            "export".into(),
            "--format".into(),
            "published".into(),
            "--output".into(),
            exported.display().to_string(),
            dir.display().to_string(),
        ],
        vec!["inspect".into(), dir.display().to_string()],
        vec!["log".into(), dir.display().to_string()],
        vec!["log".into(), "--json".into(), dir.display().to_string()],
    ] {
        let out = output(
            host(&work.path().join("cache"))
                .env("OPENAI_API_KEY", KEY)
                .args(&command),
        );
        assert!(out.status.success(), "{}", text(&out));
        assert!(!text(&out).contains(KEY), "{command:?} printed the key");
    }
    let mut files = Vec::new();
    let mut pending = vec![dir.clone()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "config.json",
        "log.txt",
        "run.log",
        "result.json",
        "trace.txt",
        "tree.html",
        "output.json",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing: {names:?}"
        );
    }
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        assert!(
            !bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
            "{} holds the API key",
            file.display()
        );
    }
    // The echo happened, and the record shows where the key was blotted out.
    let result = std::fs::read_to_string(dir.join("result.json")).unwrap();
    assert!(result.contains("(sent with Bearer [api key])"), "{result}");
    drpo_tests::assert_replays(&work.path().join("cache"), &dir);
}

#[test]
fn export_mlflow_is_read_back_by_mlflow_s_own_client() {
    let python = workspace().join(".cache/mlflow-venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: ./scripts/test installs MLflow's client there (scripts/install-mlflow.sh)",
        python.display()
    );
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let validated = beam_run(&server, work.path(), "validated", &["--validation", "2"]);
    let plain = beam_run(&server, work.path(), "plain", &[]);
    let store = work.path().join("mlruns");
    let export = |dir: &Path| {
        output(
            host(&work.path().join("cache"))
                .args(["export", "--format", "mlflow", "--experiment", "search"])
                .arg(dir)
                .arg("--output")
                .arg(&store),
        )
    };
    for dir in [&validated, &plain, &validated] {
        let out = export(dir);
        assert!(out.status.success(), "{}", text(&out));
    }
    let read = std::process::Command::new(&python)
        .arg(workspace().join("tests/mlflow_check.py"))
        .arg(&store)
        .arg("search")
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let seen: Value = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(
        seen["experiments"],
        serde_json::json!(["Default", "search"])
    );
    let runs = seen["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "exporting a run again replaces it: {seen}");
    for dir in [&validated, &plain] {
        let name = dir.file_name().unwrap().to_str().unwrap();
        let run = runs.iter().find(|r| r["name"] == name).expect("each run");
        let result = result_json(dir);
        assert_eq!(run["status"], "FINISHED");
        assert_eq!(run["best_prompt"], result["best_prompt"]);
        assert_eq!(run["params"]["strategy"], "beam");
        assert_eq!(run["params"]["depth"], "3");
        assert_eq!(run["params"]["model.judge"], "test-model");
        let best_per_level: Vec<Value> = result["levels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| serde_json::json!([l["depth"], l["best_reward"]]))
            .collect();
        assert_eq!(
            run["metrics"]["level.best_reward"],
            Value::from(best_per_level)
        );
        assert_eq!(run["metrics"]["best_score"][0][1], result["best_score"]);
        assert_eq!(
            run["artifacts"],
            serde_json::json!(["best_prompt.txt", "options.json", "result.json"])
        );
    }
    let validated_run = runs.iter().find(|r| r["name"] == "validated").unwrap();
    let validation = &result_json(&validated)["details"]["validation"];
    let chosen = validation["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["node"] == validation["chosen_node"])
        .unwrap();
    assert_eq!(
        validated_run["metrics"]["validation.chosen.held_out_mean"][0][1],
        chosen["validation_score"]
    );
    assert_eq!(validated_run["params"]["validation"], "2");
    assert!(
        runs.iter().find(|r| r["name"] == "plain").unwrap()["metrics"]
            .get("validation.chosen.held_out_mean")
            .is_none()
    );
}
