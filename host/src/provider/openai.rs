//! The OpenAI-compatible HTTP provider: `/v1/chat/completions` for chat prompts,
//! `/v1/completions` for raw prompts, `/v1/embeddings` for embeddings. Works with OpenAI, vLLM,
//! llama.cpp's server, TGI, SGLang and anything else that speaks the same API.
//!
//! The API key is sent in the `Authorization` header and nowhere else: it is not part of the
//! provider's identity or of anything recorded, and error messages (which quote the server's
//! reply, and a server may echo the header) have it blotted out.
//!
//! Servers differ, and a refusal teaches the provider how to reach its server, once, for the
//! rest of the run ([`ServerSettings`]):
//!
//! - A raw prompt refused because the model is a chat model (OpenAI answers 404 on
//!   `/v1/completions`) is sent as chat from then on, and a chat prompt refused because the
//!   model is not a chat model is sent raw.
//! - A schema refused on `json_schema` makes the provider try a small known-good schema down the
//!   ladder — `json_schema`, then `json_object` with the schema in the prompt, then the schema in
//!   the prompt alone, the JSON extracted from the answer — and keep the first rung its server
//!   takes. A refusal at a rung the server does take is about that request (a bad schema), and
//!   stays an error of that request.
//! - A server that answers one choice whatever `n` asks gets `n` requests of one choice.
//!
//! A caller that watches an answer grow (`serve` streaming to its client) gets it streamed from
//! the server too (`"stream": true`, [`super::sse`]); a server that refuses to stream is asked
//! again without, and one that answers whole anyway is read whole.
//!
//! A refusal is recognised by its status (400, 404, 405, 415, 422, or a 5xx whose body says the
//! request is invalid), not by one server's wording. Client errors are not retried, except 408,
//! 409 and 429; nor is a 5xx that says the request is invalid.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::rate::{RateLimit, RateLimiter};
use super::sse::StreamedReply;
use super::{
    Answer, Embedder, Evidence, Progress, PromptForm, Provider, ServerSettings, StructuredOutput,
};
use crate::bindings::types::{Completion, LlmError, Message, Prompt, Request, Sampling, Usage};

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
    /// Bytes of one reply's body at most; the body is read no further, and the request fails.
    pub max_reply_bytes: u64,
    /// Bytes of the answers (every choice) of one batch's requests to this endpoint at most;
    /// the answers past it are dropped as they arrive, and their requests fail.
    pub max_answers_bytes: u64,
}

/// The default limit of the answers of one batch to one endpoint, in MiB: the shipped `eval`
/// and `generate` strategies send a whole data set in one batch (1,610 answers of a few KiB for
/// AlpacaEval compared twice).
pub const DEFAULT_MAX_ANSWERS_MIB: u64 = 64;

/// The default limit of one reply's body, in MiB: an answer of 16 choices of 16,000 tokens
/// each is about 1 MiB of JSON, and the endpoint's 16 requests in flight may each hold one.
pub const DEFAULT_MAX_REPLY_MIB: u64 = 4;

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            timeout: Duration::from_secs(600),
            concurrency: 16,
            max_reply_bytes: DEFAULT_MAX_REPLY_MIB << 20,
            max_answers_bytes: DEFAULT_MAX_ANSWERS_MIB << 20,
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
    settings: Mutex<ServerSettings>,
    /// Held while the structured-output ladder is walked, so that concurrent refusals probe once.
    settling: tokio::sync::Mutex<()>,
}

/// Why one try failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    /// Another try may succeed (429, 408, 409, 5xx, timeouts, broken connections, bodies that
    /// are not an answer).
    Transient,
    /// The server refused the request's shape (400, 404, 405, 415, 422, or a 5xx naming an
    /// invalid request): a different route, rung or `n` may be taken.
    Refused,
    /// Another permanent client error (401, 403, ...).
    Permanent,
}

/// One failed try: what kind, the error to report, and the wait the server asked for.
struct Failure {
    kind: FailureKind,
    error: LlmError,
    retry_after: Option<Duration>,
    /// The reply's body, lower-cased, for recognising what a refusal is about.
    body: String,
}

