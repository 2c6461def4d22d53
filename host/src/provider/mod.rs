//! Providers execute model requests; the [`Router`] sends each request to its role's provider.
//!
//! A provider answers completions ([`Provider`]): the OpenAI-compatible HTTP client
//! ([`openai`]), an in-process local model ([`local`]), or the [`scripted`] provider that tests
//! use. An [`Embedder`] embeds texts: the HTTP client again, or a sentence encoder in process
//! ([`embedder`]). Only the call pipeline sees the router, so new providers slot in without
//! touching it.

pub mod embedder;
pub mod local;
pub mod openai;
pub mod rate;
pub mod scripted;
mod sse;

use std::sync::Arc;

use drpo_models::PrefillProgress;
use futures::future::{BoxFuture, join_all};
use serde::{Deserialize, Serialize};

use crate::bindings::types::{Completion, LlmError, Message, Prompt, Request, Role};
use crate::roles::PerRole;

/// The answer to one request of a batch.
pub type Answer = Result<Completion, LlmError>;

/// Told the text of each choice of a batch as it grows, where a provider can tell it (a model in
/// process): `(request, choice, text so far)`, the request's index in the batch. The text can
/// end in the middle of a character (U+FFFD) or of a stop string; the answer is what counts.
pub type Progress = Arc<dyn Fn(usize, u32, &str) + Send + Sync>;

/// What a server said about an answer besides the answer, kept in the run log so that an
/// auditor can hold the run to it: the reply's `id`, its `system_fingerprint` (the backend
/// configuration that served it) and the `model` it says answered, which may not be the one
/// asked for. Each field as the server sent it, cut to [`Evidence::FIELD_BYTES`]. Nothing here
/// changes what the strategy sees.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub response_id: Option<String>,
    pub system_fingerprint: Option<String>,
    pub model: Option<String>,
}

impl Evidence {
    /// The most bytes of one field kept: the evidence is a few identifiers, and a server that
    /// sends more is not given room in the run log for it.
    pub const FIELD_BYTES: usize = 256;

    /// Each field with `f` applied (to blot out a secret).
    pub fn map(self, mut f: impl FnMut(String) -> String) -> Evidence {
        Evidence {
            response_id: self.response_id.map(&mut f),
            system_fingerprint: self.system_fingerprint.map(&mut f),
            model: self.model.map(&mut f),
        }
    }
}

/// How a prompt reaches a model: as chat messages (the server or the model applies its chat
/// template) or as one raw completion string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PromptForm {
    Chat,
    Raw,
}

impl PromptForm {
    /// The prompt in this form: a chat becomes the concatenation of its messages' contents (for
    /// DRPO's base prompt, system then user: the published raw string byte for byte), a raw
    /// string becomes one user message.
    pub fn shape(self, prompt: Prompt) -> Prompt {
        match (self, prompt) {
            (PromptForm::Raw, Prompt::Chat(messages)) => {
                Prompt::Raw(messages.into_iter().map(|m| m.content).collect())
            }
            (PromptForm::Chat, Prompt::Raw(text)) => Prompt::Chat(vec![Message {
                role: "user".into(),
                content: text,
            }]),
            (_, prompt) => prompt,
        }
    }

    /// The form a prompt is in.
    pub fn of(prompt: &Prompt) -> PromptForm {
        match prompt {
            Prompt::Chat(_) => PromptForm::Chat,
            Prompt::Raw(_) => PromptForm::Raw,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PromptForm::Chat => "chat",
            PromptForm::Raw => "raw",
        }
    }
}

/// How a server asks for an answer that follows a JSON schema, best first: the ladder a provider
/// walks down when its server refuses a rung.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StructuredOutput {
    /// `response_format` of type `json_schema`, strict.
    JsonSchema,
    /// `response_format` of type `json_object` (with the schema as `schema`, which llama.cpp's
    /// server enforces), and the schema in the prompt.
    JsonObject,
    /// No `response_format`: the schema in the prompt, the JSON extracted from the answer.
    PromptOnly,
}

