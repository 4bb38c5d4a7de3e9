//! A LoRA training step on SmolLM2-135M: batch 4 x 128 tokens, r = 8, all seven projections,
//! loss on every position. Reports tokens/s and peak GPU memory with activations kept and
//! with recomputation, plus dispatches and submits per step. A step takes tens of seconds on
//! a software device, so this is a plain timing harness rather than a criterion sampler.
//!
//! `cargo bench --bench train` (env `LAMINA_BENCH_STEPS`, default 2 timed steps per mode;
//! `LAMINA_BENCH_BATCH` and `LAMINA_BENCH_SEQ` change the shape; `LAMINA_PROFILE=1` prints
//! the time per kernel).

use std::time::Instant;

use lamina::engine::{Engine, EngineOptions};
use lamina::kernels::AdamW;
use lamina::model::ModelOptions;
use lamina::train::{LoraSettings, TrainableAdapter, Trainer, TrainerOptions};

fn main() {
    let steps: usize = std::env::var("LAMINA_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let opts = EngineOptions {
        model: ModelOptions {
            context: 256,
            batch: 32,
            ..Default::default()
        },
        ..Default::default()
    };
    let engine = Engine::load(None, opts).expect("default model");
    let gpu = engine.gpu().clone();
    eprintln!("device: {}", gpu.describe());
    let file_mib = std::fs::metadata(engine.path())
        .map(|m| m.len())
        .unwrap_or(0) as f64
        / 1048576.0;
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (batch, seq) = (env("LAMINA_BENCH_BATCH", 4), env("LAMINA_BENCH_SEQ", 128));
    let ids: Vec<u32> = (0..batch * seq)
        .map(|i| 1000 + (i as u32 * 7919) % 40000)
        .collect();
    let labels: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    for recompute in [false, true] {
        let base = gpu.counters.snapshot().bytes_in_use;
        let adapter =
            TrainableAdapter::new(&gpu, &engine.model().cfg, &LoraSettings::default(), 1).unwrap();
        let mut tr = Trainer::new(
            engine.model(),
            adapter,
            TrainerOptions {
                max_batch: batch as u32,
                max_seq: seq as u32,
                recompute,
            },
        )
        .unwrap();
        gpu.counters.reset_peak();
        let step = |tr: &mut Trainer| {
            tr.zero_grad();
            let l = tr.accumulate(&ids, &labels, batch).unwrap();
            tr.optimizer_step(&AdamW::default(), Some(1.0)).unwrap();
            l.sum / l.tokens as f64
        };
        // The first step builds the plan and compiles the pipelines.
        step(&mut tr);
        let before = gpu.counters.snapshot();
        let start = Instant::now();
        let mut loss = 0.0;
        for _ in 0..steps {
            loss = step(&mut tr);
        }
        let secs = start.elapsed().as_secs_f64() / steps as f64;
        let after = gpu.counters.snapshot();
        println!(
            "train step {batch}x{seq}, r=8, 7 targets, recompute={recompute}: {:.1} s/step, {:.1} tokens/s, \
             peak GPU {:.0} MiB (model file {:.0} MiB, trainer {:.0} MiB), {} dispatches and {} submits per step, loss {loss:.3}",
            secs,
            (batch * seq) as f64 / secs,
            after.peak_bytes as f64 / 1048576.0,
            file_mib,
            (after.peak_bytes - base) as f64 / 1048576.0,
            (after.dispatches - before.dispatches) / steps as u64,
            (after.submits - before.submits) / steps as u64,
        );
        drop(tr);
    }
}
