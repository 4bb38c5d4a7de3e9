#include kv_type

// Causal grouped-query attention over the KV cache, one invocation per (token, head), with an
// online softmax (running max and sum) so scores are never stored. No barriers, no shared
// memory: on software devices those cost more than they save. Rows are SEQ-token sequences
// laid end to end, each with its own cache slice (see rope_kv.wgsl).
//
// ROPE (one new token per sequence: decode) also does rope_kv's work, saving its dispatch: each
// invocation rotates its q (written back, as rope_kv leaves it), rotates its group's new k,
// scores it after the cached keys, and the group's first head appends k and v to the cache.
// Other invocations only read cache positions before the new token, so no one waits on a write.

override HD4: u32 = 16u;   // head_dim / 4, at most 32
override ROPE: bool = false;
override NEOX: bool = false;
// Invocations per workgroup. A CPU device runs a workgroup on one core, one subgroup of 8 lanes
// after another: decoding, SmolLM2's 9 heads in one workgroup of 64 made two passes on one core
// while the other idled; workgroups of 8 put each pass on its own core.
override WG: u32 = 64u;
// GROUPED (CPU-class decode with ROPE, WG = one subgroup of 8 lanes): one workgroup per
// (sequence, KV head) serves the G query heads that share it, so each cached key and value is
// loaded once for the group instead of once per head (loads are what a CPU device pays for),
// and lane l holds vec4s l, l + 8, ... of every head vector: q and the accumulators stay in
// registers, and each score's partial dot products add up across the lanes.
override GROUPED: bool = false;
override G: u32 = 1u;      // query heads per KV head (GROUPED), at most 8
override GV: u32 = 1u;     // vec4s of a head vector per lane (GROUPED): HD4 / 8, at most 4

struct Params {
    n_head: u32,
    n_kv_head: u32,
    t: u32,
    qkv_stride: u32,
    kv_cap: u32,
    out_stride: u32,
    scale: f32,
    seq: u32,
}

