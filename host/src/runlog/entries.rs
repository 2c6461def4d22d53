//! What the frames of a run log hold.

use serde::{Deserialize, Serialize};

use crate::bindings::types::{
    Completion, Example, LlmError, LogLevel, Node, Outcome, Query, Request,
};
use crate::provider::{Evidence, PromptForm, ServerSettings};

/// One frame's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Entry {
    /// Always the first frame.
    Header(Header),
    /// One completed import call.
    Call(CallRecord),
    /// The last frame of a run that ended (successfully or not).
    End(End),
    /// How the run's models are reached, settled before the plugin ran (right after the
    /// header, also when the preflight was skipped).
    Preflight(Preflight),
}

/// Everything needed to understand and repeat a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// [`super::FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// `drpo-host` version that recorded the run.
    pub host_version: String,
    /// The WIT package the plugin was built against, e.g. `drpo:strategy@0.2.0`.
    pub wit_package: String,
    /// sha256 of the plugin's `.wasm` file, hex.
    pub plugin_sha256: String,
    /// The plugin's own name and version, from `describe`.
    pub plugin_name: String,
    pub plugin_version: String,
    /// The options passed to the plugin's `run`, as JSON text (every default resolved).
    pub options: String,
    /// The run's seed: it seeds WASI's random numbers and, through the options, the strategy.
    pub seed: u64,
    /// Which model and provider served each role.
    pub models: Vec<RoleModel>,
    /// Wall-clock start of the run (a timing: may differ between otherwise identical runs).
    pub started_unix_ms: u64,
}

/// The model behind one role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleModel {
    pub role: String,
    /// The model as the user named it, e.g. `gpt-4o` or `local:models/smollm2.gguf`.
    pub model: String,
    /// The provider's identity: endpoint URL, or file name and content hash of a local model.
    pub provider: String,
}

/// One import call: what the plugin asked, and what it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// 0-based position among the run's import calls.
    pub index: u64,
    pub request: CallRequest,
    pub response: CallResponse,
    /// Facts about how the answer was obtained; they may differ between runs.
    pub provenance: Provenance,
}

/// The arguments of one import call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CallRequest {
    Complete(Vec<Request>),
    Embed(Vec<String>),
    Queries { limit: Option<u32> },
    Examples,
    RecordNode(Node),
    Log { level: LogLevel, message: String },
}

impl CallRequest {
    /// The import's name as the WIT file spells it.
    pub fn import_name(&self) -> &'static str {
        match self {
            CallRequest::Complete(_) => "complete",
            CallRequest::Embed(_) => "embed",
            CallRequest::Queries { .. } => "queries",
            CallRequest::Examples => "examples",
            CallRequest::RecordNode(_) => "record-node",
            CallRequest::Log { .. } => "log",
        }
    }
}

/// The result of one import call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CallResponse {
    Complete(Vec<Result<Completion, LlmError>>),
    Embed(Result<Vec<Vec<f32>>, LlmError>),
    Queries(Vec<Query>),
    Examples(Vec<Example>),
    /// For imports that return nothing (`record-node`, `log`).
    Unit,
}

/// How an answer was obtained. Not compared by `replay`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Wall time the host spent answering the call.
    pub elapsed_us: u64,
    /// Per request of a `complete` batch: whether the cache answered it (no tokens billed).
    pub cache_hits: Vec<bool>,
    /// Per request of a `complete` batch: what the server said about its answer, where it said
    /// anything (not for cached answers, refusals, or models in process).
    pub evidence: Vec<Option<Evidence>>,
}

/// The preflight of a run: the small requests that checked each model before the search spent
/// anything, and what they settled. Not one of the plugin's calls: `replay` skips it, `resume`
/// sends its live requests the way it settled, and the spending counts it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preflight {
    /// The form of the base role's prompts (`--base-format`, resolved).
    pub base_form: Option<PromptForm>,
    /// The requests sent (none with `--no-preflight`).
    pub requests: Vec<Request>,
    /// Their results, in order.
    pub results: Vec<Result<Completion, LlmError>>,
    /// What each role's provider settled about its server.
    pub settings: Vec<RoleSettings>,
    /// Wall time of the preflight (a timing).
    pub elapsed_us: u64,
}

impl Preflight {
    /// The preflight's requests as one `complete` call, for the accounting of what was spent.
    pub fn as_call(&self) -> CallRecord {
        CallRecord {
            index: 0,
            request: CallRequest::Complete(self.requests.clone()),
            response: CallResponse::Complete(self.results.clone()),
            provenance: Provenance {
                elapsed_us: self.elapsed_us,
                ..Provenance::default()
            },
        }
    }
}

/// Every model request a run paid for: the `preflight`'s (as one call), then the plugin's
/// import `calls`.
pub fn billed_calls(preflight: Option<&Preflight>, calls: &[CallRecord]) -> Vec<CallRecord> {
    preflight
        .map(Preflight::as_call)
        .into_iter()
        .chain(calls.iter().cloned())
        .collect()
}

/// What one role's provider settled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleSettings {
    pub role: String,
    pub settings: ServerSettings,
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct End {
    pub status: EndStatus,
    /// Wall time of the whole run (a timing).
    pub elapsed_ms: u64,
}

/// The plugin's result, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EndStatus {
    Finished(Outcome),
    /// The plugin returned an error, trapped, or hit a limit; the text says which.
    Failed(String),
}

impl Entry {
    /// The entry with every timing field zeroed: two runs of the same plugin with the same seed
    /// and the same provider answers are equal after this.
    pub fn without_timings(&self) -> Entry {
        let mut entry = self.clone();
        match &mut entry {
            Entry::Header(header) => header.started_unix_ms = 0,
            Entry::Call(call) => call.provenance.elapsed_us = 0,
            Entry::End(end) => end.elapsed_ms = 0,
            Entry::Preflight(preflight) => preflight.elapsed_us = 0,
        }
        entry
    }
}
