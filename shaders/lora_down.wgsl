#include dropout

// LoRA down projection: U[t, j] = sum_k X[t, k] * A[j, k] for j < r, with X read as the
// base matmul reads it (SWIGLU_INPUT: silu(gate) * up, for down_proj). Each invocation owns a
// block of 4 tokens x 4 ranks and walks the rows with vec4 loads: each X vector (and its
// SwiGLU and dropout) is used for four ranks, each A vector for four tokens.
// DROPOUT (training): X goes through inverted dropout first (see dropout.wgsl).

override SWIGLU_INPUT: bool = false;
override DROPOUT: bool = false;

struct Params {
    k: u32,          // input features
    r: u32,          // rank
    t: u32,          // tokens
    x_stride4: u32,  // X row stride in vec4
    dropout: f32,    // probability of dropping a feature
    seed: u32,
    _a: u32,
    _b: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> A: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> U: array<f32>;

fn load_x(t: u32, k4: u32) -> vec4<f32> {
    let i = t * p.x_stride4 + k4;
    var x = X[i];
    if (SWIGLU_INPUT) {
        let u = X[i + p.k / 4u];
        x = x / (1.0 + exp(-x)) * u;
    }
    if (DROPOUT) {
        let k = 4u * k4;
        x *= vec4<f32>(
            dropout_keep(p.seed, t, k, p.dropout),
            dropout_keep(p.seed, t, k + 1u, p.dropout),
            dropout_keep(p.seed, t, k + 2u, p.dropout),
            dropout_keep(p.seed, t, k + 3u, p.dropout),
        );
    }
    return x;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    let rank_blocks = (p.r + 3u) / 4u;
    let t0 = (idx / rank_blocks) * 4u;
    let j0 = (idx % rank_blocks) * 4u;
    if (t0 >= p.t) {
        return;
    }
    let k4 = p.k / 4u;
    let lt = p.t - 1u;
    let t1 = min(t0 + 1u, lt);
    let t2 = min(t0 + 2u, lt);
    let t3 = min(t0 + 3u, lt);
    let lr = p.r - 1u;
    let a0 = j0 * k4;
    let a1 = min(j0 + 1u, lr) * k4;
    let a2 = min(j0 + 2u, lr) * k4;
    let a3 = min(j0 + 3u, lr) * k4;
    var acc = mat4x4<f32>(); // [token][rank]
    for (var i = 0u; i < k4; i++) {
        let w = mat4x4<f32>(A[a0 + i], A[a1 + i], A[a2 + i], A[a3 + i]);
        // x * w is the row vector of x's dot products with the four rank rows.
        acc[0] += load_x(t0, i) * w;
        acc[1] += load_x(t1, i) * w;
        acc[2] += load_x(t2, i) * w;
        acc[3] += load_x(t3, i) * w;
    }
    for (var ti = 0u; ti < 4u; ti++) {
        let t = t0 + ti;
        if (t < p.t) {
            let row = acc[ti];
            for (var c = 0u; c < 4u; c++) {
                if (j0 + c < p.r) {
                    U[t * p.r + j0 + c] = row[c];
                }
            }
        }
    }
}
