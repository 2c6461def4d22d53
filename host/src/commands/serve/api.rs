//! The OpenAI chat-completions wire format as `serve` speaks it: a client's request read and
//! checked (every refusal names the field), and the answers, stream chunks and errors written.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

/// Most stop strings a request may add (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;

/// Most choices a request may ask for.
pub const MAX_CHOICES: u32 = 8;

/// A refusal or failure, answered in OpenAI's error shape (`{"error": {"message", "type",
/// "param", "code"}}`) with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's error type: `invalid_request_error`, `authentication_error`, ...
    pub kind: &'static str,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A request that cannot be answered as sent (400), because of `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: None,
        }
    }

    /// Any other error, with its status and type.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// The error with OpenAI's machine-readable `code`.
    pub fn with_code(self, code: &'static str) -> ApiError {
        ApiError {
            code: Some(code),
            ..self
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            // A queue drains in seconds; clients (the openai library among them) honour it.
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}

/// One chat message as a client sent it, its content reduced to text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMessage {
    /// `system` (a `developer` message counts as one), `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// A chat-completions request, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The conversation; the last message is the user's.
    pub messages: Vec<ClientMessage>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: u32,
    pub seed: Option<u64>,
    /// The client's stop strings (the published ones are always added).
    pub stop: Vec<String>,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub include_usage: bool,
}

impl ChatRequest {
    /// The last user message: the query the examples are retrieved for.
    pub fn query(&self) -> &str {
        &self.messages.last().expect("checked: not empty").content
    }
}

/// The request body as sent; unknown fields are ignored, as OpenAI-compatible servers do.
#[derive(Deserialize)]
struct Wire {
    messages: Option<Vec<WireMessage>>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    n: Option<u32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    tools: Option<Value>,
    functions: Option<Value>,
    response_format: Option<Value>,
}

#[derive(Deserialize)]
struct WireMessage {
    role: String,
    content: Option<Content>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Value>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// Reads and checks a request body; `max_tokens_limit` is the server's `--max-tokens`.
pub fn parse(body: &[u8], max_tokens_limit: u32) -> Result<ChatRequest, ApiError> {
    let wire: Wire = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            "body",
            format!("the request body is not a chat-completions request: {e}"),
        )
    })?;
    if wire.tools.is_some() || wire.functions.is_some() {
        return Err(ApiError::invalid(
            "tools",
            "tools and functions are not supported: the aligned model answers in text",
        ));
    }
    if let Some(format) = &wire.response_format
        && format.get("type").and_then(Value::as_str) != Some("text")
    {
        return Err(ApiError::invalid(
            "response_format",
            "only response_format {\"type\": \"text\"} is supported",
        ));
    }
    let messages = wire
        .messages
        .ok_or_else(|| ApiError::invalid("messages", "the request has no `messages`"))?;
    let messages = messages
        .into_iter()
        .enumerate()
        .map(|(i, message)| client_message(i, message))
        .collect::<Result<Vec<_>, _>>()?;
    match messages.last() {
        None => return Err(ApiError::invalid("messages", "`messages` is empty")),
        Some(last) if last.role != "user" => {
            return Err(ApiError::invalid(
                format!("messages[{}].role", messages.len() - 1),
                format!(
                    "the last message must be the user's (role \"user\"), not \"{}\"",
                    last.role
                ),
            ));
        }
        Some(_) => {}
    }
    let max_tokens = wire.max_completion_tokens.or(wire.max_tokens);
    match max_tokens {
        Some(0) => {
            return Err(ApiError::invalid(
                "max_tokens",
                "max_tokens must be at least 1",
            ));
        }
        Some(asked) if asked > max_tokens_limit => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!(
                    "max_tokens {asked} is over this server's limit of {max_tokens_limit} (its --max-tokens)"
                ),
            ));
        }
        _ => {}
    }
    if let Some(t) = wire.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature must be between 0 and 2, not {t}"),
        ));
    }
    if let Some(p) = wire.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(ApiError::invalid(
            "top_p",
            format!("top_p must be in (0, 1], not {p}"),
        ));
    }
    let n = wire.n.unwrap_or(1);
    if !(1..=MAX_CHOICES).contains(&n) {
        return Err(ApiError::invalid(
            "n",
            format!("n must be between 1 and {MAX_CHOICES}, not {n}"),
        ));
    }
    let stop = match wire.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(list)) => list,
    };
    if stop.len() > MAX_STOP_STRINGS || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop",
            format!("stop takes at most {MAX_STOP_STRINGS} strings, none of them empty"),
        ));
    }
    let stream = wire.stream.unwrap_or(false);
    Ok(ChatRequest {
        messages,
        max_tokens,
        temperature: wire.temperature,
        top_p: wire.top_p,
        n,
        seed: wire.seed,
        stop,
        stream,
        include_usage: stream
            && wire
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
    })
}

