//! The OpenAI-compatible HTTP provider: `/v1/chat/completions` for chat prompts,
//! `/v1/completions` for raw prompts, `/v1/embeddings` for embeddings. Works with OpenAI, vLLM,
//! llama.cpp's server, TGI, SGLang and anything else that speaks the same API.
//!
//! The API key is sent in the `Authorization` header and nowhere else: it is not part of the
//! provider's identity or of anything recorded, and error messages (which quote the server's
//! reply, and a server may echo the header) have it blotted out.
//!
//! A server that refuses `response_format` (a 400 naming `response_format` or `json_schema`,
//! as some vLLM, TGI and llama.cpp versions do) is detected on its first refusal; from then on
//! that provider asks for the JSON in the prompt instead, schema included, and extracts the JSON
//! value from each answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::rate::{RateLimit, RateLimiter};
use super::{Answer, Provider};
use crate::bindings::types::{Completion, LlmError, Prompt, Request, Usage};

/// Where an OpenAI-compatible model is served.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Base URL up to and including `/v1`, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// The model name sent with each request.
    pub model: String,
    /// Bearer token, if the server wants one.
    pub api_key: Option<String>,
}

/// How hard to try, and how much at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Tries per request, the first included.
    pub attempts: u32,
    /// Wait before the second try; doubled for each further try (plus up to 25% jitter), unless
    /// the server's `Retry-After` says otherwise.
    pub initial_backoff: Duration,
    /// Upper bound of one wait.
    pub max_backoff: Duration,
    /// Limit of one request, reply included (the published code uses 600 s).
    pub timeout: Duration,
    /// Requests in flight to this endpoint at most.
    pub concurrency: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            timeout: Duration::from_secs(600),
            concurrency: 16,
        }
    }
}

/// An OpenAI-compatible model behind HTTP.
pub struct OpenAiProvider {
    endpoint: Endpoint,
    client: reqwest::Client,
    policy: RetryPolicy,
    slots: Arc<Semaphore>,
    rate: RateLimiter,
    /// The server refused `response_format`: schemas go in the prompt.
    schema_in_prompt: AtomicBool,
}

