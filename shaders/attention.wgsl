#include kv_type

// Causal grouped-query attention over the KV cache, one invocation per (token, head), with an
// online softmax (running max and sum) so scores are never stored. No barriers, no shared
// memory: on software devices those cost more than they save. Rows are SEQ-token sequences
// laid end to end, each with its own cache slice (see rope_kv.wgsl).

override HD4: u32 = 16u;   // head_dim / 4, at most 32

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
@group(0) @binding(2) var<storage, read> QKV: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> KC: array<vec4<kv_t>>;
@group(0) @binding(4) var<storage, read> VC: array<vec4<kv_t>>;
@group(0) @binding(5) var<storage, read_write> OUT: array<vec4<f32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let h = gid.x % p.n_head;
    let t = gid.x / p.n_head;
    if (t >= p.t) {
        return;
    }
    let kvh = h / (p.n_head / p.n_kv_head);
    var q: array<vec4<f32>, 32>;
    let qo = (t * p.qkv_stride) / 4u + h * HD4;
    for (var i = 0u; i < HD4; i++) {
        q[i] = QKV[qo + i] * p.scale;
    }
    var acc: array<vec4<f32>, 32>;
    var m = -3.0e38;
    var l = 0.0;
    let n_keys = step.pos0 + t % p.seq + 1u;
    let base = ((t / p.seq) * p.n_kv_head + kvh) * p.kv_cap * HD4;
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
    let oo = (t * p.out_stride) / 4u + h * HD4;
    let inv = 1.0 / l;
    for (var i = 0u; i < HD4; i++) {
        OUT[oo + i] = acc[i] * inv;
    }
}