/// One message, its role checked and its content made text.
fn client_message(index: usize, message: WireMessage) -> Result<ClientMessage, ApiError> {
    let role = match message.role.as_str() {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        other => {
            return Err(ApiError::invalid(
                format!("messages[{index}].role"),
                format!(
                    "role \"{other}\" is not supported: messages are system, developer, user or assistant"
                ),
            ));
        }
    };
    let content = match message.content {
        None => String::new(),
        Some(Content::Text(text)) => text,
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for (p, part) in parts.iter().enumerate() {
                match (part["type"].as_str(), part["text"].as_str()) {
                    (Some("text"), Some(piece)) => text.push_str(piece),
                    _ => {
                        return Err(ApiError::invalid(
                            format!("messages[{index}].content[{p}]"),
                            "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported",
                        ));
                    }
                }
            }
            text
        }
    };
    Ok(ClientMessage {
        role: role.to_owned(),
        content,
    })
}

/// Why a choice ended, as OpenAI says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
}

impl Finish {
    fn name(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// An answer to give a client: the choices' texts and why each ended, and the tokens spent.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    pub id: String,
    pub model: String,
    pub created: u64,
    pub choices: Vec<(String, Finish)>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

impl Answered {
    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }

    /// The `chat.completion` object.
    pub fn completion(&self) -> Value {
        let choices: Vec<Value> = self
            .choices
            .iter()
            .enumerate()
            .map(|(index, (text, finish))| {
                json!({
                    "index": index,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": null,
                    "finish_reason": finish.name(),
                })
            })
            .collect();
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage(),
        })
    }
}

/// The `chat.completion.chunk` objects of one streamed answer.
#[derive(Debug, Clone)]
pub struct Stream {
    pub id: String,
    pub model: String,
    pub created: u64,
    /// `stream_options.include_usage`: every chunk has a `usage` (null until the last).
    pub include_usage: bool,
}

impl Stream {
    fn chunk(&self, choices: Value) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    /// A choice's first chunk: its role.
    pub fn role(&self, index: usize) -> Value {
        self.chunk(json!([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]))
    }

    /// More text of a choice.
    pub fn content(&self, index: usize, text: &str) -> Value {
        self.chunk(json!([{"index": index, "delta": {"content": text}, "logprobs": null, "finish_reason": null}]))
    }

    /// A choice's last chunk.
    pub fn finish(&self, index: usize, finish: Finish) -> Value {
        self.chunk(json!([{"index": index, "delta": {}, "logprobs": null, "finish_reason": finish.name()}]))
    }

    /// The usage chunk (no choices), when the client asked for it.
    pub fn usage(&self, answered: &Answered) -> Option<Value> {
        self.include_usage.then(|| {
            let mut last = self.chunk(json!([]));
            last["usage"] = answered.usage();
            last
        })
    }
}

/// One server-sent event.
pub fn event(data: &str) -> String {
    format!("data: {data}\n\n")
}

/// The event that ends a stream.
pub const DONE: &str = "data: [DONE]\n\n";

/// What of a choice's growing text can be sent before the answer is complete. The answer is
/// the text cut at its first stop string and trimmed, so the part sent is the text trimmed at
/// the start and cut at a stop string, without what may still change: trailing whitespace (it is
/// trimmed unless more text follows), a tail that may be the start of a stop string, and a
/// character not yet complete (U+FFFD).
#[derive(Debug, Clone, Default)]
pub struct Sendable {
    sent: String,
    stops: Vec<String>,
}

impl Sendable {
    /// For a choice of a request with these stop strings.
    pub fn new(stops: &[String]) -> Sendable {
        Sendable {
            sent: String::new(),
            stops: stops.to_vec(),
        }
    }

