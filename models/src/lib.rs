//! In-process inference for drpo-host: Llama-family decoders (Mistral, Llama 2/3, SmolLM2) on
//! burn, on CPU (`flex`, the default) or on CUDA (behind the `cuda` feature).
//!
//! - [`bert`]: sentence embeddings with a BERT-family encoder (all-MiniLM-L6-v2 by default);
//! - [`config`]: the hyper-parameters, from a Hugging Face `config.json` or a preset;
//! - [`llama`]: the decoder itself, generic over the burn backend, with a device KV cache;
//!   `cpu` and `cuda` hold its fused operations for each backend;
//! - [`hf`]: loading a Hugging Face directory (single or sharded safetensors) and writing one
//!   with random weights;
//! - [`gguf`]: GGUF files (llama.cpp's format): metadata, dequantization, loading a decoder;
//! - [`packed`]: quantized weight matrices kept packed, multiplied on the CPU (with the
//!   helper threads of `workers`);
//! - [`tokenizer`]: tokenizers from `tokenizer.json` or from GGUF metadata;
//! - [`chat`]: chat templates (minijinja);
//! - [`generate`]: [`LocalModel`], batched generation with sampling and stop strings;
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
pub mod hf;
pub mod llama;
pub mod packed;
#[cfg(feature = "structured")]
pub mod structured;
pub mod tokenizer;
mod workers;

pub use chat::ChatMessage;
pub use config::LlamaConfig;
pub use device::DeviceSpec;
pub use error::ModelError;
pub use generate::{GenerationOutput, GenerationRequest, LocalModel, PromptInput};
