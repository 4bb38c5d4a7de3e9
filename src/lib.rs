//! Lamina: run and fine-tune small language models on the user's own GPU.
//!
//! Data path: [`gguf`] file -> [`model::Weights`] on the GPU (still quantized) ->
//! [`model::Llama`] forward -> logits -> [`generate::Session`] sampling.

pub mod error;
pub mod gguf;
pub mod gpu;
pub mod kernels;
pub mod quant;
pub mod shaders;
pub use error::{Error, Result};
