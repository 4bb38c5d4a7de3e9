#include dropout

// Backward of a LoRA branch Y += scale * (X A^T) B^T, in four modes (override MODE), each a
// small dense product:
//   0: DU[t, j] = scale * sum_o DY[t, dy_col + o] * B[o, j]
//   1: DB[o, j] (+)= scale * sum_t DY[t, dy_col + o] * U[t, j]     (U = X A^T from the forward)
//   2: DA[j, k] (+)= sum_t DU[t, j] * X[t, k]
//   3: DX[t, k] += sum_j DU[t, j] * A[j, k]
// Binding U holds U = X A^T for mode 1 and DU for modes 2 and 3.
// X is read as the forward read it (SWIGLU_INPUT for down_proj). Gradients of A and B add up
// over micro-batches when ACCUMULATE is set. DROPOUT: X went through inverted dropout in the
// forward (same seed), so dA sees the dropped X and dX is masked the same way.
//
// Each invocation computes a 4 x 4 block of its output (rows P, columns Q of the product) as
// sum over the shared index of outer products of two loaded 4-vectors: every value loaded is
// used four times, and X's SwiGLU and dropout are computed once per block row, not once per
// output. Loads are what software devices pay for most; on GPUs the products are tiny either
// way. Indices past the end are clamped when loading and skipped when storing.

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

fn mask4(t: u32, k0: u32) -> vec4<f32> {
    return vec4<f32>(mask(t, k0), mask(t, k0 + 1u), mask(t, k0 + 2u), mask(t, k0 + 3u));
}

fn x_at(t: u32, k: u32) -> f32 {
    let i = t * p.x_stride + k;
    var x = X[i];
    if (SWIGLU_INPUT) {
        x = x / (1.0 + exp(-x)) * X[i + p.k];
    }
    return x * mask(t, k);
}

// Clamped 4-vectors along one index of each operand.
fn dy_tokens(t0: u32, o: u32) -> vec4<f32> {
    let l = p.t - 1u;
    let c = p.dy_col + o;
    return vec4<f32>(DY[t0 * p.dy_stride + c], DY[min(t0 + 1u, l) * p.dy_stride + c],
        DY[min(t0 + 2u, l) * p.dy_stride + c], DY[min(t0 + 3u, l) * p.dy_stride + c]);
}
fn dy_outputs(t: u32, o0: u32) -> vec4<f32> {
    let l = p.n - 1u;
    let b = t * p.dy_stride + p.dy_col;
    return vec4<f32>(DY[b + o0], DY[b + min(o0 + 1u, l)], DY[b + min(o0 + 2u, l)],
        DY[b + min(o0 + 3u, l)]);
}
// Row i of a [rows, r] matrix (B or U), ranks j0 .. j0 + 4.
fn b_ranks(o: u32, j0: u32) -> vec4<f32> {
    let l = p.r - 1u;
    return vec4<f32>(B[o * p.r + j0], B[o * p.r + min(j0 + 1u, l)], B[o * p.r + min(j0 + 2u, l)],
        B[o * p.r + min(j0 + 3u, l)]);
}
fn u_ranks(t: u32, j0: u32) -> vec4<f32> {
    let l = p.r - 1u;
    return vec4<f32>(U[t * p.r + j0], U[t * p.r + min(j0 + 1u, l)], U[t * p.r + min(j0 + 2u, l)],
        U[t * p.r + min(j0 + 3u, l)]);
}
fn u_tokens(t0: u32, j: u32) -> vec4<f32> {
    let l = p.t - 1u;
    return vec4<f32>(U[t0 * p.r + j], U[min(t0 + 1u, l) * p.r + j], U[min(t0 + 2u, l) * p.r + j],
        U[min(t0 + 3u, l) * p.r + j]);
}
fn a_features(j: u32, k0: u32) -> vec4<f32> {
    let l = p.k - 1u;
    let b = j * p.k;
    return vec4<f32>(A[b + k0], A[b + min(k0 + 1u, l)], A[b + min(k0 + 2u, l)],
        A[b + min(k0 + 3u, l)]);
}
fn x_features(t: u32, k0: u32) -> vec4<f32> {
    let l = p.k - 1u;
    return vec4<f32>(x_at(t, k0), x_at(t, min(k0 + 1u, l)), x_at(t, min(k0 + 2u, l)),
        x_at(t, min(k0 + 3u, l)));
}

