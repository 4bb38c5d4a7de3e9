//! LoRA training over the frozen, still-quantized base model: the forward of a batch with
//! its activations kept, the backward that chains the kernels of `shaders/*_backward.wgsl`
//! into LoRA gradients, and AdamW on the GPU.
//!
//! Data path of one micro-batch (`n_seq` sequences of `seq` tokens laid end to end, rows
//! `b * seq + t`):
//!
//! ```text
//! embed -> per layer: rmsnorm, QKV (+LoRA), rope + per-sequence KV, attention, O (+LoRA)
//!          into the residual, rmsnorm, gate/up (+LoRA), down on SwiGLU (+LoRA) into the residual
//!       -> final rmsnorm -> gather the rows that carry loss -> output head -> cross-entropy
//!          (in chunks of rows, so the 49k-wide logits exist for a few rows at a time)
//!       <- head^T, scatter, rmsnorm^T -> per layer in reverse: down^T + LoRA grads, SwiGLU^T,
//!          gate/up^T + LoRA grads, rmsnorm^T, O^T + LoRA grads, attention^T, rope^T,
//!          QKV^T + LoRA grads, rmsnorm^T
//! ```
//!
//! Per layer the forward keeps its residual input and output, QKV (q rotated), the
//! per-sequence K/V, the attention output, gate/up and each LoRA's `X A^T`. With
//! `recompute`, only the residual stream between layers is kept and each layer's forward is
//! replayed just before its backward (about a third more work for a fraction of the memory).
//!
//! Gradients are sums over loss positions (cross-entropy's scale is 1): the optimizer step
//! divides by the number of loss positions of all its micro-batches, which is PEFT's mean
//! loss when there is one micro-batch and the token-weighted mean with accumulation.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::adapter::{
    b_to_model, b_to_peft, module_dims, GpuAdapter, LoraConfig, LoraModule, LoraWeights, MODULES,
};
use crate::block::{self, encode, profile, BlockBuffers, LoraIn, LoraOut, Op, Residual};
use crate::error::{Error, Result};
use crate::gpu::{Buffer, Gpu};
use crate::kernels::{
    self, AdamW, AttnBackward, AttnShape, Dispatch, Dropout, LoraGrad, LoraShape, MatmulShape,
    Step, LORA_BACKWARD_SEED_OFFSET, LORA_DOWN_SEED_OFFSET, PAD_ROW,
};
use crate::model::{Config, Linear, Llama, Weights};

/// Label value that takes no loss (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// Rows of the output head computed at once: its logits buffer is `HEAD_CHUNK * vocab` floats.
const HEAD_CHUNK: u32 = 64;

/// Sequence lengths are padded to a multiple of this, so a few plans serve every batch.
const SEQ_ALIGN: u32 = 8;

/// `22-29`, `0,5,10-12`: the layer numbers named.
pub fn parse_layers(spec: &str) -> Result<Vec<u32>> {
    let bad = || Error::Invalid(format!("--layers {spec:?} (e.g. 22-29 or 0,5,10-12)"));
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                );
                if a > b || b - a > 4096 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// LoRA settings for training, as in PEFT's `LoraConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSettings {
    pub r: u32,
    pub alpha: f32,
    /// Scale alpha / sqrt(r) instead of alpha / r.
    pub use_rslora: bool,
    /// Probability of zeroing each LoRA input feature during training (inverted dropout).
    pub dropout: f32,
    /// Projections that get an adapter, in PEFT's names (`q_proj`, ..., `down_proj`).
    pub targets: Vec<String>,
    /// Layers that get an adapter (PEFT's `layers_to_transform`); unset: every layer.
    pub layers: Option<Vec<u32>>,
    /// Only the last this many layers get an adapter (as mlx-lm's `num_layers`); overrides
    /// nothing when unset.
    pub last_layers: Option<u32>,
}

impl Default for LoraSettings {
    fn default() -> Self {
        LoraSettings {
            r: 8,
            alpha: 16.0,
            use_rslora: false,
            dropout: 0.0,
            targets: MODULES.iter().map(|s| s.to_string()).collect(),
            layers: None,
            last_layers: None,
        }
    }
}

impl LoraSettings {
    /// Which of [`MODULES`] are targeted; an unknown name is an error.
    pub fn target_mask(&self) -> Result<[bool; 7]> {
        let mut mask = [false; 7];
        for t in &self.targets {
            let i = MODULES.iter().position(|m| m == t).ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown LoRA target '{t}' (expected some of {})",
                    MODULES.join(", ")
                ))
            })?;
            mask[i] = true;
        }
        if !mask.iter().any(|&m| m) {
            return Err(Error::Invalid("no LoRA target modules".into()));
        }
        if self.r == 0 || self.r > 1024 {
            return Err(Error::Invalid(format!("LoRA rank {} (1..=1024)", self.r)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Invalid(format!(
                "LoRA dropout {} (0 <= p < 1)",
                self.dropout
            )));
        }
        Ok(mask)
    }

    /// Which of a model's `n_layer` layers get an adapter. The backward stops at the lowest
    /// one: nothing below it has a gradient to compute.
    pub fn layer_mask(&self, n_layer: u32) -> Result<Vec<bool>> {
        let mut mask = vec![self.layers.is_none() && self.last_layers.is_none(); n_layer as usize];
        if let Some(layers) = &self.layers {
            for &l in layers {
                let slot = mask.get_mut(l as usize).ok_or_else(|| {
                    Error::Invalid(format!(
                        "LoRA layer {l} does not exist (the model has {n_layer})"
                    ))
                })?;
                *slot = true;
            }
        }
        if let Some(n) = self.last_layers {
            if n == 0 || n > n_layer {
                return Err(Error::Invalid(format!(
                    "last_layers {n} (the model has {n_layer} layers)"
                )));
            }
            mask.iter_mut()
                .skip((n_layer - n) as usize)
                .for_each(|m| *m = true);
        }
        if !mask.iter().any(|&m| m) {
            return Err(Error::Invalid("no LoRA layers".into()));
        }
        Ok(mask)
    }

    pub fn lora_config(&self) -> LoraConfig {
        LoraConfig {
            r: self.r,
            alpha: self.alpha,
            use_rslora: self.use_rslora,
        }
    }
}

