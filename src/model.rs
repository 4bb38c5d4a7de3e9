//! The Llama-family model on the GPU: config from metadata, quantized weights uploaded once,
//! a KV cache, and a forward pass recorded once per batch size and replayed every step.
//!
//! Per layer the forward is eight dispatches, recorded by [`crate::block`] (the one Llama block
//! that training uses too), with the residual updated in place and the keys and values
//! appended to the cache. Only the rows of logits that are needed are computed.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use crate::adapter::{module_dims, GpuAdapter};
use crate::block::{self, BlockBuffers, LoraIn, LoraOut, Op, Residual};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::gpu::{Buffer, Gpu};
use crate::kernels::{self, AttnShape, Dispatch, MatmulShape, NormInput, QMatrix, Step};
use crate::quant::{self, GgmlType};

/// Architecture hyper-parameters, read from `{arch}.*` metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub arch: String,
    pub n_layer: u32,
    pub n_embd: u32,
    pub n_head: u32,
    pub n_kv_head: u32,
    pub head_dim: u32,
    pub n_ff: u32,
    pub vocab: u32,
    pub rope_theta: f32,
    pub rms_eps: f32,
    pub ctx_train: u32,
    /// Rotation pairs (i, i + d/2) instead of adjacent ones (Qwen2 in GGUF).
    pub rope_neox: bool,
    /// Linear RoPE scaling: positions are divided by this (1 = none).
    pub rope_linear: f32,
}

/// `{arch}.rope.scaling.*`: linear scaling is honoured (its factor returned); YaRN and the
/// other schemes would give wrong text without an error, so they are refused.
fn gguf_rope_linear(g: &GgufFile, arch: &str) -> Result<f32> {
    let kind = match g.get(&format!("{arch}.rope.scaling.type")) {
        Some(v) => v
            .as_str()
            .ok_or_else(|| {
                Error::Model(format!(
                    "{arch}.rope.scaling.type has type {}, expected string",
                    v.type_name()
                ))
            })?
            .to_string(),
        None => String::new(),
    };
    let factor_of = |key: &str| -> Result<Option<f32>> {
        match g.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|f| Some(f as f32))
                .ok_or_else(|| Error::Model(format!("{key} is not a number"))),
        }
    };
    let factor = factor_of(&format!("{arch}.rope.scaling.factor"))?;
    // Older converters wrote linear scaling as `rope.scale_linear`.
    let old_linear = factor_of(&format!("{arch}.rope.scale_linear"))?;
    match kind.as_str() {
        "" | "none" => Ok(old_linear.unwrap_or(1.0)),
        "linear" => Ok(factor.or(old_linear).unwrap_or(1.0)),
        other => Err(Error::Model(format!(
            "{arch}.rope.scaling.type '{other}' is not supported (none, linear): \
             this model would give wrong text"
        ))),
    }
}

