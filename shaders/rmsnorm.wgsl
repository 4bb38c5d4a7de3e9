// Y[t] = X[t] / sqrt(mean(X[t]^2) + eps) * G, one invocation per row (no barriers: on
// software devices a barrier costs more than the few hundred multiply-adds of a row).

struct Params {
    d4: u32,      // row length in vec4
    t: u32,       // rows
    x_row0: u32,  // first X row
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> G: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> Y: array<vec4<f32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if (t >= p.t) {
        return;
    }
    let xo = (p.x_row0 + t) * p.d4;
    var ss = vec4<f32>(0.0);
    for (var i = 0u; i < p.d4; i++) {
        let v = X[xo + i];
        ss += v * v;
    }
    let inv = inverseSqrt((ss.x + ss.y + ss.z + ss.w) / f32(p.d4 * 4u) + p.eps);
    let yo = t * p.d4;
    for (var i = 0u; i < p.d4; i++) {
        Y[yo + i] = X[xo + i] * inv * G[i];
    }
}
