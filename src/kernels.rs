//! Rust side of every kernel in `shaders/`: how it is bound and dispatched, and the plain CPU
//! reference the tests check it against.
//!
//! A kernel call builds a [`Dispatch`] (pipeline, bind group, grid, its own small uniform
//! buffer) once; a model keeps its dispatches and replays them every step, so decoding a
//! token creates nothing on the GPU.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid, Buffer, Gpu, GpuError};
use crate::quant::{self, GgmlType};
use crate::shaders::Flags;

/// One recorded kernel launch.
pub struct Dispatch {
    /// The kernel's name (its file in `shaders/`), for profiles.
    pub kernel: &'static str,
    pub pipeline: Arc<wgpu::ComputePipeline>,
    pub bind_group: wgpu::BindGroup,
    pub groups: [u32; 3],
    _uniform: Buffer,
}

impl Dispatch {
    pub fn encode(&self, gpu: &Gpu, pass: &mut wgpu::ComputePass<'_>) {
        gpu.dispatch(pass, &self.pipeline, &self.bind_group, self.groups);
    }

    /// The kernel's parameter buffer, for kernels whose parameters change between replays.
    pub fn uniform(&self) -> &wgpu::Buffer {
        &self._uniform
    }
}

/// Encodes `dispatches` in one compute pass, submits, and waits.
pub fn run(gpu: &Gpu, dispatches: &[Dispatch]) -> Result<(), GpuError> {
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        for d in dispatches {
            d.encode(gpu, &mut pass);
        }
    }
    gpu.submit(enc);
    gpu.wait()
}