impl Failure {
    fn transient(error: LlmError) -> Failure {
        Failure {
            kind: FailureKind::Transient,
            error,
            retry_after: None,
            body: String::new(),
        }
    }
}

/// Told `(choice, text so far)` as a streamed answer grows.
type Watch<'a> = dyn Fn(u32, &str) + Send + Sync + 'a;
type Grown<'a> = &'a Watch<'a>;

/// A request whose answer is read as a stream of events: its prompt form and choices, and who
/// is told the text as it grows.
#[derive(Clone, Copy)]
struct Streaming<'a> {
    form: PromptForm,
    choices: usize,
    grown: Grown<'a>,
}

/// What a request refused by the server is about.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// The model is served on the other endpoint (chat for raw prompts, or the reverse).
    PromptForm,
    /// Anything else: the schema's rung, or the request itself.
    Other,
}

/// The small request that settles the structured-output rung: a schema every server that takes
/// a rung at all takes.
fn probe_request() -> (Prompt, Sampling, Value) {
    (
        Prompt::Chat(vec![Message {
            role: "user".into(),
            content: "Reply with a JSON object whose field `ok` is true.".into(),
        }]),
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: 16,
            n: 1,
            seed: 0,
            stop: Vec::new(),
        },
        json!({
            "type": "object",
            "properties": {"ok": {"type": "boolean"}},
            "required": ["ok"],
            "additionalProperties": false,
        }),
    )
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
            settings: Mutex::default(),
            settling: tokio::sync::Mutex::new(()),
        }
    }

    /// `text` with every occurrence of the API key replaced by `[api key]`, which the record
    /// then shows in its place.
    fn redact(&self, text: String) -> String {
        match self.endpoint.api_key.as_deref().filter(|k| !k.is_empty()) {
            Some(key) if text.contains(key) => text.replace(key, "[api key]"),
            _ => text,
        }
    }

    /// The error with every occurrence of the API key blotted out.
    fn scrub(&self, error: LlmError) -> LlmError {
        match error {
            LlmError::Rejected(text) => LlmError::Rejected(self.redact(text)),
            LlmError::Unavailable(text) => LlmError::Unavailable(self.redact(text)),
            LlmError::BudgetExhausted => LlmError::BudgetExhausted,
        }
    }

    /// The answer with every occurrence of the API key blotted out: a server may echo it in
    /// its choices as well as its errors, and no file of a run may hold it.
    fn scrub_answer(&self, answer: Result<Completion, LlmError>) -> Result<Completion, LlmError> {
        match answer {
            Ok(completion) => Ok(Completion {
                choices: completion
                    .choices
                    .into_iter()
                    .map(|choice| self.redact(choice))
                    .collect(),
                ..completion
            }),
            Err(error) => Err(self.scrub(error)),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.endpoint.base_url)
    }

    fn current(&self) -> ServerSettings {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut ServerSettings)) {
        let mut settings = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        let before = *settings;
        change(&mut settings);
        if *settings != before {
            eprintln!(
                "note: {}: {}",
                Provider::identity(self),
                settings.describe().replace(", ", "; ")
            );
        }
    }

    /// POSTs `body`, retrying transient failures as the policy says; the last failure is
    /// returned with the endpoint, the status and an excerpt.
    async fn post(
        &self,
        path: &str,
        body: &Value,
        streaming: Option<Streaming<'_>>,
    ) -> Result<Value, Failure> {
        let url = self.url(path);
        let mut attempt = 1;
        loop {
            self.rate.start().await;
            let failure = {
                let _slot = self.slots.acquire().await.map_err(|_| {
                    Failure::transient(unavailable(&url, "the provider is shutting down".into()))
                })?;
                match self.try_post(&url, body, streaming).await {
                    Ok(value) => return Ok(value),
                    Err(failure) => failure,
                }
            };
            if failure.kind != FailureKind::Transient || attempt >= self.policy.attempts {
                return Err(match failure.error {
                    LlmError::Unavailable(message) if attempt > 1 => Failure {
                        error: LlmError::Unavailable(format!("{message} (after {attempt} tries)")),
                        ..failure
                    },
                    _ => failure,
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

    async fn try_post(
        &self,
        url: &str,
        body: &Value,
        streaming: Option<Streaming<'_>>,
    ) -> Result<Value, Failure> {
        let mut request = self
            .client
            .post(url)
            .timeout(self.policy.timeout)
            .json(body);
        if let Some(key) = &self.endpoint.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| {
            Failure::transient(unavailable(
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
        let is_stream = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        if let Some(streaming) = streaming.filter(|_| is_stream && status.is_success()) {
            return self.read_stream(url, response, streaming).await;
        }
        let text = self.read_body(url, response).await?;
        if !status.is_success() {
            let message = format!("HTTP {status}: {}", excerpt(&text));
            let kind = failure_kind(status.as_u16(), &text);
            return Err(Failure {
                error: if kind == FailureKind::Transient {
                    unavailable(url, message)
                } else {
                    LlmError::Rejected(format!("{url}: {message}"))
                },
                kind,
                retry_after,
                body: text.to_ascii_lowercase(),
            });
        }
        let value: Value = serde_json::from_str(&text).map_err(|e| {
            Failure::transient(unavailable(
                url,
                format!("the body is not JSON ({e}): {}", excerpt(&text)),
            ))
        })?;
        // Some servers report a failure inside a 200.
        if value.get("error").is_some_and(|e| !e.is_null()) && value.get("choices").is_none() {
            return Err(Failure::transient(unavailable(
                url,
                format!(
                    "HTTP {status} with an error in the body: {}",
                    excerpt(&text)
                ),
            )));
        }
        Ok(value)
    }

    /// The body of `response`, read within the policy's limit ([`Self::read_chunks`]).
    async fn read_body(&self, url: &str, response: reqwest::Response) -> Result<String, Failure> {
        let mut body = Vec::new();
        self.read_chunks(url, response, |chunk| {
            body.extend_from_slice(chunk);
            Ok(())
        })
        .await?;
        Ok(String::from_utf8(body)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    /// Hands `take` the body of `response` chunk by chunk, up to the policy's limit on a reply's
    /// bytes: a body past it fails the request without another try (the server has made, and
    /// billed, the answer, and would likely make it again).
    async fn read_chunks(
        &self,
        url: &str,
        mut response: reqwest::Response,
        mut take: impl FnMut(&[u8]) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        let limit = self.policy.max_reply_bytes;
        if let Some(declared) = response.content_length().filter(|&len| len > limit) {
            return Err(self.too_large(url, declared.to_string()));
        }
        let mut read = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(read_failed(url))? {
            read += chunk.len() as u64;
            if read > limit {
                return Err(self.too_large(url, format!("over {limit}")));
            }
            take(&chunk)?;
        }
        Ok(())
    }

    /// A streamed answer, read event by event up to the policy's limit on a reply's bytes (as
    /// [`Self::read_body`]), into the shape of a reply to a request without `stream`.
    async fn read_stream(
        &self,
        url: &str,
        response: reqwest::Response,
        streaming: Streaming<'_>,
    ) -> Result<Value, Failure> {
        let broken = |message: String| Failure::transient(unavailable(url, message));
        let mut reply = StreamedReply::new(streaming.form, streaming.choices);
        self.read_chunks(url, response, |chunk| {
            reply
                .feed(chunk, &mut |choice, text| (streaming.grown)(choice, text))
                .map_err(broken)
        })
        .await?;
        reply.finish().map_err(broken)
    }

    /// The failure of a reply longer than the policy allows ([`Self::read_chunks`]).
    fn too_large(&self, url: &str, bytes: String) -> Failure {
        Failure {
            kind: FailureKind::Permanent,
            error: unavailable(
                url,
                format!(
                    "the reply's body is {bytes} bytes, more than the {} MiB a reply may hold \
                     (--max-reply-mib, config key max_reply_mib); it was not read further",
                    self.policy.max_reply_bytes >> 20
                ),
            ),
            retry_after: None,
            body: String::new(),
        }
    }

    /// `completion`, if the batch's answers kept so far (`received` bytes) leave room for it;
    /// the host holds a batch's answers until the last one arrives.
    fn keep_answer(
        &self,
        received: &AtomicU64,
        completion: Completion,
    ) -> Result<Completion, LlmError> {
        let limit = self.policy.max_answers_bytes;
        let bytes: u64 = completion.choices.iter().map(|c| c.len() as u64).sum();
        let kept = received.fetch_add(bytes, Ordering::SeqCst) + bytes;
        if kept <= limit {
            return Ok(completion);
        }
        received.fetch_sub(bytes, Ordering::SeqCst);
        Err(unavailable(
            &self.endpoint.base_url,
            format!(
                "this answer of {bytes} bytes would take the batch's answers from this endpoint \
                 past the {} MiB they may hold (--max-answers-mib, config key max_answers_mib)",
                limit >> 20
            ),
        ))
    }

    /// One request of the strategy: sent the way this server takes it (settling that on a
    /// refusal), its JSON extracted when a schema was asked for.
    /// With `grown`, the answer is streamed and `grown` told its text as it grows, unless a
    /// schema was asked for (its JSON may yet be extracted from the text).
    async fn complete_one(
        &self,
        request: &Request,
        grown: Option<Grown<'_>>,
    ) -> Result<(Completion, Evidence), LlmError> {
        let schema: Option<Value> = match &request.json_schema {
            Some(text) => Some(serde_json::from_str(text).map_err(|e| {
                LlmError::Rejected(format!("the request's JSON schema is not JSON: {e}"))
            })?),
            None => None,
        };
        let (mut completion, evidence) = self
            .complete_settled(
                &request.prompt,
                &request.sampling,
                schema.as_ref(),
                grown.filter(|_| schema.is_none()),
            )
            .await?;
        if schema.is_some() {
            for choice in &mut completion.choices {
                if serde_json::from_str::<Value>(choice).is_err()
                    && let Some(json) = extract_json(choice)
                {
                    *choice = json;
                }
            }
        }
        Ok((completion, evidence))
    }

    /// Sends a request under the current settings; a refusal that teaches something about the
    /// server settles it and sends again (each setting settles once, so this ends). A request
    /// streamed (with `grown`) and refused is sent again unstreamed first.
    async fn complete_settled(
        &self,
        prompt: &Prompt,
        sampling: &Sampling,
        schema: Option<&Value>,
        mut grown: Option<Grown<'_>>,
    ) -> Result<(Completion, Evidence), LlmError> {
        let mut extra = Usage {
            prompt_tokens: 0,
            completion_tokens: 0,
        };
        loop {
            let settings = self.current();
            let form = settings.prompts_as.unwrap_or(PromptForm::of(prompt));
            let rung = settings.structured.unwrap_or(StructuredOutput::JsonSchema);
            let shaped = form.shape(prompt.clone());
            let result = if settings.one_choice_per_request && sampling.n > 1 {
                self.complete_each_choice(&shaped, sampling, schema, rung, grown)
                    .await
            } else {
                self.send(&shaped, sampling, schema, rung, grown).await
            };
            let failure = match result {
                Ok((completion, evidence))
                    if completion.choices.len() == sampling.n.max(1) as usize =>
                {
                    return Ok((add_usage(completion, extra), evidence));
                }
                Ok((completion, _))
                    if !completion.choices.is_empty() && !settings.one_choice_per_request =>
                {
                    extra = sum_usage(extra, completion.usage);
                    self.update(|s| s.one_choice_per_request = true);
                    continue;
                }
                Ok((completion, _)) => {
                    return Err(unavailable(
                        &self.url(path_of(form)),
                        format!(
                            "asked for {} choices, got {}",
                            sampling.n.max(1),
                            completion.choices.len()
                        ),
                    ));
                }
                Err(failure) => failure,
            };
            if failure.kind != FailureKind::Refused {
                return Err(failure.error);
            }
            if grown.take().is_some() {
                continue;
            }
            if settings.prompts_as.is_none()
                && refusal_about(form, &failure.body) == Refusal::PromptForm
            {
                let other = match form {
                    PromptForm::Chat => PromptForm::Raw,
                    PromptForm::Raw => PromptForm::Chat,
                };
                self.update(|s| s.prompts_as = Some(other));
                continue;
            }
            if schema.is_some() && form == PromptForm::Chat && settings.structured.is_none() {
                let (settled, spent) = self.settle_structured().await;
                extra = sum_usage(extra, spent);
                if settled != Some(rung) && settled.is_some() {
                    continue;
                }
            }
            return Err(failure.error);
        }
    }

    /// `n` choices as `n` requests of one choice, seeds `seed`, `seed + 1`, ...
    async fn complete_each_choice(
        &self,
        prompt: &Prompt,
        sampling: &Sampling,
        schema: Option<&Value>,
        rung: StructuredOutput,
        grown: Option<Grown<'_>>,
    ) -> Result<(Completion, Evidence), Failure> {
        let singles: Vec<Sampling> = (0..u64::from(sampling.n))
            .map(|i| Sampling {
                n: 1,
                seed: sampling.seed.wrapping_add(i),
                ..sampling.clone()
            })
            .collect();
        // Request i's only choice is choice i of the answer.
        let watchers: Vec<Box<Watch<'_>>> = (0..sampling.n)
            .filter_map(|i| grown.map(|grown| Box::new(move |_, text: &str| grown(i, text)) as _))
            .collect();
        let answers = join_all(singles.iter().enumerate().map(|(i, single)| {
            let grown = watchers.get(i).map(|watcher| &**watcher as Grown<'_>);
            self.send(prompt, single, schema, rung, grown)
        }))
        .await;
        let mut merged = Completion {
            choices: Vec::with_capacity(singles.len()),
            usage: Usage {
                prompt_tokens: 0,
                completion_tokens: 0,
            },
        };
        // The evidence of the first reply stands for all: they went to the same server together.
        let mut first_evidence = None;
        for answer in answers {
            let (completion, evidence) = answer?;
            first_evidence.get_or_insert(evidence);
            merged.usage = sum_usage(merged.usage, completion.usage);
            merged
                .choices
                .extend(completion.choices.into_iter().take(1));
        }
        Ok((merged, first_evidence.unwrap_or_default()))
    }

    /// Walks the structured-output ladder with the probe request and keeps the first rung the
    /// server takes. `None` when no rung could be settled (the server failed in another way);
    /// also returns what the probes spent.
    async fn settle_structured(&self) -> (Option<StructuredOutput>, Usage) {
        let _guard = self.settling.lock().await;
        let mut spent = Usage {
            prompt_tokens: 0,
            completion_tokens: 0,
        };
        if let Some(rung) = self.current().structured {
            return (Some(rung), spent);
        }
        let (prompt, sampling, schema) = probe_request();
        for rung in [StructuredOutput::JsonSchema, StructuredOutput::JsonObject] {
            match self
                .send(&prompt, &sampling, Some(&schema), rung, None)
                .await
            {
                Ok((completion, _)) => {
                    spent = sum_usage(spent, completion.usage);
                    self.update(|s| s.structured = Some(rung));
                    return (Some(rung), spent);
                }
                Err(failure) if failure.kind == FailureKind::Refused => continue,
                Err(_) => return (None, spent),
            }
        }
        self.update(|s| s.structured = Some(StructuredOutput::PromptOnly));
        (Some(StructuredOutput::PromptOnly), spent)
    }

    /// One HTTP request: `prompt` to its endpoint, the schema asked for at `rung`; with
    /// `grown`, streamed, `grown` told each choice's text as it grows.
    async fn send(
        &self,
        prompt: &Prompt,
        sampling: &Sampling,
        schema: Option<&Value>,
        rung: StructuredOutput,
        grown: Option<Grown<'_>>,
    ) -> Result<(Completion, Evidence), Failure> {
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
        let form = PromptForm::of(prompt);
        match prompt {
            Prompt::Chat(messages) => {
                let mut messages: Vec<Value> = messages
                    .iter()
                    .map(|m| json!({"role": m.role, "content": m.content}))
                    .collect();
                if let Some(schema) = schema {
                    if rung == StructuredOutput::JsonSchema {
                        body["response_format"] = json!({
                            "type": "json_schema",
                            "json_schema": {"name": "answer", "strict": true, "schema": schema},
                        });
                    } else {
                        let instruction = schema_instruction(schema);
                        match messages.last_mut() {
                            Some(last) if last["role"] == "user" => {
                                let content = last["content"].as_str().unwrap_or_default();
                                last["content"] = json!(format!("{content}\n\n{instruction}"));
                            }
                            _ => messages.push(json!({"role": "user", "content": instruction})),
                        }
                        if rung == StructuredOutput::JsonObject {
                            body["response_format"] =
                                json!({"type": "json_object", "schema": schema});
                        }
                    }
                }
                body["messages"] = Value::Array(messages);
            }
            Prompt::Raw(text) => {
                // Completion endpoints take no `response_format`: the schema goes in the prompt.
                body["prompt"] = json!(match schema {
                    Some(schema) => format!("{text}\n\n{}\n", schema_instruction(schema)),
                    None => text.clone(),
                });
            }
        }
        let streaming = grown.map(|grown| Streaming {
            form,
            choices: sampling.n.max(1) as usize,
            grown,
        });
        if streaming.is_some() {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        let path = path_of(form);
        let reply = self.post(path, &body, streaming).await?;
        let completion =
            parse_completion(&self.url(path), &reply, form).map_err(Failure::transient)?;
        self.rate
            .spent(
                u64::from(completion.usage.prompt_tokens)
                    + u64::from(completion.usage.completion_tokens),
            )
            .await;
        Ok((completion, evidence_of(&reply)))
    }
}

/// The endpoint a prompt form is sent to.
fn path_of(form: PromptForm) -> &'static str {
    match form {
        PromptForm::Chat => "chat/completions",
        PromptForm::Raw => "completions",
    }
}

/// What kind of failure an HTTP status (and its body) is.
fn failure_kind(status: u16, body: &str) -> FailureKind {
    match status {
        408 | 409 | 429 => FailureKind::Transient,
        400 | 404 | 405 | 415 | 422 => FailureKind::Refused,
        500..=599 if names_invalid_request(body) => FailureKind::Refused,
        500..=599 => FailureKind::Transient,
        _ => FailureKind::Permanent,
    }
}

/// Whether a server error's body says the request itself is invalid (some servers answer a
/// validation failure with a 500).
fn names_invalid_request(body: &str) -> bool {
    let body = body.to_ascii_lowercase();
    [
        "response_format",
        "json_schema",
        "validation error",
        "validationerror",
        "invalid request",
        "invalid_request",
        "unprocessable",
    ]
    .iter()
    .any(|marker| body.contains(marker))
}

/// What a refusal of a `form` prompt is about, from the (lower-cased) body.
fn refusal_about(form: PromptForm, body: &str) -> Refusal {
    // A server without the endpoint at all says so without naming a model.
    let no_such_endpoint =
        (body.contains("not found") || body.trim().is_empty()) && !body.contains("model");
    let other_endpoint = match form {
        PromptForm::Raw => body.contains("chat model") || body.contains("chat/completions"),
        PromptForm::Chat => {
            body.contains("not a chat model")
                || body.contains("v1/completions")
                || body.contains("completion model")
                || body.contains("does not support chat")
                || body.contains("no chat template")
        }
    };
    if other_endpoint || no_such_endpoint {
        Refusal::PromptForm
    } else {
        Refusal::Other
    }
}

fn sum_usage(a: Usage, b: Usage) -> Usage {
    Usage {
        prompt_tokens: a.prompt_tokens.saturating_add(b.prompt_tokens),
        completion_tokens: a.completion_tokens.saturating_add(b.completion_tokens),
    }
}

fn add_usage(mut completion: Completion, extra: Usage) -> Completion {
    completion.usage = sum_usage(completion.usage, extra);
    completion
}

impl Provider for OpenAiProvider {
    fn identity(&self) -> String {
        format!(
            "openai-compatible {} model {}",
            self.endpoint.base_url, self.endpoint.model
        )
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn settings(&self) -> ServerSettings {
        self.current()
    }

    fn restore(&self, settings: ServerSettings) {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = settings;
    }

    fn complete(&self, batch: Vec<Request>) -> BoxFuture<'_, Vec<Answer>> {
        Box::pin(async move {
            let answers = self.complete_with_evidence(batch).await;
            answers.into_iter().map(|(answer, _)| answer).collect()
        })
    }

    fn complete_with_evidence(
        &self,
        batch: Vec<Request>,
    ) -> BoxFuture<'_, Vec<(Answer, Option<Evidence>)>> {
        Box::pin(self.answer_all(batch, None))
    }

    fn complete_observed(
        &self,
        batch: Vec<Request>,
        progress: Progress,
    ) -> BoxFuture<'_, Vec<(Answer, Option<Evidence>)>> {
        Box::pin(self.answer_all(batch, Some(progress)))
    }
}

impl OpenAiProvider {
    /// Every request of a batch, at once; with `progress`, each answer streamed and its text
    /// told as it grows, with the API key blotted out as the answer's is.
    async fn answer_all(
        &self,
        batch: Vec<Request>,
        progress: Option<Progress>,
    ) -> Vec<(Answer, Option<Evidence>)> {
        let received = AtomicU64::new(0);
        let received = &received;
        let progress = progress.as_ref();
        join_all(
            batch
                .into_iter()
                .enumerate()
                .map(|(i, request)| async move {
                    let watcher = progress.map(|progress| {
                        move |choice, text: &str| progress(i, choice, &self.redact_growing(text))
                    });
                    let grown = watcher.as_ref().map(|w| w as Grown<'_>);
                    match self.complete_one(&request, grown).await {
                        Ok((completion, evidence)) => {
                            let kept = self.keep_answer(received, completion);
                            let evidence = evidence.map(|field| self.redact(field));
                            (self.scrub_answer(kept), Some(evidence))
                        }
                        Err(error) => (Err(self.scrub(error)), None),
                    }
                }),
        )
        .await
    }

    /// A growing text with the API key blotted out, and without a tail that may be the start
    /// of the key: it is told only once the text shows it is not.
    fn redact_growing(&self, text: &str) -> String {
        let mut text = self.redact(text.to_owned());
        if let Some(key) = self.endpoint.api_key.as_deref() {
            text.truncate(text.len() - super::unfinished_start(&text, key));
        }
        text
    }
}

/// The failure of a reply's body that broke off while it was read.
fn read_failed(url: &str) -> impl Fn(reqwest::Error) -> Failure + '_ {
    move |e| {
        Failure::transient(unavailable(
            url,
            format!("reading the body failed: {}", without_url(&e)),
        ))
    }
}

impl Embedder for OpenAiProvider {
    fn identity(&self) -> String {
        Provider::identity(self)
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
                    None,
                )
                .await
                .map_err(|failure| failure.error)?;
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

/// What a reply says about itself: its `id`, `system_fingerprint` and `model`, each cut to
/// [`Evidence::FIELD_BYTES`].
fn evidence_of(reply: &Value) -> Evidence {
    let field = |name: &str| {
        reply[name].as_str().map(|text| {
            let end = text.floor_char_boundary(Evidence::FIELD_BYTES);
            text[..end].to_owned()
        })
    };
    Evidence {
        response_id: field("id"),
        system_fingerprint: field("system_fingerprint"),
        model: field("model"),
    }
}

/// The choices of a reply, in order, and its usage. A choice without text (`content: null`, as
/// a refusal or a tool call leaves it) is an error that says why there is none.
fn parse_completion(url: &str, reply: &Value, form: PromptForm) -> Result<Completion, LlmError> {
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
        let text = match form {
            PromptForm::Chat => &choice["message"]["content"],
            PromptForm::Raw => &choice["text"],
        };
        let Some(text) = text.as_str() else {
            return Err(unavailable(
                url,
                format!(
                    "choice {index} has no text (finish_reason {}): {}",
                    choice["finish_reason"],
                    excerpt(&choice.to_string())
                ),
            ));
        };
        if let Some(slot) = texts.get_mut(index) {
            *slot = Some(text.to_owned());
        }
    }
    let tokens = |field: &str| {
        reply["usage"][field]
            .as_u64()
            .map_or(0, |t| u32::try_from(t).unwrap_or(u32::MAX))
    };
    Ok(Completion {
        choices: texts.into_iter().flatten().collect(),
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
    fn a_replys_evidence_is_what_it_says_cut_to_its_limit() {
        let reply = json!({
            "id": "é".repeat(200),
            "model": "served-model",
            "system_fingerprint": 7,
        });
        let evidence = evidence_of(&reply);
        let id = evidence.response_id.unwrap();
        assert!(id.len() <= Evidence::FIELD_BYTES && id.len() >= Evidence::FIELD_BYTES - 1);
        assert!(id.chars().all(|c| c == 'é'));
        assert_eq!(evidence.model.as_deref(), Some("served-model"));
        assert_eq!(evidence.system_fingerprint, None, "not a string: not taken");
    }

    #[test]
    fn refusals_are_recognised_by_status_not_by_wording() {
        for status in [400, 404, 405, 415, 422] {
            assert_eq!(
                failure_kind(status, "anything"),
                FailureKind::Refused,
                "{status}"
            );
        }
        for status in [408, 409, 429, 500, 502, 503] {
            assert_eq!(
                failure_kind(status, "busy"),
                FailureKind::Transient,
                "{status}"
            );
        }
        assert_eq!(
            failure_kind(
                500,
                r#"{"detail":"1 validation error: response_format.type"}"#
            ),
            FailureKind::Refused
        );
        assert_eq!(failure_kind(401, "bad key"), FailureKind::Permanent);
        assert_eq!(failure_kind(403, "forbidden"), FailureKind::Permanent);
    }

    #[test]
    fn a_refusal_names_the_other_endpoint_or_something_else() {
        let openai_chat_only = "this is a chat model and not supported in the v1/completions \
                                endpoint. did you mean to use v1/chat/completions?";
        assert_eq!(
            refusal_about(PromptForm::Raw, openai_chat_only),
            Refusal::PromptForm
        );
        assert_eq!(
            refusal_about(
                PromptForm::Chat,
                "this is not a chat model and thus not supported in the v1/chat/completions \
                 endpoint. did you mean to use v1/completions?"
            ),
            Refusal::PromptForm
        );
        assert_eq!(
            refusal_about(PromptForm::Raw, "not found"),
            Refusal::PromptForm
        );
        assert_eq!(
            refusal_about(PromptForm::Raw, "the model `x` does not exist (not found)"),
            Refusal::Other
        );
        assert_eq!(
            refusal_about(PromptForm::Chat, "invalid schema for response_format"),
            Refusal::Other
        );
    }

    #[test]
    fn usage_too_large_for_the_record_is_capped_not_wrapped() {
        let reply = json!({"choices": [{"index": 0, "message": {"content": "a"}}],
            "usage": {"prompt_tokens": 99_999_999_999u64, "completion_tokens": 7}});
        let usage = parse_completion("u", &reply, PromptForm::Chat)
            .unwrap()
            .usage;
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens),
            (u32::MAX, 7)
        );
    }

    #[test]
    fn a_choice_without_text_is_an_error_that_says_why() {
        let reply = json!({"choices": [{"index": 0, "finish_reason": "content_filter",
            "message": {"role": "assistant", "content": null, "refusal": "no"}}]});
        let error = parse_completion("u", &reply, PromptForm::Chat).unwrap_err();
        assert!(format!("{error:?}").contains("content_filter"), "{error:?}");
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
        let echoed = provider.scrub_answer(Ok(Completion {
            choices: vec![
                "your key is sk-secret, sk-secret".into(),
                "none here".into(),
            ],
            usage: Usage {
                prompt_tokens: 1,
                completion_tokens: 2,
            },
        }));
        assert_eq!(
            echoed.unwrap().choices,
            ["your key is [api key], [api key]", "none here"]
        );
    }

    #[test]
    fn a_streamed_text_never_shows_the_key_or_its_start() {
        let provider = OpenAiProvider::new(Endpoint {
            base_url: "http://127.0.0.1:1/v1".into(),
            model: "m".into(),
            api_key: Some("sk-secret".into()),
        });
        // The text as it grows: a start of the key is held back until the text moves past it.
        assert_eq!(provider.redact_growing("your key is sk-se"), "your key is ");
        assert_eq!(provider.redact_growing("your key is s"), "your key is ");
        assert_eq!(
            provider.redact_growing("your key is sk-secret"),
            "your key is [api key]"
        );
        assert_eq!(provider.redact_growing("sk-seven"), "sk-seven");
        let keyless = OpenAiProvider::new(Endpoint {
            base_url: "http://127.0.0.1:1/v1".into(),
            model: "m".into(),
            api_key: None,
        });
        assert_eq!(keyless.redact_growing("sk-se"), "sk-se");
    }
}