impl StructuredOutput {
    pub fn name(self) -> &'static str {
        match self {
            StructuredOutput::JsonSchema => "json_schema",
            StructuredOutput::JsonObject => "json_object",
            StructuredOutput::PromptOnly => "schema in the prompt",
        }
    }
}

/// What a provider learned about its server from refusals: settled once, then used for the rest
/// of the run, and recorded in the run log so that a resumed run sends requests the same way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSettings {
    /// Raw prompts are sent as chat (the model is served on chat completions only), or chat
    /// prompts as raw (the reverse); `None`: each as it is.
    pub prompts_as: Option<PromptForm>,
    /// How schemas are asked for; `None` until a refusal made the provider settle it (the top
    /// rung is used meanwhile).
    pub structured: Option<StructuredOutput>,
    /// The server answers one choice per request whatever `n` says: `n` choices are asked as
    /// `n` requests.
    pub one_choice_per_request: bool,
}

impl ServerSettings {
    /// A short description for the terminal and `inspect`; empty when nothing was settled.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(form) = self.prompts_as {
            parts.push(format!("prompts sent as {}", form.name()));
        }
        if let Some(rung) = self.structured {
            parts.push(format!("schemas as {}", rung.name()));
        }
        if self.one_choice_per_request {
            parts.push("one choice per request".to_owned());
        }
        parts.join(", ")
    }
}

/// Answers completion requests.
pub trait Provider: Send + Sync {
    /// Identifies the model and where it runs (endpoint URL and model name, or a local file and
    /// its hash), for the run log header. Never contains a secret.
    fn identity(&self) -> String;

    /// The form DRPO's base prompt takes under `--base-format auto`: chat, unless the model is
    /// known to have no chat template.
    fn natural_form(&self) -> PromptForm {
        PromptForm::Chat
    }

    /// Whether the preflight should check this provider with a request before a run: a
    /// server can refuse; a model loaded in process has already shown it can answer.
    fn is_remote(&self) -> bool {
        false
    }

    /// What this provider has settled about its server (nothing, for providers that need no
    /// settling).
    fn settings(&self) -> ServerSettings {
        ServerSettings::default()
    }

    /// Takes over settings recorded by an earlier part of the run (a resumed run).
    fn restore(&self, settings: ServerSettings) {
        let _ = settings;
    }

    /// One line on the work this provider has done in this process, where it does the work
    /// itself (a model in process: its prefill), for the progress display; `None` otherwise.
    fn work(&self) -> Option<String> {
        None
    }

    /// Tokens this provider has generated in this process so far, counted as they come, where
    /// it generates them itself (a model in process); `None` otherwise. A display reads it while
    /// a long batch is decoded.
    fn tokens_generated(&self) -> Option<u64> {
        None
    }

    /// How far this provider's prefills have come in this process, where it reads prompts
    /// itself (a model in process); `None` otherwise. A display reads it while a long batch's
    /// prompts are read, before its first token.
    fn prefill_progress(&self) -> Option<PrefillProgress> {
        None
    }

    /// A handle through which requests join the batch this provider is decoding, between two
    /// of its steps, up to `rows` rows at once (a model in process), for a server whose
    /// requests arrive one by one; `None` where requests go to the provider a call at a time.
    fn continuous(&self, rows: usize) -> Option<local::Continuous> {
        let _ = rows;
        None
    }

    /// Answers a batch, in order. Requests are independent; a provider may run them
    /// concurrently or decode them together.
    fn complete(&self, batch: Vec<Request>) -> BoxFuture<'_, Vec<Answer>>;

    /// Answers a batch as [`Provider::complete`] does, each answer with what the server said
    /// about it ([`Evidence`]). The default gives none: a model in process has nothing to add.
    fn complete_with_evidence(
        &self,
        batch: Vec<Request>,
    ) -> BoxFuture<'_, Vec<(Answer, Option<Evidence>)>> {
        Box::pin(async move {
            let answers = self.complete(batch).await;
            answers.into_iter().map(|answer| (answer, None)).collect()
        })
    }

    /// Answers a batch as [`Provider::complete_with_evidence`] does, telling `progress` the text
    /// of each choice as it is generated. The default tells nothing before the answers: only a
    /// model in process sees its tokens come.
    fn complete_observed(
        &self,
        batch: Vec<Request>,
        progress: Progress,
    ) -> BoxFuture<'_, Vec<(Answer, Option<Evidence>)>> {
        let _ = progress;
        self.complete_with_evidence(batch)
    }
}

