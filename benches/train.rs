//! A LoRA training step on SmolLM2-135M: batch 4 x 128 tokens, r = 8, all seven projections,
//! loss on every position. Reports tokens/s and peak GPU memory with activations kept and
//! with recomputation, plus dispatches and submits per step. A step takes seconds on a
//! software device, so this is a plain timing harness rather than a criterion sampler; it
//! measures with the same code as `lamina bench` ([`lamina::bench::train_rate`]).
//!
//! `cargo bench --bench train` (env `LAMINA_BENCH_STEPS`, default 2 timed steps per mode;
//! `LAMINA_BENCH_BATCH` and `LAMINA_BENCH_SEQ` change the shape; `LAMINA_PROFILE=1` prints
//! the time per kernel).

use lamina::engine::{Engine, EngineOptions};

fn main() {
    lamina::gpu::two_software_threads_per_core();
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let steps = env("LAMINA_BENCH_STEPS", 2);
    let (batch, seq) = (env("LAMINA_BENCH_BATCH", 4), env("LAMINA_BENCH_SEQ", 128));
    let engine = Engine::load(None, EngineOptions::default()).expect("default model");
    let gpu = engine.gpu().clone();
    eprintln!("device: {}", gpu.describe());
    let file_mib = std::fs::metadata(engine.path())
        .map(|m| m.len())
        .unwrap_or(0) as f64
        / 1048576.0;
    for recompute in [false, true] {
        let r = lamina::bench::train_rate(&engine, batch, seq, recompute, steps)
            .expect("a training step");
        println!(
            "train step {batch}x{seq}, r=8, 7 targets, recompute={recompute}: {:.1} s/step, {:.1} tokens/s, \
             peak GPU {:.0} MiB (model file {file_mib:.0} MiB), {} dispatches and {} submits per step, loss {:.3}",
            r.secs_per_step,
            r.tok_s,
            r.peak_gpu_bytes as f64 / 1048576.0,
            r.dispatches_per_step,
            r.submits_per_step,
            r.loss,
        );
        for line in gpu.counters.take_profile() {
            eprintln!("{line}");
        }
    }
}
