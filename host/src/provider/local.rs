//! Local models, in process: `local:PATH` names a GGUF file or a Hugging Face directory, run by
//! `drpo-models` on the CPU, or on a GPU with `--device cuda` (builds with the `cuda` feature).
//! A request's JSON schema constrains decoding. A batch is decoded together; a model serving
//! several roles is loaded once (the router hands it every role's requests as one batch). For
//! serving, [`Continuous`] lets requests join the batch being decoded.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use drpo_models::{
    Arrival, ChatMessage, ChoiceObserver, DeviceSpec, GenerationOutput, GenerationRequest,
    KernelOptions, LocalModel, ModelError, PrefillProgress, PromptInput,
};
use futures::future::BoxFuture;

use super::{Answer, Evidence, Progress, PromptForm, Provider};
use crate::bindings::types::{Completion, LlmError, Prompt, Request, Usage};

/// A model loaded in this process.
pub struct LocalProvider {
    model: Arc<LocalModel>,
    cramped: Arc<Cramped>,
}

/// Structured answers whose token limit left no room to write (see
/// [`drpo_models::GenerationOutput::cramped_by_schema`]): they parse, so nothing else would
/// show that a judge's rationales or a selector's analysis came out empty.
#[derive(Default)]
struct Cramped {
    answers: AtomicU64,
    /// The most tokens one of them needed just to close its answer.
    most_needed: AtomicU32,
}

impl LocalProvider {
    /// Loads the model at `path` onto `device`, with the kernel switches of the environment
    /// (`DRPO_CPU_*`, `DRPO_CUDA_*`), keeping the keys and values of up to
    /// `prefix_cache_tokens` prompt tokens for prompts that begin alike (`None`: the model's
    /// default).
    pub fn load(
        path: &Path,
        device: DeviceSpec,
        prefix_cache_tokens: Option<usize>,
    ) -> anyhow::Result<LocalProvider> {
        let mut model =
            LocalModel::load_on(path, device, KernelOptions::from_env()).map_err(|e| {
                anyhow::anyhow!(
                    "cannot load the local model {} on {device}: {e}",
                    path.display()
                )
            })?;
        if let Some(tokens) = prefix_cache_tokens {
            model.set_prefix_cache_tokens(tokens);
        }
        Ok(LocalProvider {
            model: Arc::new(model),
            cramped: Arc::default(),
        })
    }

    fn convert(request: &Request) -> GenerationRequest {
        let sampling = &request.sampling;
        GenerationRequest {
            prompt: match &request.prompt {
                Prompt::Raw(text) => PromptInput::Raw(text.clone()),
                Prompt::Chat(messages) => PromptInput::Chat(
                    messages
                        .iter()
                        .map(|m| ChatMessage {
                            role: m.role.clone(),
                            content: m.content.clone(),
                        })
                        .collect(),
                ),
            },
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            max_tokens: sampling.max_tokens,
            n: sampling.n.max(1),
            seed: sampling.seed,
            stop: sampling.stop.clone(),
            // Enforced token by token (llguidance), so a structured answer always parses
            // unless it runs out of tokens.
            json_schema: request.json_schema.clone(),
        }
    }
}

impl Provider for LocalProvider {
    /// The model file's name and hash, and the decoder's revision: a response cached from an
    /// older decoder is not this one's answer.
    fn identity(&self) -> String {
        format!(
            "local {} (decoder r{})",
            self.model.identity(),
            drpo_models::DECODER_REVISION
        )
    }

    /// Raw for a model without a chat template: a plain rendering of a chat would put words of
    /// our choosing into a base model's prompt.
    fn natural_form(&self) -> PromptForm {
        if self.model.has_chat_template() {
            PromptForm::Chat
        } else {
            PromptForm::Raw
        }
    }

