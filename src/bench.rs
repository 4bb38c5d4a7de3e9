//! `lamina bench`: prefill, decode and LoRA training speed on the loaded model, with the
//! device-independent counters (dispatches, submits and bytes read back per decoded token,
//! peak buffer bytes), in the spirit of llama.cpp's `llama-bench`.

use std::time::Instant;

use serde::Serialize;

use crate::engine::Engine;
use crate::generate::{GenerateParams, SamplingParams};
use crate::kernels::AdamW;
use crate::train::{LoraSettings, TrainableAdapter, Trainer, TrainerOptions};
use crate::Result;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Prompt tokens for the prefill measurement (`-p`).
    pub prompt_tokens: usize,
    /// Tokens decoded for the decode measurement (`-n`), timed without the prefill.
    pub decode_tokens: usize,
    /// Training shape (batch, tokens per sequence); `None` skips training.
    pub train: Option<(usize, usize)>,
    /// Timed repetitions of each measurement, after one untimed warm-up.
    pub repetitions: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            prompt_tokens: 128,
            decode_tokens: 64,
            train: Some((4, 128)),
            repetitions: 2,
        }
    }
}

/// One training mode's measurement.
#[derive(Debug, Clone, Serialize)]
pub struct TrainRate {
    pub tok_s: f64,
    pub secs_per_step: f64,
    /// Peak GPU bytes during the steps (model, trainer and activations).
    pub peak_gpu_bytes: u64,
    pub dispatches_per_step: u64,
    pub submits_per_step: u64,
    pub loss: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    /// Seconds to open the model and upload its weights (the engine's load).
    pub load_s: f64,
    pub device: String,
    pub driver: String,
    pub backend: String,
    pub prefill_tokens: usize,
    pub prefill_tok_s: f64,
    pub decode_tokens: usize,
    pub decode_tok_s: f64,
    /// Milliseconds per decoded token the device sits idle while the host works (encoding,
    /// submitting, mapping the sampled id, detokenizing, stop checks).
    pub decode_host_gap_ms: f64,
    /// "BxS" of the training measurement, if any.
    pub train_shape: Option<String>,
    /// LoRA r 8, all seven targets, activations kept.
    pub train_tok_s: Option<f64>,
    /// The same with activations recomputed in the backward.
    pub train_recompute_tok_s: Option<f64>,
    pub train: Option<TrainRate>,
    pub train_recompute: Option<TrainRate>,
    /// Peak GPU buffer bytes over the whole run.
    pub peak_gpu_bytes: u64,
    pub dispatches_per_token: f64,
    pub submits_per_token: f64,
    pub readback_bytes_per_token: f64,
}

/// A deterministic prompt of `n` ordinary tokens.
fn prompt(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| 1000 + (i * 37) % 20000).collect()
}

/// With `LAMINA_PROFILE=1`, prints the time per kernel of the phase just measured.
fn print_profile(engine: &Engine, phase: &str) {
    if crate::gpu::Counters::profiling() {
        eprintln!("profile of {phase} (each kernel run alone):");
        for line in engine.gpu().counters.take_profile() {
            eprintln!("{line}");
        }
    }
}