impl Config {
    pub fn from_gguf(g: &GgufFile) -> Result<Config> {
        let arch = g.get_str("general.architecture")?.to_string();
        let rope_neox = match arch.as_str() {
            "llama" | "mistral" => false,
            "qwen2" => true,
            other => {
                return Err(Error::Model(format!(
                    "architecture '{other}' is not supported (llama, mistral, qwen2)"
                )))
            }
        };
        let k = |s: &str| format!("{arch}.{s}");
        let u = |s: &str| -> Result<u32> {
            let v = g.get_u64(&k(s))?;
            u32::try_from(v).map_err(|_| Error::Model(format!("{} = {v} is out of range", k(s))))
        };
        let n_embd = u("embedding_length")?;
        let n_head = u("attention.head_count")?;
        let n_kv_head = u("attention.head_count_kv").unwrap_or(n_head);
        let head_dim = u("attention.key_length").unwrap_or(n_embd / n_head.max(1));
        let vocab = match u("vocab_size") {
            Ok(v) => v,
            Err(_) => u32::try_from(g.get_array("tokenizer.ggml.tokens")?.len())
                .map_err(|_| Error::Model("tokenizer.ggml.tokens is too long".into()))?,
        };
        let cfg = Config {
            n_layer: u("block_count")?,
            n_embd,
            n_head,
            n_kv_head,
            head_dim,
            n_ff: u("feed_forward_length")?,
            vocab,
            rope_theta: g.get_f64(&k("rope.freq_base")).unwrap_or(10000.0) as f32,
            rms_eps: g.get_f64(&k("attention.layer_norm_rms_epsilon"))? as f32,
            ctx_train: u("context_length").unwrap_or(2048),
            rope_neox,
            rope_linear: gguf_rope_linear(g, &arch)?,
            arch: arch.clone(),
        };
        if let Ok(rd) = u("rope.dimension_count") {
            if rd != cfg.head_dim {
                return Err(Error::Model(format!(
                    "partial rotary embedding ({rd} of {} dims) is not supported",
                    cfg.head_dim
                )));
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// The cos/sin table for `positions` positions: theta, Llama 3 style per-frequency
    /// factors (`rope_freqs.weight`) where the model has them, and linear scaling.
    pub(crate) fn rope_table(&self, positions: u32, freq_factors: Option<&[f32]>) -> Vec<[f32; 2]> {
        let half = (self.head_dim / 2) as usize;
        let factors: Vec<f32> = (0..half)
            .map(|i| freq_factors.and_then(|f| f.get(i)).copied().unwrap_or(1.0) * self.rope_linear)
            .collect();
        kernels::rope_table_scaled(self.head_dim, self.rope_theta, positions, &factors)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Model(m));
        // Bounds far above any model this runtime targets, so that every size derived from
        // them (q/kv dims, fused widths, buffer bytes) stays far from overflowing.
        for (name, v, max) in [
            ("layers", self.n_layer, 1 << 10),
            ("embedding length", self.n_embd, 1 << 16),
            ("heads", self.n_head, 1 << 10),
            ("kv heads", self.n_kv_head, 1 << 10),
            ("feed-forward length", self.n_ff, 1 << 18),
            ("vocabulary", self.vocab, 1 << 24),
        ] {
            if v == 0 || v > max {
                return bad(format!("{name} {v} (1 to {max} supported)"));
            }
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!("rope theta {}", self.rope_theta));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps >= 0.0) {
            return bad(format!("rms norm epsilon {}", self.rms_eps));
        }
        if !(self.rope_linear.is_finite() && self.rope_linear >= 1.0) {
            return bad(format!(
                "rope scaling factor {} (must be >= 1)",
                self.rope_linear
            ));
        }
        if self.n_head == 0 || self.n_kv_head == 0 || !self.n_head.is_multiple_of(self.n_kv_head) {
            return bad(format!(
                "{} heads cannot share {} kv heads",
                self.n_head, self.n_kv_head
            ));
        }
        if !self.head_dim.is_multiple_of(4) || self.head_dim > 128 || self.head_dim == 0 {
            return bad(format!(
                "head dim {} (multiple of 4, at most 128)",
                self.head_dim
            ));
        }
        if !self.n_embd.is_multiple_of(32) || !self.n_ff.is_multiple_of(32) {
            return bad(format!(
                "embedding {} and feed-forward {} must be multiples of 32",
                self.n_embd, self.n_ff
            ));
        }
        if self.n_layer == 0 || self.vocab == 0 {
            return bad("no layers or empty vocabulary".into());
        }
        Ok(())
    }

    pub fn q_dim(&self) -> u32 {
        self.n_head * self.head_dim
    }
    pub fn kv_dim(&self) -> u32 {
        self.n_kv_head * self.head_dim
    }
}

/// One tensor as the loader sees it: ggml type, ggml-order dims (`dims[0]` contiguous), and
/// bytes in the file's block layout.
pub struct SourceTensor<'a> {
    pub ty: GgmlType,
    pub dims: Vec<u64>,
    pub bytes: Cow<'a, [u8]>,
}

impl SourceTensor<'_> {
    fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    fn rows_cols(&self) -> (u64, u64) {
        let cols = self.dims.first().copied().unwrap_or(1).max(1);
        (self.n_elements() / cols, cols)
    }
}

/// Where weights come from, by GGUF tensor name (`blk.N.attn_q.weight`, ...): a GGUF file or
/// a Hugging Face checkpoint ([`crate::hf::Checkpoint`]).
pub trait TensorSource {
    fn get(&self, name: &str) -> Result<Option<SourceTensor<'_>>>;

    fn require(&self, name: &str) -> Result<SourceTensor<'_>> {
        self.get(name)?
            .ok_or_else(|| Error::Model(format!("tensor '{name}' is missing")))
    }
}

