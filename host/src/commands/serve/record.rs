//! `serve --record DIR`: served traffic in a run log of the usual format, so that `inspect`,
//! `log` and `verify`'s chain check read it. The header names `drpo-host serve` where a run
//! names its plugin (there is none, so nothing can be replayed) and holds the serving settings
//! as its options; each request is recorded as the calls a strategy would have made (the
//! retrieval's `embed`, then the `complete`), before its answer is sent, and stopping the
//! server writes the end.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::json;

use crate::bindings::types::Outcome;
use crate::rundir::{RunDir, RunLock};
use crate::runlog::{
    CallRecord, CallRequest, CallResponse, End, EndStatus, Entry, FORMAT_VERSION, Header,
    Provenance, RoleModel, RunLogWriter,
};

/// The name a served log's header gives where a run names its plugin.
pub const SERVER_NAME: &str = "drpo-host serve";

/// Appends served calls to a run log.
pub struct Recorder {
    state: Mutex<State>,
    started: Instant,
    dir: RunDir,
}

struct State {
    writer: RunLogWriter,
    next_index: u64,
    requests: u64,
    _lock: RunLock,
}

impl Recorder {
    /// A new run log in `dir` (created if missing; one holding a run is refused), its header
    /// holding `settings` and `models`.
    pub fn create(
        dir: &Path,
        settings: &serde_json::Value,
        models: Vec<RoleModel>,
    ) -> anyhow::Result<Recorder> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--record: cannot create {}", dir.display()))?;
        let dir = RunDir::new(dir);
        let lock = dir.lock()?;
        if dir.run_log().exists() {
            anyhow::bail!(
                "--record: {} already holds a run log; choose another directory",
                dir.root().display()
            );
        }
        let header = Header {
            format_version: FORMAT_VERSION,
            host_version: env!("CARGO_PKG_VERSION").into(),
            // The calls are recorded in the contract's vocabulary, though no plugin made them.
            wit_package: format!(
                "{}@{}",
                crate::bindings::WIT_PACKAGE,
                crate::bindings::WIT_VERSION
            ),
            plugin_sha256: String::new(),
            plugin_name: SERVER_NAME.into(),
            plugin_version: env!("CARGO_PKG_VERSION").into(),
            options: settings.to_string(),
            seed: 0,
            models,
            started_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let writer = RunLogWriter::create(&dir.run_log(), &Entry::Header(header))
            .with_context(|| format!("--record: cannot write {}", dir.run_log().display()))?;
        Ok(Recorder {
            state: Mutex::new(State {
                writer,
                next_index: 0,
                requests: 0,
                _lock: lock,
            }),
            started: Instant::now(),
            dir,
        })
    }

    /// The run log's path.
    pub fn path(&self) -> std::path::PathBuf {
        self.dir.run_log()
    }

    /// Appends one served request's calls, in order, as consecutive frames.
    pub fn record(
        &self,
        calls: Vec<(CallRequest, CallResponse, Provenance)>,
    ) -> anyhow::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (request, response, provenance) in calls {
            let record = CallRecord {
                index: state.next_index,
                request,
                response,
                provenance,
            };
            state
                .writer
                .append(&Entry::Call(record))
                .with_context(|| format!("cannot record in {}", self.path().display()))?;
            state.next_index += 1;
        }
        state.requests += 1;
        Ok(())
    }

    /// Writes the end: the server stopped after answering what it recorded.
    pub fn finish(&self) -> anyhow::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = Outcome {
            best_prompt: None,
            best_score: None,
            best_path: Vec::new(),
            details: json!({"kind": "serving", "requests": state.requests}).to_string(),
        };
        let end = End {
            status: EndStatus::Finished(outcome),
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        };
        state
            .writer
            .append(&Entry::End(end))
            .with_context(|| format!("cannot finish {}", self.path().display()))?;
        state.writer.sync().context("cannot sync the run log")?;
        Ok(())
    }
}
