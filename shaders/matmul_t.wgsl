// Transposed quantized matmul for the backward pass: DX[t, k] (+)= sum_n DY[t, n] * W[n, k],
// W frozen and still quantized. One invocation per (TB tokens, 32 columns of W): it walks the
// rows of W, dequantizing the same 32-column chunk of each once for its TB tokens (register
// blocking, as in matmul.wgsl), and keeps its TB x 32 sums in registers.

#include dequant

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
@group(0) @binding(1) var<storage, read> W: array<vec4<u32>>;
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
    let j = c / SUBS;
    let sub = c % SUBS;
    // One array of the chunk's 8 vec4 sums per token, indexed only by constants (the chunk is
    // written out, not looped over), so they stay in registers. llvmpipe caps the loop
    // iterations of one invocation at 65535 in total (longer work is silently cut off), so the
    // caller splits W's rows into slices that stay well under it.
    var a0: array<vec4<f32>, 8>;
    var a1: array<vec4<f32>, 8>;
    var a2: array<vec4<f32>, 8>;
    var a3: array<vec4<f32>, 8>;
    let last = p.t - 1u;
    for (var n = 0u; n < p.n; n++) {
        let col = p.dy_col + p.w_row0 + n;
        var g = vec4<f32>(DY[t0 * p.dy_stride + col], 0.0, 0.0, 0.0);
        if (TB == 4u) {
            g.y = DY[min(t0 + 1u, last) * p.dy_stride + col];
            g.z = DY[min(t0 + 2u, last) * p.dy_stride + col];
            g.w = DY[min(t0 + 3u, last) * p.dy_stride + col];
        }
        let w = dq_chunk(wrow(p.w_row0 + n, p.k), j, sub);
        axpy8(&a0, g.x, w);
        if (TB == 4u) {
            axpy8(&a1, g.y, w);
            axpy8(&a2, g.z, w);
            axpy8(&a3, g.w, w);
        }
    }
    store8(t0, c, a0);
    if (TB == 4u) {
        store8(t0 + 1u, c, a1);
        store8(t0 + 2u, c, a2);
        store8(t0 + 3u, c, a3);
    }
}

// (*a)[i] += g * w[i], written out.
fn axpy8(a: ptr<function, array<vec4<f32>, 8>>, g: f32, w: array<vec4<f32>, 8>) {
    (*a)[0] += g * w[0];
    (*a)[1] += g * w[1];
    (*a)[2] += g * w[2];
    (*a)[3] += g * w[3];
    (*a)[4] += g * w[4];
    (*a)[5] += g * w[5];
    (*a)[6] += g * w[6];
    (*a)[7] += g * w[7];
}

// Writes (or adds) token t's 32 sums of chunk c.
fn store8(t: u32, c: u32, a: array<vec4<f32>, 8>) {
    if (t >= p.t) {
        return;
    }
    let o = t * p.dx_stride4 + c * 8u;
    for (var i = 0u; i < 8u; i++) {
        if (ACCUMULATE) {
            DX[o + i] += a[i];
        } else {
            DX[o + i] = a[i];
        }
    }
}
