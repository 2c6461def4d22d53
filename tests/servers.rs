//! DRPO against scripted servers that behave as the families people really run: OpenAI's
//! chat-only models (a 404 on `/v1/completions`), servers that refuse `json_schema` (with a 400,
//! a 422 or a 500 naming the validation error), servers that take only `json_object`, servers
//! that take no `response_format` at all and answer prose around the JSON, and a judge that can
//! never answer. Each server refuses what its family refuses and answers the rest from the
//! request alone, so identical requests get identical answers.

use std::path::Path;

use drpo_host::bindings::types::Role;
use drpo_host::runlog::{CallRequest, CallResponse, Entry, read_log};
use drpo_tests::server::{Incoming, Reply, Server, default_reply, follow_schema};
use drpo_tests::{assert_replays, host, output, roles_at, strategy_in, text};
use serde_json::{Value, json};

/// What one family refuses: `Some(reply)` for a request it refuses.
type Refuse = fn(&Incoming) -> Option<Reply>;

fn reply(status: u16, body: Value) -> Reply {
    Reply::new(status, body.to_string())
}

/// A server of one family: it refuses as `refuse` says; otherwise it answers a schema it was
/// given (as `json_schema`, or only in the prompt) with JSON that follows it, wrapped in prose
/// when `prose` is set.
fn family(refuse: Refuse, prose: bool) -> Server {
    Server::with_request_script(move |incoming| {
        if let Some(refusal) = refuse(incoming) {
            return refusal;
        }
        let body = &incoming.body;
        let given = &body["response_format"]["json_schema"]["schema"];
        let schema = if given.is_object() {
            Some(given.clone())
        } else {
            schema_in_prompt(body)
        };
        let Some(schema) = schema else {
            return reply(200, default_reply(&incoming.path, body));
        };
        let n = body["n"].as_u64().unwrap_or(1);
        let prompt = body.to_string();
        let choices: Vec<Value> = (0..n)
            .map(|i| {
                let tag = format!("{:x}-{i}", drpo_tests::server::digest(&prompt));
                let json = follow_schema(&schema, &tag).to_string();
                let content = if prose {
                    format!("Sure! Here is my answer:\n```json\n{json}\n```\nI hope it helps.")
                } else {
                    json
                };
                json!({"index": i, "message": {"role": "assistant", "content": content},
                       "finish_reason": "stop"})
            })
            .collect();
        reply(
            200,
            json!({"choices": choices, "usage": {"prompt_tokens": 50, "completion_tokens": 20}}),
        )
    })
}

/// The schema a request carries in its last message (after "JSON Schema"), if any.
fn schema_in_prompt(body: &Value) -> Option<Value> {
    let last = body["messages"].as_array()?.last()?["content"].as_str()?;
    let after = &last[last.rfind("JSON Schema")?..];
    let start = after.find('{')?;
    serde_json::from_str(after[start..].trim()).ok()
}

fn json_schema_asked(incoming: &Incoming) -> bool {
    incoming.body["response_format"]["type"] == "json_schema"
}

fn chat_only(incoming: &Incoming) -> Option<Reply> {
    incoming.path.ends_with("/v1/completions").then(|| {
        reply(
            404,
            json!({"error": {
                "message": "This is a chat model and not supported in the v1/completions \
                            endpoint. Did you mean to use v1/chat/completions?",
                "type": "invalid_request_error", "param": "model", "code": null}}),
        )
    })
}

fn json_schema_refused_400(incoming: &Incoming) -> Option<Reply> {
    json_schema_asked(incoming).then(|| {
        reply(
            400,
            json!({"error": {"message": "'response_format.type' must be 'json_object' or 'text'",
                             "type": "invalid_request_error"}}),
        )
    })
}

fn json_schema_refused_422(incoming: &Incoming) -> Option<Reply> {
    json_schema_asked(incoming).then(|| {
        reply(
            422,
            json!({"detail": [{"loc": ["body", "response_format", "type"],
                               "msg": "Input should be 'text' or 'json_object'",
                               "type": "literal_error"}]}),
        )
    })
}

