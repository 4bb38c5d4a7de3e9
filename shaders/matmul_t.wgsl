// Transposed quantized matmul for the backward pass: DX[t, k] (+)= sum_n DY[t, n] * W[n, k],
// W frozen and still quantized. One invocation per (TB tokens, 32 columns of W): it walks the
// rows of W, dequantizing the same 32-column chunk of each once for its TB tokens (register
// blocking, as in matmul.wgsl), and keeps its TB x 32 sums in registers.

#include dequant

override BLOCK_WORDS: u32;
override SUBS: u32;
override ACCUMULATE: bool = false;
override TB: u32 = 4u;         // tokens per invocation: 1 or 4

struct Params {
    k: u32,          // row length of W (columns of DX)
    n: u32,          // rows of W (columns of DY)
    t: u32,          // tokens
    dy_stride: u32,  // floats per DY row
    dy_col: u32,     // DY column of W's row 0
    dx_stride4: u32, // DX row stride in vec4
    w_row0: u32,     // first row of W this dispatch walks (rows w_row0 .. w_row0 + n)
    _b: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> DY: array<f32>;
@group(0) @binding(3) var<storage, read_write> DX: array<vec4<f32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    let chunks = p.k / 32u;
    let c = idx % chunks;
    let t0 = (idx / chunks) * TB;
    if (t0 >= p.t) {
        return;
    }
    let row_words = (chunks / SUBS) * BLOCK_WORDS;
    let blk = (c / SUBS) * BLOCK_WORDS;
    let sub = c % SUBS;
    // [token in block][8 vec4s of the chunk]. llvmpipe caps the loop iterations of one
    // invocation at 65535 in total (longer work is silently cut off), so the caller splits W's
    // rows into slices that stay well under it, and the token loop is written out.
    var acc: array<vec4<f32>, 32>;
    let last = p.t - 1u;
    for (var n = 0u; n < p.n; n++) {
        let col = p.dy_col + p.w_row0 + n;
        var g = vec4<f32>(DY[t0 * p.dy_stride + col], 0.0, 0.0, 0.0);
        if (TB == 4u) {
            g.y = DY[min(t0 + 1u, last) * p.dy_stride + col];
            g.z = DY[min(t0 + 2u, last) * p.dy_stride + col];
            g.w = DY[min(t0 + 3u, last) * p.dy_stride + col];
        }
        let b = (p.w_row0 + n) * row_words + blk;
        for (var i = 0u; i < 8u; i++) {
            let w = dq4(b, sub, i);
            acc[i] += g.x * w;
            if (TB == 4u) {
                acc[8u + i] += g.y * w;
                acc[16u + i] += g.z * w;
                acc[24u + i] += g.w * w;
            }
        }
    }
    for (var tb = 0u; tb < TB; tb++) {
        let t = t0 + tb;
        if (t >= p.t) {
            break;
        }
        let o = t * p.dx_stride4 + c * 8u;
        for (var i = 0u; i < 8u; i++) {
            if (ACCUMULATE) {
                DX[o + i] += acc[tb * 8u + i];
            } else {
                DX[o + i] = acc[tb * 8u + i];
            }
        }
    }
}
