// Moves whole rows by an index list, one invocation per (row, vec4): picks the rows that
// carry loss before the output head (GATHER: DST[i] = SRC[IDX[row0 + i]]) and puts their
// gradients back (scatter: DST[IDX[row0 + i]] = SRC[i]). An index of 0xffffffff is padding:
// a gathered row is zero, a scattered one is dropped.

override GATHER: bool = true;

struct Params {
    rows: u32,
    d4: u32,     // row length in vec4s
    row0: u32,   // first index used
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> SRC: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> IDX: array<u32>;
@group(0) @binding(3) var<storage, read_write> DST: array<vec4<f32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = gid.x + gid.y * nwg.x * 64u;
    let i = n / p.d4;
    let c = n % p.d4;
    if (i >= p.rows) {
        return;
    }
    let j = IDX[p.row0 + i];
    if (GATHER) {
        var v = vec4<f32>(0.0);
        if (j != 0xffffffffu) {
            v = SRC[j * p.d4 + c];
        }
        DST[i * p.d4 + c] = v;
    } else if (j != 0xffffffffu) {
        DST[j * p.d4 + c] = SRC[i * p.d4 + c];
    }
}
