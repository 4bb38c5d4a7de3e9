#include dropout

// LoRA down projection: U[t, j] = sum_k X[t, k] * A[j, k] for j < r, with X read as the
// base matmul reads it (SWIGLU_INPUT: silu(gate) * up, for down_proj). One invocation per
// (token, j): r is small, so each invocation walks a whole row of A with vec4 loads.
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
    let j = idx % p.r;
    let t = idx / p.r;
    if (t >= p.t) {
        return;
    }
    let k4 = p.k / 4u;
    var s = vec4<f32>(0.0);
    for (var i = 0u; i < k4; i++) {
        s += load_x(t, i) * A[j * k4 + i];
    }
    U[t * p.r + j] = s.x + s.y + s.z + s.w;
}