fn json_schema_refused_500(incoming: &Incoming) -> Option<Reply> {
    json_schema_asked(incoming).then(|| {
        reply(
            500,
            json!({"error": "1 validation error for ChatCompletionRequest\nresponse_format.type\n  \
                             Input should be 'text' or 'json_object'"}),
        )
    })
}

fn no_response_format(incoming: &Incoming) -> Option<Reply> {
    incoming.body.get("response_format").map(|_| {
        reply(
            400,
            json!({"error": {"message": "Unrecognized request argument supplied: response_format"}}),
        )
    })
}

/// `beam.wasm` at depth 3 against `server`.
fn beam_at_depth_3(
    server: &Server,
    work: &Path,
    name: &str,
    extra: &[&str],
) -> std::process::Output {
    output(
        strategy_in(&work.join("cache"), "run", "beam", work.join(name))
            .args(roles_at(server.url()))
            .args(["--depth", "3", "--beam-size", "2", "--n-actions", "2"])
            .arg("--no-cache")
            .args(extra),
    )
}

/// `beam.wasm` with every role at `shared` but the judge, which is at `judge`.
fn beam_with_judge_at(
    shared: &Server,
    judge: &Server,
    work: &Path,
    extra: &[&str],
) -> std::process::Output {
    output(
        strategy_in(&work.join("cache"), "run", "beam", work.join("run"))
            .args(roles_at(shared.url()))
            .args(["--eval-api-base", judge.url(), "--no-cache"])
            .args(extra),
    )
}

/// Every judge request of the run was answered, and the run says all its judgements were usable.
fn assert_every_judgement_usable(out: &std::process::Output, dir: &Path) {
    let printed = text(out);
    assert!(out.status.success(), "{printed}");
    let mut judged = 0;
    for entry in read_log(&dir.join("run.log")).unwrap().entries {
        let Entry::Call(call) = entry else { continue };
        if let (CallRequest::Complete(batch), CallResponse::Complete(results)) =
            (&call.request, &call.response)
        {
            for (request, result) in batch.iter().zip(results) {
                assert!(result.is_ok(), "{:?} failed: {result:?}", request.role);
                judged += usize::from(request.role == Role::Judge);
            }
        }
    }
    assert!(judged >= 3, "{judged} judgements");
    assert!(
        printed.contains(&format!("usable judgements: {judged} of {judged}")),
        "{printed}"
    );
}

#[test]
fn every_family_of_server_gives_a_scored_run_that_replays() {
    let work = tempfile::tempdir().unwrap();
    let families: [(&str, Refuse, bool); 5] = [
        ("json-schema-400", json_schema_refused_400, false),
        ("json-schema-422", json_schema_refused_422, false),
        ("json-schema-500", json_schema_refused_500, false),
        ("no-response-format-prose", no_response_format, true),
        ("chat-only", chat_only, false),
    ];
    for (name, refuse, prose) in families {
        let server = family(refuse, prose);
        let out = beam_at_depth_3(&server, work.path(), name, &[]);
        assert_every_judgement_usable(&out, &work.path().join(name));
        assert_replays(&work.path().join("cache"), &work.path().join(name));
        // A refused rung is tried once, in the preflight, not at every request.
        let refused = server
            .requests()
            .iter()
            .filter(|(path, body)| {
                refuse(&Incoming {
                    path: path.clone(),
                    body: body.clone(),
                    authorization: None,
                    stream: false,
                })
                .is_some()
            })
            .count();
        assert!(refused <= 3, "{name}: {refused} refused requests");
    }
}

#[test]
fn a_server_that_takes_only_json_object_gets_json_object_with_the_schema() {
    fn json_object_only(incoming: &Incoming) -> Option<Reply> {
        json_schema_refused_400(incoming)
    }
    let server = family(json_object_only, false);
    let work = tempfile::tempdir().unwrap();
    let out = beam_at_depth_3(&server, work.path(), "run", &[]);
    assert_every_judgement_usable(&out, &work.path().join("run"));
    let last = server.requests().last().cloned().unwrap().1;
    assert_eq!(last["response_format"]["type"], "json_object", "{last}");
    assert!(last["response_format"]["schema"].is_object(), "{last}");
}

