//! Lamina: run and fine-tune small language models on the user's own GPU.
//!
//! Data path: [`gguf`] file -> [`model::Weights`] on the GPU (still quantized) ->
//! [`model::Llama`] forward -> logits -> [`generate::Session`] sampling; and for training,
//! [`dataset`] -> [`train::Trainer`] (forward, loss, backward into LoRA gradients, AdamW on
//! the GPU) -> [`adapter`] in the PEFT layout.

pub mod adapter;
pub mod bench;
mod block;
pub mod dataset;
pub mod engine;
pub mod error;
pub mod fetch;
pub mod finetune;
pub mod generate;
pub mod gguf;
pub mod gpu;
pub mod hf;
pub mod kernels;
pub mod merge;
pub mod model;
pub mod quant;
pub mod shaders;
pub mod task;
pub mod tokenizer;
pub mod train;
pub use error::{Error, Result};