/// One failed try: whether another may succeed, and the wait the server asked for.
struct Failure {
    error: LlmError,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl OpenAiProvider {
    /// A provider for `endpoint` with the default [`RetryPolicy`].
    pub fn new(endpoint: Endpoint) -> OpenAiProvider {
        OpenAiProvider::with_policy(endpoint, RetryPolicy::default())
    }

    /// A provider for `endpoint` that retries and limits as `policy` says.
    pub fn with_policy(endpoint: Endpoint, policy: RetryPolicy) -> OpenAiProvider {
        OpenAiProvider::with_limits(endpoint, policy, RateLimit::per_minute(None, None))
    }

    /// A provider for `endpoint` that retries as `policy` says and keeps to `rate`.
    pub fn with_limits(endpoint: Endpoint, policy: RetryPolicy, rate: RateLimit) -> OpenAiProvider {
        OpenAiProvider {
            endpoint: Endpoint {
                base_url: endpoint.base_url.trim_end_matches('/').to_owned(),
                ..endpoint
            },
            client: reqwest::Client::new(),
            slots: Arc::new(Semaphore::new(policy.concurrency.max(1))),
            policy,
            rate: RateLimiter::new(rate),
            schema_in_prompt: AtomicBool::new(false),
        }
    }

    /// The error with every occurrence of the API key blotted out.
    fn scrub(&self, error: LlmError) -> LlmError {
        let Some(key) = self.endpoint.api_key.as_deref().filter(|k| !k.is_empty()) else {
            return error;
        };
        let clean = |text: String| text.replace(key, "[api key]");
        match error {
            LlmError::Rejected(text) => LlmError::Rejected(clean(text)),
            LlmError::Unavailable(text) => LlmError::Unavailable(clean(text)),
            LlmError::BudgetExhausted => LlmError::BudgetExhausted,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.endpoint.base_url)
    }

    /// POSTs `body`, retrying on 429, 5xx, timeouts and broken connections as the policy
    /// says; the last failure is returned with the endpoint, the status and an excerpt.
    async fn post(&self, path: &str, body: &Value) -> Result<Value, LlmError> {
        let url = self.url(path);
        let mut attempt = 1;
        loop {
            self.rate.start().await;
            let failure = {
                let _slot = self
                    .slots
                    .acquire()
                    .await
                    .map_err(|_| unavailable(&url, "the provider is shutting down".into()))?;
                match self.try_post(&url, body).await {
                    Ok(value) => return Ok(value),
                    Err(failure) => failure,
                }
            };
            if !failure.retryable || attempt >= self.policy.attempts {
                return Err(match failure.error {
                    LlmError::Unavailable(message) if attempt > 1 => {
                        LlmError::Unavailable(format!("{message} (after {attempt} tries)"))
                    }
                    error => error,
                });
            }
            tokio::time::sleep(failure.retry_after.unwrap_or_else(|| self.backoff(attempt))).await;
            attempt += 1;
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .policy
            .initial_backoff
            .saturating_mul(1 << (attempt - 1).min(16))
            .min(self.policy.max_backoff);
        // Jitter spreads out clients that failed together; it never changes an answer.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
    }

    async fn try_post(&self, url: &str, body: &Value) -> Result<Value, Failure> {
        let transient = |error: LlmError| Failure {
            error,
            retryable: true,
            retry_after: None,
        };
        let mut request = self
            .client
            .post(url)
            .timeout(self.policy.timeout)
            .json(body);
        if let Some(key) = &self.endpoint.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| {
            transient(unavailable(
                url,
                format!("request failed: {}", without_url(&e)),
            ))
        })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|seconds| Duration::from_secs(seconds).min(self.policy.max_backoff));
        let text = response.text().await.map_err(|e| {
            transient(unavailable(
                url,
                format!("reading the body failed: {}", without_url(&e)),
            ))
        })?;
        if !status.is_success() {
            let message = format!("HTTP {status}: {}", excerpt(&text));
            let retryable = status.as_u16() == 429 || status.is_server_error();
            return Err(Failure {
                error: if retryable {
                    unavailable(url, message)
                } else {
                    LlmError::Rejected(format!("{url}: {message}"))
                },
                retryable,
                retry_after,
            });
        }
        serde_json::from_str(&text).map_err(|e| {
            transient(unavailable(
                url,
                format!("the body is not JSON ({e}): {}", excerpt(&text)),
            ))
        })
    }

    async fn complete_one(&self, request: &Request) -> Result<Completion, LlmError> {
        let schema_in_prompt = self.schema_in_prompt.load(Ordering::Relaxed);
        match self.complete_as(request, schema_in_prompt).await {
            Err(LlmError::Rejected(message))
                if !schema_in_prompt
                    && request.json_schema.is_some()
                    && refuses_response_format(&message) =>
            {
                if !self.schema_in_prompt.swap(true, Ordering::SeqCst) {
                    eprintln!(
                        "note: {} refuses `response_format`; asking for JSON in the prompt instead",
                        self.identity()
                    );
                }
                self.complete_as(request, true).await
            }
            other => other,
        }
    }

