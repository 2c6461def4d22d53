//! Text generation with a local model: the API the host's `local:` provider calls.
//!
//! [`LocalModel::load`] opens a `.gguf` file or a Hugging Face directory on the CPU (burn's
//! `flex` backend, f32, GGUF weights kept packed) with the default kernels;
//! [`LocalModel::load_on`] on a CUDA GPU too (bf16, GGUF weights dequantized), with the
//! [`KernelOptions`] the caller gives. [`LocalModel::generate`] decodes a batch of requests
//! together: every choice of every request is one row of one left-padded batch, prefilled at
//! once and then decoded one token per step for all rows, until each row has met an
//! end-of-sequence token, a stop string or its token budget. On CUDA a batch of more than 32
//! rows is decoded 32 rows at a time, the most that the decoder's own kernels take.
//!
//! The decoding loop is the same on every device, and the KV cache stays on it; per step, only
//! what choosing the next tokens needs comes back to the host: the logits when a row samples or
//! follows a schema, else only the greedy choices, taken on the device (and on a GPU, read while
//! the next step runs).
//!
//! [`LocalModel::decode_arrivals`] batches continuously, for a server: requests join the batch
//! being decoded between two steps and leave it with their answers (`continuous`).
//!
//! Sampling is greedy at temperature 0, else temperature then nucleus (top-p) sampling from a
//! generator seeded with `seed + choice index`: the same request gives the same choices, alone
//! or in any batch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::{FloatDType, Int, Tensor, TensorData, backend::Backend};
use sha2::{Digest, Sha256};

use crate::ModelError;
use crate::chat::{self, ChatMessage, ChatTemplate};
use crate::device::{CpuBackend, DeviceSpec, PendingIds, greedy_ids};
use crate::gguf::GgufFile;
use crate::kernel_options::KernelOptions;
use crate::llama::{KvCache, Llama, Logits, SlotValues, WeightStorage, in_row_order, int_vector};
use crate::prefix_cache::{BLOCK, PrefillStats, PrefixCache, plan_groups, shared_prefixes};
use crate::tokenizer::Tokenizer;

mod continuous;

pub use continuous::{Arrival, ChoiceObserver, Finish};

/// What a request asks the model to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptInput {
    /// A conversation, rendered with the model's chat template and a generation prompt.
    Chat(Vec<ChatMessage>),
    /// Text passed to the tokenizer as is (BOS added if the model wants one).
    Raw(String),
}

/// One generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// The prompt.
    pub prompt: PromptInput,
    /// Softmax temperature; 0 means greedy decoding.
    pub temperature: f32,
    /// Nucleus sampling: sample among the most likely tokens whose probabilities add up to at
    /// least this (1 disables it).
    pub top_p: f32,
    /// Most tokens to generate per choice.
    pub max_tokens: u32,
    /// Number of choices.
    pub n: u32,
    /// Seed of choice 0; choice `i` uses `seed + i`.
    pub seed: u64,
    /// Generation stops before the first occurrence of any of these strings.
    pub stop: Vec<String>,
    /// A JSON schema the answer must follow: decoding is constrained token by token so that the
    /// answer parses and follows it (needs the `structured` cargo feature; without it a request
    /// with a schema fails).
    pub json_schema: Option<String>,
}

impl GenerationRequest {
    /// A greedy request for one choice of at most `max_tokens` tokens.
    pub fn greedy(prompt: PromptInput, max_tokens: u32) -> Self {
        Self {
            prompt,
            temperature: 0.0,
            top_p: 1.0,
            max_tokens,
            n: 1,
            seed: 0,
            stop: Vec::new(),
            json_schema: None,
        }
    }
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationOutput {
    /// The generated texts, `n` of them, without the stop string or end-of-sequence token.
    pub choices: Vec<String>,
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated over all choices (up to and including the token that ended each).
    pub completion_tokens: u32,
    /// When a JSON schema constrained the answer and `max_tokens` was no more than the tokens
    /// its shortest answer may take: that many. Decoding then closed every string as soon as
    /// it could, so the answer parses but its text fields say next to nothing.
    pub cramped_by_schema: Option<u32>,
}

/// The revision of what the decoder computes for a model and a request: raised with every change
/// that can alter an answer (the arithmetic, sampling, constrained decoding, prompt templates).
/// Whatever keeps answers by the model's identity, such as drpo-host's response cache, keys on
/// it too, so an answer decoded before such a change is never served as the decoder's answer now.
pub const DECODER_REVISION: u32 = 1;

/// Prompt positions prefilled, counted as the passes go (see [`LocalModel::prefill_progress`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefillProgress {
    /// Positions (rows times lengths, padding included) that the passes begun so far compute.
    pub planned: u64,
    /// Positions computed through every layer so far; on CUDA, issued to the device.
    pub read: u64,
}

/// The counters behind [`PrefillProgress`].
#[derive(Default)]
struct PrefillCounters {
    planned: AtomicU64,
    /// Positions times layers: each layer of a pass adds its positions.
    layer_positions: Arc<AtomicU64>,
}

/// A model loaded for generation, on the CPU or a GPU.
pub struct LocalModel {
    decoder: Decoder,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    identity: String,
    path: PathBuf,
    /// Most rows decoded together (see [`LocalModel::set_max_batch_rows`]).
    max_batch_rows: usize,
    /// Keys and values of prompt prefixes computed before (see
    /// [`LocalModel::set_prefix_cache_tokens`]).
    prefix_cache: std::sync::Mutex<PrefixCache>,
    /// Tokens generated since the model was loaded, counted as each is chosen.
    generated_tokens: std::sync::atomic::AtomicU64,
    /// Prefill positions planned and read so far (see [`LocalModel::prefill_progress`]).
    prefill_progress: PrefillCounters,
    #[cfg(feature = "structured")]
    structured: std::sync::OnceLock<crate::structured::Structured>,
}

#[cfg(feature = "structured")]
type RowConstraint = crate::structured::Constraint;
/// Without the `structured` feature no row is ever constrained.
#[cfg(not(feature = "structured"))]
type RowConstraint = std::convert::Infallible;

/// The decoder, on the backend of the device it was loaded on (boxed: the two backends' decoders
/// are large structs of tensor handles, of different sizes).
enum Decoder {
    Cpu(Box<Llama<CpuBackend>>),
    #[cfg(feature = "cuda")]
    Cuda(Box<Llama<crate::device::CudaBackend>>),
}

/// Where a decoder's weights come from.
enum WeightSource<'a> {
    /// A Hugging Face directory.
    Dir(&'a Path),
    /// A GGUF file.
    Gguf(&'a GgufFile),
}

impl WeightSource<'_> {
    /// The decoder on backend `B`, to run with `kernels`; a GGUF file's matrices stored as
    /// `storage` says.
    fn load<B: Backend>(
        &self,
        device: &B::Device,
        storage: WeightStorage,
        kernels: &KernelOptions,
    ) -> Result<Llama<B>, ModelError> {
        let (config, weights) = match self {
            Self::Dir(dir) => crate::load::hf::load(dir, device)?,
            Self::Gguf(file) => crate::load::gguf::load(file, device, storage)?,
        };
        Ok(Llama::new(config, weights, device, kernels.clone()))
    }
}