    fn complete(&self, batch: Vec<Request>) -> BoxFuture<'_, Vec<Answer>> {
        self.generate(batch, None)
    }

    /// Its prefill so far: the prompt tokens, the positions computed (padding included) and
    /// those the prefix cache supplied.
    fn work(&self) -> Option<String> {
        let stats = self.model.prefill_stats();
        let name = self.model.path().file_name().map_or_else(
            || self.model.path().display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let mut line = format!(
            "local {name}: prefill of {} prompt tokens computed {} positions, {} from the \
             prefix cache (--prefix-cache-tokens {})",
            stats.prompt_tokens,
            stats.computed_tokens,
            stats.reused_tokens,
            self.model.prefix_cache_tokens()
        );
        let cramped = self.cramped.answers.load(Ordering::Relaxed);
        if cramped > 0 {
            line += &format!(
                "; {cramped} JSON answer(s) had no room to write: their max_tokens was at most \
                 the {} tokens their schema alone may take, so their text fields are empty or a \
                 word (raise the role's max_tokens option)",
                self.cramped.most_needed.load(Ordering::Relaxed)
            );
        }
        Some(line)
    }

    fn tokens_generated(&self) -> Option<u64> {
        Some(self.model.generated_tokens())
    }

    fn prefill_progress(&self) -> Option<PrefillProgress> {
        Some(self.model.prefill_progress())
    }

    /// A handle for requests to join the batch being decoded, on a decoding thread of its own.
    /// A panic on that thread fails the requests it was decoding; the next ones are decoded
    /// by a new loop.
    fn continuous(&self, rows: usize) -> Option<Continuous> {
        let (arrivals, receiver) = std::sync::mpsc::channel();
        let model = self.model.clone();
        std::thread::spawn(move || {
            loop {
                let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    model.decode_arrivals(&receiver, rows)
                }));
                if let Ok(Ok(())) = decoded {
                    return;
                }
            }
        });
        Some(Continuous {
            arrivals,
            model: self.model.clone(),
            cramped: self.cramped.clone(),
        })
    }

    /// Tells `progress` each choice's text after every token the model generates.
    fn complete_observed(
        &self,
        batch: Vec<Request>,
        progress: Progress,
    ) -> BoxFuture<'_, Vec<(Answer, Option<Evidence>)>> {
        Box::pin(async move {
            let answers = self.generate(batch, Some(progress)).await;
            answers.into_iter().map(|answer| (answer, None)).collect()
        })
    }
}

impl LocalProvider {
    /// Decodes the batch on a blocking thread, telling `progress` the texts if given.
    fn generate(
        &self,
        batch: Vec<Request>,
        progress: Option<Progress>,
    ) -> BoxFuture<'_, Vec<Answer>> {
        let requests: Vec<GenerationRequest> = batch.iter().map(Self::convert).collect();
        let model = self.model.clone();
        let cramped = self.cramped.clone();
        let count = requests.len();
        Box::pin(async move {
            let generated = tokio::task::spawn_blocking(move || {
                let observer: Option<&drpo_models::TextObserver<'_>> = match &progress {
                    Some(progress) => Some(&**progress),
                    None => None,
                };
                model.generate_observed(&requests, observer)
            })
            .await;
            match generated {
                Ok(Ok(outputs)) => outputs
                    .into_iter()
                    .map(|output| Ok(cramped.count(output)))
                    .collect(),
                Ok(Err(error)) => {
                    let failed = failed(&self.model, &error);
                    (0..count).map(|_| Err(failed.clone())).collect()
                }
                Err(panic) => {
                    let failed = LlmError::Unavailable(format!(
                        "local model {} failed: {panic}",
                        self.model.identity()
                    ));
                    (0..count).map(|_| Err(failed.clone())).collect()
                }
            }
        })
    }
}

impl Cramped {
    /// `output` as a completion, counted if its schema left it no room to write.
    fn count(&self, output: GenerationOutput) -> Completion {
        if let Some(needed) = output.cramped_by_schema {
            self.answers.fetch_add(1, Ordering::Relaxed);
            self.most_needed.fetch_max(needed, Ordering::Relaxed);
        }
        Completion {
            choices: output.choices,
            usage: Usage {
                prompt_tokens: output.prompt_tokens,
                completion_tokens: output.completion_tokens,
            },
        }
    }
}

/// What a request that `model` could not answer is told.
fn failed(model: &LocalModel, error: &ModelError) -> LlmError {
    LlmError::Unavailable(format!("local model {}: {error}", model.identity()))
}

/// Requests that join the batch a model in process is decoding, between two of its steps
/// (continuous batching), each answered as soon as its choices are done. One thread decodes
/// them all, from [`Provider::continuous`] until every clone of its handle is dropped.
#[derive(Clone)]
pub struct Continuous {
    arrivals: std::sync::mpsc::Sender<Arrival>,
    model: Arc<LocalModel>,
    cramped: Arc<Cramped>,
}

impl Continuous {
    /// The model's answer to `request`, its choices' texts told to `observer` as they grow.
    pub async fn answer(&self, request: &Request, observer: Option<ChoiceObserver>) -> Answer {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let arrival = Arrival {
            request: LocalProvider::convert(request),
            observer,
            finish: Box::new(move |output| {
                // A client that has gone no longer waits for its answer.
                let _ = reply.send(output);
            }),
        };
        let stopped = || {
            LlmError::Unavailable(format!(
                "local model {} failed while decoding this request",
                self.model.identity()
            ))
        };
        if self.arrivals.send(arrival).is_err() {
            return Err(stopped());
        }
        match answer.await {
            Ok(Ok(output)) => Ok(self.cramped.count(output)),
            Ok(Err(error)) => Err(failed(&self.model, &error)),
            Err(_) => Err(stopped()),
        }
    }
}