/// Per (layer, module index in [`MODULES`]): a pair of values shaped like A `[r, in]` and
/// B `[out, r]` (weights or gradients), in PEFT's layout.
pub type PairMap = BTreeMap<(u32, usize), (Vec<f32>, Vec<f32>)>;

/// Gradient and AdamW moments of one module's A and B.
pub(crate) struct ModuleState {
    pub da: Buffer,
    pub db: Buffer,
    pub m_a: Buffer,
    pub v_a: Buffer,
    pub m_b: Buffer,
    pub v_b: Buffer,
}

/// A LoRA adapter being trained: its parameters (shared with inference as a [`GpuAdapter`]),
/// gradients and optimizer moments, all on the GPU.
pub struct TrainableAdapter {
    pub config: LoraConfig,
    /// LoRA dropout probability during training.
    pub dropout: f32,
    pub targets: [bool; 7],
    pub adapter: Arc<GpuAdapter>,
    pub(crate) state: Vec<[Option<ModuleState>; 7]>,
}

/// One trainable tensor, in a fixed order (layer, module, A then B).
pub(crate) struct TensorRef<'a> {
    pub layer: u32,
    pub module: usize,
    pub is_b: bool,
    pub param: &'a Buffer,
    pub grad: &'a Buffer,
    pub m: &'a Buffer,
    pub v: &'a Buffer,
    pub len: u32,
}

impl TrainableAdapter {
    /// A fresh adapter with PEFT's initialisation: A ~ kaiming-uniform(a = sqrt 5), that is
    /// U(-1/sqrt(in), 1/sqrt(in)), and B = 0, drawn from `seed`.
    pub fn new(gpu: &Gpu, cfg: &Config, settings: &LoraSettings, seed: u64) -> Result<Self> {
        use rand::{Rng, SeedableRng};
        let mask = settings.target_mask()?;
        let layers = settings.layer_mask(cfg.n_layer)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let r = settings.r;
        let mut tensors = BTreeMap::new();
        for layer in (0..cfg.n_layer).filter(|&l| layers[l as usize]) {
            for (m, _) in mask.iter().enumerate().filter(|(_, &on)| on) {
                let (n_in, n_out) = module_dims(cfg, m);
                let bound = 1.0 / (n_in as f32).sqrt();
                let a: Vec<f32> = (0..r * n_in)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                tensors.insert((layer, m), (a, vec![0f32; (n_out * r) as usize]));
            }
        }
        let w = LoraWeights {
            config: settings.lora_config(),
            tensors,
        };
        let mut adapter = Self::from_weights(gpu, cfg, &w)?;
        adapter.dropout = settings.dropout;
        Ok(adapter)
    }

    /// Starts from given A/B (a PEFT adapter, or the fixture's values).
    pub fn from_weights(gpu: &Gpu, cfg: &Config, w: &LoraWeights) -> Result<Self> {
        let adapter = GpuAdapter::upload(gpu, w, cfg)?;
        let mut targets = [false; 7];
        let mut state: Vec<[Option<ModuleState>; 7]> =
            (0..cfg.n_layer).map(|_| Default::default()).collect();
        for (l, layer) in adapter.layers.iter().enumerate() {
            for (m, module) in layer.iter().enumerate() {
                if let Some(lm) = module {
                    targets[m] = true;
                    let zeros = |b: &Buffer| gpu.storage("lora_state", b.size);
                    state[l][m] = Some(ModuleState {
                        da: zeros(&lm.a)?,
                        db: zeros(&lm.b)?,
                        m_a: zeros(&lm.a)?,
                        v_a: zeros(&lm.a)?,
                        m_b: zeros(&lm.b)?,
                        v_b: zeros(&lm.b)?,
                    });
                }
            }
        }
        Ok(TrainableAdapter {
            config: w.config.clone(),
            dropout: 0.0,
            targets,
            adapter: Arc::new(adapter),
            state,
        })
    }

    pub(crate) fn module(&self, layer: usize, m: usize) -> Option<(&LoraModule, &ModuleState)> {
        match (&self.adapter.layers[layer][m], &self.state[layer][m]) {
            (Some(lm), Some(st)) => Some((lm, st)),
            _ => None,
        }
    }

