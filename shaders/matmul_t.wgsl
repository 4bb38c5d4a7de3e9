// Transposed quantized matmul for the backward pass: DX[t, k] (+)= sum_n DY[t, n] * W[n, k],
// W frozen and still quantized. One invocation per (token, 32 columns of W): it walks the rows
// of W, dequantizing the same 32-column chunk of each, and keeps its 32 sums in registers.

#include dequant

override BLOCK_WORDS: u32;
override SUBS: u32;
override ACCUMULATE: bool = false;

struct Params {
    k: u32,          // row length of W (columns of DX)
    n: u32,          // rows of W (columns of DY)
    t: u32,          // tokens
    dy_stride: u32,  // floats per DY row
    dy_col: u32,     // DY column of W's row 0
    dx_stride4: u32, // DX row stride in vec4
    _a: u32,
    _b: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> DY: array<f32>;
@group(0) @binding(3) var<storage, read_write> DX: array<vec4<f32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let chunks = p.k / 32u;
    let c = gid.x % chunks;
    let t = gid.x / chunks;
    if (t >= p.t) {
        return;
    }
    let row_words = (chunks / SUBS) * BLOCK_WORDS;
    let blk = (c / SUBS) * BLOCK_WORDS;
    let sub = c % SUBS;
    var acc: array<vec4<f32>, 8>;
    for (var n = 0u; n < p.n; n++) {
        let g = DY[t * p.dy_stride + p.dy_col + n];
        let b = n * row_words + blk;
        for (var i = 0u; i < 8u; i++) {
            acc[i] += g * dq4(b, sub, i);
        }
    }
    let o = t * p.dx_stride4 + c * 8u;
    for (var i = 0u; i < 8u; i++) {
        if (ACCUMULATE) {
            DX[o + i] += acc[i];
        } else {
            DX[o + i] = acc[i];
        }
    }
}
