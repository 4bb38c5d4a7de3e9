//! Shared by the fuzz targets: the fixture tokenizer, a private scratch folder, and a way to
//! cut one input into several parts.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lamina::tokenizer::Tokenizer;

/// SmolLM2's tokenizer (with its chat template) from the shared fixtures.
pub fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/smollm2-2layer-hf/checkpoint/tokenizer.json");
        Tokenizer::from_json_file(&p).expect("fixture tokenizer")
    })
}

/// A folder of this process's own (in memory where /dev/shm exists).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("lamina-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch folder");
        d
    })
}

/// Splits `data` at the first `n - 1` occurrences of the byte 0xFF: n parts (the last ones
/// may be empty).
pub fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    while out.len() + 1 < n {
        match rest.iter().position(|&b| b == 0xFF) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + 1..];
            }
            None => {
                out.push(rest);
                rest = &[];
            }
        }
    }
    out.push(rest);
    out
}

/// A small model config to check adapters against (SmolLM2's shape, fewer layers).
pub fn small_config(neox: bool) -> lamina::model::Config {
    lamina::model::Config {
        arch: "llama".into(),
        n_layer: 2,
        n_embd: 64,
        n_head: 4,
        n_kv_head: 2,
        head_dim: 16,
        n_ff: 96,
        vocab: 128,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        ctx_train: 256,
        rope_neox: neox,
        rope_linear: 1.0,
    }
}
