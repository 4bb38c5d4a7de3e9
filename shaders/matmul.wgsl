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
override RB: u32 = 1u;         // rows per invocation (per subgroup); TB * RB <= MAX_ACC
override SWIGLU_INPUT: bool = false;
override ACCUMULATE: bool = false;
override HAS_BIAS: bool = false;
const MAX_TB: u32 = 8u;
const MAX_ACC: u32 = 32u;      // at least TB * RB

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

// Adds chunk c (32 values) of RB consecutive rows starting at n0, times X, for every token
// of the block to acc[r * TB + tb]. Each X vec4 is loaded once for all RB rows and each
// weight vec4 once for all TB tokens: loads are what software devices pay for most.
fn chunk_dot(n0: u32, c: u32, t0: u32, acc: ptr<function, array<f32, MAX_ACC>>) {
    let row_words = (p.k / 32u / SUBS) * BLOCK_WORDS;
    let blk = (c / SUBS) * BLOCK_WORDS;
    let sub = c % SUBS;
    for (var i = 0u; i < 8u; i++) {
        var xs: array<vec4<f32>, MAX_TB>;
        for (var tb = 0u; tb < TB; tb++) {
            xs[tb] = load_x(min(t0 + tb, p.t - 1u), c * 8u + i);
        }
        for (var r = 0u; r < RB; r++) {
            let n = min(n0 + r, p.n - 1u);
            let w = dq4(n * row_words + blk, sub, i);
            for (var tb = 0u; tb < TB; tb++) {
                (*acc)[r * TB + tb] += dot(w, xs[tb]);
            }
        }
    }
}

fn store(n0: u32, t0: u32, acc: array<f32, MAX_ACC>) {
    for (var r = 0u; r < RB; r++) {
        let n = n0 + r;
        if (n >= p.n) {
            break;
        }
        var bias = 0.0;
        if (HAS_BIAS) {
            bias = BIAS[p.y_col + n];
        }
        for (var tb = 0u; tb < TB; tb++) {
            let t = t0 + tb;
            if (t < p.t) {
                let idx = t * p.y_stride + p.y_col + n;
                var v = acc[r * TB + tb] + bias;
                if (ACCUMULATE) {
                    v += Y[idx];
                }
                Y[idx] = v;
            }
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
    // Each subgroup owns RB rows; its lanes split the chunks and add up with subgroupAdd.
    let groups_per_wg = 64u / sg_size;
    let n0 = ((wid.x + wid.y * nwg.x) * groups_per_wg + sg_id) * RB;
    let t0 = wid.z * TB;
    let chunks = p.k / 32u;
    var acc: array<f32, MAX_ACC>;
    for (var c = lane; c < chunks; c += sg_size) {
        chunk_dot(n0, c, t0, &acc);
    }
    for (var r = 0u; r < RB; r++) {
        for (var tb = 0u; tb < TB; tb++) {
            acc[r * TB + tb] = subgroupAdd(acc[r * TB + tb]);
        }
    }
    if (lane == 0u && n0 < p.n) {
        store(n0, t0, acc);
    }
}
#else
@compute @workgroup_size(64)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    // Each invocation owns RB rows.
    let n0 = (gid.x + gid.y * nwg.x * 64u) * RB;
    let t0 = wid.z * TB;
    let chunks = p.k / 32u;
    var acc: array<f32, MAX_ACC>;
    for (var c = 0u; c < chunks; c++) {
        chunk_dot(n0, c, t0, &acc);
    }
    if (n0 < p.n) {
        store(n0, t0, acc);
    }
}
#endif