impl Decoder {
    /// Loads `weights` onto `device`, to run with `kernels`: on the CPU a GGUF file's quantized
    /// blocks stay packed (the CPU's fast path), on a GPU they are dequantized.
    fn load(
        weights: &WeightSource<'_>,
        device: DeviceSpec,
        kernels: &KernelOptions,
    ) -> Result<Self, ModelError> {
        match device {
            DeviceSpec::Cpu => Ok(Self::Cpu(Box::new(weights.load(
                &Default::default(),
                WeightStorage::Packed,
                kernels,
            )?))),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(index) => {
                #[cfg(feature = "cuda-compile-only")]
                crate::cuda::compile_only::keep_kernels_in(kernels.cuda_kernel_dir.clone());
                crate::device::on_cuda(index, |gpu| {
                    Ok(Self::Cuda(Box::new(weights.load(
                        gpu,
                        WeightStorage::Dequantized,
                        kernels,
                    )?)))
                })
            }
            #[cfg(not(feature = "cuda"))]
            DeviceSpec::Cuda(_) => unreachable!("LocalModel::load_on checked the device"),
        }
    }

    /// The most rows worth decoding together: no limit on the CPU; on CUDA the most rows the
    /// decoder's own projection kernels take. Beyond them burn's matmul takes the projections,
    /// whose steps take several times as long as 32 rows with ours (see `docs/gpu.md`), so
    /// decoding the rows in chunks is faster.
    fn max_batch_rows(&self) -> usize {
        match self {
            Self::Cpu(_) => usize::MAX,
            #[cfg(feature = "cuda")]
            Self::Cuda(_) => crate::cuda::matmul::SMALL_M,
        }
    }

    /// The device the decoder runs on.
    fn device(&self) -> DeviceSpec {
        match self {
            Self::Cpu(_) => DeviceSpec::Cpu,
            #[cfg(feature = "cuda")]
            Self::Cuda(model) => DeviceSpec::Cuda(model.device().index),
        }
    }

    fn config(&self) -> &crate::LlamaConfig {
        match self {
            Self::Cpu(model) => model.config(),
            #[cfg(feature = "cuda")]
            Self::Cuda(model) => model.config(),
        }
    }

    /// The kernels the decoder runs with.
    fn kernels(&self) -> &KernelOptions {
        match self {
            Self::Cpu(model) => model.kernels(),
            #[cfg(feature = "cuda")]
            Self::Cuda(model) => model.kernels(),
        }
    }
}

impl std::fmt::Debug for LocalModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalModel")
            .field("identity", &self.identity)
            .field("device", &self.decoder.device())
            .field("config", self.decoder.config())
            .finish()
    }
}

/// Told the text of each choice as it grows, after every token: `(request, choice, text so
/// far)`, the request's index in the batch. The text is the answer decoded so far (cut at a stop
/// string once one appears; a token that ends in the middle of a character ends in U+FFFD
/// until the rest comes).
pub type TextObserver<'a> = dyn Fn(usize, u32, &str) + Sync + 'a;

/// A row of the batch: one choice of one request.
struct Row<'o> {
    request: usize,
    choice: u32,
    /// Told the row's text after each token, when the caller watches.
    observer: Option<&'o TextObserver<'o>>,
    prompt: Vec<u32>,
    generated: Vec<u32>,
    rng: SplitMix64,
    done: bool,
    /// The answer when a stop string cut it.
    cut: Option<String>,
    constraint: Option<RowConstraint>,
}

/// The rows a decoding loop still computes, and their keys and values.
struct Decoding<'m, B: Backend> {
    model: &'m Llama<B>,
    cache: KvCache<B>,
    /// The rows (indices into the loop's rows, ascending) the cache holds, in its order.
    active: Vec<usize>,
}

impl<B: Backend> Decoding<'_, B> {
    /// One step of the rows still computed: their next input ids `[active, 1]` in, their
    /// logits `[active, vocab]` out.
    fn forward(&mut self, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let shape = [self.active.len(), self.model.config().vocab_size];
        self.model
            .forward(ids, &mut self.cache, Logits::Last)
            .reshape(shape)
    }

    /// Once a quarter or more of the rows computed are done, stops computing them: a batch
    /// whose answers end at different lengths would otherwise pay for its longest answer at
    /// its full width, every row of every step. Returns the positions (among the rows computed
    /// before) of the rows kept, for the caller's per-row values; `None` when nothing changed.
    /// Fewer, larger cuts: each copies the rows kept.
    fn drop_done(&mut self, rows: &[Row]) -> Option<Vec<usize>> {
        let kept: Vec<usize> = (0..self.active.len())
            .filter(|&i| !rows[self.active[i]].done)
            .collect();
        let done = self.active.len() - kept.len();
        if kept.is_empty() || done * 4 < self.active.len() {
            return None;
        }
        self.cache.keep_rows(&kept);
        self.active = kept.iter().map(|&i| self.active[i]).collect();
        Some(kept)
    }
}