    pub(crate) fn tensors(&self, cfg: &Config) -> Vec<TensorRef<'_>> {
        let r = self.config.r;
        let mut out = Vec::new();
        for l in 0..cfg.n_layer as usize {
            for m in 0..7 {
                if let Some((lm, st)) = self.module(l, m) {
                    let (n_in, n_out) = module_dims(cfg, m);
                    out.push(TensorRef {
                        layer: l as u32,
                        module: m,
                        is_b: false,
                        param: &lm.a,
                        grad: &st.da,
                        m: &st.m_a,
                        v: &st.v_a,
                        len: r * n_in,
                    });
                    out.push(TensorRef {
                        layer: l as u32,
                        module: m,
                        is_b: true,
                        param: &lm.b,
                        grad: &st.db,
                        m: &st.m_b,
                        v: &st.v_b,
                        len: n_out * r,
                    });
                }
            }
        }
        out
    }

    /// Reads `pick(tensor)` of every tensor back as (A-like, B-like) pairs per module, with
    /// q/k B rows returned to Hugging Face's order, each value times `scale`.
    fn read_pairs(
        &self,
        gpu: &Gpu,
        cfg: &Config,
        pick: impl for<'a> Fn(&TensorRef<'a>) -> &'a Buffer,
        scale: f32,
    ) -> Result<PairMap> {
        let r = self.config.r as usize;
        let mut out: BTreeMap<(u32, usize), (Vec<f32>, Vec<f32>)> = BTreeMap::new();
        let tensors = self.tensors(cfg);
        let srcs: Vec<(&wgpu::Buffer, u64)> = tensors
            .iter()
            .map(|t| (&pick(t).raw, t.len as u64))
            .collect();
        for (t, mut v) in tensors.iter().zip(gpu.read_f32_many(&srcs)?) {
            if scale != 1.0 {
                v.iter_mut().for_each(|x| *x *= scale);
            }
            let entry = out.entry((t.layer, t.module)).or_default();
            if t.is_b {
                entry.1 = b_to_peft(cfg, t.module, v, r)?;
            } else {
                entry.0 = v;
            }
        }
        Ok(out)
    }

    /// The current A and B, in PEFT's layout.
    pub fn weights(&self, gpu: &Gpu, cfg: &Config) -> Result<LoraWeights> {
        Ok(LoraWeights {
            config: self.config.clone(),
            tensors: self.read_pairs(gpu, cfg, |t| t.param, 1.0)?,
        })
    }

    /// The accumulated gradients (dA, dB) times `scale`, in PEFT's layout.
    pub fn gradients(&self, gpu: &Gpu, cfg: &Config, scale: f32) -> Result<PairMap> {
        self.read_pairs(gpu, cfg, |t| t.grad, scale)
    }

    /// Every optimizer moment in [`TrainableAdapter::tensors`] order (m then v per tensor).
    pub fn read_moments(&self, gpu: &Gpu, cfg: &Config) -> Result<Vec<Vec<f32>>> {
        let tensors = self.tensors(cfg);
        let srcs: Vec<(&wgpu::Buffer, u64)> = tensors
            .iter()
            .flat_map(|t| [(&t.m.raw, t.len as u64), (&t.v.raw, t.len as u64)])
            .collect();
        Ok(gpu.read_f32_many(&srcs)?)
    }

    /// Restores parameters (HF layout, as [`TrainableAdapter::weights`] gives them) and
    /// moments (as [`TrainableAdapter::read_moments`] gives them) exactly.
    pub fn restore(
        &self,
        gpu: &Gpu,
        cfg: &Config,
        weights: &LoraWeights,
        moments: &[Vec<f32>],
    ) -> Result<()> {
        if weights.config != self.config {
            return Err(Error::Invalid(format!(
                "the checkpoint's LoRA settings {:?} differ from this run's {:?}",
                weights.config, self.config
            )));
        }
        weights.check_fits(cfg)?;
        let tensors = self.tensors(cfg);
        let mine: std::collections::BTreeSet<(u32, usize)> =
            tensors.iter().map(|t| (t.layer, t.module)).collect();
        let theirs: std::collections::BTreeSet<(u32, usize)> =
            weights.tensors.keys().copied().collect();
        if mine != theirs {
            let span = |s: &std::collections::BTreeSet<(u32, usize)>| {
                let (lo, hi) = (s.first().map_or(0, |k| k.0), s.last().map_or(0, |k| k.0));
                format!("{} modules on layers {lo}..={hi}", s.len())
            };
            return Err(Error::Invalid(format!(
                "the checkpoint's adapter has {}, this run's {}: it was made for another model \
                 or other LoRA settings",
                span(&theirs),
                span(&mine)
            )));
        }
        if moments.len() != 2 * tensors.len() {
            return Err(Error::Invalid(format!(
                "optimizer state has {} tensors, the adapter needs {}",
                moments.len(),
                2 * tensors.len()
            )));
        }
        let r = self.config.r as usize;
        for (i, t) in tensors.iter().enumerate() {
            let (a, b) = weights.tensors.get(&(t.layer, t.module)).ok_or_else(|| {
                Error::Invalid(format!(
                    "checkpoint lacks layer {} {}",
                    t.layer, MODULES[t.module]
                ))
            })?;
            let value = if t.is_b {
                b_to_model(cfg, t.module, b, r)?
            } else {
                a.clone()
            };
            for (buf, data) in [
                (t.param, &value),
                (t.m, &moments[2 * i]),
                (t.v, &moments[2 * i + 1]),
            ] {
                if data.len() != t.len as usize {
                    return Err(Error::Invalid(format!(
                        "checkpoint tensor for layer {} {} has {} values, expected {}",
                        t.layer,
                        MODULES[t.module],
                        data.len(),
                        t.len
                    )));
                }
                gpu.queue.write_buffer(buf, 0, bytemuck::cast_slice(data));
            }
        }
        Ok(())
    }
}

/// A recorded step: its ops, and the parameter slots of the kernels that take the dropout
/// seed (uniform buffer, byte offset, per-module salt), rewritten before each replay.
#[derive(Default)]
struct Plan {
    ops: Vec<Op>,
    seeds: Vec<(wgpu::Buffer, u64, u32)>,
}

impl Plan {
    fn push(&mut self, op: Op) {
        self.ops.push(op);
    }
}

/// A 32-bit mask seed for one module of one micro-batch (splitmix64 finalizer).
fn mix_seed(base: u64, salt: u32) -> u32 {
    let mut z = base ^ ((salt as u64) << 32 | salt as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as u32
}

/// What a layer's forward keeps for its backward.
struct LayerActs {
    /// Residual after attention.
    hm: Buffer,
    qkv: Buffer,
    k: Buffer,
    v: Buffer,
    att: Buffer,
    gu: Buffer,
    /// `X A^T` of each module's LoRA.
    u: [Buffer; 7],
}

/// Options of a [`Trainer`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainerOptions {
    /// Sequences per micro-batch, at most.
    pub max_batch: u32,
    /// Tokens per sequence, at most.
    pub max_seq: u32,
    /// Keep only the residual stream and replay each layer's forward in the backward.
    pub recompute: bool,
}

/// Loss of one micro-batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchLoss {
    /// Sum of the cross-entropy over loss positions.
    pub sum: f64,
    /// Loss positions.
    pub tokens: usize,
    /// Tokens processed, padding included.
    pub rows: usize,
}

/// Outcome of [`Trainer::optimizer_step`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// Global L2 norm of the mean-loss gradient, before clipping.
    pub grad_norm: f64,
    /// The gradient held a NaN or infinity: no update was made.
    pub skipped: bool,
}