fn dispatch<P: Pod>(
    gpu: &Gpu,
    kernel: &'static str,
    constants: &[(&'static str, u64)],
    params: &P,
    buffers: &[&wgpu::Buffer],
    groups: [u32; 3],
) -> Result<Dispatch, GpuError> {
    dispatch_flags(
        gpu,
        kernel,
        gpu.shader_flags(),
        constants,
        params,
        buffers,
        groups,
    )
}

fn dispatch_flags<P: Pod>(
    gpu: &Gpu,
    kernel: &'static str,
    flags: Flags,
    constants: &[(&'static str, u64)],
    params: &P,
    buffers: &[&wgpu::Buffer],
    groups: [u32; 3],
) -> Result<Dispatch, GpuError> {
    let pipeline = gpu.pipeline(kernel, flags, constants)?;
    let uniform = gpu.uniform_init(kernel, bytemuck::bytes_of(params))?;
    let mut all: Vec<&wgpu::Buffer> = vec![&uniform.raw];
    all.extend_from_slice(buffers);
    let bind_group = gpu.bind_group(&pipeline, &all);
    Ok(Dispatch {
        kernel,
        pipeline,
        bind_group,
        groups,
        _uniform: uniform,
    })
}

/// A weight matrix `[rows, cols]` on the GPU, still quantized, split by rows into pieces that
/// each fit one storage binding.
pub struct QMatrix {
    pub ty: GgmlType,
    pub rows: u32,
    pub cols: u32,
    /// Rows per panel of the layout ([`quant::to_panels`]; 1: plain rows).
    pub panel: u32,
    pub pieces: Vec<Piece>,
}

/// Rows per weight panel for the CPU-class kernels: the rows one subgroup of the decode matmul
/// owns (8 lanes of [`MATMUL_BCAST_RB_DECODE`] rows), so it reads one contiguous region per
/// block. GPU kernels keep plain rows (panel 1): their lanes read one row's blocks together.
pub const WEIGHT_PANEL_CPU: u32 = 8 * MATMUL_BCAST_RB_DECODE;

pub struct Piece {
    pub row0: u32,
    pub rows: u32,
    pub buf: Buffer,
}

impl QMatrix {
    /// Uploads `bytes` (whole rows in the file layout).
    pub fn upload(
        gpu: &Gpu,
        label: &str,
        ty: GgmlType,
        rows: u32,
        cols: u32,
        bytes: &[u8],
    ) -> Result<QMatrix, crate::Error> {
        let err = |detail: String| crate::Error::Model(format!("{label}: {detail}"));
        if !ty.supported() {
            return Err(crate::Error::TensorType {
                tensor: label.into(),
                source: quant::UnsupportedType(ty),
            });
        }
        if !(cols as usize).is_multiple_of(ty.gpu_block_elems()) {
            return Err(err(format!(
                "row length {cols} is not a multiple of {}",
                ty.gpu_block_elems()
            )));
        }
        let row_bytes = cols as usize / ty.block_size() * ty.block_bytes();
        if bytes.len() != row_bytes * rows as usize {
            return Err(err(format!(
                "{} bytes for {rows} rows of {cols} {ty:?}",
                bytes.len()
            )));
        }
        let panel = if gpu.cpu_kernels { WEIGHT_PANEL_CPU } else { 1 } as usize;
        let row_gpu_bytes = ty.gpu_row_vec4s(cols as usize) * 16;
        // Whole panels per piece (a piece's last panel is padded).
        let max_rows =
            (gpu.limits.max_storage_buffer_binding_size as usize / row_gpu_bytes) / panel * panel;
        let max_rows = max_rows.max(panel);
        let mut pieces = Vec::new();
        let mut row0 = 0usize;
        while row0 < rows as usize {
            let n = max_rows.min(rows as usize - row0);
            let rows_bytes = &bytes[row0 * row_bytes..(row0 + n) * row_bytes];
            let words =
                quant::to_gpu_layout(ty, rows_bytes, cols as usize).map_err(|e| match e {
                    quant::LayoutError::Unsupported(source) => crate::Error::TensorType {
                        tensor: label.into(),
                        source,
                    },
                    shape => err(shape.to_string()),
                })?;
            let words = quant::to_panels(ty, cols as usize, words, panel);
            let buf = gpu.storage_init(label, bytemuck::cast_slice(&words))?;
            pieces.push(Piece {
                row0: row0 as u32,
                rows: n as u32,
                buf,
            });
            row0 += n;
        }
        Ok(QMatrix {
            ty,
            rows,
            cols,
            panel: panel as u32,
            pieces,
        })
    }

    pub fn gpu_bytes(&self) -> u64 {
        self.pieces.iter().map(|p| p.buf.size).sum()
    }

    fn constants(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("WTYPE", self.ty.id() as u64),
            ("SUBS", (self.ty.gpu_block_elems() / 32) as u64),
            ("QV", self.ty.gpu_quant_vec4s() as u64),
            ("SCALES_X2", self.ty.gpu_scale_words_x2() as u64),
            ("PANEL", self.panel as u64),
        ]
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MatmulParams {
    k: u32,
    n: u32,
    t: u32,
    x_stride4: u32,
    y_stride: u32,
    y_col: u32,
    x_row0: u32,
    eps: f32,
}

/// How a matmul reads X and writes Y.
#[derive(Debug, Clone, Copy)]
pub struct MatmulShape {
    /// Tokens (rows of X used, rows of Y written).
    pub t: u32,
    /// Floats per X row (for SWIGLU_INPUT: 2 * cols, gate then up).
    pub x_stride: u32,
    /// First X row read.
    pub x_row0: u32,
    /// Floats per Y row.
    pub y_stride: u32,
    /// Column of Y where this matrix's row 0 lands.
    pub y_col: u32,
    pub swiglu_input: bool,
    pub accumulate: bool,
}

impl MatmulShape {
    /// `t` rows of X (from row 0) into `t` rows of Y (from column 0), written, not added.
    pub fn rows(t: u32, x_stride: u32, y_stride: u32) -> MatmulShape {
        MatmulShape {
            t,
            x_stride,
            x_row0: 0,
            y_stride,
            y_col: 0,
            swiglu_input: false,
            accumulate: false,
        }
    }
}

/// Tokens one invocation handles: weights are dequantized once per this many tokens.
/// (Measured on llvmpipe: TB 8 / RB 4 beats 4/4, 4/8 and 8/2 for prefill.)
pub const MATMUL_TB: u32 = 8;
/// Rows one invocation (or subgroup) handles: inputs are loaded once per this many rows.
pub const MATMUL_RB: u32 = 4;
/// Rows per invocation when decoding one token (TB = 1).
pub const MATMUL_RB_DECODE: u32 = 4;

/// Tokens and rows per invocation of the X-broadcast variant for CPU devices (matmul.wgsl).
/// Measured on llvmpipe 25.0 with the per-row layout (Q4_1 1536x576, 128 tokens, two rounds
/// alternating): TB 8 / RB 2 11.5-11.6 GFLOP/s, 8/1 8.7-9.4, 4/2 9.0-11.6, 4/1 7.6-10.0;
/// prefill of 128 tokens 34-35 -> 46-51 tok/s. (Before that layout 4/1 measured best.)
pub const MATMUL_BCAST_TB: u32 = 8;
pub const MATMUL_BCAST_RB: u32 = 2;
/// Rows per invocation and invocations per workgroup of the X-broadcast variant decoding a
/// type with one scale per 32-value chunk (`GgmlType::one_scale_per_chunk`): more rows share
/// each X load, and smaller workgroups keep both cores busy on 576-row matrices. Measured on
/// llvmpipe 25.0, `lamina bench -p 16 -n 128 --train none -r 3`, three rounds alternating:
/// RB 2 / WG 64 24.3-24.8 tok/s, RB 4 / WG 16 25.9-26.9 (RB 4 with WG 8 or 32: no better).
pub const MATMUL_BCAST_RB_DECODE: u32 = 4;
pub const MATMUL_BCAST_WG_DECODE: u32 = 16;

/// `Y[t, y_col + n] (+)= X[t] . W[n] (+ bias[y_col + n])`.
pub fn matmul(
    gpu: &Gpu,
    w: &QMatrix,
    bias: Option<&Buffer>,
    x: &Buffer,
    y: &Buffer,
    s: MatmulShape,
) -> Result<Vec<Dispatch>, GpuError> {
    matmul_normed(gpu, w, bias, x, None, y, s)
}

/// An RMSNorm folded into a matmul's input: X is read as `rmsnorm(X) * g`.
#[derive(Clone, Copy)]
pub struct NormInput<'a> {
    pub g: &'a Buffer,
    pub eps: f32,
    /// Where the normed row is also written, as a separate rmsnorm would leave it (a LoRA
    /// branch reads it).
    pub xn: Option<&'a Buffer>,
}

/// Whether [`matmul_normed`] folds the norm for this shape: on the CPU-class kernels decoding
/// one token, where a launch costs about what a small matmul's work does (llvmpipe). Elsewhere
/// the norm runs as its own launch.
pub fn folds_norm(gpu: &Gpu, s: &MatmulShape) -> bool {
    gpu.cpu_kernels && s.t == 1 && !s.swiglu_input
}

/// [`matmul`] of `rmsnorm(X) * norm.g` where [`folds_norm`] holds (an error elsewhere).
pub fn matmul_normed(
    gpu: &Gpu,
    w: &QMatrix,
    bias: Option<&Buffer>,
    x: &Buffer,
    norm: Option<NormInput<'_>>,
    y: &Buffer,
    s: MatmulShape,
) -> Result<Vec<Dispatch>, GpuError> {
    if norm.is_some() && !folds_norm(gpu, &s) {
        return Err(GpuError::Operation(
            "a norm folds into the CPU-class matmul of one token only".into(),
        ));
    }
    let bcast = gpu.cpu_kernels;
    let (tb, rb) = match (bcast, s.t == 1) {
        (true, true) if w.ty.one_scale_per_chunk() => (1, MATMUL_BCAST_RB_DECODE),
        (true, true) => (1, MATMUL_BCAST_RB),
        (true, false) => (MATMUL_BCAST_TB, MATMUL_BCAST_RB),
        (false, true) => (1, MATMUL_RB_DECODE),
        (false, false) => (MATMUL_TB, MATMUL_RB),
    };
    let mut constants = w.constants();
    constants.extend([
        ("TB", tb as u64),
        ("RB", rb as u64),
        ("SWIGLU_INPUT", s.swiglu_input as u64),
        ("ACCUMULATE", s.accumulate as u64),
        ("HAS_BIAS", bias.is_some() as u64),
        ("XBCAST", bcast as u64),
        ("NORM", norm.is_some() as u64),
    ]);
    let wg = if bcast && s.t == 1 {
        MATMUL_BCAST_WG_DECODE
    } else {
        64
    };
    if bcast {
        constants.push(("WG", wg as u64));
    }
    // On a CPU device (llvmpipe) the one-row-per-invocation variant is 1.5x faster for
    // several tokens (lanes then share each X load); the subgroup variant wins at decode.
    let subgroups =
        bcast || gpu.subgroups && !(s.t > 1 && gpu.info.device_type == wgpu::DeviceType::Cpu);
    let flags = Flags {
        subgroups,
        ..gpu.shader_flags()
    };
    let rows_per_group = rb
        * if subgroups && !bcast {
            64 / gpu.info.subgroup_max_size.clamp(1, 64)
        } else {
            wg
        };
    let mut out = Vec::new();
    for (i, piece) in w.pieces.iter().enumerate() {
        let params = MatmulParams {
            k: w.cols,
            n: piece.rows,
            t: s.t,
            x_stride4: s.x_stride / 4,
            y_stride: s.y_stride,
            y_col: s.y_col + piece.row0,
            x_row0: s.x_row0,
            eps: norm.map_or(0.0, |n| n.eps),
        };
        let [gx, gy, _] = grid(piece.rows.div_ceil(rows_per_group));
        let bias_buf = bias.map(|b| &b.raw).unwrap_or(&gpu.dummy);
        let g = norm.map(|n| &n.g.raw).unwrap_or(&gpu.dummy);
        // The normed row is written once, by the first piece.
        let xn = norm.and_then(|n| n.xn).filter(|_| i == 0);
        let mut c = constants.clone();
        c.push(("WRITE_XN", xn.is_some() as u64));
        let xn = xn.map(|b| &b.raw).unwrap_or(&gpu.dummy_out);
        out.push(dispatch_flags(
            gpu,
            "matmul",
            flags,
            &c,
            &params,
            // The norm's buffers exist in the subgroup variant only (matmul_bcast's).
            &[&piece.buf, x, y, bias_buf, g, xn][..if subgroups { 6 } else { 4 }],
            [gx, gy, s.t.div_ceil(tb)],
        )?);
    }
    Ok(out)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RmsParams {
    d4: u32,
    t: u32,
    x_row0: u32,
    eps: f32,
}

/// `Y[t] = rmsnorm(X[x_row0 + t]) * g` for `t < rows`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm(
    gpu: &Gpu,
    x: &Buffer,
    g: &Buffer,
    y: &Buffer,
    d: u32,
    rows: u32,
    x_row0: u32,
    eps: f32,
) -> Result<Dispatch, GpuError> {
    let params = RmsParams {
        d4: d / 4,
        t: rows,
        x_row0,
        eps,
    };
    dispatch(
        gpu,
        "rmsnorm",
        &[],
        &params,
        &[x, g, y],
        [rows.div_ceil(64), 1, 1],
    )
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct EmbedParams {
    d: u32,
    t: u32,
    row0: u32,
    rows: u32,
}

/// `Y[t] = W[tokens[t]]`, one dispatch per piece of W.
pub fn embed(
    gpu: &Gpu,
    w: &QMatrix,
    tokens: &Buffer,
    y: &Buffer,
    t: u32,
) -> Result<Vec<Dispatch>, GpuError> {
    let constants = w.constants();
    let chunks = w.cols / 32;
    w.pieces
        .iter()
        .map(|piece| {
            let params = EmbedParams {
                d: w.cols,
                t,
                row0: piece.row0,
                rows: piece.rows,
            };
            dispatch(
                gpu,
                "embed",
                &constants,
                &params,
                &[&piece.buf, tokens, y],
                grid((t * chunks).div_ceil(64)),
            )
        })
        .collect()
}

/// Attention geometry shared by the rope and attention kernels.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub n_head: u32,
    pub n_kv_head: u32,
    pub head_dim: u32,
    /// Positions the KV cache holds per kv head.
    pub kv_cap: u32,
    pub neox: bool,
    /// The cache holds f16 (needs the device's shader-f16), else f32.
    pub kv_f16: bool,
    /// Tokens per sequence when a batch holds several sequences end to end, each with its own
    /// cache slice `[seq][kv head][kv_cap][head_dim]` (training); 0: one sequence of `t`.
    pub seq_len: u32,
}

impl AttnShape {
    /// Shader flags of the kernels that touch the cache.
    fn flags(&self, gpu: &Gpu) -> Flags {
        Flags {
            f16: self.kv_f16,
            ..gpu.shader_flags()
        }
    }

    pub fn qkv_stride(&self) -> u32 {
        (self.n_head + 2 * self.n_kv_head) * self.head_dim
    }

    /// Tokens per sequence in a batch of `t` rows.
    pub fn seq(&self, t: u32) -> u32 {
        if self.seq_len == 0 {
            t.max(1)
        } else {
            self.seq_len
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RopeParams {
    n_head: u32,
    n_kv_head: u32,
    head_dim: u32,
    t: u32,
    qkv_stride: u32,
    kv_cap: u32,
    seq: u32,
    _pad: u32,
}

/// Parameters and grid of the rotary kernels: one invocation per (token, head, pair).
fn rope_params(a: AttnShape, t: u32) -> (RopeParams, [u32; 3]) {
    let params = RopeParams {
        n_head: a.n_head,
        n_kv_head: a.n_kv_head,
        head_dim: a.head_dim,
        t,
        qkv_stride: a.qkv_stride(),
        kv_cap: a.kv_cap,
        seq: a.seq(t),
        _pad: 0,
    };
    let n = t * (a.n_head + a.n_kv_head) * a.head_dim / 2;
    (params, grid(n.div_ceil(64)))
}

/// The per-step uniform (position of the batch's first token) that rope and attention read.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
pub struct Step {
    pub pos0: u32,
    pub _pad: [u32; 3],
}

/// Rotates q and k of `t` tokens in `qkv` and appends k, v to the cache at `step.pos0`.
#[allow(clippy::too_many_arguments)]
pub fn rope_kv(
    gpu: &Gpu,
    a: AttnShape,
    t: u32,
    step: &Buffer,
    qkv: &Buffer,
    rope_table: &Buffer,
    k_cache: &Buffer,
    v_cache: &Buffer,
) -> Result<Dispatch, GpuError> {
    let (params, [gx, gy, _]) = rope_params(a, t);
    dispatch_flags(
        gpu,
        "rope_kv",
        a.flags(gpu),
        &[("NEOX", a.neox as u64)],
        &params,
        &[step, qkv, rope_table, k_cache, v_cache],
        [gx, gy, 1],
    )
}

/// cos/sin table `[positions][head_dim / 2]`, computed as Hugging Face does: inverse
/// frequencies and angles in f32, cos and sin of the f32 angle.
pub fn rope_table(head_dim: u32, theta: f32, positions: u32) -> Vec<[f32; 2]> {
    rope_table_scaled(head_dim, theta, positions, &[])
}

/// [`rope_table`] with Llama 3 style per-frequency factors (`rope_freqs.weight`): each
/// inverse frequency is divided by its factor.
pub fn rope_table_scaled(
    head_dim: u32,
    theta: f32,
    positions: u32,
    factors: &[f32],
) -> Vec<[f32; 2]> {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| {
            let f = 1.0 / theta.powf((2 * i) as f32 / head_dim as f32);
            f / factors.get(i as usize).copied().unwrap_or(1.0)
        })
        .collect();
    let mut out = Vec::with_capacity((positions * half) as usize);
    for pos in 0..positions {
        for &f in &inv_freq {
            let angle = pos as f32 * f;
            out.push([(angle as f64).cos() as f32, (angle as f64).sin() as f32]);
        }
    }
    out
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AttnParams {
    n_head: u32,
    n_kv_head: u32,
    t: u32,
    qkv_stride: u32,
    kv_cap: u32,
    out_stride: u32,
    scale: f32,
    seq: u32,
}

/// Causal attention of `t` queries (at positions `step.pos0 ..`) over the cache.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    gpu: &Gpu,
    a: AttnShape,
    t: u32,
    step: &Buffer,
    qkv: &Buffer,
    k_cache: &Buffer,
    v_cache: &Buffer,
    out: &Buffer,
) -> Result<Dispatch, GpuError> {
    attention_dispatch(gpu, a, t, step, qkv, None, [k_cache, v_cache], out)
}

/// [`rope_kv`] and [`attention`] in one dispatch, for batches with one new token per sequence
/// (decode): the same results, one launch fewer per layer.
#[allow(clippy::too_many_arguments)]
pub fn rope_attention(
    gpu: &Gpu,
    a: AttnShape,
    t: u32,
    step: &Buffer,
    qkv: &Buffer,
    rope_table: &Buffer,
    k_cache: &Buffer,
    v_cache: &Buffer,
    out: &Buffer,
) -> Result<Dispatch, GpuError> {
    if a.seq(t) != 1 {
        return Err(GpuError::Operation(format!(
            "rope_attention takes one new token per sequence, not {}",
            a.seq(t)
        )));
    }
    attention_dispatch(
        gpu,
        a,
        t,
        step,
        qkv,
        Some(rope_table),
        [k_cache, v_cache],
        out,
    )
}

/// Attention's workgroup on CPU-class devices: one subgroup, so heads spread over the cores.
const ATTENTION_CPU_WG: u32 = 8;

#[allow(clippy::too_many_arguments)]
fn attention_dispatch(
    gpu: &Gpu,
    a: AttnShape,
    t: u32,
    step: &Buffer,
    qkv: &Buffer,
    rope_table: Option<&Buffer>,
    [k_cache, v_cache]: [&Buffer; 2],
    out: &Buffer,
) -> Result<Dispatch, GpuError> {
    let params = AttnParams {
        n_head: a.n_head,
        n_kv_head: a.n_kv_head,
        t,
        qkv_stride: a.qkv_stride(),
        kv_cap: a.kv_cap,
        out_stride: a.n_head * a.head_dim,
        scale: 1.0 / (a.head_dim as f32).sqrt(),
        seq: a.seq(t),
    };
    let table = rope_table.map(|b| &b.raw).unwrap_or(&gpu.dummy);
    let group = a.n_head / a.n_kv_head;
    // attention.wgsl's GROUPED decode: one subgroup of 8 lanes per (sequence, KV head), each
    // lane holding head_dim / 32 vec4s of every head vector of the group (an even number, so
    // the vec4s rope pairs are the same lane's).
    let grouped = rope_table.is_some()
        && gpu.cpu_kernels
        && gpu.info.subgroup_max_size == ATTENTION_CPU_WG
        && a.head_dim.is_multiple_of(64)
        && a.head_dim <= 128
        && group <= 8
        && t * a.n_kv_head <= crate::gpu::MAX_GROUPS_PER_DIM;
    let invocations = t * a.n_head;
    let wg = if grouped
        || gpu.cpu_kernels
            && invocations.div_ceil(ATTENTION_CPU_WG) <= crate::gpu::MAX_GROUPS_PER_DIM
    {
        ATTENTION_CPU_WG
    } else {
        64
    };
    let groups = if grouped {
        t * a.n_kv_head
    } else {
        invocations.div_ceil(wg)
    };
    dispatch_flags(
        gpu,
        "attention",
        a.flags(gpu),
        &[
            ("HD4", (a.head_dim / 4) as u64),
            ("ROPE", rope_table.is_some() as u64),
            ("NEOX", a.neox as u64),
            ("WG", wg as u64),
            ("GROUPED", grouped as u64),
            ("G", group as u64),
            ("GV", (a.head_dim / 32) as u64),
        ],
        &params,
        &[step, qkv, k_cache, v_cache, out, table],
        [groups, 1, 1],
    )
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RowParams {
    n: u32,
    row_offset: u32,
    extra: u32,
    _pad: u32,
}

/// Index of the largest of `n` values at `row_offset` of `x`, into `out[0]`.
pub fn argmax(
    gpu: &Gpu,
    x: &Buffer,
    row_offset: u32,
    n: u32,
    out: &Buffer,
) -> Result<Dispatch, GpuError> {
    let params = RowParams {
        n,
        row_offset,
        extra: 0,
        _pad: 0,
    };
    dispatch(gpu, "argmax", &[], &params, &[x, out], [1, 1, 1])
}

/// Largest `k` values of a row (unordered) into `out_v`, their indices into `out_i`.
pub fn topk(
    gpu: &Gpu,
    x: &Buffer,
    row_offset: u32,
    n: u32,
    k: u32,
    out_v: &Buffer,
    out_i: &Buffer,
) -> Result<Dispatch, GpuError> {
    #[repr(C)]
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct P {
        n: u32,
        k: u32,
        row_offset: u32,
        _pad: u32,
    }
    let params = P {
        n,
        k: k.min(n),
        row_offset,
        _pad: 0,
    };
    dispatch(gpu, "topk", &[], &params, &[x, out_v, out_i], [1, 1, 1])
}

/// Applies the repetition penalty to the logits of the first `n_tokens` ids in `tokens`.
pub fn penalty(
    gpu: &Gpu,
    tokens: &Buffer,
    n_tokens: u32,
    x: &Buffer,
    row_offset: u32,
    penalty: f32,
) -> Result<Dispatch, GpuError> {
    #[repr(C)]
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct P {
        n_tokens: u32,
        row_offset: u32,
        penalty: f32,
        _pad: u32,
    }
    let params = P {
        n_tokens,
        row_offset,
        penalty,
        _pad: 0,
    };
    dispatch(
        gpu,
        "penalty",
        &[],
        &params,
        &[tokens, x],
        [n_tokens.div_ceil(64).max(1), 1, 1],
    )
}

/// Inverted dropout of a LoRA input during training: each feature is dropped with
/// probability `p` (kept ones scaled by 1 / (1 - p)) by a hash of (`seed`, row, feature).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Dropout {
    pub p: f32,
    pub seed: u32,
}

/// Byte offset of the dropout seed in the parameters of [`lora_down`] and [`lora_backward`],
/// for rewriting it between replays.
pub const LORA_DOWN_SEED_OFFSET: u64 = 20;
pub const LORA_BACKWARD_SEED_OFFSET: u64 = 40;

/// LoRA down projection `U[t] = A . x[t]` (`A`: [r, k] f32), x read like a matmul input and
/// put through `dropout` when its probability is non-zero.
#[allow(clippy::too_many_arguments)]
pub fn lora_down(
    gpu: &Gpu,
    a: &Buffer,
    x: &Buffer,
    u: &Buffer,
    k: u32,
    r: u32,
    t: u32,
    x_stride: u32,
    swiglu_input: bool,
    dropout: Dropout,
) -> Result<Dispatch, GpuError> {
    #[repr(C)]
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct P {
        k: u32,
        r: u32,
        t: u32,
        x_stride4: u32,
        dropout: f32,
        seed: u32,
        _pad: [u32; 2],
    }
    let params = P {
        k,
        r,
        t,
        x_stride4: x_stride / 4,
        dropout: dropout.p,
        seed: dropout.seed,
        _pad: [0; 2],
    };
    dispatch(
        gpu,
        "lora_down",
        &[
            ("SWIGLU_INPUT", swiglu_input as u64),
            ("DROPOUT", (dropout.p > 0.0) as u64),
        ],
        &params,
        &[a, x, u],
        // One invocation per block of 4 tokens x 4 ranks.
        grid((t.div_ceil(4) * r.div_ceil(4)).div_ceil(64)),
    )
}

/// LoRA up projection added to a base output: `Y[t, y_col + o] += scale * B[o] . U[t]`.
#[allow(clippy::too_many_arguments)]
pub fn lora_up(
    gpu: &Gpu,
    b: &Buffer,
    u: &Buffer,
    y: &Buffer,
    n: u32,
    r: u32,
    t: u32,
    y_stride: u32,
    y_col: u32,
    scale: f32,
) -> Result<Dispatch, GpuError> {
    #[repr(C)]
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct P {
        n: u32,
        r: u32,
        t: u32,
        y_stride: u32,
        y_col: u32,
        scale: f32,
        _pad: [u32; 2],
    }
    let params = P {
        n,
        r,
        t,
        y_stride,
        y_col,
        scale,
        _pad: [0; 2],
    };
    // One invocation per block of 4 tokens x 4 outputs.
    let [gx, gy, _] = grid((t.div_ceil(4) * n.div_ceil(4)).div_ceil(64));
    dispatch(gpu, "lora_up", &[], &params, &[b, u, y], [gx, gy, 1])
}

/// Rows of W one [`matmul_t`] dispatch walks: llvmpipe stops an invocation after 65535 loop
/// iterations in total, and each row costs up to 10 of them.
const MATMUL_T_ROWS: u32 = 4096;

/// Backward of a frozen quantized matmul: `DX[t] (+)= sum_n DY[t, dy_col + n] * W[n]`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_t(
    gpu: &Gpu,
    w: &QMatrix,
    dy: &Buffer,
    dx: &Buffer,
    t: u32,
    dy_stride: u32,
    dy_col: u32,
    dx_stride: u32,
    accumulate: bool,
) -> Result<Vec<Dispatch>, GpuError> {
    #[repr(C)]
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct P {
        k: u32,
        n: u32,
        t: u32,
        dy_stride: u32,
        dy_col: u32,
        dx_stride4: u32,
        w_row0: u32,
        _pad: u32,
    }
    // Token blocks of TB share each dequantized chunk; a few tokens need no blocking.
    let tb = if t >= 4 { 4 } else { 1 };
    let [gx, gy, _] = grid((t.div_ceil(tb) * w.cols / 32).div_ceil(64));
    let mut out = Vec::new();
    for piece in &w.pieces {
        for row0 in (0..piece.rows).step_by(MATMUL_T_ROWS as usize) {
            // Every dispatch after the first adds to what the earlier ones wrote.
            let acc = accumulate || !out.is_empty();
            let mut constants = w.constants();
            constants.push(("ACCUMULATE", acc as u64));
            constants.push(("TB", tb as u64));
            let params = P {
                k: w.cols,
                n: MATMUL_T_ROWS.min(piece.rows - row0),
                t,
                dy_stride,
                dy_col: dy_col + piece.row0,
                dx_stride4: dx_stride / 4,
                w_row0: row0,
                _pad: 0,
            };
            out.push(dispatch(
                gpu,
                "matmul_t",
                &constants,
                &params,
                &[&piece.buf, dy, dx],
                [gx, gy, 1],
            )?);
        }
    }
    Ok(out)
}

/// Backward of rmsnorm for `t` rows: `DX (+)= d rmsnorm(X) * G / dX . DY`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    gpu: &Gpu,
    x: &Buffer,
    g: &Buffer,
    dy: &Buffer,
    dx: &Buffer,
    d: u32,
    t: u32,
    eps: f32,
    accumulate: bool,
) -> Result<Dispatch, GpuError> {
    #[repr(C)]
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct P {
        d4: u32,
        t: u32,
        eps: f32,
        _pad: u32,
    }
    let params = P {
        d4: d / 4,
        t,
        eps,
        _pad: 0,
    };
    dispatch(
        gpu,
        "rmsnorm_backward",
        &[("ACCUMULATE", accumulate as u64)],
        &params,
        &[x, g, dy, dx],
        [t.div_ceil(64), 1, 1],
    )
}

/// Backward of `act = silu(gate) * up` for `t` rows of `gu = [gate | up]`.
pub fn swiglu_backward(
    gpu: &Gpu,
    gu: &Buffer,
    dact: &Buffer,
    dgu: &Buffer,
    f: u32,
    t: u32,
) -> Result<Dispatch, GpuError> {
    #[repr(C)]
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct P {
        f: u32,
        t: u32,
        _pad: [u32; 2],
    }
    let params = P { f, t, _pad: [0; 2] };
    let [gx, gy, _] = grid((t * f).div_ceil(64));
    dispatch(
        gpu,
        "swiglu_backward",
        &[],
        &params,
        &[gu, dact, dgu],
        [gx, gy, 1],
    )
}

/// Geometry of one LoRA branch for [`lora_backward`].
#[derive(Debug, Clone, Copy)]
pub struct LoraShape {
    pub k: u32,
    pub n: u32,
    pub r: u32,
    pub t: u32,
    pub x_stride: u32,
    pub dy_stride: u32,
    pub dy_col: u32,
    pub dx_stride: u32,
    pub scale: f32,
    pub swiglu_input: bool,
    /// The forward's dropout of X (same seed).
    pub dropout: Dropout,
}

/// Which product of the LoRA backward to compute (see shaders/lora_backward.wgsl).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraGrad {
    /// `DU = scale * DY B` into `out` ([t, r]).
    DU,
    /// `DB (+)= scale * DY^T U` into `out` ([n, r]); `u` is the forward's `X A^T`.
    DB { accumulate: bool },
    /// `DA (+)= DU^T X` into `out` ([r, k]); `u` holds DU.
    DA { accumulate: bool },
    /// `DX += DU A` into `out` ([t, dx_stride]); `u` holds DU.
    DX,
}

/// One product of the backward of `Y += scale * (X A^T) B^T`.
#[allow(clippy::too_many_arguments)]
pub fn lora_backward(
    gpu: &Gpu,
    grad: LoraGrad,
    s: LoraShape,
    x: &Buffer,
    dy: &Buffer,
    a: &Buffer,
    b: &Buffer,
    u: &Buffer,
    out: &Buffer,
) -> Result<Dispatch, GpuError> {
    #[repr(C)]
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct P {
        k: u32,
        n: u32,
        r: u32,
        t: u32,
        x_stride: u32,
        dy_stride: u32,
        dy_col: u32,
        dx_stride: u32,
        scale: f32,
        dropout: f32,
        seed: u32,
        _pad: u32,
    }
    let params = P {
        k: s.k,
        n: s.n,
        r: s.r,
        t: s.t,
        x_stride: s.x_stride,
        dy_stride: s.dy_stride,
        dy_col: s.dy_col,
        dx_stride: s.dx_stride,
        scale: s.scale,
        dropout: s.dropout.p,
        seed: s.dropout.seed,
        _pad: 0,
    };
    // One invocation per 4 x 4 block of the output (see the shader).
    let blocks = |v: u32| v.div_ceil(4);
    let (mode, accumulate, count) = match grad {
        LoraGrad::DU => (0, false, blocks(s.t) * blocks(s.r)),
        LoraGrad::DB { accumulate } => (1, accumulate, blocks(s.n) * blocks(s.r)),
        LoraGrad::DA { accumulate } => (2, accumulate, blocks(s.r) * blocks(s.k)),
        LoraGrad::DX => (3, false, blocks(s.t) * blocks(s.k)),
    };
    let constants = [
        ("MODE", mode),
        ("SWIGLU_INPUT", s.swiglu_input as u64),
        ("ACCUMULATE", accumulate as u64),
        ("DROPOUT", (s.dropout.p > 0.0) as u64),
    ];
    let [gx, gy, _] = grid(count.div_ceil(64));
    dispatch(
        gpu,
        "lora_backward",
        &constants,
        &params,
        &[x, dy, a, b, u, out],
        [gx, gy, 1],
    )
}

/// Buffers of the attention backward for a training sequence at positions `0..t`.
pub struct AttnBackward<'a> {
    /// Forward QKV rows, q rotated.
    pub qkv: &'a Buffer,
    /// Keys (rotated) and values in the cache layout, f32.
    pub k_cache: &'a Buffer,
    pub v_cache: &'a Buffer,
    /// Forward output and its gradient, `[t, n_head * head_dim]`.
    pub out: &'a Buffer,
    pub d_out: &'a Buffer,
    /// `[t * n_head]` pairs of (logsumexp, dO . O), written by the first dispatch.
    pub stats: &'a Buffer,
    /// Gradients of q, k, v in QKV's row layout.
    pub d_qkv: &'a Buffer,
}

/// The three dispatches of the attention backward (stats, dq, dk and dv).
pub fn attention_backward(
    gpu: &Gpu,
    a: AttnShape,
    t: u32,
    b: AttnBackward<'_>,
) -> Result<Vec<Dispatch>, GpuError> {
    #[repr(C)]
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct P {
        n_head: u32,
        n_kv_head: u32,
        t: u32,
        qkv_stride: u32,
        kv_cap: u32,
        scale: f32,
        seq: u32,
        _pad: u32,
    }
    let params = P {
        n_head: a.n_head,
        n_kv_head: a.n_kv_head,
        t,
        qkv_stride: a.qkv_stride(),
        kv_cap: a.kv_cap,
        scale: 1.0 / (a.head_dim as f32).sqrt(),
        seq: a.seq(t),
        _pad: 0,
    };
    let bufs: [&wgpu::Buffer; 7] = [
        b.qkv, b.k_cache, b.v_cache, b.out, b.d_out, b.stats, b.d_qkv,
    ];
    // The CPU-class variant puts 8 consecutive tokens of one sequence in a subgroup.
    let lanes =
        gpu.cpu_kernels && params.seq.is_multiple_of(8) && (a.head_dim / 4).is_multiple_of(8);
    [(0u64, a.n_head), (1, a.n_head), (2, a.n_kv_head)]
        .into_iter()
        .map(|(mode, heads)| {
            let constants = [
                ("HD4", (a.head_dim / 4) as u64),
                ("MODE", mode),
                ("CPU_LANES", lanes as u64),
            ];
            let groups = if lanes {
                [t.div_ceil(64), heads, 1]
            } else {
                [(t * heads).div_ceil(64), 1, 1]
            };
            dispatch(
                gpu,
                "attention_backward",
                &constants,
                &params,
                &bufs,
                groups,
            )
        })
        .collect()
}

/// Backward of the rotary embedding on the q and k columns of `d_qkv` (positions `0..t`).
pub fn rope_backward(
    gpu: &Gpu,
    a: AttnShape,
    t: u32,
    d_qkv: &Buffer,
    rope_table: &Buffer,
) -> Result<Dispatch, GpuError> {
    let (params, [gx, gy, _]) = rope_params(a, t);
    dispatch(
        gpu,
        "rope_backward",
        &[("NEOX", a.neox as u64)],
        &params,
        &[d_qkv, rope_table],
        [gx, gy, 1],
    )
}

/// Cross-entropy of `rows` rows of logits against `labels[label0..]`: per-row losses into
/// `loss[label0..]`, and each row replaced by its gradient of the mean loss (`grad_scale` =
/// 1 / loss positions). A label of [`PAD_ROW`] gives no loss and a zero gradient.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy(
    gpu: &Gpu,
    logits: &Buffer,
    labels: &Buffer,
    loss: &Buffer,
    vocab: u32,
    rows: u32,
    label0: u32,
    grad_scale: f32,
) -> Result<Dispatch, GpuError> {
    #[repr(C)]
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct P {
        n: u32,
        rows: u32,
        grad_scale: f32,
        label0: u32,
    }
    let params = P {
        n: vocab,
        rows,
        grad_scale,
        label0,
    };
    dispatch(
        gpu,
        "cross_entropy",
        &[],
        &params,
        &[logits, labels, loss],
        [rows.max(1), 1, 1],
    )
}

/// Index (or label) of a padding row for [`gather_rows`] and [`cross_entropy`].
pub const PAD_ROW: u32 = u32::MAX;

/// `rows` rows of `d` floats moved by `idx[row0..]`: gather `dst[i] = src[idx[i]]` (zero for
/// [`PAD_ROW`]) or scatter `dst[idx[i]] = src[i]` (padding dropped).
#[allow(clippy::too_many_arguments)]
pub fn gather_rows(
    gpu: &Gpu,
    gather: bool,
    src: &Buffer,
    idx: &Buffer,
    dst: &Buffer,
    rows: u32,
    d: u32,
    row0: u32,
) -> Result<Dispatch, GpuError> {
    let params = RowParams {
        n: rows,
        row_offset: d / 4,
        extra: row0,
        _pad: 0,
    };
    let [gx, gy, _] = grid((rows * d / 4).div_ceil(64));
    dispatch(
        gpu,
        "gather_rows",
        &[("GATHER", gather as u64)],
        &params,
        &[src, idx, dst],
        [gx, gy, 1],
    )
}

/// `out[slot] = sum of x[i]^2` over the first `n` values of `x`.
pub fn sum_squares(
    gpu: &Gpu,
    x: &Buffer,
    out: &Buffer,
    n: u32,
    slot: u32,
) -> Result<Dispatch, GpuError> {
    let params = RowParams {
        n,
        row_offset: slot,
        extra: 0,
        _pad: 0,
    };
    dispatch(gpu, "sum_squares", &[], &params, &[x, out], [1, 1, 1])
}

/// AdamW hyper-parameters (PyTorch semantics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct AdamWParams {
    pub n: u32,
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub bias1: f32,
    pub bias2: f32,
    pub grad_scale: f32,
    pub _pad: [u32; 3],
}

