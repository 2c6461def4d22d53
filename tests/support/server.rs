//! A scripted OpenAI-compatible HTTP server on 127.0.0.1, for exercising the host's logic and
//! faults. Its default answers are deterministic functions of the request, and any request with
//! a JSON schema gets an answer that follows the schema. A request that asks for a stream
//! (`"stream": true`) gets the answer its request without it gets, as a stream of events, as
//! real servers do.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

/// What the server sends back for one request.
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
    /// Sent as a `Retry-After` header (seconds).
    pub retry_after: Option<u64>,
}

impl Reply {
    /// An immediate reply with `status` and `body`.
    pub fn new(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            body: body.into(),
            delay: Duration::ZERO,
            retry_after: None,
        }
    }
}

/// One request as the server saw it.
pub struct Incoming {
    pub path: String,
    pub body: Value,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// Whether the request asked for a stream; `body` is the request without `stream` and
    /// `stream_options`, so that a script answers both alike.
    pub stream: bool,
}

type Script = dyn Fn(&Incoming) -> Reply + Send + Sync;

/// A running server; it stops when dropped.
pub struct Server {
    address: String,
    state: Arc<State>,
}

struct State {
    script: Box<Script>,
    requests: Mutex<Vec<(String, Value)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    stopped: AtomicBool,
}

impl Server {
    /// A server answering every request with [`default_reply`].
    pub fn start() -> Server {
        Server::with_script(|path, request| Reply {
            status: 200,
            body: default_reply(path, request).to_string(),
            delay: Duration::ZERO,
            retry_after: None,
        })
    }

    /// A server answering with `script(path, request_json)`.
    pub fn with_script(script: impl Fn(&str, &Value) -> Reply + Send + Sync + 'static) -> Server {
        Server::with_request_script(move |incoming| script(&incoming.path, &incoming.body))
    }

    /// A server answering with `script(request)`, headers included.
    pub fn with_request_script(
        script: impl Fn(&Incoming) -> Reply + Send + Sync + 'static,
    ) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let address = format!("http://{}/v1", listener.local_addr().unwrap());
        let state = Arc::new(State {
            script: Box::new(script),
            requests: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
        });
        let accept_state = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accept_state.stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let state = accept_state.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        Server { address, state }
    }

    /// The base URL, up to `/v1`.
    pub fn url(&self) -> &str {
        &self.address
    }

    /// Every request received so far: (path, JSON body).
    pub fn requests(&self) -> Vec<(String, Value)> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The JSON bodies of the chat-completion requests received so far.
    pub fn chat_requests(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|(path, _)| path.ends_with("/chat/completions"))
            .map(|(_, body)| body)
            .collect()
    }

    /// The requests being answered now (their replies not yet sent).
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests that were being answered at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(
            self.address
                .trim_start_matches("http://")
                .trim_end_matches("/v1"),
        );
    }
}

fn serve(stream: TcpStream, state: &State) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_owned();
        let mut content_length = 0;
        let mut authorization = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().unwrap_or(0);
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("authorization")
            {
                authorization = Some(value.trim().to_owned());
            }
        }
        let mut body = vec![0; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        state
            .requests
            .lock()
            .unwrap()
            .push((path.clone(), request.clone()));
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let stream = request["stream"] == true;
        let mut request = request;
        if let Some(fields) = request.as_object_mut() {
            fields.remove("stream");
            fields.remove("stream_options");
        }
        let mut reply = match malformed(&path, &request) {
            Some(why) => Reply {
                status: 400,
                body: json!({"error": {"message": why, "type": "invalid_request_error"}})
                    .to_string(),
                delay: Duration::ZERO,
                retry_after: None,
            },
            None => (state.script)(&Incoming {
                path,
                body: request,
                authorization,
                stream,
            }),
        };
        if stream && reply.status == 200 && !reply.body.starts_with("data:") {
            let whole: Value = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
            if whole["choices"][0]["message"].is_object() {
                reply.body = streamed(&whole, 4);
            }
        }
        std::thread::sleep(reply.delay);
        state.in_flight.fetch_sub(1, Ordering::SeqCst);
        let retry_after = reply
            .retry_after
            .map(|seconds| format!("retry-after: {seconds}\r\n"))
            .unwrap_or_default();
        // A body of server-sent events goes out as a stream does: event by event.
        let events = reply.body.starts_with("data:");
        let content_type = if events {
            "text/event-stream"
        } else {
            "application/json"
        };
        let head = format!(
            "HTTP/1.1 {} X\r\ncontent-type: {content_type}\r\n{retry_after}content-length: {}\r\n\r\n",
            reply.status,
            reply.body.len(),
        );
        if writer.write_all(head.as_bytes()).is_err() {
            return;
        }
        let parts: Vec<&str> = if events {
            reply.body.split_inclusive("\n\n").collect()
        } else {
            vec![&reply.body]
        };
        for part in parts {
            if writer.write_all(part.as_bytes()).is_err() || writer.flush().is_err() {
                return;
            }
            if events {
                std::thread::sleep(STREAM_GAP);
            }
        }
    }
}

