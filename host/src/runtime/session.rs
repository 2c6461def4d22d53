//! Answers a plugin's import calls: live (through the providers), or from a recorded run log,
//! and records every call it answers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::future::BoxFuture;

use crate::bindings::drpo::strategy::{host, types};
use crate::bindings::types::{Completion, Example, LlmError, LogLevel, Node, Query, Request};
use crate::runlog::{
    CallRecord, CallRequest, CallResponse, Entry, Evidence, Provenance, RunLogWriter,
};

use super::divergence::{Divergence, first_difference};
use super::records::RecordMeter;
use super::sandbox::StoreState;

/// The answers to a `complete` batch, in order, with how each was obtained (recorded in the
/// call's provenance; `replay` does not compare it).
#[derive(Debug, Clone, Default)]
pub struct Answered {
    pub answers: Vec<Result<Completion, LlmError>>,
    /// Which answers the response cache gave.
    pub cache_hits: Vec<bool>,
    /// What the server said about each answer, where it said anything.
    pub evidence: Vec<Option<Evidence>>,
}

/// What answers the live calls of a run: the host's call pipeline (`calls/`), which the
/// runtime knows only through this trait.
pub trait Live: Send + Sync {
    /// Answers a `complete` batch, in order, and says which answers the response cache gave
    /// (recorded in the call's provenance).
    fn complete(&self, batch: Vec<Request>) -> BoxFuture<'_, Answered>;

    /// Answers an `embed` call.
    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, LlmError>>;

    /// The run's training queries, at most `limit` of them (all when `None`).
    fn queries(&self, limit: Option<u32>) -> Vec<Query>;

    /// The run's in-context examples.
    fn examples(&self) -> Vec<Example>;
}

/// Sees every call as it is answered (progress display, human log, tree collection).
pub trait Observer: Send {
    /// Called once per answered call; `replayed` is true when the answer came from the log.
    fn on_call(&mut self, record: &CallRecord, replayed: bool);

    /// Called when a live call is about to be answered (so a display can show what is in
    /// flight); replayed calls are answered at once and only reach [`Observer::on_call`].
    fn on_request(&mut self, _request: &CallRequest) {}
}

/// No observer.
impl Observer for () {
    fn on_call(&mut self, _record: &CallRecord, _replayed: bool) {}
}

/// An observer the session holds while [`crate::runtime::Runtime::run`] still owns it.
pub(crate) struct Lent<O>(pub(crate) Arc<Mutex<O>>);

impl<O: Observer> Observer for Lent<O> {
    fn on_call(&mut self, record: &CallRecord, replayed: bool) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .on_call(record, replayed);
    }

    fn on_request(&mut self, request: &CallRequest) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .on_request(request);
    }
}

/// How the session answers the plugin.
pub struct Session {
    /// Recorded calls not yet replayed, in order.
    recorded: VecDeque<CallRecord>,
    /// What answers live calls; `None` for a pure replay, where running past the log is an
    /// error.
    live: Option<Arc<dyn Live>>,
    writer: Option<RunLogWriter>,
    pub(crate) observer: Option<Box<dyn Observer>>,
    next_index: u64,
    replayed: u64,
    live_calls: u64,
    /// Why the session stopped the plugin, when it did (a divergence, a log write failure).
    pub(crate) failure: Option<SessionFailure>,
    /// The limits on what the plugin records, and what it recorded so far.
    pub(crate) records: RecordMeter,
}

/// A reason the host (not the plugin) ended a run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionFailure {
    #[error(transparent)]
    Divergence(#[from] Divergence),
    #[error(
        "the run log ends after call {calls}, but the plugin made another `{import}` call; \
         the recorded run was interrupted (use `drpo-host resume` to finish it)"
    )]
    LogExhausted { calls: u64, import: &'static str },
    #[error("cannot append to the run log: {0}")]
    LogWrite(String),
    #[error("{0}")]
    RecordLimit(String),
}

impl Session {
    /// A session that answers every call live and records it.
    pub fn live(live: Arc<dyn Live>, writer: RunLogWriter) -> Session {
        Session::new(Vec::new(), Some(live), Some(writer))
    }

    /// A session that answers from `recorded` only and fails on anything else.
    pub fn replay(recorded: Vec<CallRecord>) -> Session {
        Session::new(recorded, None, None)
    }

    /// A session that answers from `recorded`, then goes on live, appending to the log.
    pub fn resume(recorded: Vec<CallRecord>, live: Arc<dyn Live>, writer: RunLogWriter) -> Session {
        Session::new(recorded, Some(live), Some(writer))
    }

    fn new(
        recorded: Vec<CallRecord>,
        live: Option<Arc<dyn Live>>,
        writer: Option<RunLogWriter>,
    ) -> Session {
        Session {
            recorded: recorded.into(),
            live,
            writer,
            observer: None,
            next_index: 0,
            replayed: 0,
            live_calls: 0,
            failure: None,
            records: RecordMeter::default(),
        }
    }

    /// Calls answered from the log so far.
    pub fn replayed_calls(&self) -> u64 {
        self.replayed
    }

    /// Calls answered live so far.
    pub fn live_calls(&self) -> u64 {
        self.live_calls
    }

    /// Recorded calls the plugin never asked for (a replay that ended early).
    pub fn unreplayed_calls(&self) -> usize {
        self.recorded.len()
    }