pub fn run(engine: &mut Engine, opts: &BenchOptions) -> Result<BenchReport> {
    let gpu = engine.gpu().clone();
    gpu.counters.reset_peak();
    let reps = opts.repetitions.max(1);

    // Prefill: the whole prompt in one forward pass from an empty cache.
    let p = prompt(opts.prompt_tokens.max(1));
    let mut prefill_secs = f64::INFINITY;
    for rep in 0..=reps {
        engine.reset();
        let start = Instant::now();
        engine.model_mut().forward_last(&p, None)?;
        gpu.wait()?;
        if rep > 0 {
            prefill_secs = prefill_secs.min(start.elapsed().as_secs_f64());
        }
    }

    print_profile(engine, "prefill");

    // Decode: greedy tokens after a short prompt, through end-of-sequence tokens, timed
    // without the prompt's prefill.
    let want = opts.decode_tokens.max(1);
    let params = GenerateParams {
        max_tokens: want,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        ..Default::default()
    };
    let mut decode_tok_s: f64 = 0.0;
    let mut decode_host_gap_ms = f64::INFINITY;
    let mut per_token = (0.0, 0.0, 0.0);
    for rep in 0..=reps {
        engine.reset();
        let before = gpu.counters.snapshot();
        let g = engine.generate_tokens(&prompt(8), &params, &mut |_| true)?;
        let after = gpu.counters.snapshot();
        if rep > 0 {
            decode_tok_s = decode_tok_s.max(g.timings.decode_tok_s());
            decode_host_gap_ms = decode_host_gap_ms.min(g.timings.decode_host_gap_ms());
            // Counted over the whole call (its short prefill included) per generated token.
            let n = g.tokens.len().max(1) as f64;
            per_token = (
                (after.dispatches - before.dispatches) as f64 / n,
                (after.submits - before.submits) as f64 / n,
                (after.bytes_read_back - before.bytes_read_back) as f64 / n,
            );
        }
    }
    if !decode_host_gap_ms.is_finite() {
        decode_host_gap_ms = 0.0;
    }
    print_profile(engine, "decode");
    engine.reset();
    let mut peak = gpu.counters.snapshot().peak_bytes;

    let (mut train, mut train_recompute) = (None, None);
    if let Some((batch, seq)) = opts.train {
        let kept = train_rate(engine, batch, seq, false, reps)?;
        print_profile(engine, "training");
        let recomputed = train_rate(engine, batch, seq, true, reps)?;
        print_profile(engine, "training with recompute");
        peak = peak.max(kept.peak_gpu_bytes).max(recomputed.peak_gpu_bytes);
        train = Some(kept);
        train_recompute = Some(recomputed);
    }
    let info = &gpu.info;
    Ok(BenchReport {
        model: engine.model_name().to_string(),
        load_s: engine.load_secs(),
        device: info.name.clone(),
        driver: format!("{} {}", info.driver, info.driver_info),
        backend: format!("{:?}", info.backend),
        prefill_tokens: p.len(),
        prefill_tok_s: p.len() as f64 / prefill_secs,
        decode_tokens: want,
        decode_tok_s,
        decode_host_gap_ms,
        train_shape: opts.train.map(|(b, s)| format!("{b}x{s}")),
        train_tok_s: train.as_ref().map(|t| t.tok_s),
        train_recompute_tok_s: train_recompute.as_ref().map(|t| t.tok_s),
        train,
        train_recompute,
        peak_gpu_bytes: peak,
        dispatches_per_token: per_token.0,
        submits_per_token: per_token.1,
        readback_bytes_per_token: per_token.2,
    })
}

/// LoRA training steps (r 8, all seven targets, loss on every position) on a fixed batch:
/// one untimed step that builds the plan and compiles the pipelines, then `steps` timed ones.
pub fn train_rate(
    engine: &Engine,
    batch: usize,
    seq: usize,
    recompute: bool,
    steps: usize,
) -> Result<TrainRate> {
    let gpu = engine.gpu().clone();
    let ids: Vec<u32> = (0..batch * seq)
        .map(|i| 1000 + (i as u32 * 7919) % 40000)
        .collect();
    let labels: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    gpu.counters.reset_peak();
    let adapter = TrainableAdapter::new(&gpu, &engine.model().cfg, &LoraSettings::default(), 1)?;
    let mut tr = Trainer::new(
        engine.model(),
        adapter,
        TrainerOptions {
            max_batch: batch as u32,
            max_seq: seq as u32,
            recompute,
        },
    )?;
    let step = |tr: &mut Trainer| -> Result<f64> {
        tr.zero_grad();
        let l = tr.accumulate(&ids, &labels, batch)?;
        tr.optimizer_step(&AdamW::default(), Some(1.0))?;
        Ok(l.sum / l.tokens.max(1) as f64)
    };
    step(&mut tr)?;
    let before = gpu.counters.snapshot();
    let start = Instant::now();
    let mut loss = 0.0;
    for _ in 0..steps.max(1) {
        loss = step(&mut tr)?;
    }
    let secs = start.elapsed().as_secs_f64() / steps.max(1) as f64;
    let after = gpu.counters.snapshot();
    Ok(TrainRate {
        tok_s: (batch * seq) as f64 / secs,
        secs_per_step: secs,
        peak_gpu_bytes: after.peak_bytes,
        dispatches_per_step: (after.dispatches - before.dispatches) / steps.max(1) as u64,
        submits_per_step: (after.submits - before.submits) / steps.max(1) as u64,
        loss,
    })
}