impl LocalModel {
    /// Loads a `.gguf` file or a Hugging Face model directory (`config.json`, `tokenizer.json`,
    /// safetensors) onto the CPU, to run with the default kernels.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        Self::load_on(path, DeviceSpec::Cpu, KernelOptions::default())
    }

    /// Loads a `.gguf` file or a Hugging Face model directory onto `device`, to run with
    /// `kernels`: the CPU (f32; a GGUF file's quantized weights stay packed), or a CUDA GPU in
    /// builds with the `cuda` feature (bf16; a GGUF file's weights are dequantized).
    pub fn load_on(
        path: &Path,
        device: DeviceSpec,
        kernels: KernelOptions,
    ) -> Result<Self, ModelError> {
        device.check_available()?;
        let (decoder, tokenizer, template, identity) = if path.is_dir() {
            let decoder = Decoder::load(&WeightSource::Dir(path), device, &kernels)?;
            let tokenizer = Tokenizer::from_hf_dir(path)?;
            let (bos, eos) = special_texts(&tokenizer);
            let template = ChatTemplate::from_hf_dir(path, &bos, &eos)?;
            (decoder, tokenizer, template, identity_of_dir(path)?)
        } else {
            let file = GgufFile::open(path)?;
            let decoder = Decoder::load(&WeightSource::Gguf(&file), device, &kernels)?;
            let tokenizer = Tokenizer::from_gguf(&file)?;
            let (bos, eos) = special_texts(&tokenizer);
            let template = ChatTemplate::from_gguf(&file, &bos, &eos)?;
            let identity = format!(
                "{}@sha256:{}",
                file_name(path),
                &hash_files(&[path.to_owned()])?[..16]
            );
            (decoder, tokenizer, template, identity)
        };
        let prefix_cache = PrefixCache::new(default_prefix_cache_tokens(decoder.config()));
        Ok(Self {
            max_batch_rows: decoder.max_batch_rows(),
            prefix_cache: std::sync::Mutex::new(prefix_cache),
            generated_tokens: Default::default(),
            prefill_progress: PrefillCounters::default(),
            decoder,
            tokenizer,
            template,
            identity,
            path: path.to_owned(),
            #[cfg(feature = "structured")]
            structured: Default::default(),
        })
    }

    /// A constraint for answers following `schema`.
    #[cfg(feature = "structured")]
    fn constraint(&self, schema: &str) -> Result<RowConstraint, ModelError> {
        let structured = match self.structured.get() {
            Some(s) => s,
            None => {
                let s = crate::structured::Structured::new(
                    &self.tokenizer,
                    self.decoder.config().vocab_size,
                )?;
                let _ = self.structured.set(s);
                self.structured.get().expect("just set")
            }
        };
        structured.matcher(schema)
    }

    #[cfg(not(feature = "structured"))]
    fn constraint(&self, _schema: &str) -> Result<RowConstraint, ModelError> {
        Err(ModelError::Usage(
            "schema-constrained generation (json_schema) needs drpo-models built with the \
             `structured` feature"
                .into(),
        ))
    }

    /// The model's name and a content hash: `FILE@sha256:PREFIX` (for a directory, the hash
    /// covers its config, tokenizer and weight files), then ` on cuda (bf16)` for a model on a
    /// GPU, whose answers are not the CPU's (another arithmetic).
    pub fn identity(&self) -> String {
        match self.decoder.device() {
            DeviceSpec::Cpu => self.identity.clone(),
            DeviceSpec::Cuda(_) => format!("{} on cuda (bf16)", self.identity),
        }
    }

    /// Sets the most rows (choices of requests) decoded together: a larger batch is decoded in
    /// chunks of this many rows, one after another, with the same answers. The default is no
    /// limit on the CPU and 32 on CUDA, the most rows the decoder's own projection kernels take.
    pub fn set_max_batch_rows(&mut self, rows: usize) {
        self.max_batch_rows = rows.max(1);
    }

    /// Sets how many prompt tokens' keys and values the model keeps for prompts that begin the
    /// same way (0 keeps none, and every prompt is prefilled whole, as one pass). The default
    /// is what [`PREFIX_CACHE_BYTES`] holds. Logits agree with those of a whole prefill to
    /// f32 rounding (docs/prefix-cache.md); only the work differs.
    pub fn set_prefix_cache_tokens(&mut self, tokens: usize) {
        *self
            .prefix_cache
            .get_mut()
            .unwrap_or_else(|e| e.into_inner()) = PrefixCache::new(tokens);
    }

    /// The most prompt tokens the prefix cache keeps.
    pub fn prefix_cache_tokens(&self) -> usize {
        self.prefixes().budget_tokens()
    }

    /// What prefills have computed and reused since the model was loaded (or its prefix cache
    /// last set).
    pub fn prefill_stats(&self) -> PrefillStats {
        self.prefixes().stats
    }

    /// Tokens generated since the model was loaded, every choice of every batch, counted as
    /// each token is chosen: a display can show a long batch advancing before it returns.
    pub fn generated_tokens(&self) -> u64 {
        self.generated_tokens
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How far the prefills since the model was loaded have come, layer by layer: a long
    /// prefill's progress is `read` and `planned` now less what they were when it began.
    pub fn prefill_progress(&self) -> PrefillProgress {
        let layers = self.decoder.config().num_hidden_layers.max(1) as u64;
        PrefillProgress {
            planned: self.prefill_progress.planned.load(Ordering::Relaxed),
            read: self
                .prefill_progress
                .layer_positions
                .load(Ordering::Relaxed)
                / layers,
        }
    }

    /// The prefix cache, locked (a panic while it was held left nothing half-done that matters:
    /// every change to it is complete before the next).
    fn prefixes(&self) -> std::sync::MutexGuard<'_, PrefixCache> {
        self.prefix_cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The decoder's hyper-parameters.
    pub fn config(&self) -> &crate::LlamaConfig {
        self.decoder.config()
    }

    /// The decoder, when it runs on the CPU.
    pub fn cpu_model(&self) -> Option<&Llama<CpuBackend>> {
        match &self.decoder {
            Decoder::Cpu(model) => Some(model),
            #[cfg(feature = "cuda")]
            Decoder::Cuda(_) => None,
        }
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Whether the model has its own chat template (without one, chats are rendered in a plain
    /// `Role: content` form).
    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// The text a prompt becomes before tokenization (a chat rendered with the model's
    /// template and a generation prompt; a raw prompt unchanged).
    pub fn render(&self, prompt: &PromptInput) -> Result<String, ModelError> {
        match prompt {
            PromptInput::Raw(text) => Ok(text.clone()),
            PromptInput::Chat(messages) => match &self.template {
                Some(t) => t.render(messages, true),
                None => Ok(chat::render_plain(messages, true)),
            },
        }
    }

    /// The token ids of a prompt.
    pub fn prompt_ids(&self, prompt: &PromptInput) -> Result<Vec<u32>, ModelError> {
        let text = self.render(prompt)?;
        // A rendered chat carries its own special tokens (as `transformers` tokenizes it).
        let add_special = matches!(prompt, PromptInput::Raw(_));
        let ids = self.tokenizer.encode(&text, add_special)?;
        let vocab = self.decoder.config().vocab_size;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(ModelError::format(
                &self.path,
                format!(
                    "the tokenizer produced token {bad}, but the model has only {vocab} \
                     embeddings: the tokenizer does not belong to this model"
                ),
            ));
        }
        if ids.is_empty() {
            return Err(ModelError::Usage(
                "the prompt is empty and the model has no beginning-of-sequence token".into(),
            ));
        }
        Ok(ids)
    }

    /// Generates the choices of every request, all decoded together in one batch.
    pub fn generate(
        &self,
        batch: &[GenerationRequest],
    ) -> Result<Vec<GenerationOutput>, ModelError> {
        self.generate_observed(batch, None)
    }

    /// [`Self::generate`], telling `observer` each choice's text as it grows (for streaming).
    pub fn generate_observed(
        &self,
        batch: &[GenerationRequest],
        observer: Option<&TextObserver<'_>>,
    ) -> Result<Vec<GenerationOutput>, ModelError> {
        let mut rows = Vec::new();
        let mut prompt_lens = Vec::with_capacity(batch.len());
        for (r, req) in batch.iter().enumerate() {
            let (prompt_len, request_rows) = self.rows_of(req, r, observer)?;
            prompt_lens.push(prompt_len);
            rows.extend(request_rows);
        }
        for chunk in rows.chunks_mut(self.max_batch_rows) {
            if chunk.iter().any(|r| !r.done) {
                self.decode(batch, chunk)?;
            }
        }
        let mut outputs: Vec<GenerationOutput> = prompt_lens
            .iter()
            .map(|&p| GenerationOutput {
                choices: Vec::new(),
                prompt_tokens: p,
                completion_tokens: 0,
                cramped_by_schema: None,
            })
            .collect();
        for row in rows {
            let out = &mut outputs[row.request];
            let text = self.row_answer(&batch[row.request], &row, out)?;
            out.choices.push(text);
        }
        Ok(outputs)
    }

    /// The length of `req`'s prompt in tokens and its rows (one per choice), the request being
    /// `index` in its batch; a request the model cannot take is refused here, before any row
    /// is decoded.
    fn rows_of<'o>(
        &self,
        req: &GenerationRequest,
        index: usize,
        observer: Option<&'o TextObserver<'o>>,
    ) -> Result<(u32, Vec<Row<'o>>), ModelError> {
        if !(req.temperature >= 0.0 && req.temperature.is_finite()) {
            return Err(ModelError::Usage(format!(
                "temperature must be a finite number >= 0, not {}",
                req.temperature
            )));
        }
        if !(req.top_p > 0.0 && req.top_p <= 1.0) {
            return Err(ModelError::Usage(format!(
                "top_p must be in (0, 1], not {}",
                req.top_p
            )));
        }
        let prompt = self.prompt_ids(&req.prompt)?;
        let rows = (0..req.n)
            .map(|i| {
                Ok(Row {
                    request: index,
                    choice: i,
                    observer,
                    prompt: prompt.clone(),
                    generated: Vec::new(),
                    rng: SplitMix64(req.seed.wrapping_add(u64::from(i))),
                    done: req.max_tokens == 0,
                    cut: None,
                    constraint: match &req.json_schema {
                        Some(schema) => Some(self.constraint(schema)?),
                        None => None,
                    },
                })
            })
            .collect::<Result<_, ModelError>>()?;
        Ok((prompt.len() as u32, rows))
    }

    /// `row`'s answer, once it is done, its tokens counted in its request's output `out`.
    fn row_answer(
        &self,
        req: &GenerationRequest,
        row: &Row,
        out: &mut GenerationOutput,
    ) -> Result<String, ModelError> {
        out.completion_tokens += row.generated.len() as u32;
        if let Some(constraint) = &row.constraint {
            let needed = endgame_tokens(constraint);
            if req.max_tokens as usize <= needed {
                out.cramped_by_schema = Some(needed as u32);
            }
        }
        match &row.cut {
            Some(text) => Ok(text.clone()),
            None => self.tokenizer.decode(self.strip_eos(&row.generated), true),
        }
    }

    /// Fails unless a prompt of `tokens` tokens leaves the model's context room to answer.
    fn fits_context(&self, tokens: usize) -> Result<(), ModelError> {
        let context = self.decoder.config().max_position_embeddings;
        if tokens >= context {
            return Err(ModelError::Usage(format!(
                "the prompt has {tokens} tokens, the model's context only {context}"
            )));
        }
        Ok(())
    }

    /// The most tokens each row may generate: its request's, within the model's context.
    fn budget<'a>(&self, asked: &'a [GenerationRequest]) -> impl Fn(&Row) -> usize + Sync + 'a {
        let context = self.decoder.config().max_position_embeddings;
        move |row: &Row| (asked[row.request].max_tokens as usize).min(context - row.prompt.len())
    }

    fn strip_eos<'a>(&self, ids: &'a [u32]) -> &'a [u32] {
        match ids.last() {
            Some(last) if self.tokenizer.eos_ids().contains(last) => &ids[..ids.len() - 1],
            _ => ids,
        }
    }

    /// The next input id of a row that is already done when the host chooses: EOS's. Its
    /// outputs are never read, so any id serves (the greedy loop feeds such rows their argmax).
    fn filler(&self) -> i32 {
        self.tokenizer.eos_ids().first().copied().unwrap_or(0) as i32
    }

    /// Chooses `row`'s next token from its `scores` and records it (see [`Self::record`]);
    /// `budget` is the most tokens the row may generate.
    fn advance(
        &self,
        req: &GenerationRequest,
        row: &mut Row,
        scores: &[f32],
        budget: usize,
    ) -> Result<i32, ModelError> {
        if row.done {
            return Ok(self.filler());
        }
        let tokens_left = budget - row.generated.len();
        let masked;
        let scores = match row.constraint.as_mut() {
            Some(constraint) => {
                let mut owned = scores.to_vec();
                apply_mask(constraint, &mut owned, tokens_left)?;
                masked = owned;
                &masked[..]
            }
            None => scores,
        };
        let token = if req.temperature == 0.0 {
            argmax(scores)
        } else {
            sample(scores, req.temperature, req.top_p, &mut row.rng)
        };
        self.record(req, row, token, budget)
    }

    /// Appends `token` to `row`, and marks the row done when the token ends it: an
    /// end-of-sequence token, the budget, the end of the schema's document, or a stop string.
    /// Returns the row's next input id.
    fn record(
        &self,
        req: &GenerationRequest,
        row: &mut Row,
        token: u32,
        budget: usize,
    ) -> Result<i32, ModelError> {
        row.generated.push(token);
        self.generated_tokens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.tokenizer.eos_ids().contains(&token) || row.generated.len() >= budget {
            row.done = true;
        }
        if let Some(constraint) = row.constraint.as_mut()
            && consume(constraint, token)?
        {
            row.done = true;
        }
        if !req.stop.is_empty() || row.observer.is_some() {
            let mut text = self
                .tokenizer
                .decode(self.strip_eos(&row.generated), true)?;
            if let Some(at) = req.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(at);
                row.cut = Some(text.clone());
                row.done = true;
            }
            if let Some(observer) = row.observer {
                observer(row.request, row.choice, &text);
            }
        }
        Ok(token as i32)
    }

    /// Every row's next input id from a step's `[rows, vocab]` logits, read back to the host,
    /// where sampling and the schemas' masks choose.
    fn choose_on_host<B: Backend>(
        &self,
        batch: &[GenerationRequest],
        rows: &mut [Row],
        active: &[usize],
        logits: Tensor<B, 2>,
        budget: &(impl Fn(&Row) -> usize + Sync),
    ) -> Result<Vec<i32>, ModelError> {
        let vocab = logits.dims()[1];
        let values: Vec<f32> = logits
            .cast(FloatDType::F32)
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| ModelError::Backend(format!("reading logits: {e:?}")))?;
        // Rows choose their tokens independently (sampling a row reads its whole vocabulary),
        // so they are shared out between threads.
        // `active` is ascending: the rows of the logits, in order.
        let mut choices: Vec<(&mut Row, &[f32], Result<i32, ModelError>)> = rows
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| active.binary_search(i).is_ok())
            .map(|(_, row)| row)
            .zip(values.chunks_exact(vocab))
            .map(|(row, scores)| (row, scores, Ok(0)))
            .collect();
        crate::workers::for_each_mut(
            &mut choices,
            || (),
            |_, _, (row, scores, next)| {
                *next = self.advance(&batch[row.request], row, scores, budget(row));
            },
        );
        choices.into_iter().map(|(_, _, next)| next).collect()
    }

    /// Prefills every row's prompt, then decodes until every row is done, on the model's device.
    fn decode(&self, batch: &[GenerationRequest], rows: &mut [Row]) -> Result<(), ModelError> {
        match &self.decoder {
            Decoder::Cpu(model) => self.decode_on(model, batch, rows),
            #[cfg(feature = "cuda")]
            Decoder::Cuda(model) => {
                crate::device::on_cuda(model.device().index, |_| self.decode_on(model, batch, rows))
            }
        }
    }

    /// [`Self::decode`] with `model`, whatever its backend.
    fn decode_on<B: Backend>(
        &self,
        model: &Llama<B>,
        batch: &[GenerationRequest],
        rows: &mut [Row],
    ) -> Result<(), ModelError> {
        let longest = rows.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
        self.fits_context(longest)?;
        let budget = self.budget(batch);
        let steps = rows.iter().map(&budget).max().unwrap_or(0);
        let prompts: Vec<&[u32]> = rows.iter().map(|r| r.prompt.as_slice()).collect();
        let (cache, logits) = self.prefill(model, &prompts, longest, longest + steps);
        let mut decoding = Decoding {
            model,
            cache,
            active: (0..rows.len()).collect(),
        };
        let on_host = rows
            .iter()
            .any(|row| batch[row.request].temperature != 0.0 || row.constraint.is_some());
        if on_host {
            self.decode_choosing_on_host(batch, rows, logits, steps, &budget, &mut decoding)
        } else {
            self.decode_greedy(batch, rows, logits, steps, &budget, &mut decoding)
        }
    }

    /// Prefills `prompts` (one per row), left-padded to `width` slots (at least the longest),
    /// into a cache of `capacity` slots: returns it and each row's logits at its last prompt
    /// position, `[rows, vocab]`.
    ///
    /// Prefixes that the prefix cache holds are not computed again; prefixes that several rows
    /// share and it does not hold are computed once first (and cached). Rows are then prefilled
    /// in groups, so that a row with a long cached prefix is not dragged back to the start by
    /// one without (see [`plan_groups`]).
    fn prefill<B: Backend>(
        &self,
        model: &Llama<B>,
        prompts: &[&[u32]],
        width: usize,
        capacity: usize,
    ) -> (KvCache<B>, Tensor<B, 2>) {
        let shared = {
            let mut prefixes = self.prefixes();
            prefixes.stats.prompt_tokens += prompts.iter().map(|p| p.len() as u64).sum::<u64>();
            if prefixes.is_enabled() {
                let cached: Vec<usize> = prompts
                    .iter()
                    .map(|p| prefixes.lookup(p, p.len() - 1).len() * BLOCK)
                    .collect();
                shared_prefixes(prompts, &cached)
            } else {
                Vec::new()
            }
        };
        if !shared.is_empty() {
            let shared: Vec<&[u32]> = shared
                .iter()
                .map(|&(row, len)| &prompts[row][..len])
                .collect();
            let longest = shared.iter().map(|p| p.len()).max().unwrap_or(0);
            self.prefill_groups(model, &shared, longest, longest);
        }
        let mut parts = self.prefill_groups(model, prompts, width, capacity);
        // A single group holds its rows by where their computing starts, not in batch order:
        // only a group already in batch order is the batch as it is.
        if let [(rows, _, _)] = parts.as_slice()
            && rows.iter().copied().eq(0..prompts.len())
        {
            let (_, mut cache, logits) = parts.pop().expect("one part");
            cache.set_prefilling(false);
            return (cache, logits);
        }
        let placed: Vec<usize> = parts.iter().flat_map(|(rows, _, _)| rows.clone()).collect();
        let mut caches = Vec::with_capacity(parts.len());
        let mut logits = Vec::with_capacity(parts.len());
        for (rows, cache, part_logits) in parts {
            caches.push((rows, cache));
            logits.push(part_logits);
        }
        let logits = Tensor::cat(logits, 0).select(0, in_row_order(&placed, model.device()));
        (KvCache::merge(caches), logits)
    }

    /// Prefills `prompts`, left-padded to `width` slots, in groups of rows with a forward pass
    /// each, every row's cached prefix taken from the prefix cache, and caches each prompt's
    /// whole blocks: per group, its rows (indices into `prompts`), their cache of `capacity`
    /// slots and their last positions' logits.
    fn prefill_groups<B: Backend>(
        &self,
        model: &Llama<B>,
        prompts: &[&[u32]],
        width: usize,
        capacity: usize,
    ) -> Vec<(Vec<usize>, KvCache<B>, Tensor<B, 2>)> {
        let pads: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
        let (found, groups) = {
            let mut prefixes = self.prefixes();
            let found: Vec<Vec<Arc<SlotValues>>> = prompts
                .iter()
                .map(|p| prefixes.lookup(p, p.len() - 1))
                .collect();
            // Where each row's computing starts: after its padding and its cached prefix.
            let starts: Vec<usize> = pads
                .iter()
                .zip(&found)
                .map(|(pad, blocks)| pad + blocks.len() * BLOCK)
                .collect();
            let groups = if prefixes.is_enabled() {
                plan_groups(&starts, width)
            } else {
                vec![(0..prompts.len()).collect()]
            };
            // A group's pass starts where the first of its rows does.
            let planned: usize = groups
                .iter()
                .map(|rows: &Vec<usize>| {
                    let from = rows.iter().map(|&r| starts[r]).min().unwrap_or(width);
                    rows.len() * (width - from)
                })
                .sum();
            self.prefill_progress
                .planned
                .fetch_add(planned as u64, Ordering::Relaxed);
            (found, groups)
        };
        let vocab = model.config().vocab_size;
        groups
            .into_iter()
            .map(|rows| {
                let group_pads: Vec<usize> = rows.iter().map(|&r| pads[r]).collect();
                let group_found: Vec<Vec<Arc<SlotValues>>> =
                    rows.iter().map(|&r| found[r].clone()).collect();
                let mut cache = model.new_cache_with(&group_pads, capacity, &group_found);
                cache.count_layers_into(self.prefill_progress.layer_positions.clone());
                cache.set_prefilling(true);
                let from = cache.len();
                let mut ids: Vec<i32> = Vec::with_capacity(rows.len() * (width - from));
                for (&r, &pad) in rows.iter().zip(&group_pads) {
                    ids.extend((from..width).map(|slot| match slot.checked_sub(pad) {
                        Some(i) => prompts[r][i] as i32,
                        None => 0,
                    }));
                }
                let input = Tensor::<B, 2, Int>::from_data(
                    TensorData::new(ids, [rows.len(), width - from]),
                    model.device(),
                );
                let logits = model
                    .forward(input, &mut cache, Logits::Last)
                    .reshape([rows.len(), vocab]);
                let mut prefixes = self.prefixes();
                prefixes.stats.computed_tokens += (rows.len() * (width - from)) as u64;
                prefixes.stats.reused_tokens += group_pads
                    .iter()
                    .map(|&pad| from.saturating_sub(pad) as u64)
                    .sum::<u64>();
                for (i, &r) in rows.iter().enumerate() {
                    let pad = group_pads[i];
                    prefixes.insert(prompts[r], |block| {
                        cache.read(i, pad + block * BLOCK..pad + (block + 1) * BLOCK)
                    });
                }
                drop(prefixes);
                (rows, cache, logits)
            })
            .collect()
    }

    /// The decoding loop when a row samples or follows a schema: each step's logits come back,
    /// every row chooses on the host, and the choices go back as the next step's input.
    fn decode_choosing_on_host<B: Backend>(
        &self,
        batch: &[GenerationRequest],
        rows: &mut [Row],
        mut logits: Tensor<B, 2>,
        steps: usize,
        budget: &(impl Fn(&Row) -> usize + Sync),
        decoding: &mut Decoding<'_, B>,
    ) -> Result<(), ModelError> {
        let device = logits.device();
        for step in 0..steps {
            let mut next = self.choose_on_host(batch, rows, &decoding.active, logits, budget)?;
            if rows.iter().all(|r| r.done) || step + 1 == steps {
                break;
            }
            if let Some(kept) = decoding.drop_done(rows) {
                next = kept.iter().map(|&i| next[i]).collect();
            }
            let ids = Tensor::from_data(TensorData::new(next, [decoding.active.len(), 1]), &device);
            logits = decoding.forward(ids);
        }
        Ok(())
    }

    /// The decoding loop when every row is greedy: each step's choices are taken on the device
    /// (the first of equal scores, as [`argmax`]) and fed straight back as the next step's
    /// input; only the token ids come to the host, to end rows and cut stop strings. Where the
    /// backend queues work (CUDA), the next step is issued before the host waits for the ids,
    /// so the GPU does not idle between steps; once every row is done, that step is dropped.
    /// A row that is done is fed its own argmax; its outputs are never read.
    fn decode_greedy<B: Backend>(
        &self,
        batch: &[GenerationRequest],
        rows: &mut [Row],
        logits: Tensor<B, 2>,
        steps: usize,
        budget: &impl Fn(&Row) -> usize,
        decoding: &mut Decoding<'_, B>,
    ) -> Result<(), ModelError> {
        let kernels = self.decoder.kernels();
        let mut next = greedy_ids(logits, kernels);
        let mut pending = PendingIds::read(next.clone(), kernels);
        for step in 0..steps {
            let last = step + 1 == steps;
            let ahead = (pending.is_queued() && !last).then(|| decoding.forward(next.clone()));
            for (&r, id) in decoding.active.iter().zip(pending.wait()?) {
                let row = &mut rows[r];
                if !row.done {
                    self.record(&batch[row.request], row, id as u32, budget(row))?;
                }
            }
            if rows.iter().all(|r| r.done) || last {
                break;
            }
            let mut logits = match ahead {
                Some(logits) => logits,
                None => decoding.forward(next),
            };
            // The step just computed covered the rows that are now done; the ones after it
            // need not.
            if let Some(kept) = decoding.drop_done(rows) {
                let index = int_vector(&kept, &logits.device());
                logits = logits.select(0, index);
            }
            next = greedy_ids(logits, kernels);
            pending = PendingIds::read(next.clone(), kernels);
        }
        Ok(())
    }
}