impl TensorSource for GgufFile {
    fn get(&self, name: &str) -> Result<Option<SourceTensor<'_>>> {
        Ok(self.tensor(name).map(|t| SourceTensor {
            ty: t.ty,
            dims: t.dims.clone(),
            bytes: Cow::Borrowed(self.tensor_bytes(t)),
        }))
    }
}

/// A source whose float weight matrices (two-dimensional F32/F16 tensors) come out quantized
/// to `ty`, each as it is asked for; a matrix whose rows do not divide into `ty`'s blocks gets
/// [`GgmlType::fallback`] (or stays as it is), and everything else passes through.
pub struct Quantizing<'a> {
    pub inner: &'a dyn TensorSource,
    pub ty: GgmlType,
}

impl TensorSource for Quantizing<'_> {
    fn get(&self, name: &str) -> Result<Option<SourceTensor<'_>>> {
        let Some(t) = self.inner.get(name)? else {
            return Ok(None);
        };
        if t.dims.len() != 2 || !matches!(t.ty, GgmlType::F32 | GgmlType::F16) || t.ty == self.ty {
            return Ok(Some(t));
        }
        let Some(ty) = self.ty.for_rows_of(t.dims[0] as usize) else {
            return Ok(Some(t));
        };
        let values = quant::dequantize(t.ty, &t.bytes).map_err(|e| Error::TensorType {
            tensor: name.into(),
            source: e,
        })?;
        Ok(Some(SourceTensor {
            ty,
            dims: t.dims,
            bytes: Cow::Owned(quant::quantize(ty, &values)),
        }))
    }
}

/// Linear layers whose outputs are concatenated: consecutive parts of the same type are
/// uploaded as one matrix so they take one dispatch (QKV, gate+up).
pub struct Linear {
    /// (matrix, first output column)
    pub parts: Vec<(QMatrix, u32)>,
    pub bias: Option<Buffer>,
    pub out_dim: u32,
}

impl Linear {
    fn load(
        gpu: &Gpu,
        g: &dyn TensorSource,
        names: &[String],
        biases: &[String],
        in_dim: u32,
        out_dims: &[u32],
    ) -> Result<Linear> {
        let mut infos = Vec::new();
        for (name, &rows) in names.iter().zip(out_dims) {
            let t = g.require(name)?;
            let (r, c) = t.rows_cols();
            if t.dims.len() != 2 || r != rows as u64 || c != in_dim as u64 {
                return Err(Error::Model(format!(
                    "tensor '{name}' has shape {:?}, expected [{in_dim}, {rows}]",
                    t.dims
                )));
            }
            infos.push(t);
        }
        let mut parts = Vec::new();
        let mut col = 0u32;
        let mut i = 0;
        while i < infos.len() {
            let mut j = i + 1;
            while j < infos.len() && infos[j].ty == infos[i].ty {
                j += 1;
            }
            let rows: u32 = out_dims[i..j].iter().sum();
            let mut bytes = Vec::new();
            for t in &infos[i..j] {
                bytes.extend_from_slice(&t.bytes);
            }
            let label = names[i..j].join("+");
            parts.push((
                QMatrix::upload(gpu, &label, infos[i].ty, rows, in_dim, &bytes)?,
                col,
            ));
            col += rows;
            i = j;
        }
        let mut any_bias = false;
        for b in biases {
            any_bias |= g.get(b)?.is_some();
        }
        let bias = if any_bias {
            let mut all = Vec::new();
            for (b, &rows) in biases.iter().zip(out_dims) {
                let v = match g.get(b)? {
                    Some(_) => load_vector(g, b, rows)?,
                    None => vec![0.0; rows as usize],
                };
                all.extend(v);
            }
            Some(gpu.storage_init("bias", bytemuck::cast_slice(&all))?)
        } else {
            None
        };
        Ok(Linear {
            parts,
            bias,
            out_dim: col,
        })
    }

    pub(crate) fn dispatch(
        &self,
        gpu: &Gpu,
        x: &Buffer,
        y: &Buffer,
        s: MatmulShape,
    ) -> Result<Vec<Dispatch>> {
        self.dispatch_normed(gpu, x, None, y, s)
    }

