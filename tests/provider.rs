//! The OpenAI-compatible provider against servers on 127.0.0.1: retries, `Retry-After`, the
//! per-request timeout, the final error, the concurrency cap, the requests-per-minute limit, the
//! structured-output ladder for servers that refuse `response_format`, servers that ignore `n`,
//! errors inside a 200, and per-role endpoints and keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use drpo_host::bindings::types::{LlmError, Message, Prompt, Request, Role, Sampling};
use drpo_host::provider::Provider;
use drpo_host::provider::openai::{Endpoint, OpenAiProvider, RetryPolicy};
use drpo_tests::server::{Reply, Server, default_reply};

fn request(text: &str) -> Request {
    Request {
        role: Role::Judge,
        prompt: Prompt::Chat(vec![Message {
            role: "user".into(),
            content: text.into(),
        }]),
        sampling: Sampling {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: 16,
            n: 1,
            seed: 0,
            stop: vec![],
        },
        json_schema: None,
    }
}

fn provider(server: &Server, policy: RetryPolicy) -> OpenAiProvider {
    OpenAiProvider::with_policy(
        Endpoint {
            base_url: server.url().into(),
            model: "m".into(),
            api_key: Some("sk-test-secret".into()),
        },
        policy,
    )
}

fn quick() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        concurrency: 8,
        ..RetryPolicy::default()
    }
}

/// A server that fails the first `failures` requests with `status`, then answers.
fn flaky(failures: usize, status: u16, retry_after: Option<u64>) -> Server {
    let seen = AtomicUsize::new(0);
    Server::with_script(move |path, body| {
        if seen.fetch_add(1, Ordering::SeqCst) < failures {
            Reply {
                status,
                body: r#"{"error":{"message":"try again"}}"#.into(),
                delay: Duration::ZERO,
                retry_after,
            }
        } else {
            Reply::new(200, default_reply(path, body).to_string())
        }
    })
}

fn complete(provider: &OpenAiProvider, batch: Vec<Request>) -> Vec<drpo_host::provider::Answer> {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(provider.complete(batch))
}

#[test]
fn rate_limits_and_server_errors_are_retried_until_an_answer_comes() {
    for status in [408, 409, 429, 500, 503] {
        let server = flaky(2, status, None);
        let answers = complete(&provider(&server, quick()), vec![request("hi")]);
        assert!(answers[0].is_ok(), "{status}: {:?}", answers[0]);
        assert_eq!(server.requests().len(), 3, "two failures, then the answer");
    }
}

#[test]
fn retry_after_is_honoured() {
    let server = flaky(1, 429, Some(1));
    let started = Instant::now();
    let answers = complete(&provider(&server, quick()), vec![request("hi")]);
    assert!(answers[0].is_ok());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited as asked"
    );
}

#[test]
fn after_the_last_try_one_clear_error_names_the_endpoint_status_and_body() {
    let server = flaky(usize::MAX, 502, None);
    let answers = complete(&provider(&server, quick()), vec![request("hi")]);
    assert_eq!(server.requests().len(), 3);
    let Err(LlmError::Unavailable(message)) = &answers[0] else {
        panic!("{:?}", answers[0])
    };
    assert!(message.contains(server.url()), "{message}");
    assert!(message.contains("502"), "{message}");
    assert!(message.contains("try again"), "{message}");
    assert!(message.contains("after 3 tries"), "{message}");
    assert!(!message.contains("sk-test-secret"), "{message}");
}

#[test]
fn client_errors_are_not_retried() {
    for status in [400, 401, 403, 404, 422] {
        let server = flaky(usize::MAX, status, None);
        let answers = complete(&provider(&server, quick()), vec![request("hi")]);
        assert_eq!(server.requests().len(), 1, "{status}");
        assert!(matches!(answers[0], Err(LlmError::Rejected(_))), "{status}");
    }
}

