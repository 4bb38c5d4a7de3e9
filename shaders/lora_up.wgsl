// LoRA up projection, added to the base output: Y[t, y_col + o] += scale * sum_j U[t, j] * B[o, j].
// Each invocation owns a block of 4 tokens x 4 output features, summing outer products of
// four U values and four B values per rank: each value loaded is used four times.

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

fn add_row(t: u32, o0: u32, v: vec4<f32>) {
    if (t >= p.t) {
        return;
    }
    for (var c = 0u; c < 4u; c++) {
        if (o0 + c < p.n) {
            let i = t * p.y_stride + p.y_col + o0 + c;
            Y[i] = Y[i] + p.scale * v[c];
        }
    }
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    let out_blocks = (p.n + 3u) / 4u;
    let t0 = (idx / out_blocks) * 4u;
    let o0 = (idx % out_blocks) * 4u;
    if (t0 >= p.t) {
        return;
    }
    let lt = p.t - 1u;
    let u0 = t0 * p.r;
    let u1 = min(t0 + 1u, lt) * p.r;
    let u2 = min(t0 + 2u, lt) * p.r;
    let u3 = min(t0 + 3u, lt) * p.r;
    let ln = p.n - 1u;
    let b0 = o0 * p.r;
    let b1 = min(o0 + 1u, ln) * p.r;
    let b2 = min(o0 + 2u, ln) * p.r;
    let b3 = min(o0 + 3u, ln) * p.r;
    var acc = mat4x4<f32>(); // [token][output]
    for (var j = 0u; j < p.r; j++) {
        let u = vec4<f32>(U[u0 + j], U[u1 + j], U[u2 + j], U[u3 + j]);
        let b = vec4<f32>(B[b0 + j], B[b1 + j], B[b2 + j], B[b3 + j]);
        acc += mat4x4<f32>(u.x * b, u.y * b, u.z * b, u.w * b);
    }
    add_row(t0, o0, acc[0]);
    add_row(t0 + 1u, o0, acc[1]);
    add_row(t0 + 2u, o0, acc[2]);
    add_row(t0 + 3u, o0, acc[3]);
}