impl AdamW {
    /// The kernel's parameters for 1-based `step`; `grad_scale` folds in clipping.
    pub fn params(&self, n: u32, step: u32, grad_scale: f32) -> AdamWParams {
        AdamWParams {
            n,
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            bias1: 1.0 - self.beta1.powi(step as i32),
            bias2: 1.0 - self.beta2.powi(step as i32),
            grad_scale,
            _pad: [0; 3],
        }
    }
}

/// One AdamW update of `param` from `grad` with moments `m`, `v`. The parameters live in the
/// dispatch's uniform: rewrite it (`AdamW::params`) before each replay.
pub fn adamw(
    gpu: &Gpu,
    params: &AdamWParams,
    param: &Buffer,
    grad: &Buffer,
    m: &Buffer,
    v: &Buffer,
) -> Result<Dispatch, GpuError> {
    let [gx, gy, _] = grid(params.n.div_ceil(64));
    dispatch(gpu, "adamw", &[], params, &[param, grad, m, v], [gx, gy, 1])
}

/// Plain CPU references, written for clarity, that the kernel tests compare against.
pub mod reference {
    /// `y[t][n] = sum_k x[t][k] * w[n][k]`.
    pub fn matmul(w: &[f32], x: &[f32], n: usize, k: usize) -> Vec<f32> {
        let t = x.len() / k;
        let mut y = vec![0f32; t * n];
        for ti in 0..t {
            for ni in 0..n {
                let mut s = 0f64;
                for ki in 0..k {
                    s += x[ti * k + ki] as f64 * w[ni * k + ki] as f64;
                }
                y[ti * n + ni] = s as f32;
            }
        }
        y
    }

