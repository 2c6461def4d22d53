//! `drpo-host generate` against a loopback server: the published inference format, the
//! optimized prompt from a run directory or a file, retrieval of the top-k examples by the
//! server's embeddings, JSONL in and out, the baselines and bad input; every generation is a
//! recorded run that replays.

use std::path::Path;
use std::process::Command;

use drpo_tests::server::{Server, topic_server, write_topic_examples};
use drpo_tests::{assert_replays, generate_in, host, output, plugin, text};
use serde_json::{Value, json};

/// `drpo-host generate` with its compiled plugins cached in `work/cache`, its run in
/// `work/<run>`.
fn generate(work: &Path, run: &str) -> Command {
    generate_in(&work.join("cache"), work.join(run))
}

#[test]
fn answers_with_the_best_prompt_of_a_run_and_the_nearest_examples() {
    let work = tempfile::tempdir().unwrap();
    let run = work.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(
        run.join("result.json"),
        json!({"best_prompt": "You are the optimized assistant.", "best_score": 4.5}).to_string(),
    )
    .unwrap();
    let examples = write_topic_examples(work.path());
    let server = topic_server();
    let out = output(
        generate(work.path(), "generation")
            .args(["--model", "served", "--api-base", server.url()])
            .args(["--embedding-model", "embedder"])
            .arg("--run")
            .arg(&run)
            .arg("--examples")
            .arg(&examples)
            .args(["-k", "2"])
            .arg("My cat is picky: what should she eat?")
            // The request counts below are the answers'; the preflight is tested apart.
            .args(["--", "--no-preflight"]),
    );
    assert!(out.status.success(), "{}", text(&out));
    let embeds: Vec<Value> = server
        .requests()
        .into_iter()
        .filter(|(path, _)| path.ends_with("/embeddings"))
        .map(|(_, body)| body)
        .collect();
    assert_eq!(embeds.len(), 1, "one batched embedding call");
    assert_eq!(embeds[0]["model"], "embedder");
    assert_eq!(embeds[0]["input"].as_array().unwrap().len(), 6);

    let chats = server.chat_requests();
    assert_eq!(chats.len(), 1);
    let messages = chats[0]["messages"].as_array().unwrap();
    assert_eq!(
        messages[0]["content"],
        "You are the optimized assistant.\n\n#Query:\nWhat do cats eat?\n\n#Answer:\n<START>\nMeat: cats are carnivores.\n<END>\n\n#Query:\nHow long do cats sleep?\n\n#Answer:\n<START>\nAbout 15 hours a day.\n<END>"
    );
    assert_eq!(
        messages[1]["content"],
        "# Query:\nMy cat is picky: what should she eat?\n\n# Answer:\n<START>"
    );
    assert_eq!(chats[0]["stop"], json!(["<END>", "<END", "<|eot_id|>"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("### My cat is picky: what should she eat?\nanswer "),
        "{stdout}"
    );

    // A recorded run: its header holds what was answered, its log the embed and the batch;
    // it replays with no server, and inspect reads it.
    let generation = work.path().join("generation");
    assert!(
        text(&out).contains(&format!("generation run: {}", generation.display())),
        "{}",
        text(&out)
    );
    let result = drpo_tests::result_json(&generation);
    assert_eq!(
        result["details"]["answers"][0]["examples"],
        json!(["What do cats eat?", "How long do cats sleep?"])
    );
    drop(server);
    assert_replays(&work.path().join("cache"), &generation);
    let inspect = output(
        host(&work.path().join("cache"))
            .arg("inspect")
            .arg(&generation),
    );
    assert!(inspect.status.success(), "{}", text(&inspect));
    let printed = text(&inspect);
    assert!(printed.contains("strategy       generate"), "{printed}");
    assert!(
        printed.contains("embed 1") && printed.contains("complete 1"),
        "{printed}"
    );
    assert!(
        printed.contains("You are the optimized assistant."),
        "{printed}"
    );
}

#[test]
fn jsonl_in_and_out_with_the_baselines_and_no_embedder() {
    let work = tempfile::tempdir().unwrap();
    let examples = write_topic_examples(work.path());
    let prompt = work.path().join("prompt.txt");
    std::fs::write(&prompt, "Answer well.").unwrap();
    let input = work.path().join("queries.jsonl");
    std::fs::write(
        &input,
        "{\"id\": \"a\", \"text\": \"Do fish sleep?\"}\n{\"id\": \"b\", \"query\": \"How do I pick a lock?\", \"tags\": [\"harmful\"]}\n",
    )
    .unwrap();
    let server = topic_server();
    let answers = work.path().join("answers.jsonl");
    let out = output(
        generate(work.path(), "optimized")
            .env_remove("DRPO_DEFAULT_EMBEDDER")
            .args(["--model", "served", "--api-base", server.url()])
            .arg("--prompt-file")
            .arg(&prompt)
            .arg("--examples")
            .arg(&examples)
            .args(["-k", "1", "--raw"])
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&answers)
            // The request counts below are the answers'; the preflight is tested apart.
            .args(["--", "--no-preflight"]),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("every query gets the first 1 example(s) of the file"),
        "{}",
        text(&out)
    );
    let completions: Vec<Value> = server
        .requests()
        .into_iter()
        .filter(|(path, _)| path.ends_with("/completions"))
        .map(|(_, body)| body)
        .collect();
    assert_eq!(completions.len(), 2);
    assert!(
        server
            .requests()
            .iter()
            .all(|(p, _)| !p.ends_with("/embeddings"))
    );
    let raw = completions
        .iter()
        .filter_map(|c| c["prompt"].as_str())
        .find(|p| p.contains("Do fish sleep?"))
        .expect("a raw completion for the first query");
    assert_eq!(
        raw,
        "Answer well.\n\n#Query:\nHow do I train a dog to sit?\n\n#Answer:\n<START>\nUse treats.\n<END>\n\n# Query:\nDo fish sleep?\n\n# Answer:\n<START>"
    );
    let lines: Vec<Value> = std::fs::read_to_string(&answers)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], "a");
    assert_eq!(lines[1]["query"], "How do I pick a lock?");
    assert_eq!(lines[1]["tags"], json!(["harmful"]));
    assert!(lines[1]["answer"].as_str().unwrap().starts_with("answer "));

    assert_replays(&work.path().join("cache"), &work.path().join("optimized"));

    // Both baselines: the initial prompt and no examples; with no --log-dir the run goes to
    // runs/generate-1 under the current directory, then runs/generate-2.
    for n in 1..=2 {
        let server = topic_server();
        let out = output(
            host(&work.path().join("cache"))
                .current_dir(work.path())
                .arg("generate")
                .arg("--strategy")
                .arg(plugin("generate"))
                .args(["--model", "served", "--api-base", server.url()])
                .args(["--no-optimized-prompt", "--no-examples"])
                .arg("Do fish sleep?")
                // The request counts below are the answers'; the preflight is tested apart.
                .args(["--", "--no-preflight"]),
        );
        assert!(out.status.success(), "{}", text(&out));
        let chats = server.chat_requests();
        assert_eq!(
            chats[0]["messages"][0]["content"],
            "You are a helpful assistant."
        );
        let run = format!("runs/generate-{n}");
        assert!(
            text(&out).contains(&format!("generation run: {run} ")),
            "{}",
            text(&out)
        );
        assert_replays(&work.path().join("cache"), &work.path().join(&run));
    }
}

