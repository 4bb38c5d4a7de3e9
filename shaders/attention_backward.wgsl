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
// CPU-class devices: see main_lanes below. Needs subgroups of 8+ lanes, SEQ a multiple of 8
// and HD4 a multiple of 8; the dispatch is [t / 64, heads (or kv heads), 1].
override CPU_LANES: bool = false;

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

// dk (times the scale) and dv of key row j, kv head kvh, into their DQKV columns.
fn write_dkv(j: u32, kvh: u32, dk: array<vec4<f32>, 32>, dv: array<vec4<f32>, 32>) {
    let row = (j * p.qkv_stride) / 4u;
    let ko = row + (p.n_head + kvh) * HD4;
    let vo = row + (p.n_head + p.n_kv_head + kvh) * HD4;
    for (var i = 0u; i < HD4; i++) {
        DQKV[ko + i] = dk[i] * p.scale;
        DQKV[vo + i] = dv[i];
    }
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

fn main_any(gid: vec3<u32>) {
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
            write_dkv(j, kvh, dk, dv);
        }
    }
}

#if SUBGROUPS
// The CPU-class variant. Its 8 lanes are 8 consecutive tokens (modes 0, 1) or keys (mode 2) of
// one head and one sequence, so the key (or query) row each step reads is the same for all of
// them: lane l loads vec4s l, l + 8, ... of it and the subgroup broadcasts them, instead of
// every lane loading the whole row (loads whose address the compiler cannot prove uniform
// cost one scalar load per lane and component on llvmpipe). Loop bounds are the subgroup's,
// and causality is a select, so every lane walks the same rows.

fn bc8(v: vec4<f32>) -> array<vec4<f32>, 8> {
    return array<vec4<f32>, 8>(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u),
        subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u), subgroupBroadcast(v, 4u),
        subgroupBroadcast(v, 5u), subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u));
}

// own . row, where own is this lane's HD4 vec4s and row (at vec4 `at` of `buf`) is shared.
fn dot8(a: array<vec4<f32>, 8>, b: array<vec4<f32>, 8>) -> f32 {
    let s = a[0] * b[0] + a[1] * b[1] + a[2] * b[2] + a[3] * b[3]
        + a[4] * b[4] + a[5] * b[5] + a[6] * b[6] + a[7] * b[7];
    return s.x + s.y + s.z + s.w;
}

// Octet o (vec4s 8o .. 8o + 8) of a lane's own row.
fn octet(r: array<vec4<f32>, 32>, o: u32) -> array<vec4<f32>, 8> {
    let b = 8u * o;
    return array<vec4<f32>, 8>(r[b], r[b + 1u], r[b + 2u], r[b + 3u], r[b + 4u], r[b + 5u],
        r[b + 6u], r[b + 7u]);
}

fn main_lanes(gid: vec3<u32>, l8: u32) {
    let group = p.n_head / p.n_kv_head;
    let octs = HD4 / 8u;
    let row = gid.x;      // token (modes 0, 1) or key (mode 2)
    if (row >= p.t) {
        return;           // whole subgroups only: t is a multiple of 8
    }
    let rl = row % p.seq;
    let first = rl - l8;  // position of the subgroup's first lane in its sequence
    if (MODE < 2u) {
        let h = gid.y;
        let kvh = h / group;
        let qo = q_at(row, h);
        let oo = o_at(row, h);
        var q: array<vec4<f32>, 32>;
        var d_o: array<vec4<f32>, 32>;
        for (var i = 0u; i < HD4; i++) {
            q[i] = QKV[qo + i];
            d_o[i] = DO[oo + i];
        }
        if (MODE == 0u) {
            var m = -3.0e38;
            var z = 0.0;
            for (var j = 0u; j <= first + 7u; j++) {
                let ko = kv_at(row, kvh, j);
                var s = 0.0;
                for (var o = 0u; o < octs; o++) {
                    s += dot8(octet(q, o), bc8(KC[ko + 8u * o + l8]));
                }
                s *= p.scale;
                let m2 = max(m, s);
                let z2 = z * exp(m - m2) + exp(s - m2);
                let live = j <= rl;
                m = select(m, m2, live);
                z = select(z, z2, live);
            }
            var d = vec4<f32>(0.0);
            for (var i = 0u; i < HD4; i++) {
                d += d_o[i] * O[oo + i];
            }
            STATS[row * p.n_head + h] = vec2<f32>(m + log(z), d.x + d.y + d.z + d.w);
            return;
        }
        let st = STATS[row * p.n_head + h];
        var acc: array<vec4<f32>, 32>;
        for (var j = 0u; j <= first + 7u; j++) {
            let ko = kv_at(row, kvh, j);
            var s = 0.0;
            var dv = 0.0;
            for (var o = 0u; o < octs; o++) {
                s += dot8(octet(q, o), bc8(KC[ko + 8u * o + l8]));
                dv += dot8(octet(d_o, o), bc8(VC[ko + 8u * o + l8]));
            }
            let pj = select(0.0, exp(s * p.scale - st.x), j <= rl);
            let ds = pj * (dv - st.y);
            for (var o = 0u; o < octs; o++) {
                let k = bc8(KC[ko + 8u * o + l8]);
                for (var i = 0u; i < 8u; i++) {
                    acc[8u * o + i] += ds * k[i];
                }
            }
        }
        for (var i = 0u; i < HD4; i++) {
            DQKV[qo + i] = acc[i] * p.scale;
        }
        return;
    }
    // Mode 2: lanes are keys j = row of kv head gid.y; every query of the sequence at or after
    // the subgroup's first key is walked, for each head of the group.
    let kvh = gid.y;
    let ko = kv_at(row, kvh, rl);
    var k: array<vec4<f32>, 32>;
    var v: array<vec4<f32>, 32>;
    for (var i = 0u; i < HD4; i++) {
        k[i] = KC[ko + i];
        v[i] = VC[ko + i];
    }
    let seq0 = row - rl;                  // the sequence's first row
    var dk: array<vec4<f32>, 32>;
    var dv: array<vec4<f32>, 32>;
    for (var g = 0u; g < group; g++) {
        let h = kvh * group + g;
        for (var tl = first; tl < p.seq; tl++) {
            let tt = seq0 + tl;
            let st = STATS[tt * p.n_head + h];
            let qo = q_at(tt, h);
            let oo = o_at(tt, h);
            var s = 0.0;
            var dov = 0.0;
            for (var o = 0u; o < octs; o++) {
                s += dot8(octet(k, o), bc8(QKV[qo + 8u * o + l8]));
                dov += dot8(octet(v, o), bc8(DO[oo + 8u * o + l8]));
            }
            let pj = select(0.0, exp(s * p.scale - st.x), tl >= rl);
            let ds = pj * (dov - st.y);
            for (var o = 0u; o < octs; o++) {
                let qv = bc8(QKV[qo + 8u * o + l8]);
                let dov4 = bc8(DO[oo + 8u * o + l8]);
                for (var i = 0u; i < 8u; i++) {
                    dk[8u * o + i] += ds * qv[i];
                    dv[8u * o + i] += pj * dov4[i];
                }
            }
        }
    }
    write_dkv(row, kvh, dk, dv);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32) {
    if (CPU_LANES) {
        main_lanes(gid, lane % 8u);
        return;
    }
    main_any(gid);
}
#else
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    main_any(gid);
}
#endif