    /// One request; with `schema_in_prompt`, the JSON schema is described in the prompt rather
    /// than sent as `response_format`, and the JSON is extracted from the answers.
    async fn complete_as(
        &self,
        request: &Request,
        schema_in_prompt: bool,
    ) -> Result<Completion, LlmError> {
        let sampling = &request.sampling;
        let mut body = json!({
            "model": self.endpoint.model,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "n": sampling.n.max(1),
            "seed": sampling.seed,
        });
        if !sampling.stop.is_empty() {
            body["stop"] = json!(sampling.stop);
        }
        let (path, chat) = match &request.prompt {
            Prompt::Chat(messages) => {
                let mut messages: Vec<Value> = messages
                    .iter()
                    .map(|m| json!({"role": m.role, "content": m.content}))
                    .collect();
                if let Some(schema) = &request.json_schema {
                    let schema: Value = serde_json::from_str(schema).map_err(|e| {
                        LlmError::Rejected(format!("the request's JSON schema is not JSON: {e}"))
                    })?;
                    if schema_in_prompt {
                        let instruction = schema_instruction(&schema);
                        match messages.last_mut() {
                            Some(last) if last["role"] == "user" => {
                                let content = last["content"].as_str().unwrap_or_default();
                                last["content"] = json!(format!("{content}\n\n{instruction}"));
                            }
                            _ => messages.push(json!({"role": "user", "content": instruction})),
                        }
                    } else {
                        body["response_format"] = json!({
                        "type": "json_schema",
                        "json_schema": {"name": "answer", "strict": true, "schema": schema},
                        });
                    }
                }
                body["messages"] = Value::Array(messages);
                ("chat/completions", true)
            }
            Prompt::Raw(prompt) => {
                body["prompt"] = json!(prompt);
                ("completions", false)
            }
        };
        let reply = self.post(path, &body).await?;
        let mut completion = parse_completion(&self.url(path), &reply, chat, sampling.n.max(1))?;
        self.rate
            .spent(
                u64::from(completion.usage.prompt_tokens)
                    + u64::from(completion.usage.completion_tokens),
            )
            .await;
        if schema_in_prompt && request.json_schema.is_some() {
            for choice in &mut completion.choices {
                if let Some(json) = extract_json(choice) {
                    *choice = json;
                }
            }
        }
        Ok(completion)
    }
}

impl Provider for OpenAiProvider {
    fn identity(&self) -> String {
        format!(
            "openai-compatible {} model {}",
            self.endpoint.base_url, self.endpoint.model
        )
    }

    fn complete(&self, batch: Vec<Request>) -> BoxFuture<'_, Vec<Answer>> {
        Box::pin(async move {
            join_all(batch.into_iter().map(|request| async move {
                Answer::fresh(self.complete_one(&request).await.map_err(|e| self.scrub(e)))
            }))
            .await
        })
    }

    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, LlmError>> {
        Box::pin(async move { self.embed_all(texts).await.map_err(|e| self.scrub(e)) })
    }
}