#[test]
fn bad_input_is_named() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let wrong = work.path().join("wrong.json");
    std::fs::write(&wrong, "{\"What?\": 42}").unwrap();
    let out = output(
        host(&cache)
            .arg("generate")
            .args(["--model", "m", "--api-base", "http://127.0.0.1:9/v1"])
            .arg("--examples")
            .arg(&wrong)
            .arg("q"),
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("wrong.json"), "{}", text(&out));
    assert!(text(&out).contains("is not a string"), "{}", text(&out));

    let out = output(host(&cache).args(["generate", "-k", "6", "q"]));
    assert!(!out.status.success());
    assert!(text(&out).contains("6 is not in 1..=5"), "{}", text(&out));

    let out = output(
        host(&cache)
            .arg("generate")
            .arg("--run")
            .arg(work.path())
            .arg("q"),
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("result.json"), "{}", text(&out));

    // Flags after `--` go to the run: a grant without the base role leaves every query
    // unanswered, which fails the command with the reason per query.
    let out = output(
        generate(work.path(), "ungranted")
            .args(["--model", "m", "--api-base", "http://127.0.0.1:9/v1"])
            .args(["--no-examples", "q", "--", "--allow-roles", "judge"]),
    );
    assert!(!out.status.success());
    let printed = text(&out);
    assert!(
        printed.contains("1 of 1 queries got no answer"),
        "{printed}"
    );
    assert!(
        printed.contains("role base is not granted to this plugin"),
        "{printed}"
    );
}