/// Forward + backward of micro-batches into the adapter's gradients, and the AdamW update.
pub struct Trainer {
    gpu: Arc<Gpu>,
    cfg: Config,
    weights: Arc<Weights>,
    opts: TrainerOptions,
    pub adapter: TrainableAdapter,
    rope: Buffer,
    step: Buffer,
    tokens: Buffer,
    loss_idx: Buffer,
    labels: Buffer,
    loss: Buffer,
    h: Vec<Buffer>,
    acts: Vec<LayerActs>,
    xn: Buffer,
    d_h: Buffer,
    d_xn: Buffer,
    d_att: Buffer,
    d_qkv: Buffer,
    d_act: Buffer,
    d_gu: Buffer,
    du: Buffer,
    stats: Buffer,
    head_x: Buffer,
    logits: Buffer,
    d_head_x: Buffer,
    norms: Buffer,
    plans: HashMap<(u32, u32, u32, bool), Plan>,
    /// Seed of the next micro-batch's dropout masks.
    dropout_seed: u64,
    norm_plan: Vec<Dispatch>,
    adam_plan: Vec<(Dispatch, u32)>,
    /// Loss positions accumulated since the last optimizer step.
    pending_tokens: usize,
    /// Optimizer steps taken (AdamW's bias correction).
    pub steps: u32,
}

impl Trainer {
    pub fn new(model: &Llama, adapter: TrainableAdapter, opts: TrainerOptions) -> Result<Trainer> {
        let gpu = model.gpu.clone();
        let cfg = model.cfg.clone();
        if adapter.adapter.layers.len() != cfg.n_layer as usize {
            return Err(Error::Model(format!(
                "the adapter has {} layers, the model {}",
                adapter.adapter.layers.len(),
                cfg.n_layer
            )));
        }
        let max_seq = opts.max_seq.max(2).div_ceil(SEQ_ALIGN) * SEQ_ALIGN;
        let opts = TrainerOptions { max_seq, ..opts };
        let rows = opts.max_batch.max(1) as u64 * max_seq as u64;
        let (d, qd, kvd, ff) = (
            cfg.n_embd as u64,
            cfg.q_dim() as u64,
            cfg.kv_dim() as u64,
            cfg.n_ff as u64,
        );
        let qkv = qd + 2 * kvd;
        let r = adapter.config.r as u64;
        let f32s = |label: &str, n: u64| gpu.storage(label, n * 4);
        let table = cfg.rope_table(max_seq, model.weights.rope_freqs.as_deref());
        let layer_acts = |gpu: &Gpu| -> Result<LayerActs> {
            let f = |label: &str, n: u64| gpu.storage(label, n * 4);
            Ok(LayerActs {
                hm: f("act_hm", rows * d)?,
                qkv: f("act_qkv", rows * qkv)?,
                k: f("act_k", rows * kvd)?,
                v: f("act_v", rows * kvd)?,
                att: f("act_att", rows * qd)?,
                gu: f("act_gate_up", rows * 2 * ff)?,
                u: [
                    f("act_lora_u", rows * r)?,
                    f("act_lora_u", rows * r)?,
                    f("act_lora_u", rows * r)?,
                    f("act_lora_u", rows * r)?,
                    f("act_lora_u", rows * r)?,
                    f("act_lora_u", rows * r)?,
                    f("act_lora_u", rows * r)?,
                ],
            })
        };
        let n_acts = if opts.recompute { 1 } else { cfg.n_layer };
        let acts = (0..n_acts)
            .map(|_| layer_acts(&gpu))
            .collect::<Result<Vec<_>>>()?;
        let h = (0..=cfg.n_layer)
            .map(|_| f32s("act_residual", rows * d))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let chunk = HEAD_CHUNK as u64;
        let n_tensors = adapter.tensors(&cfg).len() as u64;
        let mut t = Trainer {
            rope: gpu.storage_init("train_rope", bytemuck::cast_slice(&table))?,
            step: gpu.uniform_init("train_step", bytemuck::bytes_of(&Step::default()))?,
            tokens: gpu.storage("train_tokens", rows * 4)?,
            loss_idx: gpu.storage("loss_rows", (rows + chunk) * 4)?,
            labels: gpu.storage("loss_labels", (rows + chunk) * 4)?,
            loss: f32s("loss", rows + chunk)?,
            h,
            acts,
            xn: f32s("xn", rows * d)?,
            d_h: f32s("d_residual", rows * d)?,
            d_xn: f32s("d_xn", rows * d)?,
            d_att: f32s("d_att", rows * qd)?,
            d_qkv: f32s("d_qkv", rows * qkv)?,
            d_act: f32s("d_act", rows * ff)?,
            d_gu: f32s("d_gate_up", rows * 2 * ff)?,
            du: f32s("d_lora_u", rows * r)?,
            stats: f32s("attn_stats", rows * cfg.n_head as u64 * 2)?,
            head_x: f32s("head_x", chunk * d)?,
            logits: f32s("logits", chunk * cfg.vocab as u64)?,
            d_head_x: f32s("d_head_x", chunk * d)?,
            norms: f32s("grad_norms", n_tensors.max(1))?,
            plans: HashMap::new(),
            norm_plan: Vec::new(),
            adam_plan: Vec::new(),
            pending_tokens: 0,
            dropout_seed: 0,
            steps: 0,
            weights: model.weights.clone(),
            gpu,
            cfg,
            opts,
            adapter,
        };
        t.build_optimizer_plans()?;
        Ok(t)
    }

    pub fn options(&self) -> TrainerOptions {
        self.opts
    }

    /// Seeds the dropout masks of the next micro-batch (each later one takes the next seed).
    pub fn set_dropout_seed(&mut self, seed: u64) {
        self.dropout_seed = seed;
    }

    fn build_optimizer_plans(&mut self) -> Result<()> {
        let gpu = &*self.gpu;
        let mut norm_plan = Vec::new();
        let mut adam_plan = Vec::new();
        for (slot, t) in self.adapter.tensors(&self.cfg).iter().enumerate() {
            norm_plan.push(kernels::sum_squares(
                gpu,
                t.grad,
                &self.norms,
                t.len,
                slot as u32,
            )?);
            let params = AdamW::default().params(t.len, 1, 1.0);
            adam_plan.push((
                kernels::adamw(gpu, &params, t.param, t.grad, t.m, t.v)?,
                t.len,
            ));
        }
        self.norm_plan = norm_plan;
        self.adam_plan = adam_plan;
        Ok(())
    }

