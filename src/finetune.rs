//! `fine_tune`: a dataset, a config and a listener in; a trained LoRA adapter out.
//!
//! The loop around [`Trainer`]: a reproducible split and length-bucketed batches per epoch,
//! gradient accumulation, warmup + linear or cosine learning rate, gradient clipping, NaN
//! steps skipped and reported, validation, progress events with tokens/s and ETA,
//! cancellation, and atomic checkpoints (adapter + AdamW moments + step + data position)
//! from which a run resumes bit for bit: every kernel is deterministic and the batch order
//! is a function of the seed and epoch only, so the same seed and data give the same loss
//! curve whether or not the run was interrupted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::adapter::{GpuAdapter, LoraWeights};
use crate::dataset::{collate, Dataset};
use crate::error::{Error, Result};
use crate::kernels::AdamW;
use crate::model::Llama;
use crate::train::{LoraSettings, TrainableAdapter, Trainer, TrainerOptions};

/// Learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    #[default]
    Linear,
    Cosine,
}

/// Everything a training run is configured by (loadable from TOML, every field optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub lora: LoraSettings,
    pub epochs: u32,
    /// Stop after this many optimizer steps (0: no limit).
    pub max_steps: u32,
    /// Sequences per micro-batch.
    pub batch_size: u32,
    /// Micro-batches per optimizer step.
    pub grad_accum: u32,
    pub lr: f32,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub warmup_steps: u32,
    pub schedule: Schedule,
    /// Clip the global gradient norm to this (0: no clipping).
    pub max_grad_norm: f32,
    /// Longest example in tokens (longer ones are truncated by the dataset).
    pub max_len: u32,
    /// Share of examples held out for validation.
    pub validation_fraction: f32,
    /// Validate every this many steps (0: at the end of each epoch only).
    pub eval_every: u32,
    /// Checkpoint every this many steps (0: only at the end and on cancellation). A
    /// checkpoint of a LoRA adapter is a few MB, cheap next to a step, so the default keeps
    /// at most 10 steps at risk when the process is killed.
    pub checkpoint_every: u32,
    pub seed: u64,
    /// Replay each layer's forward in the backward instead of keeping activations;
    /// unset: only when the kept activations would exceed [`KEPT_ACTIVATIONS_MAX`].
    pub recompute: Option<bool>,
    pub bucket_by_length: bool,
}

/// Most sequences per micro-batch (and micro-batches per step) a config may ask for.
const MAX_BATCH: u32 = 4096;
/// Longest example a config may ask for, in tokens.
const MAX_LEN: u32 = 1 << 17;

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lora: LoraSettings::default(),
            epochs: 1,
            max_steps: 0,
            batch_size: 4,
            grad_accum: 1,
            lr: 2e-4,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_steps: 0,
            schedule: Schedule::Linear,
            max_grad_norm: 1.0,
            max_len: 256,
            validation_fraction: 0.1,
            eval_every: 0,
            checkpoint_every: 10,
            seed: 42,
            recompute: None,
            bucket_by_length: true,
        }
    }
}

impl TrainConfig {
    pub fn from_toml(text: &str) -> Result<TrainConfig> {
        toml::from_str(text).map_err(|e| Error::Invalid(format!("training config: {e}")))
    }