#[test]
fn a_server_error_that_says_the_request_is_invalid_is_not_retried() {
    let server = Server::with_script(|_, _| {
        Reply::new(
            500,
            r#"{"detail":"1 validation error for CompletionRequest: max_tokens"}"#,
        )
    });
    let answers = complete(&provider(&server, quick()), vec![request("hi")]);
    assert_eq!(server.requests().len(), 1);
    let Err(LlmError::Rejected(message)) = &answers[0] else {
        panic!("{:?}", answers[0])
    };
    assert!(message.contains("validation error"), "{message}");
}

#[test]
fn an_error_inside_a_200_is_an_error_and_is_retried() {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let server = Server::with_script(move |path, body| Reply {
        status: 200,
        body: if counter.fetch_add(1, Ordering::SeqCst) == 0 {
            r#"{"error":{"message":"upstream overloaded"}}"#.into()
        } else {
            default_reply(path, body).to_string()
        },
        delay: Duration::ZERO,
        retry_after: None,
    });
    let answers = complete(&provider(&server, quick()), vec![request("hi")]);
    assert!(answers[0].is_ok(), "{:?}", answers[0]);
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

#[test]
fn a_choice_with_null_content_is_an_error_not_an_empty_answer() {
    let server = Server::with_script(|_, _| {
        Reply::new(
            200,
            r#"{"choices":[{"index":0,"finish_reason":"content_filter","message":{"role":"assistant","content":null}}]}"#,
        )
    });
    let answers = complete(&provider(&server, quick()), vec![request("hi")]);
    let Err(error) = &answers[0] else {
        panic!("{:?}", answers[0])
    };
    assert!(format!("{error:?}").contains("content_filter"), "{error:?}");
}

#[test]
fn a_server_that_answers_one_choice_whatever_n_says_gets_n_requests() {
    let server = Server::with_script(|path, body| {
        let mut single = body.clone();
        single["n"] = serde_json::json!(1);
        Reply::new(200, default_reply(path, &single).to_string())
    });
    let provider = provider(&server, quick());
    let mut three = request("write three");
    three.sampling.n = 3;
    three.sampling.temperature = 0.7;
    let answers = complete(&provider, vec![three.clone()]);
    let choices = &answers[0].as_ref().unwrap().choices;
    assert_eq!(choices.len(), 3);
    let requests = server.requests();
    assert_eq!(
        requests.len(),
        4,
        "one that came back short, then three of one"
    );
    let mut seeds: Vec<u64> = requests[1..]
        .iter()
        .map(|(_, body)| body["seed"].as_u64().unwrap())
        .collect();
    seeds.sort_unstable();
    assert_eq!(seeds, vec![0, 1, 2], "sent concurrently, one seed each");
    // Remembered: the next request goes out as three at once.
    complete(&provider, vec![three]);
    assert_eq!(server.requests().len(), 7);
}

#[test]
fn a_schema_refused_where_json_schema_works_is_an_error_of_that_request_only() {
    let server = Server::with_script(|path, body| {
        let schema = &body["response_format"]["json_schema"]["schema"];
        if schema.to_string().contains("bad") {
            return Reply {
                status: 400,
                body: r#"{"error":{"message":"Invalid schema for response_format 'answer'"}}"#
                    .into(),
                delay: Duration::ZERO,
                retry_after: None,
            };
        }
        Reply::new(200, default_reply(path, body).to_string())
    });
    let provider = provider(&server, quick());
    let with_schema = |schema: &str| Request {
        json_schema: Some(schema.into()),
        ..request("judge this")
    };
    let bad = complete(
        &provider,
        vec![with_schema(
            r#"{"type":"object","properties":{"bad":{"type":"widget"}}}"#,
        )],
    );
    let Err(LlmError::Rejected(message)) = &bad[0] else {
        panic!("{:?}", bad[0])
    };
    assert!(message.contains("Invalid schema"), "{message}");
    let good = complete(
        &provider,
        vec![with_schema(
            r#"{"type":"object","properties":{"score":{"type":"integer"}},"required":["score"]}"#,
        )],
    );
    assert!(good[0].is_ok(), "{:?}", good[0]);
    let last = server.requests().last().cloned().unwrap().1;
    assert_eq!(
        last["response_format"]["type"], "json_schema",
        "response_format is not abandoned: {last}"
    );
}

#[test]
fn a_reply_slower_than_the_timeout_is_retried_then_reported() {
    let server = Server::with_script(|path, body| Reply {
        status: 200,
        body: default_reply(path, body).to_string(),
        delay: Duration::from_secs(2),
        retry_after: None,
    });
    let policy = RetryPolicy {
        attempts: 2,
        timeout: Duration::from_millis(300),
        ..quick()
    };
    let answers = complete(&provider(&server, policy), vec![request("hi")]);
    let Err(LlmError::Unavailable(message)) = &answers[0] else {
        panic!("{:?}", answers[0])
    };
    assert!(message.contains("timed out"), "{message}");
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn a_body_that_is_not_json_is_retried() {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let server = Server::with_script(move |path, body| Reply {
        status: 200,
        body: if counter.fetch_add(1, Ordering::SeqCst) == 0 {
            "<html>gateway</html>".into()
        } else {
            default_reply(path, body).to_string()
        },
        delay: Duration::ZERO,
        retry_after: None,
    });
    let answers = complete(&provider(&server, quick()), vec![request("hi")]);
    assert!(answers[0].is_ok(), "{:?}", answers[0]);
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

#[test]
fn a_batch_of_32_never_exceeds_the_concurrency_cap_and_reaches_it() {
    let server = Server::with_script(|path, body| Reply {
        status: 200,
        body: default_reply(path, body).to_string(),
        delay: Duration::from_millis(100),
        retry_after: None,
    });
    let policy = RetryPolicy {
        concurrency: 4,
        ..quick()
    };
    let batch = (0..32).map(|i| request(&format!("q{i}"))).collect();
    let answers = complete(&provider(&server, policy), batch);
    assert!(answers.iter().all(|a| a.is_ok()));
    assert_eq!(server.max_in_flight(), 4);
}

#[test]
fn a_server_that_refuses_response_format_is_asked_in_plain_text_from_then_on() {
    let server = Server::with_script(|_, body| {
        if body.get("response_format").is_some() {
            return Reply {
                status: 400,
                body: r#"{"error":{"message":"Unrecognized request argument: response_format"}}"#
                    .into(),
                delay: Duration::ZERO,
                retry_after: None,
            };
        }
        Reply {
            status: 200,
            body: serde_json::json!({
                "choices": [{"index": 0, "message": {"role": "assistant",
                    "content": "Here you are:\n```json\n{\"score\": 4}\n```"}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 5},
            })
            .to_string(),
            delay: Duration::ZERO,
            retry_after: None,
        }
    });
    let provider = provider(&server, quick());
    let schema =
        r#"{"type":"object","properties":{"score":{"type":"integer"}},"required":["score"]}"#;
    let with_schema = |text: &str| Request {
        json_schema: Some(schema.into()),
        ..request(text)
    };
    let first = complete(&provider, vec![with_schema("one")]);
    assert_eq!(
        first[0].as_ref().unwrap().choices,
        vec![r#"{"score":4}"#.to_owned()]
    );
    assert_eq!(
        server.requests().len(),
        4,
        "refused once, a probe refused at json_schema and json_object, then asked in plain text"
    );
    let second = complete(&provider, vec![with_schema("two")]);
    assert!(second[0].is_ok(), "{:?}", second[0]);
    let requests = server.requests();
    assert_eq!(requests.len(), 5, "the refusal is remembered");
    let plain = &requests[4].1;
    assert!(plain.get("response_format").is_none());
    let prompt = plain["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(prompt.starts_with("two"), "{prompt}");
    assert!(
        prompt.contains(r#""score""#),
        "the schema is in the prompt: {prompt}"
    );
}

#[test]
fn requests_per_minute_are_kept_over_a_sliding_window() {
    use drpo_host::provider::rate::RateLimit;
    // Each reply takes a quarter of the window, so requests admitted together overlap and
    // requests of different windows do not.
    let server = Server::with_script(|path, body| Reply {
        status: 200,
        body: default_reply(path, body).to_string(),
        delay: Duration::from_millis(100),
        retry_after: None,
    });
    let provider = OpenAiProvider::with_limits(
        Endpoint {
            base_url: server.url().into(),
            model: "m".into(),
            api_key: None,
        },
        quick(),
        RateLimit {
            requests: Some(2),
            tokens: None,
            window: Duration::from_millis(400),
        },
    );
    let started = Instant::now();
    let batch = (0..6).map(|i| request(&format!("q{i}"))).collect();
    let answers = complete(&provider, batch);
    let elapsed = started.elapsed();
    assert!(answers.iter().all(|a| a.is_ok()));
    // Two at once, two more after one window, the last two after two windows.
    assert!(elapsed >= Duration::from_millis(800), "{elapsed:?}");
    assert_eq!(
        server.max_in_flight(),
        2,
        "two requests per window, together"
    );
}

#[test]
fn a_role_can_have_its_own_endpoint_and_key_variable() {
    use std::sync::Mutex;
    let shared = Server::start();
    let keys: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let seen = keys.clone();
    let judge = Server::with_request_script(move |incoming| {
        seen.lock().unwrap().push(incoming.authorization.clone());
        Reply::new(
            200,
            default_reply(&incoming.path, &incoming.body).to_string(),
        )
    });
    let work = tempfile::tempdir().unwrap();
    let run = |name: &str, key: Option<&str>| {
        let mut command = drpo_tests::host(&work.path().join("cache"));
        if let Some(key) = key {
            command.env("DRPO_TEST_JUDGE_KEY", key);
        } else {
            command.env_remove("DRPO_TEST_JUDGE_KEY");
        }
        drpo_tests::output(
            command
                .arg("run")
                .arg("--strategy")
                .arg(drpo_tests::plugin("beam"))
                .arg("--log-dir")
                .arg(work.path().join(name))
                .args(drpo_tests::roles_at(shared.url()))
                .args(["--depth", "2", "--no-cache"])
                .args(["--eval-api-base", judge.url()])
                .args(["--eval-api-key-env", "DRPO_TEST_JUDGE_KEY"]),
        )
    };
    let missing = run("missing", None);
    assert!(!missing.status.success());
    assert!(
        drpo_tests::text(&missing).contains("$DRPO_TEST_JUDGE_KEY is not set"),
        "{}",
        drpo_tests::text(&missing)
    );

    let out = run("run", Some("judge-key"));
    assert!(out.status.success(), "{}", drpo_tests::text(&out));
    let keys = keys.lock().unwrap().clone();
    assert!(
        !keys.is_empty(),
        "the judge's requests went to its own server"
    );
    assert!(
        keys.iter()
            .all(|k| k.as_deref() == Some("Bearer judge-key")),
        "{keys:?}"
    );
    // The judge's server saw only judgements (its preflight check among them); every other
    // role stayed on the shared one.
    let judged = judge.requests().len();
    let log = drpo_host::runlog::read_log(&work.path().join("run/run.log")).unwrap();
    let judge_requests: usize = log
        .billed_calls()
        .iter()
        .map(|call| match &call.request {
            drpo_host::runlog::CallRequest::Complete(batch) => {
                batch.iter().filter(|r| r.role == Role::Judge).count()
            }
            _ => 0,
        })
        .sum();
    assert_eq!(judged, judge_requests);
    assert!(!shared.requests().is_empty());
}
