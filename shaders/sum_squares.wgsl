// OUT[SLOT] = sum of X[i]^2 over a whole tensor, in one workgroup: the pieces of the global
// gradient norm used for clipping. A NaN or infinity anywhere makes the sum non-finite, which
// is how the trainer detects a step to skip.

struct Params {
    n: u32,
    slot: u32,
    _a: u32,
    _b: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> OUT: array<f32>;

var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32) {
    var s = 0.0;
    for (var i = li; i < p.n; i += 256u) {
        let v = X[i];
        s += v * v;
    }
    red[li] = s;
    workgroupBarrier();
    for (var k = 128u; k > 0u; k >>= 1u) {
        if (li < k) {
            red[li] = red[li] + red[li + k];
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        OUT[p.slot] = red[0];
    }
}
