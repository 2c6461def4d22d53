//! Plain Rust mirrors of the WIT records of `drpo:strategy` (`wit/strategy.wit`), and the
//! [`Host`] trait the search runs against.
//!
//! The field names and variants follow the WIT contract one for one (kebab-case there,
//! snake_case here), so a component converts between these and its generated bindings
//! mechanically, and a native caller (tests, the host's own tools) needs no bindings at all.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The part a model plays in DRPO; a request names a role, never a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The model being aligned: it answers the training queries under a candidate prompt.
    Base,
    /// Picks which reward aspects matter for a query.
    Metrics,
    /// Scores an answer on each chosen aspect.
    Judge,
    /// Writes improved prompts from the judge's feedback.
    Optimizer,
}

impl Role {
    /// All roles, in the WIT order.
    pub const ALL: [Role; 4] = [Role::Base, Role::Metrics, Role::Judge, Role::Optimizer];

    /// The role's name as the WIT enum spells it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Base => "base",
            Role::Metrics => "metrics",
            Role::Judge => "judge",
            Role::Optimizer => "optimizer",
        }
    }
}

/// One chat message; `role` is the chat role: "system", "user" or "assistant".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// "system", "user" or "assistant".
    pub role: String,
    /// The message text.
    pub content: String,
}

impl Message {
    /// A message with the given chat role.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// What the model is given: chat messages, or a raw completion prompt passed byte for byte.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    /// Chat messages; the provider applies the model's chat template.
    Chat(Vec<Message>),
    /// A raw completion prompt.
    Raw(String),
}

/// How to sample one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// 0 means greedy decoding.
    pub temperature: f32,
    /// Nucleus sampling mass in (0, 1]; 1 disables it.
    pub top_p: f32,
    /// Upper bound on generated tokens per choice.
    pub max_tokens: u32,
    /// Number of independent choices (at least 1).
    pub n: u32,
    /// Sampling seed.
    pub seed: u64,
    /// Generation stops before the first occurrence of any of these strings.
    pub stop: Vec<String>,
}

/// One model call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Which role answers it.
    pub role: Role,
    /// What the model is given.
    pub prompt: Prompt,
    /// How to sample.
    pub sampling: Sampling,
    /// JSON Schema (as JSON text) the answer must follow; `None` asks for free text.
    pub json_schema: Option<String>,
}

/// Tokens spent by one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub completion_tokens: u32,
}

/// The answer to one request: `sampling.n` choices, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    /// The generated texts.
    pub choices: Vec<String>,
    /// Tokens spent.
    pub usage: Usage,
}

/// Why a request produced no answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LlmError {
    /// A user budget is spent; no further request will succeed in this run.
    BudgetExhausted,
    /// The request is invalid or not allowed; retrying it unchanged fails again.
    Rejected(String),
    /// The provider could not answer after its retries.
    Unavailable(String),
}

impl fmt::Display for LlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LlmError::BudgetExhausted => write!(f, "budget exhausted"),
            LlmError::Rejected(why) => write!(f, "rejected: {why}"),
            LlmError::Unavailable(why) => write!(f, "unavailable: {why}"),
        }
    }
}

impl std::error::Error for LlmError {}

/// A training query; `tags` carry its category, e.g. "harmful".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// Stable identifier across runs.
    pub id: String,
    /// The query text given to the base model.
    pub text: String,
    /// Categories, e.g. "harmful" for a request a good assistant refuses.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// An in-context example: a query and a model answer (in `<START>\n…\n<END>` form).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// The example's query.
    pub query: String,
    /// A good answer to it.
    pub answer: String,
}

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Finest detail.
    Trace,
    /// Diagnostic detail (full prompts).
    Debug,
    /// Progress and decisions.
    Info,
    /// Something was off but the run goes on.
    Warn,
    /// Something failed.
    Error,
}

/// One node of the search tree, reported once it is scored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique within a run; the root is 0.
    pub id: u32,
    /// `None` for the root.
    pub parent: Option<u32>,
    /// Distance from the root.
    pub depth: u32,
    /// The system prompt this node stands for.
    pub prompt: String,
    /// Its reward (mean judge score of its answer).
    pub reward: f64,
    /// A JSON object with the query, answer, aspects, skip flag, ...
    pub details: String,
}

/// What `describe` returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// Short machine-friendly name.
    pub name: String,
    /// The strategy's version (semver).
    pub version: String,
    /// One paragraph of description.
    pub description: String,
    /// JSON Schema of the options object `run` accepts.
    pub options_schema: String,
}

/// What a finished run returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The best prompt found.
    pub best_prompt: Option<String>,
    /// The mean reward of its path.
    pub best_score: Option<f64>,
    /// Node ids from the root to the best node.
    pub best_path: Vec<u32>,
    /// Strategy-specific result as JSON text.
    pub details: String,
}

/// Everything the search needs from the outside world: the `host` interface of the WIT
/// contract, less `queries` and `examples`, which are plain inputs of the search.
pub trait Host {
    /// Runs a batch of requests and answers in the same order.
    fn complete(&mut self, batch: Vec<Request>) -> Vec<Result<Completion, LlmError>>;
    /// Embeds texts; one L2-normalised vector per text, in order.
    fn embed(&mut self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, LlmError>;
    /// Reports a scored node of the search tree.
    fn record_node(&mut self, node: Node);
    /// Writes a line to the run's log.
    fn log(&mut self, level: LogLevel, message: String);
}

/// The expected use of one role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleEstimate {
    /// The role.
    pub role: Role,
    /// Fewest requests a run can make.
    pub min_calls: u64,
    /// Most requests a run can make.
    pub max_calls: u64,
    /// Rough prompt tokens of one request.
    pub prompt_tokens_per_call: u64,
    /// Most completion tokens of one request (its token limit times its choices).
    pub max_completion_tokens_per_call: u64,
}