fn outer(a: vec4<f32>, b: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(a.x * b, a.y * b, a.z * b, a.w * b);
}

// Stores row i of a block at output row `row` (< rows), columns c0 .. c0 + 4 (< cols):
// OUT[row * stride + c] = v * scale (+ OUT[...] when add).
fn store_row(row: u32, rows: u32, c0: u32, cols: u32, stride: u32, v: vec4<f32>, scale: f32,
    add: bool) {
    if (row >= rows) {
        return;
    }
    for (var c = 0u; c < 4u; c++) {
        if (c0 + c < cols) {
            let i = row * stride + c0 + c;
            var y = v[c] * scale;
            if (add) {
                y += OUT[i];
            }
            OUT[i] = y;
        }
    }
}

fn store_block(r0: u32, rows: u32, c0: u32, cols: u32, stride: u32, m: mat4x4<f32>, scale: f32,
    add: bool) {
    store_row(r0, rows, c0, cols, stride, m[0], scale, add);
    store_row(r0 + 1u, rows, c0, cols, stride, m[1], scale, add);
    store_row(r0 + 2u, rows, c0, cols, stride, m[2], scale, add);
    store_row(r0 + 3u, rows, c0, cols, stride, m[3], scale, add);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    let rank_blocks = (p.r + 3u) / 4u;
    var acc = mat4x4<f32>();
    switch MODE {
        case 0u: {
            // rows: tokens, columns: ranks.
            let t0 = (idx / rank_blocks) * 4u;
            let j0 = (idx % rank_blocks) * 4u;
            if (t0 >= p.t) {
                return;
            }
            for (var o = 0u; o < p.n; o++) {
                acc += outer(dy_tokens(t0, o), b_ranks(o, j0));
            }
            store_block(t0, p.t, j0, p.r, p.r, acc, p.scale, false);
        }
        case 1u: {
            // rows: output features, columns: ranks.
            let o0 = (idx / rank_blocks) * 4u;
            let j0 = (idx % rank_blocks) * 4u;
            if (o0 >= p.n) {
                return;
            }
            for (var t = 0u; t < p.t; t++) {
                acc += outer(dy_outputs(t, o0), u_ranks(t, j0));
            }
            store_block(o0, p.n, j0, p.r, p.r, acc, p.scale, ACCUMULATE);
        }
        case 2u: {
            // rows: ranks, columns: input features.
            let k_blocks = (p.k + 3u) / 4u;
            let j0 = (idx / k_blocks) * 4u;
            let k0 = (idx % k_blocks) * 4u;
            if (j0 >= p.r) {
                return;
            }
            for (var t = 0u; t < p.t; t++) {
                acc += outer(u_ranks(t, j0), x_features(t, k0));
            }
            store_block(j0, p.r, k0, p.k, p.k, acc, 1.0, ACCUMULATE);
        }
        default: {
            // rows: tokens, columns: input features; the dropout mask applies per element.
            let k_blocks = (p.k + 3u) / 4u;
            let t0 = (idx / k_blocks) * 4u;
            let k0 = (idx % k_blocks) * 4u;
            if (t0 >= p.t) {
                return;
            }
            for (var j = 0u; j < p.r; j++) {
                acc += outer(u_tokens(t0, j), a_features(j, k0));
            }
            if (DROPOUT) {
                let l = p.t - 1u;
                acc[0] *= mask4(t0, k0);
                acc[1] *= mask4(min(t0 + 1u, l), k0);
                acc[2] *= mask4(min(t0 + 2u, l), k0);
                acc[3] *= mask4(min(t0 + 3u, l), k0);
            }
            store_block(t0, p.t, k0, p.k, p.dx_stride, acc, 1.0, true);
        }
    }
}
