// Dequantization of one 32-element chunk of a weight row, shared by every kernel that reads
// quantized weights. The including kernel declares `W: array<u32>` (blocks in the GPU layout of
// src/quant.rs: f16 scale word(s) first) and sets WTYPE to the ggml type id. WTYPE is an override
// constant, so the pipeline compiler folds the switch away: one kernel per weight type.

override WTYPE: u32;

const T_F32: u32 = 0u;
const T_F16: u32 = 1u;
const T_Q4_0: u32 = 2u;
const T_Q4_1: u32 = 3u;
const T_Q5_0: u32 = 6u;
const T_Q8_0: u32 = 8u;
const T_Q4_K: u32 = 12u;
const T_Q6_K: u32 = 14u;

// The low (hi = false) or high nibbles of w's four bytes, without a branch: a branch on a
// value the compiler cannot prove uniform runs both sides on SIMD devices, and keeps the
// callers' loops from unrolling.
fn nibbles(w: u32, hi: bool) -> vec4<f32> {
    let s = select(vec4<u32>(0u, 8u, 16u, 24u), vec4<u32>(4u, 12u, 20u, 28u), hi);
    return vec4<f32>((vec4<u32>(w) >> s) & vec4<u32>(0xFu));
}

fn bytes_i8(w: u32) -> vec4<f32> {
    let s = bitcast<vec4<i32>>(vec4<u32>(w << 24u, w << 16u, w << 8u, w)) >> vec4<u32>(24u);
    return vec4<f32>(s);
}

fn byte_of(word: u32, i: u32) -> u32 {
    return (word >> (8u * i)) & 0xFFu;
}

// Q4_K: 6-bit scale and min of sub-block j from the 12 scale bytes at W[b + 1 .. b + 4].
fn k4_scale_min(b: u32, j: u32) -> vec2<f32> {
    let s0 = W[b + 1u];
    let s1 = W[b + 2u];
    let s2 = W[b + 3u];
    var sc: u32;
    var mn: u32;
    if (j < 4u) {
        sc = byte_of(s0, j) & 63u;
        mn = byte_of(s1, j) & 63u;
    } else {
        let q = byte_of(s2, j - 4u);
        sc = (q & 0xFu) | ((byte_of(s0, j - 4u) >> 6u) << 4u);
        mn = (q >> 4u) | ((byte_of(s1, j - 4u) >> 6u) << 4u);
    }
    return vec2<f32>(f32(sc), f32(mn));
}

// Values 4i .. 4i+3 of chunk `sub` (32 values) of the block starting at word `b`.
// Returning one vec4 (not the chunk as an array) keeps everything in registers on compilers
// that do not promote local arrays (llvmpipe among them); the per-chunk scale loads repeat
// but are common subexpressions once inlined and unrolled.
fn dq4(b: u32, sub: u32, i: u32) -> vec4<f32> {
    switch WTYPE {
        case 0u: { // F32: 32 words per "block"
            let o = b + 4u * i;
            return bitcast<vec4<f32>>(vec4<u32>(W[o], W[o + 1u], W[o + 2u], W[o + 3u]));
        }
        case 1u: { // F16: 16 words
            return vec4<f32>(unpack2x16float(W[b + 2u * i]), unpack2x16float(W[b + 2u * i + 1u]));
        }
        case 2u: { // Q4_0: d | 4 words of nibbles (low = elements 0..15, high = 16..31)
            let d = unpack2x16float(W[b]).x;
            return (nibbles(W[b + 1u + (i & 3u)], i >= 4u) - 8.0) * d;
        }
        case 3u: { // Q4_1: d, m | nibbles
            let dm = unpack2x16float(W[b]);
            return nibbles(W[b + 1u + (i & 3u)], i >= 4u) * dm.x + dm.y;
        }
        case 6u: { // Q5_0: d | qh (bit j = 5th bit of element j) | nibbles
            let d = unpack2x16float(W[b]).x;
            let qh = W[b + 1u];
            let w = W[b + 2u + (i & 3u)];
            let sh = vec4<u32>(0u, 1u, 2u, 3u) + 4u * i;
            let h = vec4<f32>(((vec4<u32>(qh) >> sh) & vec4<u32>(1u)) << vec4<u32>(4u));
            return (nibbles(w, i >= 4u) + h - 16.0) * d;
        }
        case 8u: { // Q8_0: d | 8 words of int8
            return bytes_i8(W[b + 1u + i]) * unpack2x16float(W[b]).x;
        }
        case 12u: { // Q4_K: d, dmin | 3 words of packed 6-bit scales | 32 words of nibbles
            let dm = unpack2x16float(W[b]);
            let sm = k4_scale_min(b, sub);
            let w = W[b + 4u + 8u * (sub / 2u) + i];
            return nibbles(w, (sub & 1u) == 1u) * (dm.x * sm.x) - dm.y * sm.y;
        }
        case 14u: { // Q6_K: d | ql (32 words) | qh (16 words) | int8 scales (4 words)
            let d = unpack2x16float(W[b]).x;
            let h = sub / 4u;
            let k = sub % 4u;
            let sw = W[b + 49u + 2u * h + (k / 2u)];
            // Scales h*8 + 2k + (0 | 1): the two 16-element halves of this chunk.
            let shift = 24u - 16u * (k & 1u) - 8u * (i / 4u);
            let s = f32(bitcast<i32>(sw << shift) >> 24u);
            let lw = W[b + 1u + 16u * h + 8u * (k & 1u) + i];
            let lo = nibbles(lw, k >= 2u);
            let hw = W[b + 33u + 8u * h + i] >> (2u * k);
            let hb = vec4<f32>(vec4<u32>(hw, hw >> 8u, hw >> 16u, hw >> 24u) & vec4<u32>(3u));
            return (lo + hb * 16.0 - 32.0) * (d * s);
        }
        default: {
            return vec4<f32>(0.0);
        }
    }
}
