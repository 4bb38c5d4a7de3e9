// AdamW with PyTorch's semantics (decoupled weight decay, bias-corrected moments), one
// invocation per parameter. GRAD_SCALE folds in gradient-norm clipping (and 1/accumulation).

struct Params {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bias1: f32,        // 1 - beta1^step
    bias2: f32,        // 1 - beta2^step
    grad_scale: f32,
    _a: u32,
    _b: u32,
    _c: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> PARAM: array<f32>;
@group(0) @binding(2) var<storage, read> GRAD: array<f32>;
@group(0) @binding(3) var<storage, read_write> M: array<f32>;
@group(0) @binding(4) var<storage, read_write> V: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.n) {
        return;
    }
    let g = GRAD[i] * p.grad_scale;
    var w = PARAM[i] * (1.0 - p.lr * p.weight_decay);
    let m = p.beta1 * M[i] + (1.0 - p.beta1) * g;
    let v = p.beta2 * V[i] + (1.0 - p.beta2) * g * g;
    M[i] = m;
    V[i] = v;
    let m_hat = m / p.bias1;
    let v_hat = v / p.bias2;
    w -= p.lr * m_hat / (sqrt(v_hat) + p.eps);
    PARAM[i] = w;
}