    /// The text to send now that the choice reads `text` (none when nothing new can be sent).
    pub fn advance(&mut self, text: &str) -> Option<String> {
        let mut safe = text.trim_start();
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| safe.find(s.as_str()))
            .min()
        {
            safe = &safe[..at];
        }
        loop {
            let before = safe.len();
            safe = safe.trim_end().trim_end_matches('\u{FFFD}');
            for stop in &self.stops {
                safe = &safe[..safe.len() - crate::provider::unfinished_start(safe, stop)];
            }
            if safe.len() == before {
                break;
            }
        }
        let new = safe.strip_prefix(self.sent.as_str())?;
        if new.is_empty() {
            return None;
        }
        let new = new.to_owned();
        self.sent.push_str(&new);
        Some(new)
    }

    /// The rest of the finished `answer` after what was sent; `None` if what was sent is not
    /// the start of the answer (a tokenizer whose decoding changed earlier text).
    pub fn finish(&self, answer: &str) -> Option<String> {
        answer.strip_prefix(self.sent.as_str()).map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: Value) -> Result<ChatRequest, ApiError> {
        parse(body.to_string().as_bytes(), 512)
    }

    #[test]
    fn a_plain_request_is_read_with_its_sampling() {
        let request = parsed(json!({
            "model": "anything",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}
            ],
            "max_completion_tokens": 64, "temperature": 0.7, "top_p": 0.9, "seed": 5,
            "stop": "\n\n", "stream": true, "stream_options": {"include_usage": true},
            "frequency_penalty": 0
        }))
        .unwrap();
        assert_eq!(request.messages[0].role, "system");
        assert_eq!(request.query(), "Hi there");
        assert_eq!(request.max_tokens, Some(64));
        assert_eq!(
            (request.temperature, request.top_p, request.seed),
            (Some(0.7), Some(0.9), Some(5))
        );
        assert_eq!(request.stop, vec!["\n\n".to_owned()]);
        assert!(request.stream && request.include_usage);
    }

    #[test]
    fn each_refusal_names_the_field_at_fault() {
        let user = json!([{"role": "user", "content": "hi"}]);
        let cases = [
            (json!({"messages": []}), "messages"),
            (json!({}), "messages"),
            (
                json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
                "messages[1].role",
            ),
            (
                json!({"messages": [{"role": "tool", "content": "q"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "messages[0].content[0]",
            ),
            (json!({"messages": user, "max_tokens": 513}), "max_tokens"),
            (json!({"messages": user, "max_tokens": 0}), "max_tokens"),
            (json!({"messages": user, "temperature": 3}), "temperature"),
            (json!({"messages": user, "top_p": 0}), "top_p"),
            (json!({"messages": user, "n": 9}), "n"),
            (
                json!({"messages": user, "stop": ["a", "b", "c", "d", "e"]}),
                "stop",
            ),
            (json!({"messages": user, "tools": []}), "tools"),
            (
                json!({"messages": user, "response_format": {"type": "json_object"}}),
                "response_format",
            ),
            (json!({"messages": "hi"}), "body"),
        ];
        for (body, param) in cases {
            let error = parsed(body.clone()).expect_err(&body.to_string());
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(
                error.param.as_deref(),
                Some(param),
                "{body}: {}",
                error.message
            );
        }
        let over = parsed(json!({"messages": user, "max_tokens": 4096})).unwrap_err();
        assert!(
            over.message.contains("512") && over.message.contains("--max-tokens"),
            "{}",
            over.message
        );
    }

    #[test]
    fn only_what_the_answer_will_keep_is_sent_early() {
        let stops = ["<END>".to_owned(), "\n\n".to_owned()];
        let mut sendable = Sendable::new(&stops);
        let mut sent = String::new();
        let mut feed = |text: &str| {
            if let Some(new) = sendable.advance(text) {
                sent.push_str(&new);
            }
            sent.clone()
        };
        assert_eq!(feed("\n "), "");
        assert_eq!(feed("\n Hello"), "Hello");
        assert_eq!(feed("\n Hello wor"), "Hello wor");
        assert_eq!(feed("\n Hello world "), "Hello world");
        assert_eq!(feed("\n Hello world <EN"), "Hello world");
        assert_eq!(feed("\n Hello world \u{FFFD}"), "Hello world");
        assert_eq!(feed("\n Hello world é<END> ignored"), "Hello world é");
        let answer = drpo::icl::clean_answer("\n Hello world é<END> ignored");
        assert_eq!(answer, sent);
        assert_eq!(sendable.finish(&answer).as_deref(), Some(""));
        assert_eq!(sendable.finish("Goodbye"), None);
    }

    #[test]
    fn stream_chunks_carry_role_text_end_and_usage() {
        let answered = Answered {
            id: "chatcmpl-1".into(),
            model: "m".into(),
            created: 7,
            choices: vec![("Hello".into(), Finish::Length)],
            prompt_tokens: 3,
            completion_tokens: 2,
        };
        let stream = |include_usage| Stream {
            id: answered.id.clone(),
            model: answered.model.clone(),
            created: answered.created,
            include_usage,
        };
        let stream = stream(true);
        let role = stream.role(0);
        assert_eq!(role["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(role["usage"], Value::Null, "null until the last chunk");
        assert_eq!(
            stream.content(0, "Hel")["choices"][0]["delta"]["content"],
            "Hel"
        );
        assert_eq!(
            stream.finish(0, Finish::Length)["choices"][0]["finish_reason"],
            "length"
        );
        let usage = stream.usage(&answered).unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 5);
        let without = Stream {
            include_usage: false,
            ..stream.clone()
        };
        assert!(without.usage(&answered).is_none());
        assert!(without.role(0).get("usage").is_none());
        assert_eq!(event("{}"), "data: {}\n\n");
        assert_eq!(
            answered.completion()["choices"][0]["message"]["content"],
            "Hello"
        );
    }
}
