//! Loaders: each turns a model's files into a decoder's [`LlamaConfig`](crate::LlamaConfig)
//! and [`Weights`](crate::llama::Weights), which [`Llama::new`](crate::llama::Llama::new)
//! takes. The file formats know nothing of the decoder, and the decoder knows no file format.
//!
//! - [`hf`]: a Hugging Face directory (single or sharded safetensors), and writing one with
//!   random weights;
//! - [`gguf`]: a GGUF file (read by [`crate::gguf`]), its quantized matrices packed.

pub mod gguf;
pub mod hf;
