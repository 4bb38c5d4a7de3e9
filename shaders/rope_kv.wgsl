#include kv_type

// Rotary position embedding of q and k in the fused QKV rows, and the append of k and v to
// the KV cache. One invocation per (token, head, rotation pair). cos/sin come from a table the
// CPU fills in f32 exactly as the reference does (GPU sin/cos are approximate at large angles).
// NEOX pairs (i, i + d/2) (Qwen2 in GGUF); otherwise adjacent pairs (2i, 2i + 1), which is what
// llama.cpp's converter leaves for Llama's permuted q/k.
// Rows are SEQ-token sequences laid end to end (a training batch; inference runs one sequence,
// SEQ = t): sequence b keeps its keys in its own cache slice [b][kv head][pos][dim].

override NEOX: bool = false;

struct Params {
    n_head: u32,
    n_kv_head: u32,
    head_dim: u32,
    t: u32,
    qkv_stride: u32,  // floats per token row of QKV
    kv_cap: u32,      // cache positions per kv head
    seq: u32,         // tokens per sequence
    _pad1: u32,
}

struct Step {
    pos0: u32,        // position of the first token of this batch
    _a: u32,
    _b: u32,
    _c: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read_write> QKV: array<f32>;
@group(0) @binding(3) var<storage, read> ROPE: array<vec2<f32>>;   // [pos][pair] (cos, sin)
@group(0) @binding(4) var<storage, read_write> KC: array<kv_t>;
@group(0) @binding(5) var<storage, read_write> VC: array<kv_t>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let half_d = p.head_dim / 2u;
    let heads = p.n_head + p.n_kv_head;
    let idx = gid.x + gid.y * nwg.x * 64u;
    let i = idx % half_d;
    let slot = (idx / half_d) % heads;
    let t = idx / (half_d * heads);
    if (t >= p.t) {
        return;
    }
    let seq_i = t / p.seq;
    let pos = step.pos0 + t % p.seq;
    let cs = ROPE[pos * half_d + i];
    var a = 2u * i;
    var b = 2u * i + 1u;
    if (NEOX) {
        a = i;
        b = i + half_d;
    }
    let row = t * p.qkv_stride;
    let base = row + slot * p.head_dim;
    let x0 = QKV[base + a];
    let x1 = QKV[base + b];
    let r0 = x0 * cs.x - x1 * cs.y;
    let r1 = x0 * cs.y + x1 * cs.x;
    if (slot < p.n_head) {
        QKV[base + a] = r0;
        QKV[base + b] = r1;
    } else {
        let kvh = slot - p.n_head;
        let c = ((seq_i * p.n_kv_head + kvh) * p.kv_cap + pos) * p.head_dim;
        KC[c + a] = kv_t(r0);
        KC[c + b] = kv_t(r1);
        let v = row + (p.n_head + p.n_kv_head + kvh) * p.head_dim;
        VC[c + a] = kv_t(QKV[v + a]);
        VC[c + b] = kv_t(QKV[v + b]);
    }
}