    fn attn_shape(&self, seq: u32) -> AttnShape {
        AttnShape {
            n_head: self.cfg.n_head,
            n_kv_head: self.cfg.n_kv_head,
            head_dim: self.cfg.head_dim,
            kv_cap: seq,
            neox: self.cfg.rope_neox,
            kv_f16: false,
            seq_len: seq,
        }
    }

    /// Sets every gradient to zero (the start of an optimizer step).
    pub fn zero_grad(&mut self) {
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        for t in self.adapter.tensors(&self.cfg) {
            enc.clear_buffer(t.grad, 0, None);
        }
        self.gpu.submit(enc);
        self.pending_tokens = 0;
    }

    /// Loss positions accumulated since the last [`Trainer::zero_grad`].
    pub fn pending_tokens(&self) -> usize {
        self.pending_tokens
    }

    /// Runs forward and backward of one micro-batch of `n_seq` rows of `seq` tokens
    /// (`input_ids` and `labels` `[n_seq * seq]`, labels unshifted as in Hugging Face: the
    /// logits at t are scored against `labels[t + 1]`, [`IGNORE`] = no loss), adding its
    /// gradients to the accumulated ones. Padding must be at the end of each row (its labels
    /// [`IGNORE`]); causal attention then keeps it from affecting real tokens.
    pub fn accumulate(
        &mut self,
        input_ids: &[u32],
        labels: &[i64],
        n_seq: usize,
    ) -> Result<BatchLoss> {
        let (out, _) = self.run(input_ids, labels, n_seq, true)?;
        self.pending_tokens += out.tokens;
        Ok(out)
    }

    /// The loss of a micro-batch (as [`Trainer::accumulate`] takes it) without a backward:
    /// gradients are untouched (validation).
    pub fn evaluate(
        &mut self,
        input_ids: &[u32],
        labels: &[i64],
        n_seq: usize,
    ) -> Result<BatchLoss> {
        Ok(self.run(input_ids, labels, n_seq, false)?.0)
    }

    /// `-log p(label | the tokens up to position t of sequence b)` for each target
    /// `(b, t, label)`, in the order given, without a backward. One position may carry many
    /// targets: the scores of every label at the end of a prompt from one forward pass (what
    /// [`crate::task::evaluate`] classifies by).
    pub fn target_losses(
        &mut self,
        input_ids: &[u32],
        n_seq: usize,
        targets: &[(usize, usize, u32)],
    ) -> Result<Vec<f32>> {
        let (seq, seq_p) = self.check_batch(input_ids, input_ids.len(), n_seq)?;
        let vocab = self.cfg.vocab;
        let mut idx = Vec::with_capacity(targets.len());
        let mut lab = Vec::with_capacity(targets.len());
        for &(b, t, l) in targets {
            if b >= n_seq || t >= seq || l >= vocab {
                return Err(Error::Invalid(format!(
                    "target (sequence {b}, position {t}, label {l}) is outside the batch of \
                     {n_seq} x {seq} or the vocabulary ({vocab})"
                )));
            }
            idx.push(b as u32 * seq_p + t as u32);
            lab.push(l);
        }
        let capacity = self.opts.max_batch as usize * self.opts.max_seq as usize;
        if targets.len() > capacity {
            return Err(Error::Invalid(format!(
                "{} targets exceed the trainer's {capacity} rows",
                targets.len()
            )));
        }
        let ids = Self::pad_rows(input_ids, n_seq, seq, seq_p);
        Ok(self.run_rows(n_seq, seq_p, &ids, idx, lab, false)?.1)
    }

    /// Checks a batch's shape; returns (tokens per sequence, the same padded for the kernels).
    fn check_batch(
        &self,
        input_ids: &[u32],
        n_labels: usize,
        n_seq: usize,
    ) -> Result<(usize, u32)> {
        let vocab = self.cfg.vocab;
        if n_seq == 0 || input_ids.is_empty() || !input_ids.len().is_multiple_of(n_seq) {
            return Err(Error::Invalid(format!(
                "a batch of {} tokens does not split into {n_seq} rows",
                input_ids.len()
            )));
        }
        if n_labels != input_ids.len() {
            return Err(Error::Invalid(format!(
                "{n_labels} labels for {} tokens",
                input_ids.len()
            )));
        }
        let seq = input_ids.len() / n_seq;
        let seq_p = (seq as u32).div_ceil(SEQ_ALIGN) * SEQ_ALIGN;
        if n_seq as u32 > self.opts.max_batch || seq_p > self.opts.max_seq {
            return Err(Error::Invalid(format!(
                "a batch of {n_seq} x {seq} tokens exceeds the trainer's {} x {}",
                self.opts.max_batch, self.opts.max_seq
            )));
        }
        if let Some(&bad) = input_ids.iter().find(|&&t| t >= vocab) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        Ok((seq, seq_p))
    }

    /// Sequences of `seq` tokens laid out at a stride of `seq_p` (zeros after each).
    fn pad_rows(input_ids: &[u32], n_seq: usize, seq: usize, seq_p: u32) -> Vec<u32> {
        let mut ids = Vec::with_capacity(n_seq * seq_p as usize);
        for b in 0..n_seq {
            ids.extend_from_slice(&input_ids[b * seq..][..seq]);
            ids.resize((b + 1) * seq_p as usize, 0);
        }
        ids
    }

    fn run(
        &mut self,
        input_ids: &[u32],
        labels: &[i64],
        n_seq: usize,
        backward: bool,
    ) -> Result<(BatchLoss, Vec<f32>)> {
        let vocab = self.cfg.vocab;
        let (seq, seq_p) = self.check_batch(input_ids, labels.len(), n_seq)?;
        let (mut idx, mut lab) = (Vec::new(), Vec::new());
        for b in 0..n_seq {
            for t in 0..seq - 1 {
                let l = labels[b * seq + t + 1];
                if l == IGNORE {
                    continue;
                }
                if l < 0 || l >= vocab as i64 {
                    return Err(Error::Invalid(format!(
                        "label {l} at row {b}, position {} is outside the vocabulary ({vocab})",
                        t + 1
                    )));
                }
                idx.push(b as u32 * seq_p + t as u32);
                lab.push(l as u32);
            }
        }
        let ids = Self::pad_rows(input_ids, n_seq, seq, seq_p);
        self.run_rows(n_seq, seq_p, &ids, idx, lab, backward)
    }

