//! `drpo-host serve`: the aligned model behind an OpenAI-compatible endpoint.
//!
//! Each `/v1/chat/completions` request is answered as `generate` answers a query: the run's best
//! prompt (or the one given) as the system message with the k in-context examples nearest the
//! last user message, in the published inference format (`prompt`). A model in process decodes
//! the requests waiting together (`dispatch`); an upstream endpoint gets them one by one.
//!
//! Safe by default: it listens on loopback unless a key is given (`--api-key-env`, checked as a
//! bearer token in constant time); bodies, `max_tokens`, requests answered at once and requests
//! waiting are bounded, and a refusal says which limit (413, 400, 429). Its stderr shows one
//! line per request without prompt, answer or key; `--record DIR` keeps everything in a run log
//! (`record`). SIGTERM or Ctrl-C stops it after the requests under way are answered.

mod api;
mod dispatch;
mod prompt;
mod record;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use sha2::{Digest, Sha256};

use self::api::{Answered, ApiError, ChatRequest, Finish};
use self::dispatch::{Admission, Dispatch};
use self::prompt::Aligned;
use self::record::Recorder;
use super::aligned;
use crate::bindings::types::LlmError;
use crate::cli::ServeArgs;
use crate::config::ModelFlags;
use crate::endpoints::EndpointFlags;
use crate::provider::Router;
use crate::runlog::{CallRequest, CallResponse, Provenance};

/// Serves until SIGTERM or Ctrl-C, then finishes the requests under way (and the record).
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let key = api_key(&args)?;
    let listener = listen(&args.listen, key.is_some()).await?;
    let address = listener
        .local_addr()
        .context("cannot read the address listened on")?;

    let flags = &args.aligned;
    let model = aligned::model(flags)?;
    let system_prompt = aligned::system_prompt(flags)?;
    let examples = aligned::examples(flags)?;
    let embedding_model = aligned::embedding_model(flags, &examples);
    let model_flags = ModelFlags {
        api_base: flags.api_base.clone(),
        device: flags.device.clone(),
        prefix_cache_tokens: flags.prefix_cache_tokens,
        ..ModelFlags::default()
    };
    let (router, models) = crate::services::one_model_router(
        &model,
        embedding_model.as_deref(),
        &model_flags,
        &EndpointFlags::default(),
    )?;
    let example_vectors = match &embedding_model {
        Some(name) => {
            let texts = examples.iter().map(|e| e.query.clone()).collect();
            let vectors = router.embed(texts).await.map_err(|e| {
                anyhow::anyhow!("the embedding model {name} cannot embed the examples: {e}")
            })?;
            Some(vectors)
        }
        None => None,
    };
    let concurrent = args.max_concurrent as usize;
    // A model in process decodes its requests together; a server takes them one by one.
    let dispatch = Dispatch::continuous(router.clone(), concurrent)
        .unwrap_or_else(|| Dispatch::direct(router.clone(), concurrent));
    let aligned = Aligned {
        system_prompt,
        examples,
        example_vectors,
        k: usize::from(flags.k),
        raw: flags.raw,
        client_system: args.client_system,
    };
    let recorder = match &args.record {
        Some(dir) => {
            let settings = json!({
                "served_model_name": args.served_model_name,
                "system_prompt": aligned.system_prompt,
                "examples": aligned.examples,
                "k": aligned.k,
                "retrieve": aligned.retrieves(),
                "raw": aligned.raw,
                "client_system": args.client_system,
                "max_tokens": args.max_tokens,
            });
            Some(Recorder::create(dir, &settings, models)?)
        }
        None => None,
    };

    let served = Arc::new(Served {
        aligned,
        router,
        dispatch,
        admission: Admission::new(concurrent, args.max_queue as usize),
        recorder,
        key_digest: key.map(|key| digest(key.as_bytes())),
        model_name: args.served_model_name.clone(),
        max_tokens: args.max_tokens,
        max_body_bytes: args.max_body_bytes,
        started: unix_seconds(),
        next_id: AtomicU64::new(1),
        quiet: args.quiet,
    });
    let app = axum::Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(not_found)
        .with_state(served.clone());
    eprintln!(
        "serving {model} as {:?} at http://{address}/v1 ({}); SIGTERM or Ctrl-C stops",
        args.served_model_name,
        describe(&served.aligned)
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(stop_signal())
        .await
        .context("the server failed")?;
    eprintln!("stopped: every request under way was answered");
    if let Some(recorder) = &served.recorder {
        recorder.finish()?;
        eprintln!("recorded in {}", recorder.path().display());
    }
    Ok(())
}