    /// [`Linear::dispatch`] of `rmsnorm(x) * norm.g` (see [`kernels::matmul_normed`]).
    pub(crate) fn dispatch_normed(
        &self,
        gpu: &Gpu,
        x: &Buffer,
        norm: Option<NormInput<'_>>,
        y: &Buffer,
        s: MatmulShape,
    ) -> Result<Vec<Dispatch>> {
        let mut out = Vec::new();
        for (i, (m, col)) in self.parts.iter().enumerate() {
            let shape = MatmulShape {
                y_col: s.y_col + col,
                ..s
            };
            // The normed row is written once, by the first part.
            let norm = norm.map(|n| NormInput {
                xn: n.xn.filter(|_| i == 0),
                ..n
            });
            out.extend(kernels::matmul_normed(
                gpu,
                m,
                self.bias.as_ref(),
                x,
                norm,
                y,
                shape,
            )?);
        }
        Ok(out)
    }

    fn gpu_bytes(&self) -> u64 {
        self.parts.iter().map(|(m, _)| m.gpu_bytes()).sum::<u64>()
            + self.bias.as_ref().map(|b| b.size).unwrap_or(0)
    }
}

fn load_vector(g: &dyn TensorSource, name: &str, len: u32) -> Result<Vec<f32>> {
    let t = g.require(name)?;
    if t.n_elements() != len as u64 {
        return Err(Error::Model(format!(
            "tensor '{name}' has {} elements, expected {len}",
            t.n_elements()
        )));
    }
    quant::dequantize(t.ty, &t.bytes).map_err(|e| Error::TensorType {
        tensor: name.into(),
        source: e,
    })
}

pub struct Layer {
    pub attn_norm: Buffer,
    pub qkv: Linear,
    pub o: Linear,
    pub ffn_norm: Buffer,
    pub gate_up: Linear,
    pub down: Linear,
}

pub struct Weights {
    pub tok_embd: QMatrix,
    pub layers: Vec<Layer>,
    pub out_norm: Buffer,
    /// `None`: the output head is tied to the token embedding.
    pub output: Option<QMatrix>,
    /// Llama 3 style per-frequency rope factors, if the file has them.
    pub rope_freqs: Option<Vec<f32>>,
}

impl Weights {
    pub fn load(gpu: &Gpu, g: &dyn TensorSource, cfg: &Config) -> Result<Weights> {
        let matrix = |name: &str, rows: u32, cols: u32| -> Result<QMatrix> {
            let t = g.require(name)?;
            if t.rows_cols() != (rows as u64, cols as u64) {
                return Err(Error::Model(format!(
                    "tensor '{name}' has shape {:?}, expected [{cols}, {rows}]",
                    t.dims
                )));
            }
            QMatrix::upload(gpu, name, t.ty, rows, cols, &t.bytes)
        };
        let vector = |name: &str, len: u32| -> Result<Buffer> {
            let v = load_vector(g, name, len)?;
            Ok(gpu.storage_init(name, bytemuck::cast_slice(&v))?)
        };
        let tok_embd = matrix("token_embd.weight", cfg.vocab, cfg.n_embd)?;
        let mut layers = Vec::new();
        for i in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}");
            let (d, q, kv, ff) = (cfg.n_embd, cfg.q_dim(), cfg.kv_dim(), cfg.n_ff);
            layers.push(Layer {
                attn_norm: vector(&n("attn_norm.weight"), d)?,
                qkv: Linear::load(
                    gpu,
                    g,
                    &[n("attn_q.weight"), n("attn_k.weight"), n("attn_v.weight")],
                    &[n("attn_q.bias"), n("attn_k.bias"), n("attn_v.bias")],
                    d,
                    &[q, kv, kv],
                )?,
                o: Linear::load(
                    gpu,
                    g,
                    &[n("attn_output.weight")],
                    &[n("attn_output.bias")],
                    q,
                    &[d],
                )?,
                ffn_norm: vector(&n("ffn_norm.weight"), d)?,
                gate_up: Linear::load(
                    gpu,
                    g,
                    &[n("ffn_gate.weight"), n("ffn_up.weight")],
                    &[],
                    d,
                    &[ff, ff],
                )?,
                down: Linear::load(gpu, g, &[n("ffn_down.weight")], &[], ff, &[d])?,
            });
        }
        let output = match g.get("output.weight")? {
            Some(_) => Some(matrix("output.weight", cfg.vocab, cfg.n_embd)?),
            None => None,
        };
        let rope_freqs = match g.get("rope_freqs.weight")? {
            Some(_) => Some(load_vector(g, "rope_freqs.weight", cfg.head_dim / 2)?),
            None => None,
        };
        Ok(Weights {
            tok_embd,
            layers,
            out_norm: vector("output_norm.weight", cfg.n_embd)?,
            output,
            rope_freqs,
        })
    }

    pub fn gpu_bytes(&self) -> u64 {
        self.tok_embd.gpu_bytes()
            + self.output.as_ref().map(|m| m.gpu_bytes()).unwrap_or(0)
            + self.out_norm.size
            + self
                .layers
                .iter()
                .map(|l| {
                    l.attn_norm.size
                        + l.ffn_norm.size
                        + l.qkv.gpu_bytes()
                        + l.o.gpu_bytes()
                        + l.gate_up.gpu_bytes()
                        + l.down.gpu_bytes()
                })
                .sum::<u64>()
    }

    pub(crate) fn head(&self) -> &QMatrix {
        self.output.as_ref().unwrap_or(&self.tok_embd)
    }
}