    pub fn rmsnorm(x: &[f32], g: &[f32], eps: f32) -> Vec<f32> {
        let d = g.len();
        x.chunks(d)
            .flat_map(|row| {
                let ms = row.iter().map(|v| (v * v) as f64).sum::<f64>() / d as f64;
                let inv = 1.0 / (ms + eps as f64).sqrt();
                row.iter()
                    .zip(g)
                    .map(move |(v, g)| (*v as f64 * inv) as f32 * g)
            })
            .collect()
    }

    /// The mask of shaders/dropout.wgsl: 0 or 1 / (1 - p) for feature `k` of row `t`.
    pub fn dropout_keep(seed: u32, t: u32, k: u32, p: f32) -> f32 {
        fn hash(x: u32) -> u32 {
            let mut h = x;
            h ^= h >> 16;
            h = h.wrapping_mul(0x7feb352d);
            h ^= h >> 15;
            h = h.wrapping_mul(0x846ca68b);
            h ^= h >> 16;
            h
        }
        let h = hash(seed ^ hash(t ^ hash(k.wrapping_add(0x9e3779b9))));
        let u = (h >> 8) as f32 * (1.0 / 16777216.0);
        if u >= p {
            1.0 / (1.0 - p)
        } else {
            0.0
        }
    }

    pub fn silu(x: f32) -> f32 {
        x / (1.0 + (-x).exp())
    }

