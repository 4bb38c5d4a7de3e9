// Backward of Y = X * inv * G with inv = 1 / sqrt(mean(X^2) + eps), per row:
// DX = inv * (DY * G) - X * inv^3 * mean(DY * G * X). G is frozen. ACCUMULATE adds into DX
// (the residual stream's gradient). One invocation per row.

override ACCUMULATE: bool = false;

struct Params {
    d4: u32,
    t: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> G: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> DY: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> DX: array<vec4<f32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if (t >= p.t) {
        return;
    }
    let o = t * p.d4;
    var ss = vec4<f32>(0.0);
    var dot_gx = vec4<f32>(0.0);
    for (var i = 0u; i < p.d4; i++) {
        let x = X[o + i];
        ss += x * x;
        dot_gx += DY[o + i] * G[i] * x;
    }
    let d = f32(p.d4 * 4u);
    let inv = inverseSqrt((ss.x + ss.y + ss.z + ss.w) / d + p.eps);
    let c = inv * inv * inv * (dot_gx.x + dot_gx.y + dot_gx.z + dot_gx.w) / d;
    for (var i = 0u; i < p.d4; i++) {
        var v = inv * DY[o + i] * G[i] - X[o + i] * c;
        if (ACCUMULATE) {
            v += DX[o + i];
        }
        DX[o + i] = v;
    }
}
