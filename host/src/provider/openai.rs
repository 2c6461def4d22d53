//! The OpenAI-compatible HTTP provider: `/v1/chat/completions` for chat prompts,
//! `/v1/completions` for raw prompts, `/v1/embeddings` for embeddings. Works with OpenAI, vLLM,
//! llama.cpp's server, TGI, SGLang and anything else that speaks the same API.
//!
//! The API key is sent in the `Authorization` header and nowhere else: it is not part of the
//! provider's identity, of any error message, or of anything recorded.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

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
        OpenAiProvider {
            endpoint: Endpoint {
                base_url: endpoint.base_url.trim_end_matches('/').to_owned(),
                ..endpoint
            },
            client: reqwest::Client::new(),
            slots: Arc::new(Semaphore::new(policy.concurrency.max(1))),
            policy,
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

    async fn complete_one(&self, request: Request) -> Result<Completion, LlmError> {
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
                body["messages"] = messages
                    .iter()
                    .map(|m| json!({"role": m.role, "content": m.content}))
                    .collect();
                if let Some(schema) = &request.json_schema {
                    let schema: Value = serde_json::from_str(schema).map_err(|e| {
                        LlmError::Rejected(format!("the request's JSON schema is not JSON: {e}"))
                    })?;
                    body["response_format"] = json!({
                        "type": "json_schema",
                        "json_schema": {"name": "answer", "strict": true, "schema": schema},
                    });
                }
                ("chat/completions", true)
            }
            Prompt::Raw(prompt) => {
                body["prompt"] = json!(prompt);
                ("completions", false)
            }
        };
        let reply = self.post(path, &body).await?;
        parse_completion(&self.url(path), &reply, chat, sampling.n.max(1))
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
            join_all(
                batch
                    .into_iter()
                    .map(|request| async move { Answer::fresh(self.complete_one(request).await) }),
            )
            .await
        })
    }

    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, LlmError>> {
        Box::pin(async move {
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
        })
    }
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
