// Backward of causal grouped-query attention for training sequences of SEQ tokens laid end to
// end, each starting at position 0 with its own cache slice (see rope_kv.wgsl), in three modes (override MODE), one invocation per (token, head) or (key, kv head):
//   0: STATS[t, h] = (logsumexp_j s_tj, D_th = dO_th . O_th)       s_tj = scale * q_th . k_j
//   1: dq_th = scale * sum_{j<=t} P_tj (dO_th . v_j - D_th) k_j     P_tj = exp(s_tj - lse_th)
//   2: dk_j = scale * sum_{h in group, t>=j} P_tj (dO_th . v_j - D_th) q_th,
//      dv_j = sum_{h in group, t>=j} P_tj dO_th
// q comes from the (rotated) QKV rows, k and v from the cache layout [kv head][pos][dim] the
// forward wrote; dq, dk, dv go to the q, k, v columns of DQKV rows (same layout as QKV).

override HD4: u32 = 16u;
override MODE: u32;

struct Params {
    n_head: u32,
    n_kv_head: u32,
    t: u32,
    qkv_stride: u32,  // floats per QKV / DQKV row
    kv_cap: u32,
    scale: f32,
    seq: u32,
    _b: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> QKV: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> KC: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> VC: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> O: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> DO: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> STATS: array<vec2<f32>>;
@group(0) @binding(7) var<storage, read_write> DQKV: array<vec4<f32>>;

fn q_at(t: u32, h: u32) -> u32 {
    return (t * p.qkv_stride) / 4u + h * HD4;
}

// Key j of the sequence that holds query row `row`.
fn kv_at(row: u32, kvh: u32, j: u32) -> u32 {
    return (((row / p.seq) * p.n_kv_head + kvh) * p.kv_cap + j) * HD4;
}

fn o_at(t: u32, h: u32) -> u32 {
    return t * p.n_head * HD4 + h * HD4;
}

fn dot_qk(t: u32, h: u32, kvh: u32, j: u32) -> f32 {
    var s = vec4<f32>(0.0);
    let qo = q_at(t, h);
    let ko = kv_at(t, kvh, j);
    for (var i = 0u; i < HD4; i++) {
        s += QKV[qo + i] * KC[ko + i];
    }
    return (s.x + s.y + s.z + s.w) * p.scale;
}

fn dot_dov(t: u32, h: u32, kvh: u32, j: u32) -> f32 {
    var s = vec4<f32>(0.0);
    let oo = o_at(t, h);
    let vo = kv_at(t, kvh, j);
    for (var i = 0u; i < HD4; i++) {
        s += DO[oo + i] * VC[vo + i];
    }
    return s.x + s.y + s.z + s.w;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let group = p.n_head / p.n_kv_head;
    switch MODE {
        case 0u: {
            let h = gid.x % p.n_head;
            let t = gid.x / p.n_head;
            if (t >= p.t) {
                return;
            }
            let kvh = h / group;
            var m = -3.0e38;
            let last = t % p.seq;
            for (var j = 0u; j <= last; j++) {
                m = max(m, dot_qk(t, h, kvh, j));
            }
            var z = 0.0;
            for (var j = 0u; j <= last; j++) {
                z += exp(dot_qk(t, h, kvh, j) - m);
            }
            var d = vec4<f32>(0.0);
            let oo = o_at(t, h);
            for (var i = 0u; i < HD4; i++) {
                d += DO[oo + i] * O[oo + i];
            }
            STATS[t * p.n_head + h] = vec2<f32>(m + log(z), d.x + d.y + d.z + d.w);
        }
        case 1u: {
            let h = gid.x % p.n_head;
            let t = gid.x / p.n_head;
            if (t >= p.t) {
                return;
            }
            let kvh = h / group;
            let st = STATS[t * p.n_head + h];
            var acc: array<vec4<f32>, 32>;
            for (var j = 0u; j <= t % p.seq; j++) {
                let pj = exp(dot_qk(t, h, kvh, j) - st.x);
                let ds = pj * (dot_dov(t, h, kvh, j) - st.y);
                let ko = kv_at(t, kvh, j);
                for (var i = 0u; i < HD4; i++) {
                    acc[i] += ds * KC[ko + i];
                }
            }
            let qo = q_at(t, h);
            for (var i = 0u; i < HD4; i++) {
                DQKV[qo + i] = acc[i] * p.scale;
            }
        }
        default: {
            let kvh = gid.x % p.n_kv_head;
            let j = gid.x / p.n_kv_head;
            if (j >= p.t) {
                return;
            }
            let jl = j % p.seq;
            let seq_end = min(j - jl + p.seq, p.t);
            var dk: array<vec4<f32>, 32>;
            var dv: array<vec4<f32>, 32>;
            for (var g = 0u; g < group; g++) {
                let h = kvh * group + g;
                for (var t = j; t < seq_end; t++) {
                    let st = STATS[t * p.n_head + h];
                    let pj = exp(dot_qk(t, h, kvh, jl) - st.x);
                    let ds = pj * (dot_dov(t, h, kvh, jl) - st.y);
                    let qo = q_at(t, h);
                    let oo = o_at(t, h);
                    for (var i = 0u; i < HD4; i++) {
                        dk[i] += ds * QKV[qo + i];
                        dv[i] += pj * DO[oo + i];
                    }
                }
            }
            let row = (j * p.qkv_stride) / 4u;
            let ko = row + (p.n_head + kvh) * HD4;
            let vo = row + (p.n_head + p.n_kv_head + kvh) * HD4;
            for (var i = 0u; i < HD4; i++) {
                DQKV[ko + i] = dk[i] * p.scale;
                DQKV[vo + i] = dv[i];
            }
        }
    }
}
