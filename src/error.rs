//! The crate's error type: every failure a user can cause or meet says what and where.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
    #[error("tensor '{tensor}': {source}")]
    TensorType {
        tensor: String,
        source: crate::quant::UnsupportedType,
    },
    #[error("model: {0}")]
    Model(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The caller asked to stop (a cancel flag, a listener, Ctrl-C); what was done is kept.
    #[error("cancelled: {0}")]
    Cancelled(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