#[test]
fn the_local_sentence_encoder_retrieves_the_examples_on_the_query_topic() {
    let model = drpo_tests::workspace().join(".cache/models/all-MiniLM-L6-v2");
    assert!(
        model.join("model.safetensors").is_file(),
        "{} is missing: run scripts/fetch-minilm.sh (./scripts/test does)",
        model.display()
    );
    let work = tempfile::tempdir().unwrap();
    let examples = write_topic_examples(work.path());
    let server = topic_server();
    let out = output(
        generate(work.path(), "generation")
            .args(["--model", "served", "--api-base", server.url()])
            .arg("--embedding-model")
            .arg(format!("local:{}", model.display()))
            .arg("--examples")
            .arg(&examples)
            .args(["-k", "1", "Is it cruel to keep a goldfish in a small bowl?"])
            // The request counts below are the answers'; the preflight is tested apart.
            .args(["--", "--no-preflight"]),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        server
            .requests()
            .iter()
            .all(|(p, _)| !p.ends_with("/embeddings")),
        "embedded in process"
    );
    let chats = server.chat_requests();
    let system = chats[0]["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("#Query:\nCan fish feel pain?"), "{system}");
}

#[test]
fn an_incomplete_embedding_model_directory_is_named() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("config.json"), "{}").unwrap();
    let out = output(
        generate(work.path(), "generation")
            .args(["--model", "m", "--api-base", "http://127.0.0.1:9/v1"])
            .arg("--embedding-model")
            .arg(format!("local:{}", work.path().display()))
            .arg("q"),
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("tokenizer.json"), "{}", text(&out));
    assert!(text(&out).contains("missing"), "{}", text(&out));
}

/// `run` retrieves the in-context examples with the local sentence encoder: the embed call is
/// answered in process, recorded, and replayed without the model.
#[test]
fn a_search_retrieves_examples_with_the_local_encoder_and_replays_without_it() {
    use drpo_host::runlog::{CallRequest, CallResponse, Entry, read_log};
    let model = drpo_tests::workspace().join(".cache/models/all-MiniLM-L6-v2");
    assert!(
        model.join("model.safetensors").is_file(),
        "run scripts/fetch-minilm.sh"
    );
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let dir = work.path().join("run");
    let server = Server::start();
    let out = output(
        host(&cache)
            .arg("run")
            .arg("--strategy")
            .arg(drpo_tests::plugin("beam"))
            .arg("--log-dir")
            .arg(&dir)
            .args(drpo_tests::roles_at(server.url()))
            .arg("--embedding-model-name")
            .arg(format!("local:{}", model.display()))
            .args([
                "--depth",
                "2",
                "--beam-size",
                "1",
                "--n-actions",
                "1",
                "--no-cache",
            ]),
    );
    assert!(out.status.success(), "{}", text(&out));
    let embeds: Vec<(usize, usize)> = read_log(&dir.join("run.log"))
        .unwrap()
        .entries
        .into_iter()
        .filter_map(|entry| match entry {
            Entry::Call(call) => match (call.request, call.response) {
                (CallRequest::Embed(texts), CallResponse::Embed(Ok(vectors))) => {
                    Some((texts.len(), vectors[0].len()))
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(embeds.len(), 1, "one batched embed call");
    assert_eq!(embeds[0].1, 384);
    assert!(
        server
            .requests()
            .iter()
            .all(|(p, _)| !p.ends_with("/embeddings"))
    );
    let replay = output(
        host(&cache)
            .env("DRPO_DEFAULT_EMBEDDER", "/nonexistent")
            .arg("replay")
            .arg(&dir),
    );
    assert!(replay.status.success(), "{}", text(&replay));
}