/// Options for loading a model.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// KV cache positions (clamped to the model's training context).
    pub context: u32,
    /// Tokens per forward dispatch during prefill (activations are sized for this many).
    pub batch: u32,
    /// Keep the KV cache in f16 (half the memory and attention bandwidth, as llama.cpp's
    /// default) where the device has shader-f16; f32 otherwise. Off by default: f32 keeps
    /// logits equal to the f32 reference to float rounding, f16 moves them by ~1e-3 relative.
    pub kv_f16: bool,
    /// Quantize the float (F32/F16, BF16) weight matrices to this type while loading, one
    /// tensor at a time, so a Hugging Face checkpoint fits a phone's memory ([`Quantizing`]).
    pub quantize: Option<GgmlType>,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            context: 2048,
            batch: 128,
            kv_f16: false,
            quantize: None,
        }
    }
}

/// Extra work recorded into a forward's submit (sampling kernels, readback copies).
pub type RecordFn<'a> = dyn FnMut(&mut wgpu::CommandEncoder) -> Result<()> + 'a;

/// Which rows of logits a forward computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogitRows {
    /// Only the last token's (generation).
    Last,
    /// Every token's (scoring, comparison with other engines).
    All,
}

struct Activations {
    tokens: Buffer,
    h: Buffer,
    xn: Buffer,
    qkv: Buffer,
    attn: Buffer,
    gu: Buffer,
    logits_last: Buffer,
    logits_all: Option<Buffer>,
}

pub struct Llama {
    pub gpu: Arc<Gpu>,
    pub cfg: Config,
    /// Shared with trainers, which run their own plans over the same weights.
    pub weights: Arc<Weights>,
    pub opts: ModelOptions,
    k_cache: Vec<Buffer>,
    v_cache: Vec<Buffer>,
    rope: Buffer,
    step: Buffer,
    act: Activations,
    plans: HashMap<(u32, LogitRows), Vec<Op>>,
    /// LoRA adapters applied unmerged, each with its weight (multiplies its own scale).
    adapters: Vec<(Arc<GpuAdapter>, f32)>,
    /// LoRA intermediate `[batch, r]`, reused by every adapted projection in turn.
    lora_u: Option<Buffer>,
    /// Tokens whose keys and values are in the cache.
    pos: u32,
}

impl Llama {
    pub fn load(gpu: Arc<Gpu>, g: &GgufFile, opts: ModelOptions) -> Result<Llama> {
        let cfg = Config::from_gguf(g)?;
        let weights = match opts.quantize {
            Some(ty) => Weights::load(&gpu, &Quantizing { inner: g, ty }, &cfg)?,
            None => Weights::load(&gpu, g, &cfg)?,
        };
        Self::new(gpu, cfg, weights, opts)
    }