#[cfg(feature = "structured")]
fn apply_mask(
    constraint: &mut RowConstraint,
    scores: &mut [f32],
    tokens_left: usize,
) -> Result<(), ModelError> {
    constraint.mask(scores, tokens_left)
}

#[cfg(feature = "structured")]
fn consume(constraint: &mut RowConstraint, token: u32) -> Result<bool, ModelError> {
    constraint.consume(token)
}

#[cfg(feature = "structured")]
fn endgame_tokens(constraint: &RowConstraint) -> usize {
    constraint.endgame()
}

#[cfg(not(feature = "structured"))]
fn endgame_tokens(constraint: &RowConstraint) -> usize {
    match *constraint {}
}

#[cfg(not(feature = "structured"))]
fn apply_mask(
    constraint: &mut RowConstraint,
    _scores: &mut [f32],
    _tokens_left: usize,
) -> Result<(), ModelError> {
    match *constraint {}
}

#[cfg(not(feature = "structured"))]
fn consume(constraint: &mut RowConstraint, _token: u32) -> Result<bool, ModelError> {
    match *constraint {}
}

/// The BOS and EOS token texts a chat template may print.
fn special_texts(tokenizer: &Tokenizer) -> (String, String) {
    let text = |id: Option<u32>| {
        id.and_then(|i| tokenizer.id_to_token(i))
            .unwrap_or_default()
    };
    (
        text(tokenizer.bos_id()),
        text(tokenizer.eos_ids().first().copied()),
    )
}

