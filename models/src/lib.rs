//! In-process inference for drpo-host: Llama-family decoders (Mistral, Llama 2/3, SmolLM2) on
//! burn, on CPU (`flex`, the default) or on CUDA (behind the `cuda` feature).
//!
//! Layered format → weights → architecture: a file format ([`gguf`]; safetensors through its
//! crate) knows nothing of the model, a loader ([`load`]) turns files into weights, and the
//! decoder ([`llama`]) knows no file format. Which module may import which is the table in
//! `docs/design.md` ("models/, module by module").
//!
//! - [`bert`]: sentence embeddings with a BERT-family encoder (all-MiniLM-L6-v2 by default);
//! - [`config`]: the hyper-parameters, from a Hugging Face `config.json` or a preset;
//! - [`kernel_options`]: [`KernelOptions`], the kernel switches a decoder runs with;
//! - [`gguf`]: GGUF files (llama.cpp's format): metadata, tensor table, dequantization;
//! - [`load`]: loaders from a Hugging Face directory or a GGUF file to a decoder's weights;
//! - [`llama`]: the decoder itself, generic over the burn backend, with a device KV cache;
//!   `cpu` and `cuda` hold its fused operations for each backend;
//! - [`packed`]: quantized weight matrices kept packed, multiplied on the CPU (with the
//!   helper threads of `workers`);
//! - [`tokenizer`]: tokenizers from `tokenizer.json` or from GGUF metadata;
//! - [`chat`]: chat templates (minijinja);
//! - [`generate`]: [`LocalModel`], batched generation with sampling and stop strings;
//! - [`prefix_cache`]: the keys and values of prompt prefixes computed before, reused;
//! - `structured` (cargo feature `structured`): JSON-schema-constrained decoding (llguidance);
//! - [`device`]: `cpu` / `cuda[:N]` device selection and the backends behind them.

pub mod bert;
pub mod chat;
pub mod config;
mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
mod error;
pub mod generate;
pub mod gguf;
pub mod kernel_options;
pub mod llama;
pub mod load;
pub mod packed;
pub mod prefix_cache;
#[cfg(feature = "structured")]
pub mod structured;
pub mod tokenizer;
mod workers;

pub use chat::ChatMessage;
pub use config::LlamaConfig;
pub use device::DeviceSpec;
pub use error::ModelError;
pub use generate::{
    Arrival, ChoiceObserver, DECODER_REVISION, GenerationOutput, GenerationRequest, LocalModel,
    PrefillProgress, PromptInput, TextObserver,
};
pub use kernel_options::KernelOptions;
pub use prefix_cache::PrefillStats;