    pub fn new(
        gpu: Arc<Gpu>,
        cfg: Config,
        weights: Weights,
        mut opts: ModelOptions,
    ) -> Result<Llama> {
        opts.context = opts.context.clamp(1, cfg.ctx_train.max(1));
        opts.batch = opts.batch.clamp(1, opts.context);
        // The f32 variant is chosen at run time where the device lacks shader-f16.
        opts.kv_f16 &= gpu.f16;
        let (b, ctx) = (opts.batch as u64, opts.context as u64);
        let elem = if opts.kv_f16 { 2 } else { 4 };
        let kv_bytes = cfg.n_kv_head as u64 * ctx * cfg.head_dim as u64 * elem;
        let mut k_cache = Vec::new();
        let mut v_cache = Vec::new();
        for _ in 0..cfg.n_layer {
            k_cache.push(gpu.storage("k_cache", kv_bytes)?);
            v_cache.push(gpu.storage("v_cache", kv_bytes)?);
        }
        let table = cfg.rope_table(opts.context, weights.rope_freqs.as_deref());
        let rope = gpu.storage_init("rope", bytemuck::cast_slice(&table))?;
        let step = gpu.buffer(
            "step",
            16,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        )?;
        let act = Activations {
            tokens: gpu.storage("tokens", b * 4)?,
            h: gpu.storage("h", b * cfg.n_embd as u64 * 4)?,
            xn: gpu.storage("xn", b * cfg.n_embd as u64 * 4)?,
            qkv: gpu.storage("qkv", b * (cfg.q_dim() + 2 * cfg.kv_dim()) as u64 * 4)?,
            attn: gpu.storage("attn", b * cfg.q_dim() as u64 * 4)?,
            gu: gpu.storage("gate_up", b * 2 * cfg.n_ff as u64 * 4)?,
            logits_last: gpu.storage("logits", cfg.vocab as u64 * 4)?,
            logits_all: None,
        };
        Ok(Llama {
            gpu,
            cfg,
            weights: Arc::new(weights),
            opts,
            k_cache,
            v_cache,
            rope,
            step,
            act,
            plans: HashMap::new(),
            adapters: Vec::new(),
            lora_u: None,
            pos: 0,
        })
    }

    /// Applies these adapters (unmerged), each scaled by its weight, from the next forward on;
    /// an empty list runs the base model. The base weights are not touched, so swapping is
    /// cheap. The KV cache is cleared: cached keys were computed with the old adapters.
    pub fn set_adapters(&mut self, adapters: Vec<(Arc<GpuAdapter>, f32)>) -> Result<()> {
        for (ad, weight) in &adapters {
            if !weight.is_finite() || !(ad.scale * weight).is_finite() {
                return Err(Error::Invalid(format!(
                    "adapter weight {weight} (scale {}) is not a finite number",
                    ad.scale
                )));
            }
            if ad.layers.len() != self.cfg.n_layer as usize {
                return Err(Error::Model(format!(
                    "the adapter has {} layers, the model {}",
                    ad.layers.len(),
                    self.cfg.n_layer
                )));
            }
        }
        let r = adapters.iter().map(|(a, _)| a.r).max().unwrap_or(0);
        self.lora_u = if r > 0 {
            Some(
                self.gpu
                    .storage("lora_u", self.opts.batch as u64 * r as u64 * 4)?,
            )
        } else {
            None
        };
        self.adapters = adapters;
        self.plans.clear();
        self.pos = 0;
        Ok(())
    }

    /// Tokens currently in the KV cache.
    pub fn position(&self) -> u32 {
        self.pos
    }

    /// Forgets cached positions from `pos` on (0 clears the cache).
    pub fn truncate(&mut self, pos: u32) {
        self.pos = self.pos.min(pos);
    }

    pub fn attn_shape(&self) -> AttnShape {
        AttnShape {
            n_head: self.cfg.n_head,
            n_kv_head: self.cfg.n_kv_head,
            head_dim: self.cfg.head_dim,
            kv_cap: self.opts.context,
            neox: self.cfg.rope_neox,
            kv_f16: self.opts.kv_f16,
            seq_len: 0,
        }
    }