impl OpenAiProvider {
    async fn embed_all(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, LlmError> {
        {
            let reply = self
                .post(
                    "embeddings",
                    &json!({"model": self.endpoint.model, "input": texts}),
                )
                .await?;
            let url = self.url("embeddings");
            let data = reply["data"]
                .as_array()
                .ok_or_else(|| unavailable(&url, "the reply has no `data` list".into()))?;
            let mut vectors = vec![Vec::new(); texts.len()];
            for (position, item) in data.iter().enumerate() {
                let index = item["index"].as_u64().map_or(position, |i| i as usize);
                let vector: Vec<f32> = item["embedding"]
                    .as_array()
                    .ok_or_else(|| unavailable(&url, format!("item {index} has no embedding")))?
                    .iter()
                    .map(|x| x.as_f64().unwrap_or(0.0) as f32)
                    .collect();
                let slot = vectors
                    .get_mut(index)
                    .ok_or_else(|| unavailable(&url, format!("item index {index} out of range")))?;
                *slot = normalized(vector);
            }
            if vectors.iter().any(Vec::is_empty) {
                return Err(unavailable(&url, "some texts got no embedding".into()));
            }
            Ok(vectors)
        }
    }
}

/// Whether a refusal is about `response_format` itself (the server does not support it).
fn refuses_response_format(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("response_format") || message.contains("json_schema")
}

/// What a prompt says when the schema cannot be sent as `response_format`.
fn schema_instruction(schema: &Value) -> String {
    format!(
        "Reply with a single JSON value that follows this JSON Schema, and nothing else (no \
         prose, no code fence):\n{schema}"
    )
}

/// The JSON value in a free-text answer: the whole text, the inside of a code fence, or the
/// span from the first `{` or `[` to the last matching bracket; compact. `None` when there is
/// no JSON to be found (the answer is then passed on as it is, for the strategy to judge).
fn extract_json(text: &str) -> Option<String> {
    let parse = |candidate: &str| {
        serde_json::from_str::<Value>(candidate.trim())
            .ok()
            .filter(|v| v.is_object() || v.is_array())
            .map(|v| v.to_string())
    };
    if let Some(json) = parse(text) {
        return Some(json);
    }
    if let Some(start) = text.find("```") {
        let fenced = &text[start + 3..];
        let fenced = fenced.strip_prefix("json").unwrap_or(fenced);
        if let Some(end) = fenced.find("```")
            && let Some(json) = parse(&fenced[..end])
        {
            return Some(json);
        }
    }
    let start = text.find(['{', '['])?;
    let close = if text[start..].starts_with('{') {
        '}'
    } else {
        ']'
    };
    let end = text.rfind(close)?;
    (end > start).then(|| parse(&text[start..=end])).flatten()
}

fn parse_completion(url: &str, reply: &Value, chat: bool, n: u32) -> Result<Completion, LlmError> {
    let choices = reply["choices"].as_array().ok_or_else(|| {
        unavailable(
            url,
            format!(
                "the reply has no `choices`: {}",
                excerpt(&reply.to_string())
            ),
        )
    })?;
    let mut texts = vec![None; choices.len()];
    for (position, choice) in choices.iter().enumerate() {
        let index = choice["index"].as_u64().map_or(position, |i| i as usize);
        let text = if chat {
            choice["message"]["content"].as_str()
        } else {
            choice["text"].as_str()
        };
        if let Some(slot) = texts.get_mut(index) {
            *slot = Some(text.unwrap_or_default().to_owned());
        }
    }
    let choices: Vec<String> = texts.into_iter().flatten().collect();
    if choices.len() != n as usize {
        return Err(unavailable(
            url,
            format!("asked for {n} choices, got {}", choices.len()),
        ));
    }
    let tokens = |field: &str| reply["usage"][field].as_u64().unwrap_or(0) as u32;
    Ok(Completion {
        choices,
        usage: Usage {
            prompt_tokens: tokens("prompt_tokens"),
            completion_tokens: tokens("completion_tokens"),
        },
    })
}

fn unavailable(url: &str, message: String) -> LlmError {
    LlmError::Unavailable(format!("{url}: {message}"))
}

/// reqwest's errors repeat the URL; ours already names it.
fn without_url(error: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(error);
    let mut parts = vec![if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "could not connect".to_owned()
    } else {
        "error".to_owned()
    }];
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    parts.join(": ")
}

fn excerpt(text: &str) -> String {
    const LIMIT: usize = 300;
    let trimmed = text.trim();
    if trimmed.chars().count() > LIMIT {
        format!("{}…", trimmed.chars().take(LIMIT).collect::<String>())
    } else {
        trimmed.to_owned()
    }
}

fn normalized(mut vector: Vec<f32>) -> Vec<f32> {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_found_in_prose_fences_and_bare_answers() {
        assert_eq!(extract_json(r#" {"a": 1} "#).as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(
            extract_json("Sure!\n```json\n{\"a\": [1, 2]}\n```\nDone.").as_deref(),
            Some(r#"{"a":[1,2]}"#)
        );
        assert_eq!(
            extract_json(r#"Here it is: {"score": 4} as asked."#).as_deref(),
            Some(r#"{"score":4}"#)
        );
        assert_eq!(extract_json("no json here"), None);
        assert_eq!(extract_json("4"), None);
    }

    #[test]
    fn refusals_of_response_format_are_recognised() {
        assert!(refuses_response_format(
            "http://x/v1/chat/completions: HTTP 400: {\"error\":\"Unknown field: response_format\"}"
        ));
        assert!(refuses_response_format("json_schema is not supported"));
        assert!(!refuses_response_format(
            "HTTP 400: context length exceeded"
        ));
    }

    #[test]
    fn the_key_is_blotted_out_of_errors() {
        let provider = OpenAiProvider::new(Endpoint {
            base_url: "http://127.0.0.1:1/v1".into(),
            model: "m".into(),
            api_key: Some("sk-secret".into()),
        });
        let scrubbed = provider.scrub(LlmError::Rejected("Bearer sk-secret is wrong".into()));
        assert_eq!(
            scrubbed,
            LlmError::Rejected("Bearer [api key] is wrong".into())
        );
    }
}