/// The highest-scoring token (the first of equals).
pub fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best as u32
}

/// Temperature then nucleus sampling: the smallest set of most likely tokens (ties by id) whose
/// probabilities add up to `top_p`, then a draw in that order from the generator.
fn sample(scores: &[f32], temperature: f32, top_p: f32, rng: &mut SplitMix64) -> u32 {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return argmax(scores);
    }
    let weights: Vec<f64> = scores
        .iter()
        .map(|&s| f64::from((s - max) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let draw = |order: &[u32], rng: &mut SplitMix64| {
        let kept_total: f64 = order.iter().map(|&i| weights[i as usize]).sum();
        let mut target = rng.next_f64() * kept_total;
        for &i in order {
            target -= weights[i as usize];
            if target < 0.0 {
                return i;
            }
        }
        *order.last().expect("never empty")
    };
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    if top_p >= 1.0 {
        return draw(&order, rng);
    }
    // Most likely first, ties by id; only the head of the order is sorted, grown until it holds
    // the nucleus (sorting all of a 50k vocabulary per token would cost more than the rest).
    let by_weight = |a: &u32, b: &u32| {
        weights[*b as usize]
            .total_cmp(&weights[*a as usize])
            .then(a.cmp(b))
    };
    let mut head = 64.min(order.len());
    loop {
        if head < order.len() {
            order.select_nth_unstable_by(head - 1, by_weight);
        }
        order[..head].sort_by(by_weight);
        let mut mass = 0.0;
        let nucleus = order[..head].iter().position(|&i| {
            mass += weights[i as usize] / total;
            mass >= f64::from(top_p)
        });
        match nucleus {
            Some(last) => return draw(&order[..=last], rng),
            None if head == order.len() => return draw(&order, rng),
            None => head = (head * 4).min(order.len()),
        }
    }
}

/// A small, stable pseudo-random generator (SplitMix64): the same seed gives the same
/// sequence on every platform and in every version of this crate.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Host memory the prefix cache of a model may take by default: its token budget is as many
/// tokens as this holds (11,648 for SmolLM2-135M, 9,360 for Qwen2.5-1.5B, 2,048 for Mistral-7B).
pub const PREFIX_CACHE_BYTES: usize = 512 << 20;

/// The default token budget of a model's prefix cache (see [`PREFIX_CACHE_BYTES`]).
fn default_prefix_cache_tokens(config: &crate::LlamaConfig) -> usize {
    let per_token = config.num_hidden_layers * 2 * config.kv_heads() * config.head_dim() * 4;
    PREFIX_CACHE_BYTES / per_token.max(1)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// SHA-256 over the files' contents, in order, as hex.
fn hash_files(files: &[PathBuf]) -> Result<String, ModelError> {
    let mut hasher = Sha256::new();
    for path in files {
        let mut file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        std::io::copy(&mut file, &mut hasher).map_err(|e| ModelError::io(path, e))?;
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// `DIR@sha256:PREFIX` over a directory's JSON, tokenizer and safetensors files.
fn identity_of_dir(dir: &Path) -> Result<String, ModelError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::io(dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|ext| ext == "json" || ext == "safetensors" || ext == "jinja")
        })
        .collect();
    files.sort();
    Ok(format!(
        "{}@sha256:{}",
        file_name(dir),
        &hash_files(&files)?[..16]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_seeded_and_respects_top_p() {
        let scores = [0.0f32, 3.0, 2.9, -5.0];
        let draw = |seed| {
            let mut rng = SplitMix64(seed);
            (0..64)
                .map(|_| sample(&scores, 1.0, 0.9, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        // Tokens 1 and 2 hold over 90% of the mass: nothing else is drawn.
        assert!(draw(7).iter().all(|&t| t == 1 || t == 2));
        // A tiny top-p keeps only the best token.
        let mut rng = SplitMix64(1);
        assert!((0..32).all(|_| sample(&scores, 1.0, 1e-6, &mut rng) == 1));
        assert_eq!(argmax(&scores), 1);
    }

    /// A random-weight model of `preset` with the small tokenizer, in a directory of its own
    /// (returned, for the caller to remove).
    pub(super) fn random_model(
        name: &str,
        preset: &str,
        seed: u64,
    ) -> (LocalModel, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("drpo-generate-{name}-{}", std::process::id()));
        let config = crate::LlamaConfig::preset(preset).unwrap();
        let dtype = crate::load::hf::StoreDtype::F32;
        crate::load::hf::write_random(&config, &dir, seed, dtype, usize::MAX).unwrap();
        crate::load::hf::write_small_tokenizer(&dir, config.vocab_size).unwrap();
        (LocalModel::load(&dir).unwrap(), dir)
    }

    /// A greedy chat request of one user message.
    pub(super) fn ask(text: &str, max_tokens: u32) -> GenerationRequest {
        GenerationRequest::greedy(
            PromptInput::Chat(vec![ChatMessage::new("user", text)]),
            max_tokens,
        )
    }

    /// On CUDA the greedy loop issues each step before the ids of the one before have arrived,
    /// and a row that is done goes on being fed its argmax: the answers must be the ones of the
    /// loop that waits, on the same weights, whether the rows end early or at the budget.
    #[test]
    fn greedy_answers_do_not_depend_on_when_the_ids_arrive() {
        let (model, dir) = random_model("order", "tiny-llama", 5);
        let requests = [ask("hello world", 3), ask("hello", 11), ask("world", 1)];
        let waited = model.generate(&requests).unwrap();
        let generated_then = model.generated_tokens();
        let queued = crate::device::defer_reads(|| model.generate(&requests)).unwrap();
        assert_eq!(queued, waited);
        let counts: Vec<u32> = waited.iter().map(|o| o.completion_tokens).collect();
        // Every token chosen is counted, once, as it comes.
        let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
        assert_eq!(generated_then, total);
        assert_eq!(model.generated_tokens(), 2 * total);
        assert!(
            counts[0] <= 3 && counts[1] <= 11 && counts[2] == 1,
            "{counts:?}"
        );
        assert!(
            counts[1] > counts[0],
            "the rows end at different steps: {counts:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A batch larger than the most rows decoded together is decoded in chunks, with the
    /// answers of one batch: greedy, sampled and several choices of one request.
    #[test]
    fn a_batch_decoded_in_chunks_answers_as_one() {
        let (mut model, dir) = random_model("chunks", "tiny-mistral", 9);
        let requests = [
            ask("hello world", 6),
            GenerationRequest {
                temperature: 0.9,
                n: 3,
                seed: 4,
                ..ask("hello", 5)
            },
            ask("world hello hello world", 9),
            ask("", 0),
        ];
        let together = model.generate(&requests).unwrap();
        model.set_max_batch_rows(2);
        let chunked = model.generate(&requests).unwrap();
        assert_eq!(chunked, together);
        assert_eq!(together[1].choices.len(), 3);
        assert_eq!(together[3].completion_tokens, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Rows that are done leave the batch while the others go on: the answers of a batch whose
    /// rows end at very different steps, greedy and sampled, are each row's answer alone, with
    /// the ids read at once or queued (CUDA's greedy loop).
    #[test]
    fn rows_leave_the_batch_when_done_and_the_others_answer_as_alone() {
        let (model, dir) = random_model("leave", "tiny-llama", 7);
        let requests = [
            ask("hello", 1),
            ask("world", 2),
            ask("hello world", 3),
            ask("world world hello", 24),
            GenerationRequest {
                temperature: 0.8,
                n: 2,
                seed: 3,
                ..ask("hello hello", 20)
            },
            ask("world", 9),
        ];
        let together = model.generate(&requests).unwrap();
        let counts: Vec<u32> = together.iter().map(|o| o.completion_tokens).collect();
        assert_eq!(counts[..4], [1, 2, 3, 24], "{counts:?}");
        for (request, answer) in requests.iter().zip(&together) {
            let alone = model.generate(std::slice::from_ref(request)).unwrap();
            assert_eq!(&alone[0], answer);
        }
        let greedy: Vec<GenerationRequest> = requests
            .iter()
            .filter(|r| r.temperature == 0.0)
            .cloned()
            .collect();
        let waited = model.generate(&greedy).unwrap();
        let queued = crate::device::defer_reads(|| model.generate(&greedy)).unwrap();
        assert_eq!(queued, waited);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A watched batch gives the answers of an unwatched one, and each choice's text grows by
    /// one token at a time to its answer: greedy and sampled rows, several choices, a stop
    /// string.
    #[test]
    fn a_watched_batch_tells_each_choices_text_as_it_grows() {
        let (model, dir) = random_model("watched", "tiny-llama", 3);
        let requests = [
            ask("hello world", 6),
            GenerationRequest {
                temperature: 0.9,
                n: 2,
                seed: 4,
                ..ask("hello", 5)
            },
        ];
        let unwatched = model.generate(&requests).unwrap();
        let seen =
            std::sync::Mutex::new(std::collections::BTreeMap::<(usize, u32), Vec<String>>::new());
        let observer = |request: usize, choice: u32, text: &str| {
            seen.lock()
                .unwrap()
                .entry((request, choice))
                .or_default()
                .push(text.to_owned());
        };
        let watched = model.generate_observed(&requests, Some(&observer)).unwrap();
        assert_eq!(watched, unwatched);
        let seen = seen.into_inner().unwrap();
        assert_eq!(
            seen.keys().copied().collect::<Vec<_>>(),
            [(0, 0), (1, 0), (1, 1)]
        );
        for ((request, choice), texts) in &seen {
            assert_eq!(
                texts.last().unwrap(),
                &watched[*request].choices[*choice as usize]
            );
        }
        // One text per token generated.
        assert_eq!(seen[&(0, 0)].len(), watched[0].completion_tokens as usize);
        assert_eq!(
            seen[&(1, 0)].len() + seen[&(1, 1)].len(),
            watched[1].completion_tokens as usize
        );

        // A stop string: the text told is cut where the answer is.
        let first = &unwatched[0].choices[0];
        let Some(stop) = first.chars().nth(2).map(String::from) else {
            return;
        };
        let stopped = GenerationRequest {
            stop: vec![stop],
            ..ask("hello world", 6)
        };
        let last = std::sync::Mutex::new(String::new());
        let answer = model
            .generate_observed(
                &[stopped],
                Some(&|_, _, text: &str| *last.lock().unwrap() = text.to_owned()),
            )
            .unwrap();
        assert_eq!(*last.lock().unwrap(), answer[0].choices[0]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A chat request with a system message.
    fn ask_with_system(system: &str, text: &str, max_tokens: u32) -> GenerationRequest {
        GenerationRequest::greedy(
            PromptInput::Chat(vec![
                ChatMessage::new("system", system),
                ChatMessage::new("user", text),
            ]),
            max_tokens,
        )
    }

    /// Each row's last-position logits of a prefill of `prompts`.
    fn prefill_logits(model: &LocalModel, prompts: &[Vec<u32>]) -> Vec<f32> {
        let decoder = model.cpu_model().expect("tests load on the CPU");
        let prompts: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
        let longest = prompts.iter().map(|p| p.len()).max().unwrap();
        let (_, logits) = model.prefill(decoder, &prompts, longest, longest + 1);
        logits.into_data().into_vec::<f32>().unwrap()
    }

    /// Asserts two prefills' logits agree to the rounding of f32 (a row's values depend a
    /// little on how its batch was cut into matrix products, as for any batch).
    fn assert_same_logits(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len());
        let diff = got
            .iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs() / (1.0 + w.abs()))
            .fold(0f32, f32::max);
        eprintln!("{what}: max relative difference {diff:e}");
        assert!(diff < 1e-5, "{what}: logits differ by {diff}");
    }

    /// The prefix cache changes the work, never the numbers: prompts sharing a long system
    /// message, prompts sharing part of one, unshared prompts, repeated prompts, and the same
    /// again once the cache has been filled and when it is too small to hold them (eviction).
    #[test]
    fn the_prefix_cache_gives_the_logits_and_answers_of_a_whole_prefill() {
        let system = "you are a helpful assistant: answer briefly and well, hello world";
        let other = "you are a helpful assistant: answer at length, world hello";
        let requests = [
            ask_with_system(system, "hello", 7),
            ask_with_system(system, "hello world hello", 5),
            ask_with_system(other, "world", 6),
            ask("hello world", 4),
            ask_with_system(system, "hello", 3),
            GenerationRequest {
                temperature: 0.8,
                n: 3,
                seed: 11,
                ..ask_with_system(other, "hello hello", 5)
            },
        ];
        for (preset, seed) in [("tiny-llama", 2), ("tiny-qwen2", 4), ("tiny-mistral", 6)] {
            let (mut model, dir) = random_model(&format!("prefix-{preset}"), preset, seed);
            let prompts: Vec<Vec<u32>> = requests
                .iter()
                .map(|r| model.prompt_ids(&r.prompt).unwrap())
                .collect();
            assert!(
                prompts[0].len() > 3 * BLOCK,
                "the system message spans blocks"
            );
            model.set_prefix_cache_tokens(0);
            let whole_logits = prefill_logits(&model, &prompts);
            let whole = model.generate(&requests).unwrap();
            let whole_stats = model.prefill_stats();
            assert_eq!(whole_stats.reused_tokens, 0);

            model.set_prefix_cache_tokens(1 << 20);
            let cold = prefill_logits(&model, &prompts);
            assert_same_logits(&cold, &whole_logits, &format!("{preset}: cold"));
            let first = model.prefill_stats();
            assert!(first.reused_tokens > 0, "{preset}: shared prefixes reused");
            let warm = prefill_logits(&model, &prompts);
            assert_same_logits(&warm, &whole_logits, &format!("{preset}: warm"));
            assert_eq!(
                model.generate(&requests).unwrap(),
                whole,
                "{preset}: answers"
            );
            let warm = model.prefill_stats();
            assert!(
                warm.computed_tokens - first.computed_tokens < (whole_stats.computed_tokens) / 2,
                "{preset}: a warm cache computes under half: {first:?} then {warm:?}, \
                 {whole_stats:?} without"
            );

            // Two prompts sharing the system message, the second longer: one pass whose rows
            // are held by where their computing starts (the second first), answered in batch
            // order all the same.
            let pair = [
                ask_with_system(system, "hello", 6),
                ask_with_system(system, "world hello world hello world hello", 6),
            ];
            let pair_prompts: Vec<Vec<u32>> = pair
                .iter()
                .map(|r| model.prompt_ids(&r.prompt).unwrap())
                .collect();
            model.set_prefix_cache_tokens(0);
            let pair_whole = prefill_logits(&model, &pair_prompts);
            let pair_answers = model.generate(&pair).unwrap();
            model.set_prefix_cache_tokens(1 << 20);
            let pair_cached = prefill_logits(&model, &pair_prompts);
            assert_same_logits(&pair_cached, &pair_whole, &format!("{preset}: pair"));
            assert_eq!(
                model.generate(&pair).unwrap(),
                pair_answers,
                "{preset}: pair answers"
            );

            // Room for two blocks: prompts evict each other's blocks as they go.
            model.set_prefix_cache_tokens(2 * BLOCK);
            for round in 0..2 {
                let evicting = prefill_logits(&model, &prompts);
                assert_same_logits(
                    &evicting,
                    &whole_logits,
                    &format!("{preset}: evicting, round {round}"),
                );
            }
            assert_eq!(
                model.generate(&requests).unwrap(),
                whole,
                "{preset}: evicting"
            );
            assert!(model.prefixes().tokens() <= 2 * BLOCK);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// Prefill progress counts what the passes compute, layer by layer: once a batch is
    /// answered, every position planned has been read, and they are the positions the prefill
    /// statistics count as computed, with prefixes from the cache or without; decode steps add
    /// nothing.
    #[test]
    fn prefill_progress_reaches_what_the_passes_computed() {
        let (model, dir) = random_model("progress", "tiny-llama", 9);
        assert_eq!(model.prefill_progress(), PrefillProgress::default());
        let requests = [
            ask_with_system("Be brief.", "hello world", 2),
            ask_with_system("Be brief.", "world", 30),
        ];
        for round in 1..=2 {
            model.generate(&requests).unwrap();
            let progress = model.prefill_progress();
            let stats = model.prefill_stats();
            assert!(progress.planned > 0, "round {round}");
            assert_eq!(progress.read, progress.planned, "round {round}");
            assert_eq!(progress.planned, stats.computed_tokens, "round {round}");
        }
        assert!(
            model.prefill_stats().reused_tokens > 0,
            "the second round reused prefixes"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn local_model_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<LocalModel>();
    }

    /// Without `structured`, a batch with a schema request is refused as a whole, with a reason
    /// that names the feature, rather than answered unconstrained (scripts/test runs this in its
    /// build without the feature).
    #[cfg(not(feature = "structured"))]
    #[test]
    fn a_schema_without_the_structured_feature_is_refused() {
        let (model, dir) = random_model("no-structured", "tiny-llama", 4);
        let plain = GenerationRequest::greedy(PromptInput::Raw("hello".into()), 2);
        let constrained = GenerationRequest {
            json_schema: Some(r#"{"type":"object"}"#.into()),
            ..plain.clone()
        };
        let err = model.generate(&[plain.clone(), constrained]).unwrap_err();
        assert!(
            matches!(&err, ModelError::Usage(m) if m.contains("`structured` feature")),
            "{err:?}"
        );
        assert_eq!(model.generate(&[plain]).unwrap().len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
