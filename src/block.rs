//! The Llama block, written once. The inference forward ([`crate::model::Llama`]), the
//! training forward and its recompute replay ([`crate::train::Trainer`]) all record their
//! layers through [`record_layer`], so a change to the block (a fused kernel, a folded
//! dispatch) lands in every pass at once. What differs between the passes is where the
//! residual stream lives ([`Residual`]) and what a LoRA branch keeps (the caller's
//! [`LoraBranch`]).
//!
//! Per layer: rmsnorm, fused QKV matmul (+bias) (+LoRA), rope + K/V write, attention, output
//! matmul accumulating into the residual (+LoRA), rmsnorm, fused gate/up matmul (+LoRA), and
//! the down matmul that applies SwiGLU on its input and accumulates into the residual (+LoRA).
//! Decoding, rope + K/V write run inside attention, and on a CPU-class device each rmsnorm
//! inside the matmul after it: 5 launches per layer.

use crate::error::Result;
use crate::gpu::{Buffer, Gpu};
use crate::kernels::{self, AttnShape, Dispatch, MatmulShape, NormInput};
use crate::model::{Config, Layer, Linear};

/// Kernel launches, with buffer copies and clears between them: a recorded pass, replayed
/// with [`encode`].
pub(crate) enum Op {
    Run(Dispatch),
    Copy(wgpu::Buffer, wgpu::Buffer, u64),
    Clear(wgpu::Buffer),
}

/// Records `ops` into `enc`, consecutive launches in one compute pass.
pub(crate) fn encode(gpu: &Gpu, enc: &mut wgpu::CommandEncoder, ops: &[Op]) {
    let mut i = 0;
    while i < ops.len() {
        match &ops[i] {
            Op::Copy(src, dst, bytes) => {
                enc.copy_buffer_to_buffer(src, 0, dst, 0, *bytes);
                i += 1;
            }
            Op::Clear(buf) => {
                enc.clear_buffer(buf, 0, None);
                i += 1;
            }
            Op::Run(_) => {
                let mut pass = enc.begin_compute_pass(&Default::default());
                while let Some(Op::Run(d)) = ops.get(i) {
                    d.encode(gpu, &mut pass);
                    i += 1;
                }
            }
        }
    }
}

/// Runs `ops` one at a time, waiting after each, and records the time spent per kernel in
/// the device's profile (`LAMINA_PROFILE=1`, in place of the one-submit replay).
pub(crate) fn profile(gpu: &Gpu, ops: &[Op]) -> Result<()> {
    for op in ops {
        let name = match op {
            Op::Run(d) => d.kernel,
            Op::Copy(..) => "copy",
            Op::Clear(_) => "clear",
        };
        let start = std::time::Instant::now();
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        encode(gpu, &mut enc, std::slice::from_ref(op));
        gpu.submit(enc);
        gpu.wait()?;
        gpu.counters
            .record_kernel(name, start.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Where a layer's residual stream lives.
pub(crate) enum Residual<'a> {
    /// Inference: attention and the MLP add into `h` in place.
    InPlace(&'a Buffer),
    /// Training: `input` is left as it was (the backward reads it), the residual after
    /// attention goes to `mid`, and the layer's output to `out`. Without `out` the layer stops
    /// before the down projection, keeping only its LoRA input: a replay for the backward.
    Kept {
        input: &'a Buffer,
        mid: &'a Buffer,
        out: Option<&'a Buffer>,
    },
}

/// The buffers one layer reads and writes, `rows` tokens of them.
pub(crate) struct BlockBuffers<'a> {
    pub residual: Residual<'a>,
    /// Normed input of the QKV and gate/up projections.
    pub xn: &'a Buffer,
    pub qkv: &'a Buffer,
    /// Where rope_kv writes keys and values: the KV cache, or one sequence's worth per row.
    pub k: &'a Buffer,
    pub v: &'a Buffer,
    /// Attention output, the O projection's input.
    pub att: &'a Buffer,
    pub gu: &'a Buffer,
    pub rope: &'a Buffer,
    pub step: &'a Buffer,
}

/// A projection's input as its LoRA branch reads it.
#[derive(Clone, Copy)]
pub(crate) struct LoraIn<'a> {
    pub x: &'a Buffer,
    /// Floats per row.
    pub stride: u32,
    /// The input is `[gate | up]`, read as SwiGLU (the down projection's).
    pub swiglu: bool,
}

/// Where a LoRA branch adds its output: `y[:, col..] += scale * B (A x)`.
#[derive(Clone, Copy)]
pub(crate) struct LoraOut<'a> {
    pub y: &'a Buffer,
    pub stride: u32,
    pub col: u32,
}

/// Records the LoRA branch of module `m` (index into [`crate::adapter::MODULES`]) of the layer
/// being recorded, if it has one; `out` is `None` in a replay that only keeps `A x`.
pub(crate) type LoraBranch<'a> =
    dyn FnMut(&mut Vec<Op>, usize, LoraIn<'_>, Option<LoraOut<'_>>) -> Result<()> + 'a;

