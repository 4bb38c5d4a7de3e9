// The K largest values of one row and their indices (unordered; the CPU sorts the K), so a
// sampler reads back K pairs instead of the whole vocabulary. Exact radix select in one
// workgroup: four 8-bit histogram passes over order-preserving keys find the K-th largest key,
// then one pass gathers everything above it plus as many equal to it as are still needed.

struct Params {
    n: u32,
    k: u32,
    row_offset: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> OUT_V: array<f32>;
@group(0) @binding(3) var<storage, read_write> OUT_I: array<u32>;

var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> chosen: vec2<u32>;   // (digit, still needed)
var<workgroup> n_above: atomic<u32>;
var<workgroup> n_equal: atomic<u32>;

fn key(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    if ((b & 0x80000000u) != 0u) {
        return ~b;
    }
    return b | 0x80000000u;
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32) {
    var prefix = 0u;
    var mask = 0u;
    var needed = p.k;
    for (var pass_i = 0u; pass_i < 4u; pass_i++) {
        let shift = 24u - 8u * pass_i;
        atomicStore(&hist[li], 0u);
        workgroupBarrier();
        for (var i = li; i < p.n; i += 256u) {
            let k = key(X[p.row_offset + i]);
            if ((k & mask) == prefix) {
                atomicAdd(&hist[(k >> shift) & 255u], 1u);
            }
        }
        workgroupBarrier();
        if (li == 0u) {
            var cum = 0u;
            var digit = 0u;
            var left = needed;
            for (var b = 255i; b >= 0i; b--) {
                let h = atomicLoad(&hist[u32(b)]);
                if (cum + h >= needed) {
                    digit = u32(b);
                    left = needed - cum;
                    break;
                }
                cum += h;
            }
            chosen = vec2<u32>(digit, left);
        }
        workgroupBarrier();
        let c = workgroupUniformLoad(&chosen);
        prefix |= c.x << shift;
        mask |= 255u << shift;
        needed = c.y;
    }
    if (li == 0u) {
        atomicStore(&n_above, 0u);
        atomicStore(&n_equal, 0u);
    }
    workgroupBarrier();
    let above_total = p.k - needed;
    for (var i = li; i < p.n; i += 256u) {
        let v = X[p.row_offset + i];
        let k = key(v);
        if (k > prefix) {
            let slot = atomicAdd(&n_above, 1u);
            OUT_V[slot] = v;
            OUT_I[slot] = i;
        } else if (k == prefix) {
            let e = atomicAdd(&n_equal, 1u);
            if (e < needed) {
                OUT_V[above_total + e] = v;
                OUT_I[above_total + e] = i;
            }
        }
    }
}
