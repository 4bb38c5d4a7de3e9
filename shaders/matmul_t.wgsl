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

// DY of token t for rows n .. n + 4 of this dispatch (0 past the last row).
fn dy4(t: u32, n: u32) -> vec4<f32> {
    let col = p.dy_col + p.w_row0 + n;
    let base = t * p.dy_stride + col;
    let l = p.n - 1u - n; // rows left after n
    return vec4<f32>(DY[base], select(0.0, DY[base + min(1u, l)], l >= 1u),
        select(0.0, DY[base + min(2u, l)], l >= 2u), select(0.0, DY[base + min(3u, l)], l >= 3u));
}

// Adds part i (4 columns) of four rows' chunks, weighted by each token's DY for those rows,
// to the token's sums: the four rows' products are summed before they reach the sums, so
// the sums are updated once per four rows.
fn rows4(i: u32, ra: WRow, rb: WRow, rc: WRow, rd: WRow, j: u32, sub: u32,
    g0: vec4<f32>, g1: vec4<f32>, g2: vec4<f32>, g3: vec4<f32>,
    a0: ptr<function, array<vec4<f32>, 8>>, a1: ptr<function, array<vec4<f32>, 8>>,
    a2: ptr<function, array<vec4<f32>, 8>>, a3: ptr<function, array<vec4<f32>, 8>>) {
    let wa = dq4(ra, j, sub, i);
    let wb = dq4(rb, j, sub, i);
    let wc = dq4(rc, j, sub, i);
    let wd = dq4(rd, j, sub, i);
    (*a0)[i] += g0.x * wa + g0.y * wb + g0.z * wc + g0.w * wd;
    if (TB == 4u) {
        (*a1)[i] += g1.x * wa + g1.y * wb + g1.z * wc + g1.w * wd;
        (*a2)[i] += g2.x * wa + g2.y * wb + g2.z * wc + g2.w * wd;
        (*a3)[i] += g3.x * wa + g3.y * wb + g3.z * wc + g3.w * wd;
    }
}

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
    let last_row = p.w_row0 + p.n - 1u;
    // Four rows per iteration: a software device blends every sum with the loop's mask on
    // each iteration, so fewer, fuller iterations cost less.
    for (var n = 0u; n < p.n; n += 4u) {
        let g0 = dy4(t0, n);
        var g1 = vec4<f32>(0.0);
        var g2 = vec4<f32>(0.0);
        var g3 = vec4<f32>(0.0);
        if (TB == 4u) {
            g1 = dy4(min(t0 + 1u, last), n);
            g2 = dy4(min(t0 + 2u, last), n);
            g3 = dy4(min(t0 + 3u, last), n);
        }
        let r = p.w_row0 + n;
        let ra = wrow(r, p.k);
        let rb = wrow(min(r + 1u, last_row), p.k);
        let rc = wrow(min(r + 2u, last_row), p.k);
        let rd = wrow(min(r + 3u, last_row), p.k);
        rows4(0u, ra, rb, rc, rd, j, sub, g0, g1, g2, g3, &a0, &a1, &a2, &a3);
        rows4(1u, ra, rb, rc, rd, j, sub, g0, g1, g2, g3, &a0, &a1, &a2, &a3);
        rows4(2u, ra, rb, rc, rd, j, sub, g0, g1, g2, g3, &a0, &a1, &a2, &a3);
        rows4(3u, ra, rb, rc, rd, j, sub, g0, g1, g2, g3, &a0, &a1, &a2, &a3);
        rows4(4u, ra, rb, rc, rd, j, sub, g0, g1, g2, g3, &a0, &a1, &a2, &a3);
        rows4(5u, ra, rb, rc, rd, j, sub, g0, g1, g2, g3, &a0, &a1, &a2, &a3);
        rows4(6u, ra, rb, rc, rd, j, sub, g0, g1, g2, g3, &a0, &a1, &a2, &a3);
        rows4(7u, ra, rb, rc, rd, j, sub, g0, g1, g2, g3, &a0, &a1, &a2, &a3);
    }
    store8(t0, c, a0);
    if (TB == 4u) {
        store8(t0 + 1u, c, a1);
        store8(t0 + 2u, c, a2);
        store8(t0 + 3u, c, a3);
    }
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
