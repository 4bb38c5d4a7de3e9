// Y[t, col + n] (+)= sum_k X[t, k] * W[n, k] (+ bias[col + n]) for a quantized W (rows n).
//
// One weight chunk of 32 values is dequantized once and used for up to TB tokens (register
// blocking): prefill reads the weights once per TB tokens, decode (TB = 1) once per token.
// Without subgroups each invocation owns one row; with them each subgroup owns a row and its
// lanes split the row's chunks (contiguous loads across lanes), then add with subgroupAdd.
// Options (override constants): SWIGLU_INPUT reads X as [gate | up] and uses silu(gate) * up,
// fusing the MLP activation into the down projection; ACCUMULATE adds into Y (the residual).

#include dequant

override BLOCK_WORDS: u32;
override SUBS: u32;            // 32-element chunks per block (1, or 8 for k-quants)
override TB: u32 = 1u;         // tokens per invocation, at most MAX_TB
override SWIGLU_INPUT: bool = false;
override ACCUMULATE: bool = false;
override HAS_BIAS: bool = false;
const MAX_TB: u32 = 8u;

struct Params {
    k: u32,          // row length
    n: u32,          // rows of this weight piece
    t: u32,          // tokens
    x_stride4: u32,  // X row stride in vec4
    y_stride: u32,   // Y row stride in floats
    y_col: u32,      // first output column of this piece
    x_row0: u32,     // first X row to read (e.g. only the last token)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;
@group(0) @binding(4) var<storage, read> BIAS: array<f32>;

fn load_x(t: u32, k4: u32) -> vec4<f32> {
    let i = (p.x_row0 + t) * p.x_stride4 + k4;
    if (SWIGLU_INPUT) {
        let g = X[i];
        let u = X[i + p.k / 4u];
        return g / (1.0 + exp(-g)) * u;
    }
    return X[i];
}

// Adds chunk c of row `row` times X for every token of the block to acc.
fn chunk_dot(row: u32, c: u32, t0: u32, acc: ptr<function, array<f32, MAX_TB>>) {
    let b = row + (c / SUBS) * BLOCK_WORDS;
    let sub = c % SUBS;
    for (var i = 0u; i < 8u; i++) {
        let w = dq4(b, sub, i);
        for (var tb = 0u; tb < TB; tb++) {
            let t = min(t0 + tb, p.t - 1u);
            (*acc)[tb] += dot(w, load_x(t, c * 8u + i));
        }
    }
}

fn store(n: u32, t0: u32, acc: array<f32, MAX_TB>) {
    var bias = 0.0;
    if (HAS_BIAS) {
        bias = BIAS[p.y_col + n];
    }
    for (var tb = 0u; tb < TB; tb++) {
        let t = t0 + tb;
        if (t < p.t) {
            let idx = t * p.y_stride + p.y_col + n;
            var v = acc[tb] + bias;
            if (ACCUMULATE) {
                v += Y[idx];
            }
            Y[idx] = v;
        }
    }
}

#if SUBGROUPS
@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let rows_per_group = 64u / sg_size;
    let n_raw = (wid.x + wid.y * nwg.x) * rows_per_group + sg_id;
    let n = min(n_raw, p.n - 1u);
    let t0 = wid.z * TB;
    let chunks = p.k / 32u;
    let row = n * (chunks / SUBS) * BLOCK_WORDS;
    var acc: array<f32, MAX_TB>;
    for (var c = lane; c < chunks; c += sg_size) {
        chunk_dot(row, c, t0, &acc);
    }
    for (var tb = 0u; tb < TB; tb++) {
        acc[tb] = subgroupAdd(acc[tb]);
    }
    if (lane == 0u && n_raw < p.n) {
        store(n, t0, acc);
    }
}
#else
@compute @workgroup_size(64)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    // No early return: with every lane active, software devices (llvmpipe) see that the X
    // loads are the same for all lanes and do one load instead of a per-lane gather.
    let n_raw = gid.x + gid.y * nwg.x * 64u;
    let n = min(n_raw, p.n - 1u);
    let t0 = wid.z * TB;
    let chunks = p.k / 32u;
    let row = n * (chunks / SUBS) * BLOCK_WORDS;
    var acc: array<f32, MAX_TB>;
    for (var c = 0u; c < chunks; c++) {
        chunk_dot(row, c, t0, &acc);
    }
    if (n_raw < p.n) {
        store(n, t0, acc);
    }
}
#endif
