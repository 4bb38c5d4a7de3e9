// Backward of the rotary embedding on the q and k columns of DQKV rows, in place: the
// transpose of a rotation is the rotation by the opposite angle. Positions start at 0
// (training sequences of SEQ tokens laid end to end). Pairs as in rope_kv.wgsl.

override NEOX: bool = false;

struct Params {
    n_head: u32,
    n_kv_head: u32,
    head_dim: u32,
    t: u32,
    qkv_stride: u32,
    _kv_cap: u32,
    seq: u32,
    _c: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> DQKV: array<f32>;
@group(0) @binding(2) var<storage, read> ROPE: array<vec2<f32>>;

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
    let cs = ROPE[(t % p.seq) * half_d + i];
    var a = 2u * i;
    var b = 2u * i + 1u;
    if (NEOX) {
        a = i;
        b = i + half_d;
    }
    let base = t * p.qkv_stride + slot * p.head_dim;
    let d0 = DQKV[base + a];
    let d1 = DQKV[base + b];
    DQKV[base + a] = d0 * cs.x + d1 * cs.y;
    DQKV[base + b] = -d0 * cs.y + d1 * cs.x;
}
