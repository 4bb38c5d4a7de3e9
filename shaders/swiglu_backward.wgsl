// Backward of act = silu(gate) * up over rows of GU = [gate | up]:
// DGU[gate] = DACT * up * silu'(gate), DGU[up] = DACT * silu(gate), with
// silu'(g) = s(g) * (1 + g * (1 - s(g))) and s the logistic function. One invocation per (t, j).

struct Params {
    f: u32,     // features (gate and up each)
    t: u32,
    _a: u32,
    _b: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> GU: array<f32>;
@group(0) @binding(2) var<storage, read> DACT: array<f32>;
@group(0) @binding(3) var<storage, read_write> DGU: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    let j = idx % p.f;
    let t = idx / p.f;
    if (t >= p.t) {
        return;
    }
    let row = t * 2u * p.f;
    let g = GU[row + j];
    let u = GU[row + p.f + j];
    let s = 1.0 / (1.0 + exp(-g));
    let d = DACT[t * p.f + j];
    DGU[row + j] = d * u * s * (1.0 + g * (1.0 - s));
    DGU[row + p.f + j] = d * g * s;
}