    fn build_plan(&mut self, t: u32, rows: LogitRows) -> Result<Vec<Op>> {
        let gpu = self.gpu.clone();
        let gpu = &*gpu;
        let cfg = &self.cfg;
        let a = &self.act;
        let d = cfg.n_embd;
        let shape = self.attn_shape();
        let mut plan: Vec<Op> = kernels::embed(gpu, &self.weights.tok_embd, &a.tokens, &a.h, t)?
            .into_iter()
            .map(Op::Run)
            .collect();
        for (i, l) in self.weights.layers.iter().enumerate() {
            // Adds every adapter's `y[:, col..] += scale * B (A x)` for module `m`.
            let mut lora = |plan: &mut Vec<Op>,
                            m: usize,
                            x: LoraIn<'_>,
                            y: Option<LoraOut<'_>>|
             -> Result<()> {
                let Some(y) = y else { return Ok(()) };
                for (ad, weight) in &self.adapters {
                    if let Some(lm) = &ad.layers[i][m] {
                        let u = self.lora_u.as_ref().expect("allocated with the adapters");
                        let (n_in, n_out) = module_dims(cfg, m);
                        plan.push(Op::Run(kernels::lora_down(
                            gpu,
                            &lm.a,
                            x.x,
                            u,
                            n_in,
                            ad.r,
                            t,
                            x.stride,
                            x.swiglu,
                            Default::default(),
                        )?));
                        plan.push(Op::Run(kernels::lora_up(
                            gpu,
                            &lm.b,
                            u,
                            y.y,
                            n_out,
                            ad.r,
                            t,
                            y.stride,
                            y.col,
                            ad.scale * weight,
                        )?));
                    }
                }
                Ok(())
            };
            let io = BlockBuffers {
                residual: Residual::InPlace(&a.h),
                xn: &a.xn,
                qkv: &a.qkv,
                k: &self.k_cache[i],
                v: &self.v_cache[i],
                att: &a.attn,
                gu: &a.gu,
                rope: &self.rope,
                step: &self.step,
            };
            block::record_layer(gpu, cfg, l, &io, t, shape, &mut plan, &mut lora)?;
        }
        let (n_rows, row0, logits) = match rows {
            LogitRows::Last => (1, t - 1, &a.logits_last),
            LogitRows::All => (
                t,
                0,
                a.logits_all.as_ref().expect("allocated before planning"),
            ),
        };
        let head_shape = MatmulShape::rows(n_rows, d, cfg.vocab);
        let head = if kernels::folds_norm(gpu, &head_shape) {
            // The final norm inside the head's matmul (one launch fewer).
            let norm = NormInput {
                g: &self.weights.out_norm,
                eps: cfg.rms_eps,
                xn: None,
            };
            let s = MatmulShape {
                x_row0: row0,
                ..head_shape
            };
            kernels::matmul_normed(gpu, self.weights.head(), None, &a.h, Some(norm), logits, s)?
        } else {
            plan.push(Op::Run(kernels::rmsnorm(
                gpu,
                &a.h,
                &self.weights.out_norm,
                &a.xn,
                d,
                n_rows,
                row0,
                cfg.rms_eps,
            )?));
            kernels::matmul(gpu, self.weights.head(), None, &a.xn, logits, head_shape)?
        };
        plan.extend(head.into_iter().map(Op::Run));
        Ok(plan)
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::Invalid("no tokens to run".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t >= self.cfg.vocab) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary ({})",
                self.cfg.vocab
            )));
        }
        if self.pos as usize + tokens.len() > self.opts.context as usize {
            return Err(Error::Invalid(format!(
                "context full: {} cached + {} new tokens exceed the context of {}",
                self.pos,
                tokens.len(),
                self.opts.context
            )));
        }
        Ok(())
    }

    /// Runs one batch (at most `opts.batch` tokens) at the cache position and submits it, with
    /// `extra` recording follow-up work (sampling, a readback copy) into the same submit.
    fn run_batch(
        &mut self,
        batch: &[u32],
        rows: LogitRows,
        extra: Option<&mut RecordFn<'_>>,
    ) -> Result<()> {
        let t = batch.len() as u32;
        let key = (t, rows);
        if !self.plans.contains_key(&key) {
            // Plans hold bind groups only; a handful of batch sizes are live at a time.
            if self.plans.len() >= 16 {
                self.plans.clear();
            }
            let plan = self.build_plan(t, rows)?;
            self.plans.insert(key, plan);
        }
        let gpu = self.gpu.clone();
        gpu.queue
            .write_buffer(&self.act.tokens, 0, bytemuck::cast_slice(batch));
        let step = Step {
            pos0: self.pos,
            _pad: [0; 3],
        };
        gpu.queue
            .write_buffer(&self.step, 0, bytemuck::bytes_of(&step));
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        if crate::gpu::Counters::profiling() {
            block::profile(&gpu, &self.plans[&key])?;
        } else {
            block::encode(&gpu, &mut enc, &self.plans[&key]);
        }
        if let Some(extra) = extra {
            extra(&mut enc)?;
        }
        gpu.submit(enc);
        self.pos += t;
        Ok(())
    }

    /// Runs `tokens` after what is cached; the last token's logits are left in
    /// [`Llama::logits_buffer`], and `extra` is recorded into the last batch's submit.
    pub fn forward_last(
        &mut self,
        tokens: &[u32],
        mut extra: Option<&mut RecordFn<'_>>,
    ) -> Result<()> {
        self.check_tokens(tokens)?;
        let batches: Vec<&[u32]> = tokens.chunks(self.opts.batch as usize).collect();
        let n = batches.len();
        for (i, batch) in batches.into_iter().enumerate() {
            let e = if i + 1 == n { extra.take() } else { None };
            self.run_batch(batch, LogitRows::Last, e)?;
        }
        Ok(())
    }

    /// Runs `tokens` after what is cached and returns the logits of every one, `[T, vocab]`.
    pub fn forward_all(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check_tokens(tokens)?;
        if self.act.logits_all.is_none() {
            let bytes = self.opts.batch as u64 * self.cfg.vocab as u64 * 4;
            self.act.logits_all = Some(self.gpu.storage("logits_all", bytes)?);
        }
        let mut out = Vec::with_capacity(tokens.len() * self.cfg.vocab as usize);
        for batch in tokens.chunks(self.opts.batch as usize) {
            self.run_batch(batch, LogitRows::All, None)?;
            let buf = self.act.logits_all.as_ref().unwrap();
            out.extend(
                self.gpu
                    .read_f32(buf, 0, batch.len() as u64 * self.cfg.vocab as u64)?,
            );
        }
        Ok(out)
    }

    /// Where the last token's logits are after [`Llama::forward_last`].
    pub fn logits_buffer(&self) -> &Buffer {
        &self.act.logits_last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{writer, GgufFile, Value};

    fn config_with(extra: &[(&str, Value)]) -> Result<Config> {
        let mut meta: Vec<(String, Value)> = [
            ("general.architecture", Value::String("llama".into())),
            ("llama.block_count", Value::U32(2)),
            ("llama.embedding_length", Value::U32(64)),
            ("llama.attention.head_count", Value::U32(4)),
            ("llama.feed_forward_length", Value::U32(128)),
            ("llama.vocab_size", Value::U32(100)),
            ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        meta.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let g = GgufFile::from_bytes("t.gguf", writer::write(&meta, &[])).unwrap();
        Config::from_gguf(&g)
    }

    #[test]
    fn linear_rope_scaling_divides_positions_and_other_schemes_are_refused() {
        let plain = config_with(&[]).unwrap();
        let scaled = config_with(&[
            ("llama.rope.scaling.type", Value::String("linear".into())),
            ("llama.rope.scaling.factor", Value::F32(4.0)),
        ])
        .unwrap();
        assert_eq!(scaled.rope_linear, 4.0);
        let (a, b) = (plain.rope_table(64, None), scaled.rope_table(256, None));
        let half = (plain.head_dim / 2) as usize;
        // Position 4p scaled by 4 is position p unscaled.
        for p in 0..64 {
            for i in 0..half {
                let (x, y) = (a[p * half + i], b[4 * p * half + i]);
                assert!(
                    (x[0] - y[0]).abs() < 1e-4 && (x[1] - y[1]).abs() < 1e-4,
                    "p {p} i {i}"
                );
            }
        }
        let old = config_with(&[("llama.rope.scale_linear", Value::F32(2.0))]).unwrap();
        assert_eq!(old.rope_linear, 2.0);
        for kind in ["yarn", "longrope", "dynamic"] {
            let err = config_with(&[("llama.rope.scaling.type", Value::String(kind.into()))])
                .unwrap_err()
                .to_string();
            assert!(err.contains(kind) && err.contains("not supported"), "{err}");
        }
        assert!(config_with(&[
            ("llama.rope.scaling.type", Value::String("linear".into())),
            ("llama.rope.scaling.factor", Value::F32(f32::NAN)),
        ])
        .is_err());
    }
}