    /// Runs a batch laid out in padded rows, with loss at rows `idx` against `lab`; returns
    /// the loss and each target's cross-entropy.
    fn run_rows(
        &mut self,
        n_seq: usize,
        seq_p: u32,
        ids: &[u32],
        mut idx: Vec<u32>,
        mut lab: Vec<u32>,
        backward: bool,
    ) -> Result<(BatchLoss, Vec<f32>)> {
        let rows = ids.len();
        let n_loss = idx.len();
        if n_loss == 0 {
            let none = BatchLoss {
                sum: 0.0,
                tokens: 0,
                rows,
            };
            return Ok((none, Vec::new()));
        }
        let n_loss_p = (n_loss as u32).div_ceil(16) * 16;
        idx.resize(n_loss_p as usize, PAD_ROW);
        lab.resize(n_loss_p as usize, PAD_ROW);
        let key = (n_seq as u32, seq_p, n_loss_p, backward);
        if !self.plans.contains_key(&key) {
            if self.plans.len() >= 32 {
                self.plans.clear();
            }
            let plan = self.build_plan(n_seq as u32, seq_p, n_loss_p, backward)?;
            self.plans.insert(key, plan);
        }
        let gpu = self.gpu.clone();
        gpu.queue
            .write_buffer(&self.tokens, 0, bytemuck::cast_slice(ids));
        gpu.queue
            .write_buffer(&self.loss_idx, 0, bytemuck::cast_slice(&idx));
        gpu.queue
            .write_buffer(&self.labels, 0, bytemuck::cast_slice(&lab));
        let plan = &self.plans[&key];
        if !plan.seeds.is_empty() {
            let base = self.dropout_seed;
            self.dropout_seed = self.dropout_seed.wrapping_add(1);
            for (buf, offset, salt) in &plan.seeds {
                let seed = mix_seed(base, *salt);
                gpu.queue
                    .write_buffer(buf, *offset, bytemuck::bytes_of(&seed));
            }
        }
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        if crate::gpu::Counters::profiling() {
            // Runs every op once, on its own, timed; the loss is then read as usual.
            profile(&gpu, &plan.ops)?;
        } else {
            encode(&gpu, &mut enc, &plan.ops);
        }
        let staging = gpu.read_back_encode(&mut enc, &self.loss, 0, n_loss as u64 * 4)?;
        gpu.submit(enc);
        let bytes = gpu.finish_read_back(&staging, n_loss as u64 * 4)?;
        let losses = crate::gpu::f32s_from_bytes(&bytes);
        let sum = losses.iter().map(|&v| v as f64).sum();
        let out = BatchLoss {
            sum,
            tokens: n_loss,
            rows,
        };
        Ok((out, losses))
    }