/// The pause between two events of a streamed body.
const STREAM_GAP: Duration = Duration::from_millis(20);

/// A chat completion `reply` (as [`completion`] makes it) as a server streams it: its first
/// choice's text in `pieces` chunks (of whole characters), the finish, the usage, `[DONE]`.
pub fn streamed(reply: &Value, pieces: usize) -> String {
    let text: Vec<char> = reply["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .collect();
    let chunk = |choices: Value| {
        let chunk = json!({"id": reply["id"], "model": reply["model"],
            "object": "chat.completion.chunk", "choices": choices});
        format!("data: {chunk}\n\n")
    };
    let mut body = chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}}]));
    for part in text.chunks(text.len().div_ceil(pieces.max(1)).max(1)) {
        let content: String = part.iter().collect();
        body += &chunk(json!([{"index": 0, "delta": {"content": content}, "finish_reason": null}]));
    }
    let finish = &reply["choices"][0]["finish_reason"];
    body += &chunk(json!([{"index": 0, "delta": {}, "finish_reason": finish}]));
    let usage = json!({"id": reply["id"], "model": reply["model"],
        "object": "chat.completion.chunk", "choices": [], "usage": reply["usage"]});
    body + &format!("data: {usage}\n\ndata: [DONE]\n\n")
}

/// Why a real server would refuse this body with a 400, if it would: it is not a JSON object,
/// or it lacks the model or what the endpoint works on (`messages`, `prompt`, `input`). Every
/// script gets this check first, so a host that sends such a body fails its test.
fn malformed(path: &str, body: &Value) -> Option<String> {
    let Some(object) = body.as_object() else {
        return Some("the body is not a JSON object".into());
    };
    let needed = if path.ends_with("/chat/completions") {
        "messages"
    } else if path.ends_with("/completions") {
        "prompt"
    } else if path.ends_with("/embeddings") {
        "input"
    } else {
        return None;
    };
    ["model", needed]
        .into_iter()
        .find(|field| !object.contains_key(*field))
        .map(|field| format!("you must provide a `{field}` parameter"))
}

/// A deterministic answer, a function of a digest of the whole request: chat and raw
/// completions echo the digest (or follow the request's JSON schema), embeddings are a
/// digest-seeded vector.
pub fn default_reply(path: &str, request: &Value) -> Value {
    if path.ends_with("/embeddings") {
        let inputs = request["input"].as_array().cloned().unwrap_or_default();
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let seed = digest(text.as_str().unwrap_or_default());
                let vector: Vec<f64> = (0..8)
                    .map(|k| ((seed >> (k * 4)) & 0xf) as f64 - 7.5)
                    .collect();
                json!({"index": i, "embedding": vector})
            })
            .collect();
        return json!({"data": data, "usage": {"prompt_tokens": 1, "total_tokens": 1}});
    }
    let n = request["n"].as_u64().unwrap_or(1);
    let schema = &request["response_format"]["json_schema"]["schema"];
    let seed = digest(&request.to_string());
    let texts: Vec<String> = (0..n)
        .map(|i| {
            let tag = format!("{seed:x}-{i}");
            if schema.is_object() {
                follow_schema(schema, &tag).to_string()
            } else {
                format!("answer {tag}")
            }
        })
        .collect();
    completion(request, texts, "stop")
}

/// A completion reply to `request` (chat or raw, as it was asked) whose choices are `texts`,
/// each ending for `finish_reason`.
pub fn completion(request: &Value, texts: Vec<String>, finish_reason: &str) -> Value {
    let chat = request.get("messages").is_some();
    let prompt_length = match request["messages"].as_array() {
        Some(messages) => messages
            .iter()
            .map(|m| m["content"].as_str().map_or(0, str::len) + 1)
            .sum::<usize>()
            .saturating_sub(1),
        None => request["prompt"].as_str().map_or(0, str::len),
    };
    let count = texts.len();
    let choices: Vec<Value> = texts
        .into_iter()
        .enumerate()
        .map(|(i, text)| {
            if chat {
                json!({"index": i, "message": {"role": "assistant", "content": text},
                       "finish_reason": finish_reason})
            } else {
                json!({"index": i, "text": text, "finish_reason": finish_reason})
            }
        })
        .collect();
    // What real servers say about a reply besides it: an id (here a function of the request, as
    // everything this server says), the model that answered, the backend's fingerprint.
    json!({
        "id": format!("cmpl-{:016x}", digest(&request.to_string())),
        "model": request["model"],
        "system_fingerprint": "scripted",
        "choices": choices,
        "usage": {"prompt_tokens": prompt_length / 4 + 1, "completion_tokens": 7 * count},
    })
}

