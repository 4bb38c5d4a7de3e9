// LoRA up projection, added to the base output: Y[t, y_col + o] += scale * sum_j U[t, j] * B[o, j].
// One invocation per (token, output feature).

struct Params {
    n: u32,          // output features
    r: u32,          // rank
    t: u32,          // tokens
    y_stride: u32,   // Y row stride in floats
    y_col: u32,      // first Y column of this module's output
    scale: f32,      // alpha / r (or alpha / sqrt(r)) times the adapter's weight
    _a: u32,
    _b: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> B: array<f32>;
@group(0) @binding(2) var<storage, read> U: array<f32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    let o = idx % p.n;
    let t = idx / p.n;
    if (t >= p.t) {
        return;
    }
    var s = 0.0;
    for (var j = 0u; j < p.r; j++) {
        s += U[t * p.r + j] * B[o * p.r + j];
    }
    let i = t * p.y_stride + p.y_col + o;
    Y[i] = Y[i] + p.scale * s;
}