/// Records one layer's forward over `rows` tokens into `ops`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_layer(
    gpu: &Gpu,
    cfg: &Config,
    lw: &Layer,
    io: &BlockBuffers<'_>,
    rows: u32,
    shape: AttnShape,
    ops: &mut Vec<Op>,
    lora: &mut LoraBranch<'_>,
) -> Result<()> {
    let (d, qd, kvd, ff) = (cfg.n_embd, cfg.q_dim(), cfg.kv_dim(), cfg.n_ff);
    let qkv_dim = qd + 2 * kvd;
    let mm = |x_stride: u32, y_stride: u32, swiglu: bool, acc: bool| MatmulShape {
        swiglu_input: swiglu,
        accumulate: acc,
        ..MatmulShape::rows(rows, x_stride, y_stride)
    };
    let bytes = rows as u64 * d as u64 * 4;
    let (h_in, h_mid, h_out) = match io.residual {
        Residual::InPlace(h) => (h, h, Some(h)),
        Residual::Kept { input, mid, out } => {
            ops.push(Op::Copy(input.raw.clone(), mid.raw.clone(), bytes));
            (input, mid, out)
        }
    };
    let run = |ops: &mut Vec<Op>, dispatches: Vec<Dispatch>| {
        ops.extend(dispatches.into_iter().map(Op::Run));
    };

    // rmsnorm(h) * g into `xn`, then a projection of it into `y`; one launch where the matmul
    // folds the norm (it writes `xn` too, for the LoRA branches).
    let normed = |ops: &mut Vec<Op>, h, g, lin: &Linear, y, n_out| -> Result<()> {
        let shape = mm(d, n_out, false, false);
        if kernels::folds_norm(gpu, &shape) {
            let norm = NormInput {
                g,
                eps: cfg.rms_eps,
                xn: Some(io.xn),
            };
            run(ops, lin.dispatch_normed(gpu, h, Some(norm), y, shape)?);
            return Ok(());
        }
        let norm = kernels::rmsnorm(gpu, h, g, io.xn, d, rows, 0, cfg.rms_eps)?;
        ops.push(Op::Run(norm));
        run(ops, lin.dispatch(gpu, io.xn, y, shape)?);
        Ok(())
    };

    // Attention.
    normed(ops, h_in, &lw.attn_norm, &lw.qkv, io.qkv, qkv_dim)?;
    let xn = LoraIn {
        x: io.xn,
        stride: d,
        swiglu: false,
    };
    for (m, col) in [(0, 0), (1, qd), (2, qd + kvd)] {
        let y = LoraOut {
            y: io.qkv,
            stride: qkv_dim,
            col,
        };
        lora(ops, m, xn, Some(y))?;
    }
    if shape.seq(rows) == 1 {
        // Decode: rope and the cache append inside attention (one launch fewer).
        ops.push(Op::Run(kernels::rope_attention(
            gpu, shape, rows, io.step, io.qkv, io.rope, io.k, io.v, io.att,
        )?));
    } else {
        ops.push(Op::Run(kernels::rope_kv(
            gpu, shape, rows, io.step, io.qkv, io.rope, io.k, io.v,
        )?));
        ops.push(Op::Run(kernels::attention(
            gpu, shape, rows, io.step, io.qkv, io.k, io.v, io.att,
        )?));
    }
    run(
        ops,
        lw.o.dispatch(gpu, io.att, h_mid, mm(qd, d, false, true))?,
    );
    let att = LoraIn {
        x: io.att,
        stride: qd,
        swiglu: false,
    };
    let mid = LoraOut {
        y: h_mid,
        stride: d,
        col: 0,
    };
    lora(ops, 3, att, Some(mid))?;

    // MLP.
    normed(ops, h_mid, &lw.ffn_norm, &lw.gate_up, io.gu, 2 * ff)?;
    for (m, col) in [(4, 0), (5, ff)] {
        let y = LoraOut {
            y: io.gu,
            stride: 2 * ff,
            col,
        };
        lora(ops, m, xn, Some(y))?;
    }
    let gu = LoraIn {
        x: io.gu,
        stride: 2 * ff,
        swiglu: true,
    };
    match h_out {
        Some(out) => {
            if !std::ptr::eq(out, h_mid) {
                ops.push(Op::Copy(h_mid.raw.clone(), out.raw.clone(), bytes));
            }
            run(
                ops,
                lw.down
                    .dispatch(gpu, io.gu, out, mm(2 * ff, d, true, true))?,
            );
            let y = LoraOut {
                y: out,
                stride: d,
                col: 0,
            };
            lora(ops, 6, gu, Some(y))?;
        }
        None => lora(ops, 6, gu, None)?,
    }
    Ok(())
}