/// What the server answers with, in a few words for its first line.
fn describe(aligned: &Aligned) -> String {
    let examples = match (aligned.examples.len(), aligned.retrieves()) {
        (0, _) => "no examples".to_owned(),
        (n, true) => format!("the {} nearest of {n} examples", aligned.k.min(n)),
        (n, false) => format!("the first {} of {n} examples", aligned.k.min(n)),
    };
    format!(
        "system prompt of {} characters, {examples}",
        aligned.system_prompt.chars().count()
    )
}

/// The key clients must send, from the variable `--api-key-env` names.
fn api_key(args: &ServeArgs) -> anyhow::Result<Option<String>> {
    let Some(variable) = &args.api_key_env else {
        return Ok(None);
    };
    match std::env::var(variable) {
        Ok(key) if !key.trim().is_empty() => Ok(Some(key)),
        _ => bail!(
            "--api-key-env {variable}: ${variable} is not set or is empty; set it to the key \
             clients must send"
        ),
    }
}

/// Binds `address`; an address other than loopback only with a key.
async fn listen(address: &str, keyed: bool) -> anyhow::Result<tokio::net::TcpListener> {
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host(address)
        .await
        .with_context(|| format!("--listen {address}: not an address to listen on (HOST:PORT)"))?
        .collect();
    let Some(first) = resolved.first() else {
        bail!("--listen {address}: the name resolves to no address");
    };
    if !keyed && !resolved.iter().all(|a| a.ip().is_loopback()) {
        bail!(
            "refusing to listen on {address} without an API key: anyone who can reach it could \
             use the model. Give --api-key-env VAR (clients then send the key in $VAR as a \
             bearer token), or listen on loopback (127.0.0.1:PORT)"
        );
    }
    tokio::net::TcpListener::bind(first)
        .await
        .with_context(|| format!("--listen {address}: cannot listen on {first}"))
}