    pub fn validate(&self) -> Result<()> {
        self.lora.target_mask()?;
        let bad = |m: String| Err(Error::Invalid(m));
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad("batch_size and grad_accum must be at least 1".into());
        }
        if self.batch_size > MAX_BATCH || self.grad_accum > MAX_BATCH {
            return bad(format!(
                "batch_size {} and grad_accum {} must be at most {MAX_BATCH}",
                self.batch_size, self.grad_accum
            ));
        }
        if self.max_len > MAX_LEN {
            return bad(format!("max_len {} (at most {MAX_LEN})", self.max_len));
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return bad(format!(
                "validation_fraction {} must be in [0, 1)",
                self.validation_fraction
            ));
        }

        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("learning rate {}", self.lr));
        }
        if self.epochs == 0 && self.max_steps == 0 {
            return bad("epochs and max_steps are both 0".into());
        }
        if self.max_len < 2 {
            return bad(format!("max_len {} (at least 2)", self.max_len));
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad(format!(
                "AdamW betas ({}, {}) must be in [0, 1)",
                self.beta1, self.beta2
            ));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad(format!("AdamW eps {} (must be > 0)", self.eps));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("weight decay {}", self.weight_decay));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return bad(format!(
                "max_grad_norm {} (0 = no clipping)",
                self.max_grad_norm
            ));
        }
        if !(self.lora.alpha.is_finite() && self.lora.alpha > 0.0) {
            return bad(format!("LoRA alpha {}", self.lora.alpha));
        }
        Ok(())
    }

    fn adamw(&self, lr: f32) -> AdamW {
        AdamW {
            lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }

    /// Learning rate of 1-based optimizer step `step` of `total`.
    pub fn lr_at(&self, step: u32, total: u32) -> f32 {
        if step <= self.warmup_steps && self.warmup_steps > 0 {
            return self.lr * step as f32 / self.warmup_steps as f32;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1) as f32;
        let done = (step.saturating_sub(self.warmup_steps)) as f32 - 1.0;
        let progress = (done / span).clamp(0.0, 1.0);
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Linear => self.lr * (1.0 - progress),
            Schedule::Cosine => self.lr * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos()),
        }
    }
}

/// Progress of a run, as the listener sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    Started {
        total_steps: u32,
        train_examples: usize,
        validation_examples: usize,
        /// First step of this run (after a resumed checkpoint's).
        first_step: u32,
        recompute: bool,
    },
    Step(StepReport),
    Validation {
        step: u32,
        loss: f64,
    },
    Checkpoint {
        step: u32,
        path: PathBuf,
    },
    Finished {
        steps: u32,
        cancelled: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    pub step: u32,
    pub total_steps: u32,
    /// Epochs done, fractional.
    pub epoch: f64,
    /// Mean loss over the step's loss positions.
    pub loss: f64,
    pub lr: f32,
    pub grad_norm: f64,
    /// The gradient was not finite: the update was skipped.
    pub skipped: bool,
    /// Tokens (padding excluded) per second over this run so far.
    pub tokens_per_sec: f64,
    pub eta_secs: f64,
    /// Peak GPU bytes allocated so far.
    pub peak_gpu_bytes: u64,
}

/// Where a run keeps its checkpoint and whether it resumes from it.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Folder of the checkpoint (`<dir>/checkpoint`); none: no checkpoints.
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue from the checkpoint in `checkpoint_dir` if there is one.
    pub resume: bool,
    /// Set from any thread to stop after the current step (a checkpoint is written).
    pub cancel: Option<Arc<AtomicBool>>,
}

/// What a run produced.
pub struct FineTuned {
    pub adapter: Arc<GpuAdapter>,
    pub weights: LoraWeights,
    pub steps: u32,
    pub cancelled: bool,
    pub losses: Vec<f64>,
    pub validation_losses: Vec<(u32, f64)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    /// AdamW updates applied (skipped steps do not count): its bias correction.
    optimizer_steps: u32,
    step: u32,
    /// Micro-batches consumed in total.
    micro_batches: u64,
    config: TrainConfig,
    /// `None` for a loss that was not finite (JSON has no NaN).
    losses: Vec<Option<f64>>,
    validation_losses: Vec<(u32, Option<f64>)>,
    n_train: usize,
}