/// How many bytes at the end of a growing `text` may be the start of `needle` (a proper start:
/// the whole of it is found by searching): what a stream holds back until the text goes on, so
/// that it never sends half of a stop string or of a secret.
pub fn unfinished_start(text: &str, needle: &str) -> usize {
    (1..needle.len())
        .rev()
        .filter(|&k| needle.is_char_boundary(k))
        .find(|&k| text.ends_with(&needle[..k]))
        .unwrap_or(0)
}

/// Embeds texts.
pub trait Embedder: Send + Sync {
    /// Identifies the model and where it runs, as [`Provider::identity`] does.
    fn identity(&self) -> String;

    /// Embeds texts (L2-normalised vectors, in order).
    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, LlmError>>;
}

/// Which provider serves each role, and which serves embeddings.
#[derive(Clone)]
pub struct Router {
    providers: PerRole<Arc<dyn Provider>>,
    embedder: Option<Arc<dyn Embedder>>,
    /// The form of the base role's prompts (`--base-format`); `None` sends them as asked.
    base_form: Option<PromptForm>,
}

impl Router {
    /// The distinct providers serving `roles`, each with the roles it serves (a model serving
    /// several roles once).
    pub fn providers_of(&self, roles: &[Role]) -> Vec<(&Arc<dyn Provider>, Vec<Role>)> {
        let mut providers: Vec<(&Arc<dyn Provider>, Vec<Role>)> = Vec::new();
        for role in Role::ALL.into_iter().filter(|r| roles.contains(r)) {
            let provider = self.provider(role);
            match providers.iter_mut().find(|(p, _)| Arc::ptr_eq(p, provider)) {
                Some((_, served)) => served.push(role),
                None => providers.push((provider, vec![role])),
            }
        }
        providers
    }

    /// [`Provider::work`] of each distinct provider that reports any.
    pub fn work(&self) -> Vec<String> {
        self.providers_of(&Role::ALL)
            .into_iter()
            .filter_map(|(provider, _)| provider.work())
            .collect()
    }

    /// The prefill progress of the distinct providers that report it, summed
    /// ([`Provider::prefill_progress`]); `None` when none does.
    pub fn prefill_progress(&self) -> Option<PrefillProgress> {
        self.providers_of(&Role::ALL)
            .into_iter()
            .filter_map(|(provider, _)| provider.prefill_progress())
            .reduce(|a, b| PrefillProgress {
                planned: a.planned + b.planned,
                read: a.read + b.read,
            })
    }

    /// The tokens generated so far by the distinct providers that count them
    /// ([`Provider::tokens_generated`]); `None` when none does.
    pub fn tokens_generated(&self) -> Option<u64> {
        self.providers_of(&Role::ALL)
            .into_iter()
            .filter_map(|(provider, _)| provider.tokens_generated())
            .reduce(|a, b| a + b)
    }

    /// One provider per role; `embedder` serves `embed` (none: `embed` reports that no
    /// embedding model is configured, and strategies fall back to fixed examples).
    pub fn new(
        providers: PerRole<Arc<dyn Provider>>,
        embedder: Option<Arc<dyn Embedder>>,
    ) -> Router {
        Router {
            providers,
            embedder,
            base_form: None,
        }
    }

    /// The router with the base role's chat prompts sent in `form`.
    pub fn with_base_form(self, form: PromptForm) -> Router {
        Router {
            base_form: Some(form),
            ..self
        }
    }

    /// The form of the base role's prompts, if one was set.
    pub fn base_form(&self) -> Option<PromptForm> {
        self.base_form
    }

