// Y[t] = row TOKENS[t] of a quantized embedding matrix, for the rows held by this piece
// (a large matrix is split into pieces that each fit one storage binding).

#include dequant


struct Params {
    d: u32,          // row length
    t: u32,          // tokens
    row0: u32,       // first matrix row in this piece
    rows: u32,       // rows in this piece
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> W: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> TOKENS: array<u32>;
@group(0) @binding(3) var<storage, read_write> Y: array<vec4<f32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    let chunks = p.d / 32u;
    let c = idx % chunks;
    let t = idx / chunks;
    if (t >= p.t) {
        return;
    }
    let tok = TOKENS[t];
    if (tok < p.row0 || tok >= p.row0 + p.rows) {
        return;
    }
    let r = wrow(tok - p.row0, p.d);
    let o = t * (p.d / 4u) + c * 8u;
    for (var i = 0u; i < 8u; i++) {
        Y[o + i] = dq4(r, c / SUBS, c % SUBS, i);
    }
}
