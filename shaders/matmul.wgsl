// Y[t, col + n] (+)= sum_k X[t, k] * W[n, k] (+ bias[col + n]) for a quantized W (rows n).
//
// One weight chunk of 32 values is dequantized once and used for up to TB tokens (register
// blocking): prefill reads the weights once per TB tokens, decode (TB = 1) once per token.
// Without subgroups each invocation owns one row; with them each subgroup owns a row and its
// lanes split the row's chunks (contiguous loads across lanes), then add with subgroupAdd.
// Options (override constants): SWIGLU_INPUT reads X as [gate | up] and uses silu(gate) * up,
// fusing the MLP activation into the down projection; ACCUMULATE adds into Y (the residual);
// NORM (the CPU-class path, one token) reads X as rmsnorm(X) * NORM_G, saving the norm's launch.

#include dequant

override TB: u32 = 1u;         // tokens per invocation, at most MAX_TB
override RB: u32 = 1u;         // rows per invocation (per subgroup); TB * RB <= MAX_ACC
override SWIGLU_INPUT: bool = false;
override ACCUMULATE: bool = false;
override HAS_BIAS: bool = false;
// CPU-class devices (llvmpipe): each invocation owns RB rows, and the 8 lanes of a subgroup
// load one 32-value chunk of X together (one vec4 each) and broadcast it, instead of every
// lane loading all of it. Loads whose address the compiler cannot prove uniform cost one
// scalar load per lane and component there, so this cuts X loads eightfold.
override XBCAST: bool = false;
// NORM: X is the residual row; each invocation multiplies it by the norm weight as it loads it,
// sums its squares from the same loads, and scales its results by 1 / rms. WRITE_XN: the
// first subgroup also writes the normed row to XN (a LoRA branch reads it).
override NORM: bool = false;
override WRITE_XN: bool = false;
const MAX_TB: u32 = 8u;
const MAX_ACC: u32 = 32u;      // at least TB * RB