#[test]
fn a_chat_model_asked_for_raw_prompts_is_switched_to_chat_once() {
    let server = family(chat_only, false);
    let work = tempfile::tempdir().unwrap();
    let out = beam_at_depth_3(&server, work.path(), "run", &["--base-format", "raw"]);
    assert_every_judgement_usable(&out, &work.path().join("run"));
    let raw = server
        .requests()
        .iter()
        .filter(|(path, _)| path.ends_with("/v1/completions"))
        .count();
    assert_eq!(raw, 1, "only the preflight's raw request was refused");
    let inspect = output(
        host(&work.path().join("cache"))
            .arg("inspect")
            .arg(work.path().join("run")),
    );
    assert!(
        text(&inspect).contains("prompts sent as chat"),
        "{}",
        text(&inspect)
    );
}

#[test]
fn a_judge_that_can_never_answer_stops_the_run_before_anything_else_is_spent() {
    let shared = Server::start();
    let judge = Server::with_script(|_, _| {
        reply(
            404,
            json!({"error": {"message": "The model `test-model` does not exist",
                             "type": "invalid_request_error", "code": "model_not_found"}}),
        )
    });
    let work = tempfile::tempdir().unwrap();
    let out = beam_with_judge_at(&shared, &judge, work.path(), &["--depth", "3"]);
    let printed = text(&out);
    assert_eq!(out.status.code(), Some(4), "{printed}");
    let errors: Vec<&str> = printed
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{printed}");
    assert!(errors[0].contains("judge role"), "{printed}");
    assert!(errors[0].contains(judge.url()), "{printed}");
    assert!(errors[0].contains("404"), "{printed}");
    // The other roles got their checks and nothing else; no run was recorded.
    assert!(shared.requests().len() <= 2, "{:?}", shared.requests());
    assert!(!work.path().join("run/run.log").exists());
}

#[test]
fn without_the_preflight_a_judge_that_always_refuses_ends_the_search_with_code_4() {
    let shared = Server::start();
    let judge = Server::with_script(|_, _| {
        reply(
            403,
            json!({"error": {"message": "this key may not use the judge model"}}),
        )
    });
    let work = tempfile::tempdir().unwrap();
    let out = beam_with_judge_at(
        &shared,
        &judge,
        work.path(),
        &["--depth", "5", "--no-preflight"],
    );
    let printed = text(&out);
    assert_eq!(out.status.code(), Some(4), "{printed}");
    assert!(printed.contains("may not use the judge model"), "{printed}");
    // The search stopped at the first level whose judgements all failed, not after five.
    assert_eq!(judge.requests().len(), 1, "{printed}");
    assert!(work.path().join("run/result.json").is_file());
    assert!(printed.contains("usable judgements: 0 of 1"), "{printed}");
}

/// Posts `body` to `path` on `server` and returns the reply's status code.
fn status_of_post(server: &Server, path: &str, body: &str) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let address = server
        .url()
        .trim_start_matches("http://")
        .trim_end_matches("/v1");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "POST /v1{path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut status_line = String::new();
    BufReader::new(stream).read_line(&mut status_line).unwrap();
    status_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn the_scripted_world_refuses_a_malformed_body_with_a_400_as_real_servers_do() {
    // Whatever a test scripts, so that a host that sent such a body would fail its test.
    let server = Server::start();
    for (path, body) in [
        ("/chat/completions", "{\"model\": \"m\", \"messages\": [}"),
        (
            "/chat/completions",
            r#"{"messages": [{"role": "user", "content": "hi"}]}"#,
        ),
        ("/chat/completions", r#"{"model": "m", "prompt": "hi"}"#),
        ("/completions", r#"{"model": "m", "messages": []}"#),
        ("/embeddings", r#"{"model": "m"}"#),
    ] {
        assert_eq!(status_of_post(&server, path, body), 400, "{path} {body}");
    }
    let well_formed = r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}]}"#;
    assert_eq!(
        status_of_post(&server, "/chat/completions", well_formed),
        200
    );
}