    /// Rotates one head vector at `pos` (pairs as the kernel: adjacent, or halves for NEOX).
    pub fn rope(v: &mut [f32], table: &[[f32; 2]], pos: usize, neox: bool) {
        let half = v.len() / 2;
        for i in 0..half {
            let [c, s] = table[pos * half + i];
            let (a, b) = if neox {
                (i, i + half)
            } else {
                (2 * i, 2 * i + 1)
            };
            let (x0, x1) = (v[a], v[b]);
            v[a] = x0 * c - x1 * s;
            v[b] = x0 * s + x1 * c;
        }
    }

    /// Causal attention for queries at positions `pos0..pos0+t` over keys `0..=pos`.
    /// `q`: [t][n_head][hd]; `k`, `v`: [n_kv][positions][hd]; returns [t][n_head][hd].
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n_head: usize,
        n_kv: usize,
        hd: usize,
        cap: usize,
        pos0: usize,
    ) -> Vec<f32> {
        let t = q.len() / (n_head * hd);
        let mut out = vec![0f32; q.len()];
        let scale = 1.0 / (hd as f64).sqrt();
        for ti in 0..t {
            for h in 0..n_head {
                let kvh = h / (n_head / n_kv);
                let qv = &q[(ti * n_head + h) * hd..][..hd];
                let n_keys = pos0 + ti + 1;
                let scores: Vec<f64> = (0..n_keys)
                    .map(|j| {
                        let kv = &k[(kvh * cap + j) * hd..][..hd];
                        qv.iter()
                            .zip(kv)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    let s: f64 = (0..n_keys)
                        .map(|j| e[j] * v[(kvh * cap + j) * hd + d] as f64)
                        .sum();
                    out[(ti * n_head + h) * hd + d] = (s / z) as f32;
                }
            }
        }
        out
    }

    /// Loss per row and the gradient of `grad_scale * sum(loss)` with respect to the logits.
    pub fn cross_entropy(x: &[f32], labels: &[u32], grad_scale: f32) -> (Vec<f32>, Vec<f32>) {
        let n = x.len() / labels.len();
        let mut loss = Vec::new();
        let mut grad = vec![0f32; x.len()];
        for (r, &label) in labels.iter().enumerate() {
            if label == super::PAD_ROW {
                loss.push(0.0);
                continue;
            }
            let row = &x[r * n..][..n];
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            loss.push((m + z.ln() - row[label as usize] as f64) as f32);
            for i in 0..n {
                let mut g = (row[i] as f64 - m).exp() / z;
                if i == label as usize {
                    g -= 1.0;
                }
                grad[r * n + i] = (g * grad_scale as f64) as f32;
            }
        }
        (loss, grad)
    }

    /// PyTorch's AdamW step on f64 copies (1-based `step`).
    #[allow(clippy::too_many_arguments)]
    pub fn adamw(
        p: &mut [f64],
        g: &[f64],
        m: &mut [f64],
        v: &mut [f64],
        step: i32,
        lr: f64,
        (b1, b2): (f64, f64),
        eps: f64,
        wd: f64,
    ) {
        for i in 0..p.len() {
            p[i] *= 1.0 - lr * wd;
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            let m_hat = m[i] / (1.0 - b1.powi(step));
            let v_hat = v[i] / (1.0 - b2.powi(step));
            p[i] -= lr * m_hat / (v_hat.sqrt() + eps);
        }
    }

    /// First index of the maximum.
    pub fn argmax(x: &[f32]) -> usize {
        let mut best = 0;
        for (i, v) in x.iter().enumerate() {
            if *v > x[best] {
                best = i;
            }
        }
        best
    }
}