    /// The global L2 norm of the accumulated gradients times `scale` (NaN if any is not
    /// finite).
    pub fn grad_norm(&self, scale: f64) -> Result<f64> {
        let n = self.norm_plan.len();
        if n == 0 {
            return Ok(0.0);
        }
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for d in &self.norm_plan {
                d.encode(&self.gpu, &mut pass);
            }
        }
        let staging = self
            .gpu
            .read_back_encode(&mut enc, &self.norms, 0, n as u64 * 4)?;
        self.gpu.submit(enc);
        let bytes = self.gpu.finish_read_back(&staging, n as u64 * 4)?;
        let sq: f64 = crate::gpu::f32s_from_bytes(&bytes)
            .iter()
            .map(|&v| v as f64)
            .sum();
        let norm = sq.sqrt() * scale;
        Ok(if norm.is_finite() { norm } else { f64::NAN })
    }

    /// One AdamW update from the gradients accumulated since [`Trainer::zero_grad`],
    /// averaged over their loss positions and clipped to `max_grad_norm` (if set). A gradient
    /// with a NaN or infinity skips the update. Gradients are zeroed afterwards.
    pub fn optimizer_step(
        &mut self,
        opt: &AdamW,
        max_grad_norm: Option<f32>,
    ) -> Result<StepOutcome> {
        let tokens = self.pending_tokens.max(1);
        let mean = 1.0 / tokens as f64;
        let norm = self.grad_norm(mean)?;
        if !norm.is_finite() {
            self.zero_grad();
            return Ok(StepOutcome {
                grad_norm: norm,
                skipped: true,
            });
        }
        let clip = match max_grad_norm {
            Some(max) if max > 0.0 && norm > max as f64 => max as f64 / (norm + 1e-6),
            _ => 1.0,
        };
        self.steps += 1;
        let scale = (mean * clip) as f32;
        for (d, n) in &self.adam_plan {
            let p = opt.params(*n, self.steps, scale);
            self.gpu
                .queue
                .write_buffer(d.uniform(), 0, bytemuck::bytes_of(&p));
        }
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for (d, _) in &self.adam_plan {
                d.encode(&self.gpu, &mut pass);
            }
        }
        for t in self.adapter.tensors(&self.cfg) {
            enc.clear_buffer(t.grad, 0, None);
        }
        self.gpu.submit(enc);
        self.gpu.wait()?;
        self.pending_tokens = 0;
        Ok(StepOutcome {
            grad_norm: norm,
            skipped: false,
        })
    }

    /// Accumulated gradients of the mean loss, in PEFT's layout.
    pub fn gradients(&self) -> Result<PairMap> {
        let scale = 1.0 / self.pending_tokens.max(1) as f32;
        self.adapter.gradients(&self.gpu, &self.cfg, scale)
    }

    fn acts(&self, layer: usize) -> &LayerActs {
        if self.opts.recompute {
            &self.acts[0]
        } else {
            &self.acts[layer]
        }
    }

    /// Adds every op of the forward of layer `l` from the residual `h[l]`: into `h[l + 1]`
    /// when `write_out`, else only what the backward needs (a replay under `recompute`).
    fn layer_forward(
        &self,
        ops: &mut Plan,
        l: usize,
        n_seq: u32,
        seq: u32,
        write_out: bool,
        dropout: f32,
    ) -> Result<()> {
        let gpu = &*self.gpu;
        let cfg = &self.cfg;
        let a = self.acts(l);
        let rows = n_seq * seq;
        let ad = &self.adapter;
        let Plan { ops, seeds } = ops;
        // `y[:, col..] += scale * B (A x)`, keeping `A x` for the backward.
        let mut lora =
            |ops: &mut Vec<Op>, m: usize, x: LoraIn<'_>, y: Option<LoraOut<'_>>| -> Result<()> {
                let Some((lm, _)) = ad.module(l, m) else {
                    return Ok(());
                };
                let (n_in, n_out) = module_dims(cfg, m);
                let drop = Dropout {
                    p: dropout,
                    seed: 0,
                };
                let down = kernels::lora_down(
                    gpu,
                    &lm.a,
                    x.x,
                    &a.u[m],
                    n_in,
                    ad.config.r,
                    rows,
                    x.stride,
                    x.swiglu,
                    drop,
                )?;
                if dropout > 0.0 {
                    let salt = (l * 7 + m) as u32;
                    seeds.push((down.uniform().clone(), LORA_DOWN_SEED_OFFSET, salt));
                }
                ops.push(Op::Run(down));
                if let Some(y) = y {
                    ops.push(Op::Run(kernels::lora_up(
                        gpu,
                        &lm.b,
                        &a.u[m],
                        y.y,
                        n_out,
                        ad.config.r,
                        rows,
                        y.stride,
                        y.col,
                        ad.adapter.scale,
                    )?));
                }
                Ok(())
            };
        let io = BlockBuffers {
            residual: Residual::Kept {
                input: &self.h[l],
                mid: &a.hm,
                out: write_out.then(|| &self.h[l + 1]),
            },
            xn: &self.xn,
            qkv: &a.qkv,
            k: &a.k,
            v: &a.v,
            att: &a.att,
            gu: &a.gu,
            rope: &self.rope,
            step: &self.step,
        };
        let lw = &self.weights.layers[l];
        block::record_layer(
            gpu,
            cfg,
            lw,
            &io,
            rows,
            self.attn_shape(seq),
            ops,
            &mut lora,
        )
    }

    /// Adds the backward of layer `l`: `d_h` holds d loss / d `h[l + 1]` and leaves holding
    /// d loss / d `h[l]`; LoRA gradients are added to the adapter's.
    fn layer_backward(
        &self,
        ops: &mut Plan,
        l: usize,
        n_seq: u32,
        seq: u32,
        dropout: f32,
    ) -> Result<()> {
        let gpu = &*self.gpu;
        let cfg = &self.cfg;
        let lw = &self.weights.layers[l];
        let a = self.acts(l);
        let rows = n_seq * seq;
        let (d, qd, kvd, ff) = (cfg.n_embd, cfg.q_dim(), cfg.kv_dim(), cfg.n_ff);
        let qkv_dim = qd + 2 * kvd;
        let shape = self.attn_shape(seq);
        let ad = &self.adapter;
        // dU, then dB, dA (accumulated) and dX (added to `dx`) of module `m`.
        let lora = |ops: &mut Plan,
                    m: usize,
                    (x, x_stride, swiglu): (&Buffer, u32, bool),
                    (dy, dy_stride, dy_col): (&Buffer, u32, u32),
                    (dx, dx_stride): (&Buffer, u32)|
         -> Result<()> {
            let Some((lm, st)) = ad.module(l, m) else {
                return Ok(());
            };
            let (k, n) = module_dims(cfg, m);
            let s = LoraShape {
                k,
                n,
                r: ad.config.r,
                t: rows,
                x_stride,
                dy_stride,
                dy_col,
                dx_stride,
                scale: ad.adapter.scale,
                swiglu_input: swiglu,
                dropout: Dropout {
                    p: dropout,
                    seed: 0,
                },
            };
            let du = &self.du;
            let salt = (l * 7 + m) as u32;
            ops.push(Op::Run(kernels::lora_backward(
                gpu,
                LoraGrad::DU,
                s,
                x,
                dy,
                &lm.a,
                &lm.b,
                &a.u[m],
                du,
            )?));
            ops.push(Op::Run(kernels::lora_backward(
                gpu,
                LoraGrad::DB { accumulate: true },
                s,
                x,
                dy,
                &lm.a,
                &lm.b,
                &a.u[m],
                &st.db,
            )?));
            for (grad, out) in [
                (LoraGrad::DA { accumulate: true }, &st.da),
                (LoraGrad::DX, dx),
            ] {
                let dsp = kernels::lora_backward(gpu, grad, s, x, dy, &lm.a, &lm.b, du, out)?;
                if dropout > 0.0 {
                    ops.seeds
                        .push((dsp.uniform().clone(), LORA_BACKWARD_SEED_OFFSET, salt));
                }
                ops.push(Op::Run(dsp));
            }
            Ok(())
        };
        let linear_t = |ops: &mut Plan,
                        lin: &Linear,
                        dy: &Buffer,
                        dy_stride: u32,
                        dx: &Buffer,
                        dx_stride: u32|
         -> Result<()> {
            for (i, (m, col)) in lin.parts.iter().enumerate() {
                for dsp in
                    kernels::matmul_t(gpu, m, dy, dx, rows, dy_stride, *col, dx_stride, i > 0)?
                {
                    ops.push(Op::Run(dsp));
                }
            }
            Ok(())
        };
        // MLP: h[l+1] = hm + down(silu(gate) * up), gate/up from rmsnorm(hm).
        linear_t(ops, &lw.down, &self.d_h, d, &self.d_act, ff)?;
        lora(
            ops,
            6,
            (&a.gu, 2 * ff, true),
            (&self.d_h, d, 0),
            (&self.d_act, ff),
        )?;
        ops.push(Op::Run(kernels::swiglu_backward(
            gpu,
            &a.gu,
            &self.d_act,
            &self.d_gu,
            ff,
            rows,
        )?));
        linear_t(ops, &lw.gate_up, &self.d_gu, 2 * ff, &self.d_xn, d)?;
        ops.push(Op::Run(kernels::rmsnorm(
            gpu,
            &a.hm,
            &lw.ffn_norm,
            &self.xn,
            d,
            rows,
            0,
            cfg.rms_eps,
        )?));
        for (m, col) in [(4, 0), (5, ff)] {
            lora(
                ops,
                m,
                (&self.xn, d, false),
                (&self.d_gu, 2 * ff, col),
                (&self.d_xn, d),
            )?;
        }
        ops.push(Op::Run(kernels::rmsnorm_backward(
            gpu,
            &a.hm,
            &lw.ffn_norm,
            &self.d_xn,
            &self.d_h,
            d,
            rows,
            cfg.rms_eps,
            true,
        )?));
        // Attention: hm = h[l] + o(attention(rope(qkv(rmsnorm(h[l]))))).
        linear_t(ops, &lw.o, &self.d_h, d, &self.d_att, qd)?;
        lora(
            ops,
            3,
            (&a.att, qd, false),
            (&self.d_h, d, 0),
            (&self.d_att, qd),
        )?;
        for dsp in kernels::attention_backward(
            gpu,
            shape,
            rows,
            AttnBackward {
                qkv: &a.qkv,
                k_cache: &a.k,
                v_cache: &a.v,
                out: &a.att,
                d_out: &self.d_att,
                stats: &self.stats,
                d_qkv: &self.d_qkv,
            },
        )? {
            ops.push(Op::Run(dsp));
        }
        ops.push(Op::Run(kernels::rope_backward(
            gpu,
            shape,
            rows,
            &self.d_qkv,
            &self.rope,
        )?));
        linear_t(ops, &lw.qkv, &self.d_qkv, qkv_dim, &self.d_xn, d)?;
        ops.push(Op::Run(kernels::rmsnorm(
            gpu,
            &self.h[l],
            &lw.attn_norm,
            &self.xn,
            d,
            rows,
            0,
            cfg.rms_eps,
        )?));
        for (m, col) in [(0, 0), (1, qd), (2, qd + kvd)] {
            lora(
                ops,
                m,
                (&self.xn, d, false),
                (&self.d_qkv, qkv_dim, col),
                (&self.d_xn, d),
            )?;
        }
        ops.push(Op::Run(kernels::rmsnorm_backward(
            gpu,
            &self.h[l],
            &lw.attn_norm,
            &self.d_xn,
            &self.d_h,
            d,
            rows,
            cfg.rms_eps,
            true,
        )?));
        Ok(())
    }

    /// The recorded step for a batch geometry: forward, loss over `n_loss` gathered rows
    /// (padded with [`PAD_ROW`]), and with `backward` the gradients.
    fn build_plan(&self, n_seq: u32, seq: u32, n_loss: u32, backward: bool) -> Result<Plan> {
        let gpu = &*self.gpu;
        let cfg = &self.cfg;
        let rows = n_seq * seq;
        let d = cfg.n_embd;
        let w = &*self.weights;
        // Dropout is a training-time regularizer: evaluation runs without it.
        let dropout = if backward { self.adapter.dropout } else { 0.0 };
        let mut ops = Plan::default();
        for dsp in kernels::embed(gpu, &w.tok_embd, &self.tokens, &self.h[0], rows)? {
            ops.push(Op::Run(dsp));
        }
        for l in 0..cfg.n_layer as usize {
            self.layer_forward(&mut ops, l, n_seq, seq, true, dropout)?;
        }
        let last = &self.h[cfg.n_layer as usize];
        ops.push(Op::Run(kernels::rmsnorm(
            gpu,
            last,
            &w.out_norm,
            &self.xn,
            d,
            rows,
            0,
            cfg.rms_eps,
        )?));
        if backward {
            ops.push(Op::Clear(self.d_xn.raw.clone()));
        }
        let head = w.head();
        for c0 in (0..n_loss).step_by(HEAD_CHUNK as usize) {
            let cr = HEAD_CHUNK.min(n_loss - c0);
            ops.push(Op::Run(kernels::gather_rows(
                gpu,
                true,
                &self.xn,
                &self.loss_idx,
                &self.head_x,
                cr,
                d,
                c0,
            )?));
            for dsp in kernels::matmul(
                gpu,
                head,
                None,
                &self.head_x,
                &self.logits,
                MatmulShape::rows(cr, d, cfg.vocab),
            )? {
                ops.push(Op::Run(dsp));
            }
            ops.push(Op::Run(kernels::cross_entropy(
                gpu,
                &self.logits,
                &self.labels,
                &self.loss,
                cfg.vocab,
                cr,
                c0,
                1.0,
            )?));
            if backward {
                for dsp in kernels::matmul_t(
                    gpu,
                    head,
                    &self.logits,
                    &self.d_head_x,
                    cr,
                    cfg.vocab,
                    0,
                    d,
                    false,
                )? {
                    ops.push(Op::Run(dsp));
                }
                ops.push(Op::Run(kernels::gather_rows(
                    gpu,
                    false,
                    &self.d_head_x,
                    &self.loss_idx,
                    &self.d_xn,
                    cr,
                    d,
                    c0,
                )?));
            }
        }
        if !backward {
            return Ok(ops);
        }
        ops.push(Op::Run(kernels::rmsnorm_backward(
            gpu,
            last,
            &w.out_norm,
            &self.d_xn,
            &self.d_h,
            d,
            rows,
            cfg.rms_eps,
            false,
        )?));
        // Layers below the lowest adapted one hold no parameter: the backward ends there.
        let lowest = self
            .adapter
            .adapter
            .layers
            .iter()
            .position(|l| l.iter().any(Option::is_some))
            .unwrap_or(0);
        for l in (lowest..cfg.n_layer as usize).rev() {
            if self.opts.recompute {
                self.layer_forward(&mut ops, l, n_seq, seq, false, dropout)?;
            }
            self.layer_backward(&mut ops, l, n_seq, seq, dropout)?;
        }
        Ok(ops)
    }
}
