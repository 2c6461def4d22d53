//! `drpo-host serve` end to end: over HTTP against a scripted upstream server (the request it
//! forwards is the one `generate` sends for the same query, streamed or not; limits, keys,
//! recording, graceful shutdown), and on the local SmolLM2 with the official `openai` Python
//! client and with curl (answers equal `generate`'s; streaming; errors).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drpo_host::runlog::{CallRequest, Entry, read_log};
use drpo_tests::server::{Reply, Server, default_reply, topic_server, write_topic_examples};
use drpo_tests::{generate_in, host, output, text, workspace};
use serde_json::{Value, json};

/// A running `drpo-host serve`; killed when dropped.
struct Serving {
    child: Child,
    /// host:port
    address: String,
    stderr: Arc<Mutex<String>>,
}

impl Serving {
    /// Starts `drpo-host serve ARGS --listen 127.0.0.1:0` (unless ARGS say where) and waits
    /// for the address it prints.
    fn start(cache: &Path, args: &[&str], env: &[(&str, &str)]) -> Serving {
        let mut command = host(cache);
        command.arg("serve").args(args);
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start drpo-host serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (found, address) = std::sync::mpsc::channel();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let collected = stderr.clone();
        std::thread::spawn(move || {
            while let Some(Ok(line)) = lines.next() {
                if let Some(rest) = line.split("at http://").nth(1) {
                    let _ = found.send(rest.split("/v1").next().unwrap().to_owned());
                }
                let mut all = collected.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let address = match address.recv_timeout(Duration::from_secs(120)) {
            Ok(address) => address,
            Err(_) => {
                let _ = child.kill();
                panic!("serve printed no address:\n{}", stderr.lock().unwrap());
            }
        };
        Serving {
            child,
            address,
            stderr,
        }
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// Sends SIGTERM and waits for the exit status.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = self.child.wait().unwrap();
        // The reader thread sees the pipe close when the process ends.
        std::thread::sleep(Duration::from_millis(100));
        let stderr = self.stderr.lock().unwrap().clone();
        (status, stderr)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request; the status and the body.
fn http(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    )
}

/// A body sent in chunks (`Transfer-Encoding: chunked`), joined.
fn dechunk(mut body: &str) -> String {
    let mut joined = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hexadecimal chunk size");
        if size == 0 {
            return joined;
        }
        joined.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

fn post_chat(address: &str, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let (status, body) = http(
        address,
        "POST",
        "/v1/chat/completions",
        headers,
        &body.to_string(),
    );
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// The `data:` events of a server-sent event stream, `[DONE]` last.
fn events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// Posts a chat request to `address` with `stream: true` added; the `data:` events of its
/// answer, which must have status 200.
fn post_stream(address: &str, body: &Value) -> Vec<String> {
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (status, body) = http(
        address,
        "POST",
        "/v1/chat/completions",
        &[],
        &streamed.to_string(),
    );
    assert_eq!(status, 200, "{body}");
    events(&body)
}

/// The answers `drpo-host generate` gives with the flags `aligned` and `rest` (the queries, and
/// any flags of `run` after `--`), its run in `work/generation`.
fn generate_answers(work: &Path, aligned: &[&str], rest: &[&str]) -> Vec<String> {
    let answers = work.join("answers.jsonl");
    let out = output(
        generate_in(&work.join("cache"), work.join("generation"))
            .args(aligned)
            .arg("--output")
            .arg(&answers)
            .args(rest),
    );
    assert!(out.status.success(), "{}", text(&out));
    std::fs::read_to_string(&answers)
        .unwrap()
        .lines()
        .map(|line| {
            let answer: Value = serde_json::from_str(line).unwrap();
            answer["answer"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// The flags that serve `served` from the scripted `server`, then `rest`.
fn upstream<'a>(server: &'a Server, rest: &[&'a str]) -> Vec<&'a str> {
    let mut flags = vec!["--model", "served", "--api-base", server.url()];
    flags.extend(rest);
    flags
}

const QUERY: &str = "My cat is picky: what should she eat?";

#[test]
fn a_served_answer_is_generates_answer_and_streams_the_same() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let examples = write_topic_examples(work.path());
    let server = topic_server();
    let aligned = upstream(
        &server,
        &[
            "--embedding-model",
            "embedder",
            "--system",
            "Answer with care.",
            "--examples",
            examples.to_str().unwrap(),
            "-k",
            "2",
        ],
    );
    let generated = generate_answers(
        work.path(),
        &aligned,
        &[QUERY, "--", "--no-preflight", "--no-cache"],
    );
    let sent_by_generate = server.chat_requests().pop().unwrap();

    let serving = Serving::start(&cache, &aligned, &[]);
    let (status, health) = http(&serving.address, "GET", "/health", &[], "");
    assert_eq!((status, health.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, models) = http(&serving.address, "GET", "/v1/models", &[], "");
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&models).unwrap()["data"][0]["id"],
        "drpo-aligned"
    );

    let ask = json!({"model": "anything", "messages": [{"role": "user", "content": QUERY}]});
    let (status, reply) = post_chat(&serving.address, &ask, &[]);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["object"], "chat.completion");
    assert_eq!(reply["choices"][0]["message"]["content"], generated[0]);
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
    assert!(reply["usage"]["total_tokens"].as_u64().unwrap() > 0);
    // Upstream got the very request generate sent: prompt, examples, sampling, stop strings.
    let sent_by_serve = server.chat_requests().pop().unwrap();
    assert_eq!(sent_by_serve, sent_by_generate);

    let mut with_usage = ask.clone();
    with_usage["stream_options"] = json!({"include_usage": true});
    let events = post_stream(&serving.address, &with_usage);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, generated[0]);
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks.last().unwrap()["usage"], reply["usage"]);
    // Upstream was asked for a stream, and its answer came through piece by piece as it
    // arrived (it sends four, 20 ms apart), not in one piece once it was whole.
    assert_eq!(server.chat_requests().pop().unwrap()["stream"], true);
    let pieces = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count();
    assert!(pieces >= 3, "{pieces} pieces: {chunks:?}");
}

#[test]
fn an_upstream_that_refuses_to_stream_is_asked_again_without_and_its_answer_is_sent_whole() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let server = Server::with_request_script(|incoming| {
        if incoming.stream {
            let refusal = json!({"error": {"message": "streaming is not supported",
                "type": "invalid_request_error"}});
            return Reply::new(400, refusal.to_string());
        }
        Reply::new(
            200,
            default_reply(&incoming.path, &incoming.body).to_string(),
        )
    });
    let serving = Serving::start(&cache, &upstream(&server, &["--no-examples"]), &[]);
    let ask = json!({"model": "m", "messages": [{"role": "user", "content": QUERY}]});
    let (status, plain) = post_chat(&serving.address, &ask, &[]);
    assert_eq!(status, 200, "{plain}");
    let events = post_stream(&serving.address, &ask);
    assert_eq!(events.last().unwrap(), "[DONE]", "{events:?}");
    let content: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        content,
        plain["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let asked: Vec<bool> = server
        .chat_requests()
        .iter()
        .map(|r| r["stream"] == true)
        .collect();
    assert_eq!(asked, [false, true, false]);
}

#[test]
fn an_upstream_stream_that_breaks_off_ends_the_clients_stream_with_an_error() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    // Every stream stops after its first piece of text, without [DONE] or a finish reason.
    let server = Server::with_request_script(|incoming| {
        let whole = default_reply(&incoming.path, &incoming.body);
        if !incoming.stream {
            return Reply::new(200, whole.to_string());
        }
        let events = drpo_tests::server::streamed(&whole, 4);
        let cut: Vec<&str> = events.split_inclusive("\n\n").take(2).collect();
        Reply::new(200, cut.concat())
    });
    let serving = Serving::start(&cache, &upstream(&server, &["--no-examples"]), &[]);
    let ask = json!({"model": "m", "messages": [{"role": "user", "content": QUERY}]});
    let events = post_stream(&serving.address, &ask);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert!(
        last["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("ended before its answer did")),
        "{events:?}"
    );
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    // The broken stream was tried again, as any transient failure is.
    assert!(server.chat_requests().len() > 1);
}

#[test]
fn limits_refuse_with_the_status_that_names_them() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    // Slow answers, so that a second request arrives while the first is under way.
    let server = Server::with_script(|path, request| Reply {
        delay: Duration::from_millis(1500),
        ..Reply::new(200, default_reply(path, request).to_string())
    });
    let serving = Serving::start(
        &cache,
        &upstream(
            &server,
            &[
                "--no-examples",
                "--max-concurrent",
                "1",
                "--max-queue",
                "0",
                "--max-body-bytes",
                "400",
                "--max-tokens",
                "64",
            ],
        ),
        &[],
    );
    let ask = |extra: Value| {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let (status, error) = post_chat(&serving.address, &ask(json!({"pad": "x".repeat(500)})), &[]);
    assert_eq!(status, 413);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-body-bytes"),
        "{error}"
    );
    let (status, error) = post_chat(&serving.address, &ask(json!({"max_tokens": 65})), &[]);
    assert_eq!(status, 400);
    assert_eq!(error["error"]["param"], "max_tokens");
    let (status, error) = post_chat(&serving.address, &json!({"messages": []}), &[]);
    assert_eq!(
        (status, error["error"]["param"].as_str()),
        (400, Some("messages"))
    );

    let address = serving.address.clone();
    let first = std::thread::spawn(move || post_chat(&address, &ask(json!({})), &[]));
    let started = Instant::now();
    while server.in_flight() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the first request never arrived"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, error) = post_chat(
        &serving.address,
        &json!({"messages": [{"role": "user", "content": "too"}]}),
        &[],
    );
    assert_eq!(status, 429, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-queue"),
        "{error}"
    );
    let (status, reply) = first.join().unwrap();
    assert_eq!(status, 200, "{reply}");
    let (status, _) = post_chat(
        &serving.address,
        &json!({"messages": [{"role": "user", "content": "again"}]}),
        &[],
    );
    assert_eq!(status, 200, "the place is given back");
}

#[test]
fn a_key_is_needed_off_loopback_and_is_checked() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let server = Server::start();
    let flags = upstream(&server, &["--no-examples"]);
    // Each refusal exits with an error that names what to do.
    let refused = |extra: &[&str], named: &str| {
        let out = output(host(&cache).arg("serve").args(&flags).args(extra));
        assert!(!out.status.success());
        assert!(text(&out).contains(named), "{}", text(&out));
    };
    refused(&["--listen", "0.0.0.0:0"], "--api-key-env");
    refused(
        &["--api-key-env", "DRPO_TEST_NO_SUCH_KEY"],
        "DRPO_TEST_NO_SUCH_KEY",
    );

    let keyed = upstream(
        &server,
        &["--no-examples", "--api-key-env", "DRPO_TEST_SERVE_KEY"],
    );
    let serving = Serving::start(&cache, &keyed, &[("DRPO_TEST_SERVE_KEY", "s3cret")]);
    let ask = json!({"messages": [{"role": "user", "content": "hi"}]});
    for headers in [
        vec![],
        vec![("Authorization", "Bearer s3cre")],
        vec![("Authorization", "s3cret")],
    ] {
        let (status, error) = post_chat(&serving.address, &ask, &headers);
        assert_eq!(status, 401, "{headers:?}: {error}");
        assert_eq!(error["error"]["code"], "invalid_api_key");
    }
    let (status, _) = http(&serving.address, "GET", "/v1/models", &[], "");
    assert_eq!(status, 401);
    let (status, reply) = post_chat(
        &serving.address,
        &ask,
        &[("Authorization", "Bearer s3cret")],
    );
    assert_eq!(status, 200, "{reply}");
    let (_, stderr) = serving.stop();
    assert!(
        !stderr.contains("s3cret") && !stderr.contains("hi\""),
        "{stderr}"
    );
}

#[test]
fn a_recording_holds_every_served_call_and_sigterm_finishes_what_is_under_way() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let examples = write_topic_examples(work.path());
    let server = Server::with_script(|path, request| {
        let mut reply = Reply::new(200, default_reply(path, request).to_string());
        if path.ends_with("/chat/completions") {
            reply.delay = Duration::from_millis(800);
        }
        reply
    });
    let record = work.path().join("served");
    let serving = Serving::start(
        &cache,
        &upstream(
            &server,
            &[
                "--embedding-model",
                "embedder",
                "--examples",
                examples.to_str().unwrap(),
                "--record",
                record.to_str().unwrap(),
            ],
        ),
        &[],
    );
    let (status, _) = post_chat(
        &serving.address,
        &json!({"messages": [{"role": "user", "content": "Why does my dog bark?"}]}),
        &[],
    );
    assert_eq!(status, 200);
    // A request under way when SIGTERM comes is still answered.
    let address = serving.address.clone();
    let late = std::thread::spawn(move || {
        post_chat(
            &address,
            &json!({"messages": [{"role": "user", "content": "Fish?"}]}),
            &[],
        )
    });
    let started = Instant::now();
    while server.in_flight() == 0 {
        assert!(started.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, stderr) = serving.stop();
    assert!(status.success(), "{stderr}");
    let (late_status, late_reply) = late.join().unwrap();
    assert_eq!(late_status, 200, "{late_reply}");

    let log = read_log(&record.join("run.log")).unwrap();
    let Some(Entry::Header(header)) = log.entries.first() else {
        panic!("no header")
    };
    assert_eq!(header.plugin_name, "drpo-host serve");
    let calls = log.calls();
    let imports: Vec<&str> = calls.iter().map(|c| c.request.import_name()).collect();
    assert_eq!(imports, ["embed", "complete", "embed", "complete"]);
    let CallRequest::Complete(requests) = &calls[3].request else {
        panic!("not a complete call")
    };
    assert_eq!(requests.len(), 1);
    assert!(
        matches!(log.entries.last(), Some(Entry::End(_))),
        "the end is written on SIGTERM"
    );
    let inspected = output(host(&cache).arg("inspect").arg(&record));
    assert!(inspected.status.success(), "{}", text(&inspected));
    assert!(
        text(&inspected).contains(", no plugin)"),
        "{}",
        text(&inspected)
    );
    assert!(
        text(&inspected).contains("complete 2"),
        "{}",
        text(&inspected)
    );
    // A second server may not record over it.
    let again = output(
        host(&cache)
            .arg("serve")
            .args(upstream(&server, &["--no-examples"]))
            .arg("--record")
            .arg(&record)
            .args(["--listen", "127.0.0.1:0"]),
    );
    assert!(!again.status.success());
    assert!(
        text(&again).contains("already holds a run log"),
        "{}",
        text(&again)
    );
}

/// The Python with the official `openai` client that `./scripts/test` installs.
fn openai_python() -> PathBuf {
    let python = workspace().join(".cache/openai-venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: ./scripts/test installs the openai client there (scripts/install-openai-client.sh)",
        python.display()
    );
    python
}

/// The built-in SmolLM2 and MiniLM, as ./scripts/test fetches them.
fn local_models() -> (PathBuf, PathBuf) {
    let models = workspace().join(".cache/models");
    let model = models.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let embedder = models.join("all-MiniLM-L6-v2");
    assert!(
        model.is_file() && embedder.is_dir(),
        "fetch the models: ./scripts/fetch-smollm2.sh and ./scripts/fetch-minilm.sh"
    );
    (model, embedder)
}

#[test]
fn the_official_openai_client_gets_generates_answers_from_the_local_smollm2() {
    let python = openai_python();
    let (model, embedder) = local_models();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let model = format!("local:{}", model.display());
    let embedder = format!("local:{}", embedder.display());
    let aligned = [
        "--model",
        &model,
        "--embedding-model",
        &embedder,
        "--system",
        "You are a careful assistant who answers briefly.",
        "-k",
        "2",
    ];
    let queries = [
        "How do I keep basil alive indoors?",
        "What is a prime number?",
    ];
    let mut flags = vec!["--max-tokens", "40"];
    flags.extend(queries);
    let expected = generate_answers(work.path(), &aligned, &flags);
    let long_query = "Tell a long story about a lighthouse keeper and a storm.";
    let long_flags = ["--max-tokens", "160", long_query];
    let long_work = work.path().join("long");
    std::fs::create_dir(&long_work).unwrap();
    let long_expected = generate_answers(&long_work, &aligned, &long_flags).remove(0);

    let serving = Serving::start(&cache, &aligned, &[]);
    let script = workspace().join("tests/openai_client.py");
    let mut command = Command::new(python);
    command.arg(&script).arg(serving.base_url()).arg(
        json!({
            "queries": queries,
            "expected": expected,
            "max_tokens": 40,
            "long_query": long_query,
            "long_expected": long_expected,
            "long_max_tokens": 160,
        })
        .to_string(),
    );
    let out = output(&mut command);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("openai client: all checks passed"),
        "{}",
        text(&out)
    );

    // The same answers through curl, plain and streamed, and its view of an error.
    let base = serving.base_url();
    let request = |query: &str, stream: bool| {
        json!({
            "model": "drpo-aligned",
            "messages": [{"role": "user", "content": query}],
            "max_tokens": 40,
            "temperature": 0,
            "stream": stream,
        })
        .to_string()
    };
    for (query, expected) in queries.iter().zip(&expected) {
        let (status, body) = curl(&base, "chat/completions", Some(&request(query, false)));
        assert_eq!(status, 200, "{body}");
        let reply: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            reply["choices"][0]["message"]["content"],
            *expected.as_str()
        );

        let (status, body) = curl(&base, "chat/completions", Some(&request(query, true)));
        assert_eq!(status, 200, "{body}");
        let events = events(&body);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{body}");
        let streamed: String = events[..events.len() - 1]
            .iter()
            .map(|event| {
                let chunk: Value = serde_json::from_str(event).unwrap();
                chunk["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert_eq!(streamed, *expected);
    }
    let (status, body) = curl(&base, "models", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"drpo-aligned\""), "{body}");
    let too_long = json!({
        "model": "drpo-aligned",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 100_000,
    });
    let (status, body) = curl(&base, "chat/completions", Some(&too_long.to_string()));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("--max-tokens"), "{body}");
}

/// `curl` (the real one) asking `base/path`, with `body` as a JSON POST; the status and body.
fn curl(base: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut command = Command::new("curl");
    command.args([
        "--silent",
        "--show-error",
        "--no-buffer",
        "--max-time",
        "120",
    ]);
    command.args(["--write-out", "\n%{http_code}"]);
    if let Some(body) = body {
        command.args([
            "--header",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    command.arg(format!("{base}/{path}"));
    let out = output(&mut command);
    assert!(out.status.success(), "curl failed: {}", text(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (body, status) = stdout.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap(), body.to_owned())
}