/// Micro-batches of one epoch (examples' indices), a function of the seed and epoch only.
fn epoch_batches(
    data: &Dataset,
    train: &[usize],
    cfg: &TrainConfig,
    epoch: u64,
) -> Vec<Vec<usize>> {
    data.batches(
        train,
        cfg.batch_size as usize,
        cfg.seed
            .wrapping_add(epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        cfg.bucket_by_length,
    )
}

/// The most activation memory training keeps by default (`recompute` unset) before it
/// replays each layer's forward instead: keeping is ~30% faster (`lamina bench`: 4x128 at 49.0
/// tok/s kept, 37.6 recomputed), and PEFT, like PyTorch, keeps activations unless asked not to.
/// 1 GiB keeps SmolLM2-135M's batch of 8 x 128 (0.76 GB); Qwen2.5-0.5B's (1.4 GB) is recomputed.
pub const KEPT_ACTIVATIONS_MAX: u64 = 1 << 30;

/// Bytes of activations a trainer keeps without recomputation.
fn kept_activation_bytes(model: &Llama, rows: u64, r: u64) -> u64 {
    let c = &model.cfg;
    let per_row = 2 * c.n_embd as u64
        + (c.q_dim() + 2 * c.kv_dim()) as u64
        + 2 * c.kv_dim() as u64
        + c.q_dim() as u64
        + 2 * c.n_ff as u64
        + 7 * r;
    c.n_layer as u64 * rows * per_row * 4
}

/// Fine-tunes a LoRA adapter on `data` over the frozen model.
pub fn fine_tune(
    model: &Llama,
    data: &Dataset,
    pad_id: u32,
    cfg: &TrainConfig,
    run: &RunOptions,
    listener: &mut dyn FnMut(&TrainEvent),
) -> Result<FineTuned> {
    cfg.validate()?;
    if data.is_empty() {
        return Err(Error::Invalid("the dataset has no examples".into()));
    }
    if let Some((i, e)) = data
        .examples
        .iter()
        .enumerate()
        .find(|(_, e)| e.len() > cfg.max_len as usize)
    {
        return Err(Error::Invalid(format!(
            "example {i} has {} tokens, more than max_len {} (load the dataset with the same max_len to truncate)",
            e.len(),
            cfg.max_len
        )));
    }
    let (train, val) = data.split(cfg.validation_fraction, cfg.seed);
    if train.is_empty() {
        return Err(Error::Invalid(
            "no training examples left after the validation split".into(),
        ));
    }
    let max_seq = data
        .examples
        .iter()
        .map(|e| e.len())
        .max()
        .unwrap_or(2)
        .min(cfg.max_len as usize) as u32;
    let rows = cfg.batch_size as u64 * max_seq as u64;
    let recompute = cfg.recompute.unwrap_or_else(|| {
        kept_activation_bytes(model, rows, cfg.lora.r as u64) > KEPT_ACTIVATIONS_MAX
    });
    let adapter = TrainableAdapter::new(&model.gpu, &model.cfg, &cfg.lora, cfg.seed)?;
    let mut trainer = Trainer::new(
        model,
        adapter,
        TrainerOptions {
            max_batch: cfg.batch_size,
            max_seq,
            recompute,
        },
    )?;
    let per_epoch = epoch_batches(data, &train, cfg, 0).len() as u64;
    let steps_per_epoch = per_epoch.div_ceil(cfg.grad_accum as u64).max(1);
    let mut total = (steps_per_epoch * cfg.epochs as u64).min(u32::MAX as u64) as u32;
    if cfg.max_steps > 0 && (cfg.epochs == 0 || cfg.max_steps < total) {
        total = cfg.max_steps;
    }

    let mut state = CheckpointState {
        optimizer_steps: 0,
        step: 0,
        micro_batches: 0,
        config: cfg.clone(),
        losses: Vec::new(),
        validation_losses: Vec::new(),
        n_train: train.len(),
    };
    if let (Some(dir), true) = (&run.checkpoint_dir, run.resume) {
        if let Some(saved) = load_checkpoint(dir, &trainer, model, cfg, train.len())? {
            trainer.steps = saved.optimizer_steps;
            state = saved;
        }
    }
    listener(&TrainEvent::Started {
        total_steps: total,
        train_examples: train.len(),
        validation_examples: val.len(),
        first_step: state.step + 1,
        recompute,
    });

    let start = Instant::now();
    let mut tokens_done = 0u64;
    let mut cancelled = false;
    let mut epoch_cache: Option<(u64, Vec<Vec<usize>>)> = None;
    let mut batch_at = |mb: u64| -> Vec<usize> {
        let epoch = mb / per_epoch;
        if epoch_cache.as_ref().map(|(e, _)| *e) != Some(epoch) {
            epoch_cache = Some((epoch, epoch_batches(data, &train, cfg, epoch)));
        }
        epoch_cache.as_ref().unwrap().1[(mb % per_epoch) as usize].clone()
    };
    let steps_at_start = state.step;
    while state.step < total {
        trainer.zero_grad();
        let (mut loss_sum, mut loss_tokens) = (0f64, 0usize);
        // The last step of an epoch may have fewer micro-batches.
        let in_epoch = state.micro_batches % per_epoch;
        let n_micro = (cfg.grad_accum as u64).min(per_epoch - in_epoch);
        for _ in 0..n_micro {
            let idx = batch_at(state.micro_batches);
            let examples: Vec<_> = idx.iter().map(|&i| &data.examples[i]).collect();
            let (ids, labels, _mask, _t) = collate(&examples, pad_id);
            // Dropout masks depend only on the seed and the position in the data.
            trainer.set_dropout_seed(
                cfg.seed ^ state.micro_batches.wrapping_mul(0x2545_f491_4f6c_dd1d),
            );
            let out = trainer.accumulate(&ids, &labels, examples.len())?;
            loss_sum += out.sum;
            loss_tokens += out.tokens;
            tokens_done += examples.iter().map(|e| e.len() as u64).sum::<u64>();
            state.micro_batches += 1;
        }
        let lr = cfg.lr_at(state.step + 1, total);
        let max_norm = (cfg.max_grad_norm > 0.0).then_some(cfg.max_grad_norm);
        let outcome = trainer.optimizer_step(&cfg.adamw(lr), max_norm)?;
        state.step += 1;
        let loss = loss_sum / loss_tokens.max(1) as f64;
        state.losses.push(loss.is_finite().then_some(loss));
        state.optimizer_steps = trainer.steps;
        let secs = start.elapsed().as_secs_f64();
        let done = (state.step - steps_at_start) as f64;
        listener(&TrainEvent::Step(StepReport {
            step: state.step,
            total_steps: total,
            epoch: state.micro_batches as f64 / per_epoch as f64,
            loss,
            lr,
            grad_norm: outcome.grad_norm,
            skipped: outcome.skipped,
            tokens_per_sec: tokens_done as f64 / secs.max(1e-9),
            eta_secs: secs / done * (total - state.step) as f64,
            peak_gpu_bytes: model.gpu.counters.snapshot().peak_bytes,
        }));
        let epoch_end = state.micro_batches.is_multiple_of(per_epoch);
        let eval_now = if cfg.eval_every > 0 {
            state.step.is_multiple_of(cfg.eval_every) || state.step == total
        } else {
            epoch_end || state.step == total
        };
        if eval_now && !val.is_empty() {
            let loss = validate(&mut trainer, data, &val, cfg, pad_id)?;
            state
                .validation_losses
                .push((state.step, loss.is_finite().then_some(loss)));
            listener(&TrainEvent::Validation {
                step: state.step,
                loss,
            });
        }
        cancelled = run
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed));
        let periodic = cfg.checkpoint_every > 0 && state.step.is_multiple_of(cfg.checkpoint_every);
        if let Some(dir) = &run.checkpoint_dir {
            if periodic || cancelled || state.step == total {
                let path = save_checkpoint(dir, &trainer, model, &state)?;
                listener(&TrainEvent::Checkpoint {
                    step: state.step,
                    path,
                });
            }
        }
        if cancelled {
            break;
        }
    }
    listener(&TrainEvent::Finished {
        steps: state.step,
        cancelled,
    });
    let weights = trainer.adapter.weights(&model.gpu, &model.cfg)?;
    Ok(FineTuned {
        adapter: trainer.adapter.adapter.clone(),
        weights,
        steps: state.step,
        cancelled,
        losses: state.losses.iter().map(|l| l.unwrap_or(f64::NAN)).collect(),
        validation_losses: state
            .validation_losses
            .iter()
            .map(|&(s, l)| (s, l.unwrap_or(f64::NAN)))
            .collect(),
    })
}

