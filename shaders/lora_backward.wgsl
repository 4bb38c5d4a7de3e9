#include dropout

// Backward of a LoRA branch Y += scale * (X A^T) B^T, in four modes (override MODE), each a
// small dense product with one invocation per output element:
//   0: DU[t, j] = scale * sum_o DY[t, dy_col + o] * B[o, j]
//   1: DB[o, j] (+)= scale * sum_t DY[t, dy_col + o] * U[t, j]     (U = X A^T from the forward)
//   2: DA[j, k] (+)= sum_t DU[t, j] * X[t, k]
//   3: DX[t, k] += sum_j DU[t, j] * A[j, k]
// Binding U holds U = X A^T for mode 1 and DU for modes 2 and 3.
// X is read as the forward read it (SWIGLU_INPUT for down_proj). Gradients of A and B add up
// over micro-batches when ACCUMULATE is set. DROPOUT: X went through inverted dropout in the
// forward (same seed), so dA sees the dropped X and dX is masked the same way.

override MODE: u32;
override DROPOUT: bool = false;
override SWIGLU_INPUT: bool = false;
override ACCUMULATE: bool = false;

struct Params {
    k: u32,          // input features
    n: u32,          // output features
    r: u32,
    t: u32,
    x_stride: u32,   // floats per X row
    dy_stride: u32,  // floats per DY row
    dy_col: u32,
    dx_stride: u32,
    scale: f32,
    dropout: f32,
    seed: u32,
    _c: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> DY: array<f32>;
@group(0) @binding(3) var<storage, read> A: array<f32>;
@group(0) @binding(4) var<storage, read> B: array<f32>;
@group(0) @binding(5) var<storage, read> U: array<f32>;
@group(0) @binding(6) var<storage, read_write> OUT: array<f32>;

fn mask(t: u32, k: u32) -> f32 {
    if (DROPOUT) {
        return dropout_keep(p.seed, t, k, p.dropout);
    }
    return 1.0;
}

fn x_at(t: u32, k: u32) -> f32 {
    let i = t * p.x_stride + k;
    var x = X[i];
    if (SWIGLU_INPUT) {
        x = x / (1.0 + exp(-x)) * X[i + p.k];
    }
    return x * mask(t, k);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    switch MODE {
        case 0u: {
            let j = idx % p.r;
            let t = idx / p.r;
            if (t >= p.t) {
                return;
            }
            var s = 0.0;
            for (var o = 0u; o < p.n; o++) {
                s += DY[t * p.dy_stride + p.dy_col + o] * B[o * p.r + j];
            }
            OUT[t * p.r + j] = p.scale * s;
        }
        case 1u: {
            let j = idx % p.r;
            let o = idx / p.r;
            if (o >= p.n) {
                return;
            }
            var s = 0.0;
            for (var t = 0u; t < p.t; t++) {
                s += DY[t * p.dy_stride + p.dy_col + o] * U[t * p.r + j];
            }
            var v = p.scale * s;
            if (ACCUMULATE) {
                v += OUT[o * p.r + j];
            }
            OUT[o * p.r + j] = v;
        }
        case 2u: {
            let k = idx % p.k;
            let j = idx / p.k;
            if (j >= p.r) {
                return;
            }
            var s = 0.0;
            for (var t = 0u; t < p.t; t++) {
                s += U[t * p.r + j] * x_at(t, k);
            }
            var v = s;
            if (ACCUMULATE) {
                v += OUT[j * p.k + k];
            }
            OUT[j * p.k + k] = v;
        }
        default: {
            let k = idx % p.k;
            let t = idx / p.k;
            if (t >= p.t) {
                return;
            }
            var s = 0.0;
            for (var j = 0u; j < p.r; j++) {
                s += U[t * p.r + j] * A[j * p.k + k];
            }
            OUT[t * p.dx_stride + k] += s * mask(t, k);
        }
    }
}