    /// The log writer, to append the end of the run.
    pub fn writer_mut(&mut self) -> Option<&mut RunLogWriter> {
        self.writer.as_mut()
    }

    /// Answers one call. An `Err` stops the plugin; the reason is kept in `failure`.
    async fn answer(&mut self, mut request: CallRequest) -> wasmtime::Result<CallResponse> {
        // Before the comparison with a recorded call: a recorded log line is the cut one.
        if let Err(refusal) = self.records.admit(&mut request) {
            return Err(self.fail(SessionFailure::RecordLimit(refusal)));
        }
        let index = self.next_index;
        self.next_index += 1;
        if let Some(recorded) = self.recorded.pop_front() {
            if let Some((field, logged, asked)) = first_difference(&recorded.request, &request) {
                return Err(self.fail(SessionFailure::Divergence(Divergence {
                    index,
                    import: request.import_name(),
                    role: role_at(&request, &field),
                    field,
                    recorded: logged,
                    requested: asked,
                })));
            }
            self.replayed += 1;
            if let Some(observer) = &mut self.observer {
                observer.on_call(&recorded, true);
            }
            return Ok(recorded.response);
        }
        let Some(live) = self.live.clone() else {
            return Err(self.fail(SessionFailure::LogExhausted {
                calls: index,
                import: request.import_name(),
            }));
        };
        if let Some(observer) = &mut self.observer {
            observer.on_request(&request);
        }
        let started = Instant::now();
        let (response, answered) = match &request {
            CallRequest::Complete(batch) => {
                let mut answered = live.complete(batch.clone()).await;
                let answers = std::mem::take(&mut answered.answers);
                (CallResponse::Complete(answers), answered)
            }
            CallRequest::Embed(texts) => (
                CallResponse::Embed(live.embed(texts.clone()).await),
                Answered::default(),
            ),
            CallRequest::Queries { limit } => (
                CallResponse::Queries(live.queries(*limit)),
                Answered::default(),
            ),
            CallRequest::Examples => (CallResponse::Examples(live.examples()), Answered::default()),
            // What the plugin records is the run log's business alone.
            CallRequest::RecordNode(_) | CallRequest::Log { .. } => {
                (CallResponse::Unit, Answered::default())
            }
        };
        let record = CallRecord {
            index,
            request,
            response,
            provenance: Provenance {
                elapsed_us: started.elapsed().as_micros() as u64,
                cache_hits: answered.cache_hits,
                evidence: answered.evidence,
            },
        };
        if let Some(writer) = &mut self.writer {
            let entry = Entry::Call(record);
            if let Err(error) = writer.append(&entry) {
                return Err(self.fail(SessionFailure::LogWrite(error.to_string())));
            }
            let Entry::Call(written) = entry else {
                unreachable!("constructed as a call above")
            };
            return Ok(self.finish_live(written));
        }
        Ok(self.finish_live(record))
    }

    fn finish_live(&mut self, record: CallRecord) -> CallResponse {
        self.live_calls += 1;
        if let Some(observer) = &mut self.observer {
            observer.on_call(&record, false);
        }
        record.response
    }

    fn fail(&mut self, failure: SessionFailure) -> wasmtime::Error {
        let error = wasmtime::format_err!("{failure}");
        self.failure = Some(failure);
        error
    }
}

/// For a divergence inside a `complete` batch, the role of the request that differs.
fn role_at(request: &CallRequest, field: &str) -> Option<String> {
    let CallRequest::Complete(batch) = request else {
        return None;
    };
    let index: usize = field
        .strip_prefix("batch[")?
        .split(']')
        .next()?
        .parse()
        .ok()?;
    batch.get(index).map(|r| r.role.name().to_owned())
}

/// A response of the wrong kind can only come from a log whose request matched but whose
/// response was altered, which the hash chain rules out; still, fail cleanly.
fn mismatched(import: &str) -> wasmtime::Error {
    wasmtime::format_err!("the run log answers a `{import}` call with another call's response")
}

impl types::Host for StoreState {}

impl host::Host for StoreState {
    async fn complete(
        &mut self,
        batch: Vec<Request>,
    ) -> wasmtime::Result<Vec<Result<Completion, LlmError>>> {
        match self.session.answer(CallRequest::Complete(batch)).await? {
            CallResponse::Complete(results) => Ok(results),
            _ => Err(mismatched("complete")),
        }
    }

    async fn embed(
        &mut self,
        texts: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Vec<f32>>, LlmError>> {
        match self.session.answer(CallRequest::Embed(texts)).await? {
            CallResponse::Embed(result) => Ok(result),
            _ => Err(mismatched("embed")),
        }
    }

    async fn queries(&mut self, limit: Option<u32>) -> wasmtime::Result<Vec<Query>> {
        match self.session.answer(CallRequest::Queries { limit }).await? {
            CallResponse::Queries(queries) => Ok(queries),
            _ => Err(mismatched("queries")),
        }
    }

    async fn examples(&mut self) -> wasmtime::Result<Vec<Example>> {
        match self.session.answer(CallRequest::Examples).await? {
            CallResponse::Examples(examples) => Ok(examples),
            _ => Err(mismatched("examples")),
        }
    }

    async fn record_node(&mut self, node: Node) -> wasmtime::Result<()> {
        self.session.answer(CallRequest::RecordNode(node)).await?;
        Ok(())
    }

    async fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        self.session
            .answer(CallRequest::Log { level, message })
            .await?;
        Ok(())
    }
}