struct Params {
    k: u32,          // row length
    n: u32,          // rows of this weight piece
    t: u32,          // tokens
    x_stride4: u32,  // X row stride in vec4
    y_stride: u32,   // Y row stride in floats
    y_col: u32,      // first output column of this piece
    x_row0: u32,     // first X row to read (e.g. only the last token)
    eps: f32,        // NORM's epsilon
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> W: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;
@group(0) @binding(4) var<storage, read> BIAS: array<f32>;
@group(0) @binding(5) var<storage, read> NORM_G: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> XN: array<vec4<f32>>;

fn load_x(t: u32, k4: u32) -> vec4<f32> {
    let i = (p.x_row0 + t) * p.x_stride4 + k4;
    if (SWIGLU_INPUT) {
        let g = X[i];
        let u = X[i + p.k / 4u];
        return g / (1.0 + exp(-g)) * u;
    }
    return X[i];
}

// Adds chunk c (32 values) of RB consecutive rows starting at n0, times X, for every token
// of the block to acc[r * TB + tb]. Each X vec4 is loaded once for all RB rows and each
// weight vec4 once for all TB tokens: loads are what software devices pay for most.
fn chunk_dot(n0: u32, c: u32, t0: u32, acc: ptr<function, array<f32, MAX_ACC>>) {
    let j = c / SUBS;
    let sub = c % SUBS;
    for (var i = 0u; i < 8u; i++) {
        var xs: array<vec4<f32>, MAX_TB>;
        for (var tb = 0u; tb < TB; tb++) {
            xs[tb] = load_x(min(t0 + tb, p.t - 1u), c * 8u + i);
        }
        for (var r = 0u; r < RB; r++) {
            let n = min(n0 + r, p.n - 1u);
            let w = dq4(wrow(n, p.k), j, sub, i);
            for (var tb = 0u; tb < TB; tb++) {
                (*acc)[r * TB + tb] += dot(w, xs[tb]);
            }
        }
    }
}

fn store(n0: u32, t0: u32, acc: array<f32, MAX_ACC>) {
    for (var r = 0u; r < RB; r++) {
        let n = n0 + r;
        if (n >= p.n) {
            break;
        }
        var bias = 0.0;
        if (HAS_BIAS) {
            bias = BIAS[p.y_col + n];
        }
        for (var tb = 0u; tb < TB; tb++) {
            let t = t0 + tb;
            if (t < p.t) {
                let idx = t * p.y_stride + p.y_col + n;
                var v = acc[r * TB + tb] + bias;
                if (ACCUMULATE) {
                    v += Y[idx];
                }
                Y[idx] = v;
            }
        }
    }
}

#if SUBGROUPS
// The XBCAST path is written out without loops over the chunk's 8 vec4s, tokens or rows:
// llvmpipe does not unroll loops this large, and a loop keeps arrays in slow scratch memory.

// w . x for a chunk whose X is spread over the subgroup: lane i holds x's vec4 i.
fn dot_bcast(xl: vec4<f32>, w: array<vec4<f32>, 8>) -> f32 {
    return dot(w[0], subgroupBroadcast(xl, 0u)) + dot(w[1], subgroupBroadcast(xl, 1u))
        + dot(w[2], subgroupBroadcast(xl, 2u)) + dot(w[3], subgroupBroadcast(xl, 3u))
        + dot(w[4], subgroupBroadcast(xl, 4u)) + dot(w[5], subgroupBroadcast(xl, 5u))
        + dot(w[6], subgroupBroadcast(xl, 6u)) + dot(w[7], subgroupBroadcast(xl, 7u));
}

// Four tokens' dot products with one chunk.
fn dot_bcast4(x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>,
    w: array<vec4<f32>, 8>) -> vec4<f32> {
    return vec4<f32>(dot_bcast(x0, w), dot_bcast(x1, w), dot_bcast(x2, w), dot_bcast(x3, w));
}

// The sum over lanes 0..7 (the lanes that hold distinct vec4s of X: a subgroup wider than 8
// repeats them).
fn sum_lanes8(v: f32, lane: u32) -> f32 {
    return subgroupAdd(select(0.0, v, lane < 8u));
}

// The sum of a chunk of X spread over the subgroup (lane i holds vec4 i).
fn sum_bcast(xl: vec4<f32>, lane: u32) -> f32 {
    return sum_lanes8(xl.x + xl.y + xl.z + xl.w, lane);
}

// One token's dot product with chunk `sub` of block j of row r, for a factored type: the
// chunk's integers meet X (lane i holds vec4 i, times raw_x_scale()), then its scale, and its
// offset times the chunk's sum of X (xs); sv is the row's scale vector of the chunk where
// reuse_scale_vec() holds.
fn dot_factored(r: WRow, j: u32, sub: u32, sv: vec4<u32>, xl: vec4<f32>, xs: f32) -> f32 {
    var dm: vec2<f32>;
    if (reuse_scale_vec()) {
        dm = dq_scale_in(sv, j, sub);
    } else {
        dm = dq_scale(r, j, sub);
    }
    return dot_bcast(xl, dq_chunk_raw(r, j, sub)) * dm.x + dm.y * xs;
}

// XBCAST: the invocation owns rows n0 .. n0 + RB (RB is 1 or 2, or 4 decoding a factored
// type) for tokens t0 .. t0 + TB (TB is 1, 4 or 8). Every lane of the subgroup walks the same
// chunks (rows are clamped, not skipped), and lane l8 = lane % 8 loads vec4 l8 of each chunk
// of X. `first` marks the grid's first subgroup (it writes XN).
fn matmul_bcast(n0: u32, t0: u32, lane: u32, first: bool) {
    let l8 = lane % 8u;
    // Decoding a factored type (dequant.wgsl), the chunk's integers meet X and the scale and
    // offset are applied once per chunk and row: measured decode +5%. With several tokens
    // the per-token offset terms cost more than they save (prefill -3%), so values it is.
    let fac = factored() && TB == 1u;
    let chunks = p.k / 32u;
    let last = p.t - 1u;
    let ra = wrow(min(n0, p.n - 1u), p.k);
    let rb = wrow(min(n0 + 1u, p.n - 1u), p.k);
    let rc = wrow(min(n0 + 2u, p.n - 1u), p.k);
    let rd = wrow(min(n0 + 3u, p.n - 1u), p.k);
    var a0 = vec4<f32>(0.0); // row n0, tokens 0..4
    var a1 = vec4<f32>(0.0); // row n0, tokens 4..8
    var b0 = vec4<f32>(0.0); // row n0 + 1
    var b1 = vec4<f32>(0.0);
    var c0 = vec4<f32>(0.0); // rows n0 + 2, n0 + 3 (RB = 4: decoding a factored type only)
    var d0 = vec4<f32>(0.0);
    var ss = 0.0; // NORM: this lane's share of the row's sum of squares
    // Factored decode: the rows' current scale vectors (reuse_scale_vec()).
    var sva = vec4<u32>(0u);
    var svb = vec4<u32>(0u);
    var svc = vec4<u32>(0u);
    var svd = vec4<u32>(0u);
    for (var c = 0u; c < chunks; c++) {
        let j = c / SUBS;
        let sub = c % SUBS;
        let k4 = c * 8u + l8;
        var x0 = load_x(t0, k4);
        if (NORM) {
            ss += dot(x0, x0);
            x0 *= NORM_G[k4];
        }
        var x1 = vec4<f32>(0.0);
        var x2 = vec4<f32>(0.0);
        var x3 = vec4<f32>(0.0);
        var x4 = vec4<f32>(0.0);
        var x5 = vec4<f32>(0.0);
        var x6 = vec4<f32>(0.0);
        var x7 = vec4<f32>(0.0);
        if (TB > 1u) {
            x1 = load_x(min(t0 + 1u, last), k4);
            x2 = load_x(min(t0 + 2u, last), k4);
            x3 = load_x(min(t0 + 3u, last), k4);
        }
        if (TB > 4u) {
            x4 = load_x(min(t0 + 4u, last), k4);
            x5 = load_x(min(t0 + 5u, last), k4);
            x6 = load_x(min(t0 + 6u, last), k4);
            x7 = load_x(min(t0 + 7u, last), k4);
        }
        if (fac) {
            if (reuse_scale_vec() && scale_vec_starts(j, sub)) {
                sva = W[scale_vec_index(ra, j)];
                if (RB > 1u) {
                    svb = W[scale_vec_index(rb, j)];
                }
                if (RB > 2u) {
                    svc = W[scale_vec_index(rc, j)];
                    svd = W[scale_vec_index(rd, j)];
                }
            }
            // The chunk's sum of X, for the offset term (Q8_0 has none).
            var xs = 0.0;
            if (WTYPE != T_Q8_0) {
                xs = sum_bcast(x0, lane);
            }
            let xq = x0 * raw_x_scale();
            a0.x += dot_factored(ra, j, sub, sva, xq, xs);
            if (RB > 1u) {
                b0.x += dot_factored(rb, j, sub, svb, xq, xs);
            }
            if (RB > 2u) {
                c0.x += dot_factored(rc, j, sub, svc, xq, xs);
                d0.x += dot_factored(rd, j, sub, svd, xq, xs);
            }
            continue;
        }
        let w = dq_chunk(ra, j, sub);
        if (TB == 1u) {
            a0.x += dot_bcast(x0, w);
        } else {
            a0 += dot_bcast4(x0, x1, x2, x3, w);
        }
        if (TB > 4u) {
            a1 += dot_bcast4(x4, x5, x6, x7, w);
        }
        if (RB > 1u) {
            let v = dq_chunk(rb, j, sub);
            if (TB == 1u) {
                b0.x += dot_bcast(x0, v);
            } else {
                b0 += dot_bcast4(x0, x1, x2, x3, v);
            }
            if (TB > 4u) {
                b1 += dot_bcast4(x4, x5, x6, x7, v);
            }
        }
    }
    if (NORM) {
        // One token (TB = 1): its 1 / rms scales the row sums.
        let inv = inverseSqrt(sum_lanes8(ss, lane) / f32(p.k) + p.eps);
        a0 *= inv;
        b0 *= inv;
        c0 *= inv;
        d0 *= inv;
        if (WRITE_XN && first && lane < 8u) {
            let xo = p.x_row0 * p.x_stride4;
            for (var k4 = l8; k4 < p.k / 4u; k4 += 8u) {
                XN[k4] = X[xo + k4] * inv * NORM_G[k4];
            }
        }
    }
    var acc: array<f32, MAX_ACC>;
    let rows = array<vec4<f32>, 8>(a0, a1, b0, b1, c0, vec4<f32>(0.0), d0, vec4<f32>(0.0));
    for (var r = 0u; r < RB; r++) {
        for (var tb = 0u; tb < TB; tb++) {
            acc[r * TB + tb] = rows[r * 2u + tb / 4u][tb % 4u];
        }
    }
    if (n0 < p.n) {
        store(n0, t0, acc);
    }
}

// Invocations per workgroup: 64, or fewer for the XBCAST variant, where a CPU device runs a
// workgroup on one core and a small matrix must still make enough workgroups for every core.
override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(global_invocation_id) gid: vec3<u32>,
) {
    let t0 = wid.z * TB;
    if (XBCAST) {
        let idx = gid.x + gid.y * nwg.x * WG;
        matmul_bcast(idx * RB, t0, lane, idx < sg_size);
        return;
    }
    let chunks = p.k / 32u;
    var acc: array<f32, MAX_ACC>;
    // Each subgroup owns RB rows; its lanes split the chunks and add up with subgroupAdd.
    let groups_per_wg = 64u / sg_size;
    let n0 = ((wid.x + wid.y * nwg.x) * groups_per_wg + sg_id) * RB;
    for (var c = lane; c < chunks; c += sg_size) {
        chunk_dot(n0, c, t0, &acc);
    }
    for (var r = 0u; r < RB; r++) {
        for (var tb = 0u; tb < TB; tb++) {
            acc[r * TB + tb] = subgroupAdd(acc[r * TB + tb]);
        }
    }
    if (lane == 0u && n0 < p.n) {
        store(n0, t0, acc);
    }
}
#else
@compute @workgroup_size(64)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    // Each invocation owns RB rows.
    let n0 = (gid.x + gid.y * nwg.x * 64u) * RB;
    let t0 = wid.z * TB;
    let chunks = p.k / 32u;
    var acc: array<f32, MAX_ACC>;
    for (var c = 0u; c < chunks; c++) {
        chunk_dot(n0, c, t0, &acc);
    }
    if (n0 < p.n) {
        store(n0, t0, acc);
    }
}
#endif