/// A value that follows `schema`, every choice a function of `tag` (each part of the value
/// digests its own tag): numbers and enum values spread over their whole range (a judge's scores
/// over 1..=5, so rewards differ and DRPO's skip rule can be reached), arrays of a length
/// between their bounds whose enum items are distinct and vary, strings that carry the tag.
pub fn follow_schema(schema: &Value, tag: &str) -> Value {
    let pick = digest(tag);
    if let Some(values) = schema["enum"].as_array() {
        return values
            .get(pick as usize % values.len().max(1))
            .cloned()
            .unwrap_or(Value::Null);
    }
    match schema["type"].as_str() {
        Some("object") => {
            let mut object = serde_json::Map::new();
            if let Some(properties) = schema["properties"].as_object() {
                for (name, property) in properties {
                    object.insert(
                        name.clone(),
                        follow_schema(property, &format!("{tag}.{name}")),
                    );
                }
            }
            Value::Object(object)
        }
        Some("array") => {
            let least = schema["minItems"].as_u64().unwrap_or(1).max(1);
            let most = schema["maxItems"].as_u64().unwrap_or(least).max(least);
            let count = least + pick % (most - least + 1);
            let items = &schema["items"];
            let values: Vec<Value> = match items["enum"].as_array() {
                // Consecutive choices from a digest-chosen start: distinct while they last.
                Some(choices) if !choices.is_empty() => (0..count)
                    .map(|i| {
                        choices[(pick.wrapping_add(i) % choices.len() as u64) as usize].clone()
                    })
                    .collect(),
                _ => (0..count)
                    .map(|i| follow_schema(items, &format!("{tag}[{i}]")))
                    .collect(),
            };
            Value::Array(values)
        }
        Some("integer") => json!(in_range(schema, pick)),
        Some("number") => json!(in_range(schema, pick) as f64),
        Some("boolean") => json!(pick.is_multiple_of(2)),
        _ => json!(format!("text {tag}")),
    }
}

/// A number in the schema's `minimum..=maximum` (1..=5 when unbounded) chosen by `pick`.
fn in_range(schema: &Value, pick: u64) -> i64 {
    let minimum = schema["minimum"].as_i64().unwrap_or(1);
    let maximum = schema["maximum"].as_i64().unwrap_or(5).max(minimum);
    minimum + (pick % (maximum - minimum + 1) as u64) as i64
}

/// A stable 64-bit digest of `text` (FNV-1a: the same across runs and platforms).
pub fn digest(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x100000001b3)
    })
}

/// Embeddings by topic, so the nearest examples are known: a text about cats points along the
/// first axis, dogs the second, fish the third; anything else is the fourth.
pub fn topic_vector(text: &str) -> Vec<f64> {
    let text = text.to_lowercase();
    let mut vector = vec![0.0; 4];
    for (axis, word) in ["cat", "dog", "fish"].iter().enumerate() {
        if text.contains(word) {
            vector[axis] = 1.0;
        }
    }
    if vector.iter().all(|&x| x == 0.0) {
        vector[3] = 1.0;
    }
    vector
}

/// A server whose embeddings are [`topic_vector`]s; it answers everything else with
/// [`default_reply`].
pub fn topic_server() -> Server {
    Server::with_script(|path, request| {
        let body = if path.ends_with("/embeddings") {
            let data: Vec<Value> = request["input"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(i, t)| json!({"index": i, "embedding": topic_vector(t.as_str().unwrap())}))
                .collect();
            json!({"data": data, "usage": {"prompt_tokens": 1, "total_tokens": 1}})
        } else {
            default_reply(path, request)
        };
        Reply {
            status: 200,
            body: body.to_string(),
            delay: Duration::ZERO,
            retry_after: None,
        }
    })
}

/// Examples in the published `{query: answer}` shape, dogs first so that "first k" and
/// "nearest k" differ.
pub fn write_topic_examples(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("examples.json");
    let examples = json!({
        "How do I train a dog to sit?": "<START>\nUse treats.\n<END>",
        "Why does my dog bark?": "Boredom, usually.",
        "What do cats eat?": "Meat: cats are carnivores.",
        "How long do cats sleep?": "About 15 hours a day.",
        "Can fish feel pain?": "The evidence says they can.",
    });
    std::fs::write(&path, serde_json::to_string_pretty(&examples).unwrap()).unwrap();
    path
}