/// Resolves when the process is asked to stop (SIGTERM, or SIGINT from Ctrl-C).
async fn stop_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    eprintln!("stopping: answering the requests under way, accepting no new ones");
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A request ready for the model, and the calls made to prepare it (to record).
struct Prepared {
    request: crate::bindings::types::Request,
    calls: Vec<(CallRequest, CallResponse, Provenance)>,
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the handlers share.
struct Served {
    aligned: Aligned,
    router: Router,
    dispatch: Dispatch,
    admission: Arc<Admission>,
    recorder: Option<Recorder>,
    /// sha256 of the key clients must send, if any.
    key_digest: Option<[u8; 32]>,
    model_name: String,
    max_tokens: u32,
    max_body_bytes: usize,
    /// When the server started (Unix seconds): the `created` of its model.
    started: u64,
    next_id: AtomicU64,
    quiet: bool,
}

impl Served {
    /// Checks the bearer token. The digests are compared whole, so the time taken says nothing
    /// about how much of a wrong key was right.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.key_digest else {
            return Ok(());
        };
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(|token| digest(token.trim().as_bytes()));
        let matches = sent.is_some_and(|sent| {
            sent.iter()
                .zip(expected)
                .fold(0u8, |differs, (a, b)| differs | (a ^ b))
                == 0
        });
        if matches {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "a valid API key is needed: send it as `Authorization: Bearer KEY`",
            )
            .with_code("invalid_api_key"))
        }
    }

    /// The request body, within `--max-body-bytes`.
    async fn body(&self, headers: &HeaderMap, body: Body) -> Result<axum::body::Bytes, ApiError> {
        let limit = self.max_body_bytes;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("the request body is over this server's limit of {limit} bytes (its --max-body-bytes)"),
            )
            .with_code("body_too_large")
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(too_large());
        }
        axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| too_large())
    }

    /// What the model is asked for `chat`: the examples retrieved for its query (the `embed`
    /// call, to record) and the request, shaped for the model.
    async fn prepare(&self, chat: &ChatRequest) -> Result<Prepared, ApiError> {
        let mut calls = Vec::with_capacity(2);
        let query_vector = if self.aligned.retrieves() {
            let texts = vec![chat.query().to_owned()];
            let started = Instant::now();
            let embedded = self.router.embed(texts.clone()).await;
            let vector = match &embedded {
                Ok(vectors) if vectors.len() == 1 => vectors[0].clone(),
                Ok(vectors) => {
                    let why = format!(
                        "the embedding model returned {} vectors for 1 text",
                        vectors.len()
                    );
                    return Err(upstream_error(&LlmError::Unavailable(why)));
                }
                Err(error) => return Err(upstream_error(error)),
            };
            calls.push((
                CallRequest::Embed(texts),
                CallResponse::Embed(embedded),
                provenance(started, Vec::new(), Vec::new()),
            ));
            Some(vector)
        } else {
            None
        };
        let examples = self.aligned.examples_for(query_vector.as_deref());
        let request = self.aligned.request(chat, &examples, self.max_tokens)?;
        Ok(Prepared {
            request: self.router.shape(request),
            calls,
        })
    }

    /// The model's answer to a prepared request, recorded before it is given; `watcher`, if
    /// given, is told the text as it grows.
    async fn complete(
        &self,
        id: &str,
        prepared: Prepared,
        watcher: Option<dispatch::Watcher>,
    ) -> Result<Answered, ApiError> {
        let Prepared { request, mut calls } = prepared;
        let max_tokens = request.sampling.max_tokens;
        let started = Instant::now();
        let (answer, evidence) = self.dispatch.answer(request.clone(), watcher).await;
        calls.push((
            CallRequest::Complete(vec![request]),
            CallResponse::Complete(vec![answer.clone()]),
            provenance(started, vec![false], vec![evidence]),
        ));
        if let Some(recorder) = &self.recorder {
            recorder.record(calls).map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    format!("the answer could not be recorded, so it is not given: {e:#}"),
                )
            })?;
        }
        let completion = answer.map_err(|e| upstream_error(&e))?;
        let single = completion.choices.len() == 1;
        let choices = completion
            .choices
            .iter()
            .map(|text| {
                // A single choice that used every token it was allowed was cut short.
                let finish = if single && completion.usage.completion_tokens >= max_tokens {
                    Finish::Length
                } else {
                    Finish::Stop
                };
                (drpo::icl::clean_answer(text), finish)
            })
            .collect();
        Ok(Answered {
            id: id.to_owned(),
            model: self.model_name.clone(),
            created: unix_seconds(),
            choices,
            prompt_tokens: completion.usage.prompt_tokens,
            completion_tokens: completion.usage.completion_tokens,
        })
    }

    /// One line on stderr per request: no prompt, answer or key.
    fn log(&self, id: &str, status: StatusCode, started: Instant, detail: &str) {
        if !self.quiet {
            eprintln!(
                "{id} {} {:.2}s {}",
                status.as_u16(),
                started.elapsed().as_secs_f64(),
                crate::terminal::line(detail)
            );
        }
    }
}

fn provenance(
    started: Instant,
    cache_hits: Vec<bool>,
    evidence: Vec<Option<crate::provider::Evidence>>,
) -> Provenance {
    Provenance {
        elapsed_us: started.elapsed().as_micros() as u64,
        cache_hits,
        evidence,
    }
}

/// A model that could not answer: a refusal of the request itself is the client's (400), any
/// other failure the upstream's (502).
fn upstream_error(error: &LlmError) -> ApiError {
    match error {
        LlmError::Rejected(why) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("the model refused the request: {why}"),
        ),
        other => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "server_error",
            format!("the model could not answer: {other}"),
        ),
    }
}

async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn list_models(State(served): State<Arc<Served>>, headers: HeaderMap) -> Response {
    if let Err(error) = served.authorize(&headers) {
        return error.into_response();
    }
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": served.model_name,
            "object": "model",
            "created": served.started,
            "owned_by": "drpo",
        }],
    }))
    .into_response()
}

async fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "no such endpoint: this server answers /v1/chat/completions, /v1/models and /health",
    )
    .into_response()
}

async fn chat_completions(
    State(served): State<Arc<Served>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let id = format!("chatcmpl-{}", served.next_id.fetch_add(1, Ordering::SeqCst));
    let admitted = async {
        served.authorize(&headers)?;
        let body = served.body(&headers, body).await?;
        let chat = api::parse(&body, served.max_tokens)?;
        let ticket = served.admission.admit()?;
        let prepared = served.prepare(&chat).await?;
        Ok::<_, ApiError>((chat, ticket, prepared))
    }
    .await;
    let (chat, ticket, prepared) = match admitted {
        Ok(admitted) => admitted,
        Err(error) => {
            served.log(&id, error.status, started, &error.message);
            return error.into_response();
        }
    };
    if chat.stream {
        return stream(served, id, chat, ticket, prepared, started);
    }
    let answered = served.complete(&id, prepared, None).await;
    drop(ticket);
    match answered {
        Ok(answered) => {
            served.log(&id, StatusCode::OK, started, &tokens(&answered));
            axum::Json(answered.completion()).into_response()
        }
        Err(error) => {
            served.log(&id, error.status, started, &error.message);
            error.into_response()
        }
    }
}

fn tokens(answered: &Answered) -> String {
    format!(
        "{}+{} tokens",
        answered.prompt_tokens, answered.completion_tokens
    )
}

/// A streamed answer: the headers and each choice's role at once, then the text as the model
/// writes it (what of it the answer will keep, [`api::Sendable`]), then the ends, the usage
/// when asked, and `[DONE]`. A model that fails after the headers ends the stream with an
/// `error` event.
fn stream(
    served: Arc<Served>,
    id: String,
    chat: ChatRequest,
    ticket: dispatch::Ticket,
    prepared: Prepared,
    started: Instant,
) -> Response {
    let (events, body) = futures::channel::mpsc::unbounded::<Result<String, Infallible>>();
    let stream = api::Stream {
        id: id.clone(),
        model: served.model_name.clone(),
        created: unix_seconds(),
        include_usage: chat.include_usage,
    };
    let send = move |text: String| events.unbounded_send(Ok(text)).is_ok();
    tokio::spawn(async move {
        let _ticket = ticket;
        let choices = chat.n as usize;
        for index in 0..choices {
            send(api::event(&stream.role(index).to_string()));
        }
        let stops = prepared.request.sampling.stop.clone();
        let mut sendable = vec![api::Sendable::new(&stops); choices];
        let (watcher, mut texts) = tokio::sync::mpsc::unbounded_channel::<(u32, String)>();
        let answering = served.complete(&id, prepared, Some(watcher));
        tokio::pin!(answering);
        let answered = loop {
            tokio::select! {
                answered = &mut answering => break answered,
                Some((choice, text)) = texts.recv() => {
                    if let Some(new) = sendable.get_mut(choice as usize).and_then(|s| s.advance(&text)) {
                        send(api::event(&stream.content(choice as usize, &new).to_string()));
                    }
                }
            }
        };
        match answered {
            Ok(answered) => {
                served.log(&id, StatusCode::OK, started, &tokens(&answered));
                for (index, (text, finish)) in answered.choices.iter().enumerate() {
                    match sendable.get(index).and_then(|s| s.finish(text)) {
                        Some(rest) if !rest.is_empty() => {
                            send(api::event(&stream.content(index, &rest).to_string()));
                        }
                        Some(_) => {}
                        None => {
                            let error = ApiError::new(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "server_error",
                                "the text streamed so far is not the start of the answer",
                            );
                            send(api::event(&error.body().to_string()));
                            return;
                        }
                    }
                    send(api::event(&stream.finish(index, *finish).to_string()));
                }
                if let Some(usage) = stream.usage(&answered) {
                    send(api::event(&usage.to_string()));
                }
                send(api::DONE.to_owned());
            }
            Err(error) => {
                served.log(&id, error.status, started, &error.message);
                send(api::event(&error.body().to_string()));
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}