    /// `request` as it goes to its provider: a base-role chat sent as one raw string when the
    /// base form is raw. A raw prompt is the strategy's explicit choice and goes as it is.
    pub fn shape(&self, mut request: Request) -> Request {
        if request.role == Role::Base && self.base_form == Some(PromptForm::Raw) {
            request.prompt = PromptForm::Raw.shape(request.prompt);
        }
        request
    }

    /// What identifies the answers to `role`'s requests: its provider's identity and what the
    /// provider settled about its server. Cached answers are keyed by it (and by the request as
    /// shaped), so an answer obtained one way is never served for a request sent another way.
    pub fn answer_identity(&self, role: Role) -> String {
        let provider = self.provider(role);
        let settings = provider.settings();
        let mut identity = provider.identity();
        if settings != ServerSettings::default() {
            identity.push_str(&format!(" ({})", settings.describe()));
        }
        identity
    }

    /// The same provider for every role.
    pub fn uniform(provider: Arc<dyn Provider>) -> Router {
        Router::new(PerRole::from_fn(|_| provider.clone()), None)
    }

    /// The provider serving `role`.
    pub fn provider(&self, role: Role) -> &Arc<dyn Provider> {
        &self.providers[role]
    }

    /// Answers a mixed batch: each provider gets its share as one sub-batch (so a model that
    /// serves several roles decodes them together), all providers concurrently, and the answers
    /// come back in the batch's order, each with its provider's [`Evidence`].
    pub async fn complete(&self, batch: Vec<Request>) -> Vec<(Answer, Option<Evidence>)> {
        self.answer(batch, None).await
    }

    /// [`Router::complete`], telling `progress` the text of each choice as it grows where the
    /// provider can (indices are the batch's).
    pub async fn complete_observed(
        &self,
        batch: Vec<Request>,
        progress: Progress,
    ) -> Vec<(Answer, Option<Evidence>)> {
        self.answer(batch, Some(progress)).await
    }

    async fn answer(
        &self,
        batch: Vec<Request>,
        progress: Option<Progress>,
    ) -> Vec<(Answer, Option<Evidence>)> {
        let total = batch.len();
        // (provider, positions in the batch, its requests)
        type Group<'a> = (&'a Arc<dyn Provider>, Vec<usize>, Vec<Request>);
        let mut groups: Vec<Group> = Vec::new();
        for (index, request) in batch.into_iter().enumerate() {
            let request = self.shape(request);
            let provider = self.provider(request.role);
            match groups.iter_mut().find(|(p, _, _)| Arc::ptr_eq(p, provider)) {
                Some((_, indices, requests)) => {
                    indices.push(index);
                    requests.push(request);
                }
                None => groups.push((provider, vec![index], vec![request])),
            }
        }
        let mut calls = Vec::with_capacity(groups.len());
        let mut placements = Vec::with_capacity(groups.len());
        for (provider, indices, requests) in groups {
            calls.push(match &progress {
                Some(progress) => {
                    let (progress, placed) = (progress.clone(), indices.clone());
                    let in_batch: Progress = Arc::new(move |request, choice, text| {
                        progress(placed[request], choice, text)
                    });
                    provider.complete_observed(requests, in_batch)
                }
                None => provider.complete_with_evidence(requests),
            });
            placements.push(indices);
        }
        let mut answers: Vec<Option<(Answer, Option<Evidence>)>> = vec![None; total];
        for (indices, group_answers) in placements.into_iter().zip(join_all(calls).await) {
            for (index, answer) in indices.into_iter().zip(group_answers) {
                answers[index] = Some(answer);
            }
        }
        answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| {
                    let missing = "the provider returned fewer answers than requests";
                    (Err(LlmError::Unavailable(missing.into())), None)
                })
            })
            .collect()
    }

    /// Whether an embedding model is configured.
    pub fn has_embedder(&self) -> bool {
        self.embedder.is_some()
    }

    /// Embeds texts with the configured embedder.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, LlmError> {
        match &self.embedder {
            Some(embedder) => embedder.embed(texts).await,
            None => Err(LlmError::Unavailable(
                "no embedding model is configured for this run".into(),
            )),
        }
    }
}