struct Step {
    pos0: u32,
    _a: u32,
    _b: u32,
    _c: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read_write> QKV: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> KC: array<vec4<kv_t>>;
@group(0) @binding(4) var<storage, read_write> VC: array<vec4<kv_t>>;
@group(0) @binding(5) var<storage, read_write> OUT: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> ROPE_CS: array<vec2<f32>>; // [pos][pair] (cos, sin)

// Vec4 i of the head vector at vec4 o of QKV rotated for position pos, with rope_kv's pairs
// and formula.
fn rotated(o: u32, i: u32, pos: u32) -> vec4<f32> {
    let tb = pos * 2u * HD4;
    if (NEOX) {
        // Element e pairs with e + head_dim / 2: vec4 i with vec4 i +- HD4 / 2.
        let h4 = HD4 / 2u;
        let l = i % h4;
        let c0 = ROPE_CS[tb + 4u * l];
        let c1 = ROPE_CS[tb + 4u * l + 1u];
        let c2 = ROPE_CS[tb + 4u * l + 2u];
        let c3 = ROPE_CS[tb + 4u * l + 3u];
        let c = vec4<f32>(c0.x, c1.x, c2.x, c3.x);
        let s = vec4<f32>(c0.y, c1.y, c2.y, c3.y);
        let a = QKV[o + l];
        let b = QKV[o + l + h4];
        if (i < h4) {
            return a * c - b * s;
        }
        return a * s + b * c;
    }
    let v = QKV[o + i];
    let c0 = ROPE_CS[tb + 2u * i];
    let c1 = ROPE_CS[tb + 2u * i + 1u];
    return vec4<f32>(v.x * c0.x - v.y * c0.y, v.x * c0.y + v.y * c0.x,
        v.z * c1.x - v.w * c1.y, v.z * c1.y + v.w * c1.x);
}

// One invocation per (token, head): id = token * n_head + head.
fn per_head(id: u32) {
    let h = id % p.n_head;
    let t = id / p.n_head;
    if (t >= p.t) {
        return;
    }
    let kvh = h / (p.n_head / p.n_kv_head);
    var q: array<vec4<f32>, 32>;
    let qo = (t * p.qkv_stride) / 4u + h * HD4;
    let pos = step.pos0 + t % p.seq;
    let base = ((t / p.seq) * p.n_kv_head + kvh) * p.kv_cap * HD4;
    var n_keys = pos + 1u;
    // ROPE: the new key's score (it comes last, after the cached keys, as without ROPE).
    var s_new = 0.0;
    let ko_new = (t * p.qkv_stride) / 4u + (p.n_head + kvh) * HD4;
    let vo_new = ko_new + p.n_kv_head * HD4;
    if (ROPE) {
        for (var i = 0u; i < HD4; i++) {
            q[i] = rotated(qo, i, pos);
        }
        let c = base + pos * HD4;
        let owner = h % (p.n_head / p.n_kv_head) == 0u;
        var s4 = vec4<f32>(0.0);
        for (var i = 0u; i < HD4; i++) {
            let k = rotated(ko_new, i, pos);
            if (owner) {
                KC[c + i] = vec4<kv_t>(k);
                VC[c + i] = vec4<kv_t>(QKV[vo_new + i]);
            }
            QKV[qo + i] = q[i];
            q[i] *= p.scale;
            s4 += q[i] * kv_round(k);
        }
        s_new = s4.x + s4.y + s4.z + s4.w;
        n_keys = pos;
    } else {
        for (var i = 0u; i < HD4; i++) {
            q[i] = QKV[qo + i] * p.scale;
        }
    }
    var acc: array<vec4<f32>, 32>;
    var m = -3.0e38;
    var l = 0.0;
    for (var j = 0u; j < n_keys; j++) {
        let ko = base + j * HD4;
        var s4 = vec4<f32>(0.0);
        for (var i = 0u; i < HD4; i++) {
            s4 += q[i] * vec4<f32>(KC[ko + i]);
        }
        let s = s4.x + s4.y + s4.z + s4.w;
        let m_new = max(m, s);
        let corr = exp(m - m_new);
        let e = exp(s - m_new);
        l = l * corr + e;
        for (var i = 0u; i < HD4; i++) {
            acc[i] = acc[i] * corr + e * vec4<f32>(VC[ko + i]);
        }
        m = m_new;
    }
    if (ROPE) {
        let m_new = max(m, s_new);
        let corr = exp(m - m_new);
        let e = exp(s_new - m_new);
        l = l * corr + e;
        for (var i = 0u; i < HD4; i++) {
            acc[i] = acc[i] * corr + e * kv_round(QKV[vo_new + i]);
        }
    }
    let oo = (t * p.out_stride) / 4u + h * HD4;
    let inv = 1.0 / l;
    for (var i = 0u; i < HD4; i++) {
        OUT[oo + i] = acc[i] * inv;
    }
}

#if SUBGROUPS
// GROUPED: one query head's part of the work, held by each lane of the subgroup: its vec4s
// lane + 8 v of the head vector (v < GV), and its running softmax (max, sum, accumulators).
// The group's heads are separate variables (h0 .. h7 in `grouped`), not an array indexed by
// head: llvmpipe does not unroll the head loop around the softmax, and a local array indexed
// by a loop counter is lowered to a chain of compares and branches on every access.
struct HeadPart {
    q: array<vec4<f32>, 4>,
    acc: array<vec4<f32>, 4>,
    m: f32,
    l: f32,
}

// Head g of KV head kvh's group (query vec4s at row + ...), rotated for pos and written back
// as rope_kv leaves it, then scaled for the scores. All of this lane's vec4s of the head are
// rotated before any is written back: with NEOX, vec4 i pairs with i +- HD4 / 2, and with HD4
// a multiple of 16 both belong to this lane, so no lane reads what another writes back.
fn head_part(row: u32, kvh: u32, g: u32, lane: u32, pos: u32) -> HeadPart {
    var h: HeadPart;
    let qo = row + (kvh * G + g) * HD4;
    for (var v = 0u; v < GV; v++) {
        h.q[v] = rotated(qo, lane + 8u * v, pos);
    }
    for (var v = 0u; v < GV; v++) {
        QKV[qo + lane + 8u * v] = h.q[v];
        h.q[v] *= p.scale;
    }
    h.m = -3.0e38;
    h.l = 0.0;
    return h;
}

// Scores key k for head h (each score's partial dot products add up across the lanes) and
// folds value val into its running softmax.
fn head_step(h: ptr<function, HeadPart>, k: array<vec4<f32>, 4>, val: array<vec4<f32>, 4>) {
    var d = vec4<f32>(0.0);
    for (var v = 0u; v < GV; v++) {
        d += (*h).q[v] * k[v];
    }
    let s = subgroupAdd(d.x + d.y + d.z + d.w);
    let m_new = max((*h).m, s);
    let corr = exp((*h).m - m_new);
    let e = exp(s - m_new);
    (*h).l = (*h).l * corr + e;
    for (var v = 0u; v < GV; v++) {
        (*h).acc[v] = (*h).acc[v] * corr + e * val[v];
    }
    (*h).m = m_new;
}

// Head g's output (head part h) for token t.
fn head_out(h: HeadPart, t: u32, kvh: u32, g: u32, lane: u32) {
    let oo = (t * p.out_stride) / 4u + (kvh * G + g) * HD4;
    let inv = 1.0 / h.l;
    for (var v = 0u; v < GV; v++) {
        OUT[oo + lane + 8u * v] = h.acc[v] * inv;
    }
}

// The GROUPED decode step of KV head kvh of token t (one new token per sequence), by the
// subgroup's lane `lane`: rope, cache append and attention as per_head does them with ROPE.
fn grouped(t: u32, kvh: u32, lane: u32) {
    let pos = step.pos0;
    let base = (t * p.n_kv_head + kvh) * p.kv_cap * HD4;
    let row = (t * p.qkv_stride) / 4u;
    let ko_new = row + (p.n_head + kvh) * HD4;
    let vo_new = ko_new + p.n_kv_head * HD4;
    // The group's heads (G is at most 8; the heads past G are never touched).
    var h0 = head_part(row, kvh, 0u, lane, pos);
    var h1: HeadPart;
    var h2: HeadPart;
    var h3: HeadPart;
    var h4: HeadPart;
    var h5: HeadPart;
    var h6: HeadPart;
    var h7: HeadPart;
    if (G > 1u) {
        h1 = head_part(row, kvh, 1u, lane, pos);
    }
    if (G > 2u) {
        h2 = head_part(row, kvh, 2u, lane, pos);
    }
    if (G > 3u) {
        h3 = head_part(row, kvh, 3u, lane, pos);
    }
    if (G > 4u) {
        h4 = head_part(row, kvh, 4u, lane, pos);
    }
    if (G > 5u) {
        h5 = head_part(row, kvh, 5u, lane, pos);
    }
    if (G > 6u) {
        h6 = head_part(row, kvh, 6u, lane, pos);
    }
    if (G > 7u) {
        h7 = head_part(row, kvh, 7u, lane, pos);
    }
    // The new key (rotated) and value, appended to the cache and rounded as it holds them.
    var kn: array<vec4<f32>, 4>;
    var vn: array<vec4<f32>, 4>;
    let c = base + pos * HD4;
    for (var v = 0u; v < GV; v++) {
        let i = lane + 8u * v;
        kn[v] = rotated(ko_new, i, pos);
        vn[v] = QKV[vo_new + i];
        KC[c + i] = vec4<kv_t>(kn[v]);
        VC[c + i] = vec4<kv_t>(vn[v]);
        kn[v] = kv_round(kn[v]);
        vn[v] = kv_round(vn[v]);
    }
    // The cached keys, then the new one (as per_head orders them).
    for (var j = 0u; j <= pos; j++) {
        var k = kn;
        var val = vn;
        if (j < pos) {
            let ko = base + j * HD4;
            for (var v = 0u; v < GV; v++) {
                k[v] = vec4<f32>(KC[ko + lane + 8u * v]);
                val[v] = vec4<f32>(VC[ko + lane + 8u * v]);
            }
        }
        head_step(&h0, k, val);
        if (G > 1u) {
            head_step(&h1, k, val);
        }
        if (G > 2u) {
            head_step(&h2, k, val);
        }
        if (G > 3u) {
            head_step(&h3, k, val);
        }
        if (G > 4u) {
            head_step(&h4, k, val);
        }
        if (G > 5u) {
            head_step(&h5, k, val);
        }
        if (G > 6u) {
            head_step(&h6, k, val);
        }
        if (G > 7u) {
            head_step(&h7, k, val);
        }
    }
    head_out(h0, t, kvh, 0u, lane);
    if (G > 1u) {
        head_out(h1, t, kvh, 1u, lane);
    }
    if (G > 2u) {
        head_out(h2, t, kvh, 2u, lane);
    }
    if (G > 3u) {
        head_out(h3, t, kvh, 3u, lane);
    }
    if (G > 4u) {
        head_out(h4, t, kvh, 4u, lane);
    }
    if (G > 5u) {
        head_out(h5, t, kvh, 5u, lane);
    }
    if (G > 6u) {
        head_out(h6, t, kvh, 6u, lane);
    }
    if (G > 7u) {
        head_out(h7, t, kvh, 7u, lane);
    }
}

@compute @workgroup_size(WG)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    if (GROUPED) {
        // One workgroup (one subgroup) per (token, KV head).
        let t = wid.x / p.n_kv_head;
        if (t < p.t) {
            grouped(t, wid.x % p.n_kv_head, lane);
        }
        return;
    }
    per_head(gid.x);
}
#else
@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    per_head(gid.x);
}
#endif