/// Token-weighted mean loss over the validation examples.
fn validate(
    trainer: &mut Trainer,
    data: &Dataset,
    val: &[usize],
    cfg: &TrainConfig,
    pad_id: u32,
) -> Result<f64> {
    let (mut sum, mut tokens) = (0f64, 0usize);
    for chunk in val.chunks(cfg.batch_size as usize) {
        let examples: Vec<_> = chunk.iter().map(|&i| &data.examples[i]).collect();
        let (ids, labels, _, _) = collate(&examples, pad_id);
        let out = trainer.evaluate(&ids, &labels, examples.len())?;
        sum += out.sum;
        tokens += out.tokens;
    }
    Ok(sum / tokens.max(1) as f64)
}

const STATE_JSON: &str = "trainer_state.json";
const MOMENTS: &str = "optimizer.safetensors";

/// Writes `<dir>/checkpoint` atomically: into a fresh folder, then renamed into place (the
/// previous one is kept as `checkpoint.old` until the new one is in place).
fn save_checkpoint(
    dir: &Path,
    trainer: &Trainer,
    model: &Llama,
    state: &CheckpointState,
) -> Result<PathBuf> {
    let io = |p: &Path, e: std::io::Error| Error::File {
        path: p.to_path_buf(),
        detail: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let fin = dir.join("checkpoint");
    let tmp = dir.join(format!(".checkpoint.tmp-{}", std::process::id()));
    let old = dir.join("checkpoint.old");
    // Leftovers of saves that were cut off (any process) are never valid checkpoints.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(".checkpoint.tmp-")
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let weights = trainer.adapter.weights(&model.gpu, &model.cfg)?;
    weights.save(&tmp, state.config.lora.dropout, None)?;
    let moments = trainer.adapter.read_moments(&model.gpu, &model.cfg)?;
    let named: Vec<(String, Vec<usize>, &[f32])> = moments
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("moment.{i:05}"), vec![m.len()], &m[..]))
        .collect();
    let bytes = crate::adapter::safetensors_f32(&named)?;
    crate::fetch::write_atomic(&tmp.join(MOMENTS), &bytes)?;
    let json = serde_json::to_string_pretty(state).map_err(|e| Error::Invalid(e.to_string()))?;
    crate::fetch::write_atomic(&tmp.join(STATE_JSON), json.as_bytes())?;
    // At every moment `checkpoint` or `checkpoint.old` holds a complete checkpoint: `old` is
    // replaced only while `checkpoint` exists, and removed once the new one is in place.
    if fin.exists() {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(&fin, &old).map_err(|e| io(&fin, e))?;
    }
    std::fs::rename(&tmp, &fin).map_err(|e| io(&fin, e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    let _ = std::fs::remove_dir_all(&old);
    Ok(fin)
}

/// Restores the trainer from `<dir>/checkpoint` (or `checkpoint.old` if a save was cut off
/// between its renames); `None` when there is no checkpoint.
fn load_checkpoint(
    dir: &Path,
    trainer: &Trainer,
    model: &Llama,
    cfg: &TrainConfig,
    n_train: usize,
) -> Result<Option<CheckpointState>> {
    let path = [dir.join("checkpoint"), dir.join("checkpoint.old")]
        .into_iter()
        .find(|p| p.join(STATE_JSON).exists());
    let Some(path) = path else {
        return Ok(None);
    };
    let file_err = |p: &Path, d: String| Error::File {
        path: p.to_path_buf(),
        detail: d,
    };
    let sp = path.join(STATE_JSON);
    let text = std::fs::read_to_string(&sp).map_err(|e| file_err(&sp, e.to_string()))?;
    let state: CheckpointState =
        serde_json::from_str(&text).map_err(|e| file_err(&sp, e.to_string()))?;
    // Everything about the run is checked before any tensor is read: a checkpoint of another
    // model, config or dataset is refused with this message, not half restored.
    if state.config != *cfg || state.n_train != n_train {
        return Err(Error::Invalid(format!(
            "the checkpoint in {} was made with another config or dataset",
            dir.display()
        )));
    }
    if state.optimizer_steps > state.step
        || state.losses.len() != state.step as usize
        || state.step == u32::MAX
    {
        return Err(file_err(
            &sp,
            format!(
                "inconsistent: {} optimizer steps, step {}, {} losses",
                state.optimizer_steps,
                state.step,
                state.losses.len()
            ),
        ));
    }
    let weights = LoraWeights::load(&path)?;
    let mp = path.join(MOMENTS);
    let bytes = std::fs::read(&mp).map_err(|e| file_err(&mp, e.to_string()))?;
    let st =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| file_err(&mp, e.to_string()))?;
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    let mut moments = Vec::new();
    for n in names {
        let t = st.tensor(&n).map_err(|e| file_err(&mp, e.to_string()))?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(file_err(&mp, format!("tensor '{n}' is not f32")));
        }
        moments.push(bytemuck::pod_collect_to_vec(t.data()));
    }
    trainer
        .adapter
        .restore(&model.gpu, &model.cfg, &weights, &moments)
        .map_err(|e| file_err(&path, e.to_string()))?;
    Ok(Some(state))
}
