// Dequantization of one 32-element chunk of a weight row, shared by every kernel that reads
// quantized weights. The including kernel declares `W: array<vec4<u32>>` in the GPU layout of
// src/quant.rs (`to_gpu_layout`, then `to_panels`): each row holds the quants of all its
// blocks as whole 16-byte vectors, then the blocks' scale words, padded to a vector; panels of
// PANEL rows interleave them block by block (`wrow`). Quants are read with wide loads: on
// GPUs 16-byte loads coalesce; on CPU-class devices (llvmpipe) a load costs per lane and 32-bit
// word whatever its width, so there the words loaded are what counts. WTYPE (the ggml type id)
// and the shape constants are overrides, so the pipeline compiler folds the switch: one kernel
// per type.

override WTYPE: u32;
override SUBS: u32;       // 32-element chunks per block (1, or 8 for k-quants)
override QV: u32;         // vec4s of quants per block
override SCALES_X2: u32;  // scale words per two blocks

const T_F32: u32 = 0u;
const T_F16: u32 = 1u;
const T_Q4_0: u32 = 2u;
const T_Q4_1: u32 = 3u;
const T_Q5_0: u32 = 6u;
const T_Q5_1: u32 = 7u;
const T_Q8_0: u32 = 8u;
const T_Q2_K: u32 = 10u;
const T_Q3_K: u32 = 11u;
const T_Q4_K: u32 = 12u;
const T_Q5_K: u32 = 13u;
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

// The row-panel layout (PANEL rows, src/quant.rs `to_panels`): PANEL consecutive rows are
// interleaved block by block, so a block's quants for all the panel's rows lie together, then
// their scale vectors, vector by vector. PANEL is 1 (plain rows) on GPUs, whose lanes read a
// row's consecutive blocks together; on CPU-class devices a subgroup owns a panel's rows and
// walks their blocks in step, so it streams one region instead of one per row.
override PANEL: u32 = 1u;

// One weight row: the vec4 of its block 0's quants and the step to the next block's, and the
// vec4 of its scale vector 0 and the step to the next.
struct WRow {
    q: u32,
    q_step: u32,
    s: u32,
    s_step: u32,
}

// vec4s per row of k values; the same formula as GgmlType::gpu_row_vec4s.
fn row_vec4s(k: u32) -> u32 {
    let nb = k / (32u * SUBS);
    return nb * QV + ((nb * SCALES_X2 + 1u) / 2u + 3u) / 4u;
}

// Row n of a matrix whose rows hold k values.
fn wrow(n: u32, k: u32) -> WRow {
    let blocks = k / (32u * SUBS);
    let panel = (n / PANEL) * PANEL * row_vec4s(k);
    let i = n % PANEL;
    return WRow(panel + i * QV, PANEL * QV, panel + PANEL * blocks * QV + i, PANEL);
}

// The vec4 at offset o of block j's quants.
fn quant_vec(r: WRow, j: u32, o: u32) -> u32 {
    return r.q + j * r.q_step + o;
}

// Word w of the row's scale region.
// (W[a][b] compiles to a scalar load: llvmpipe pays per 32-bit component loaded, so a scale
// word is loaded alone.)
fn scale_word(r: WRow, w: u32) -> u32 {
    return W[r.s + (w / 4u) * r.s_step][w % 4u];
}

// Word i % 4 of the quant vector at a. The vector is loaded whole (a let of the load, then an
// index): the chunk uses all of it, and one 16-byte load is what GPUs coalesce best.
fn qword(a: u32, i: u32) -> u32 {
    let v = W[a];
    return v[i % 4u];
}

// Q4_K: 6-bit scale and min of sub-block j from the 12 scale bytes in sv.yzw.
fn k4_scale_min(sv: vec4<u32>, j: u32) -> vec2<f32> {
    let s0 = sv.y;
    let s1 = sv.z;
    let s2 = sv.w;
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

// Types whose 32-value chunk shares one scale and one offset: value = raw * d + m, with
// `raw` the chunk's small integers (dq4_raw) and (d, m) from dq_scale. A matmul can then take
// the dot product with the integers and scale it once per chunk (d * sum(raw * x) + m * sum(x))
// instead of scaling all 32 values: on a CPU device every vector operation costs, and these
// are the types of nearly every model we load. (The same list: GgmlType::one_scale_per_chunk.)
fn factored() -> bool {
    return WTYPE == T_Q4_0 || WTYPE == T_Q4_1 || WTYPE == T_Q5_0 || WTYPE == T_Q5_1
        || WTYPE == T_Q8_0 || WTYPE == T_Q4_K || WTYPE == T_Q5_K;
}

// The factored types' scale words: block j's first is word j * SCALES_X2 / 2 of the row's
// scale region (a k-quant block's are the whole vector j).
fn scale_word_index(j: u32) -> u32 {
    return j * SCALES_X2 / 2u;
}

fn scale_vec_index(r: WRow, j: u32) -> u32 {
    return r.s + (scale_word_index(j) / 4u) * r.s_step;
}

// Whether a decode matmul loads the scale vector once, at the first chunk it serves, and
// keeps it for the chunks after: llvmpipe pays per 32-bit word a lane loads. A k-quant chunk's
// scale and min need its block's whole vector (4 words a chunk otherwise; measured Q4_K
// mat-vec 30-35 -> 17-23 ms per 16 launches); Q4_0 and Q8_0 keep two blocks' scales to a word,
// so a vector serves 8 chunks for 4 words instead of 8. The one-word-per-block types would
// load as many words and hold them in registers across chunks.
fn reuse_scale_vec() -> bool {
    return factored() && (SUBS > 1u || SCALES_X2 == 1u);
}

// Whether chunk `sub` of block j is the first that its scale vector serves (reuse_scale_vec).
fn scale_vec_starts(j: u32, sub: u32) -> bool {
    return sub == 0u && scale_word_index(j) % 4u == 0u && (j * SCALES_X2) % 2u == 0u;
}

// (d, m) of chunk `sub` of block j, for the factored types, from sv: the scale vector that
// holds block j's words, or for the one-word types that word in every component.
fn dq_scale_in(sv: vec4<u32>, j: u32, sub: u32) -> vec2<f32> {
    let w = sv[scale_word_index(j) % 4u];
    switch WTYPE {
        case 2u: { // Q4_0: (q - 8) * d, two f16 d to a word
            let d = unpack2x16float(w)[j % 2u];
            return vec2<f32>(d, -8.0 * d);
        }
        case 3u, 7u: { // Q4_1: q * d + m; Q5_1: the same | qh
            return unpack2x16float(w);
        }
        case 6u: { // Q5_0: (q - 16) * d | qh
            let d = unpack2x16float(w).x;
            return vec2<f32>(d, -16.0 * d);
        }
        case 8u: { // Q8_0: q * d, two f16 d to a word
            return vec2<f32>(unpack2x16float(w)[j % 2u], 0.0);
        }
        case 12u, 13u: { // Q4_K, Q5_K: q * (d * scale) - dmin * min
            let dm = unpack2x16float(sv.x);
            let sm = k4_scale_min(sv, sub);
            return vec2<f32>(dm.x * sm.x, -dm.y * sm.y);
        }
        default: {
            return vec2<f32>(1.0, 0.0);
        }
    }
}

// (d, m) of chunk `sub` of block j of row r, for the factored types: one scalar load, or the
// k-quants' vector.
fn dq_scale(r: WRow, j: u32, sub: u32) -> vec2<f32> {
    if (SUBS > 1u) {
        return dq_scale_in(W[scale_vec_index(r, j)], j, sub);
    }
    return dq_scale_in(vec4<u32>(scale_word(r, scale_word_index(j))), j, sub);
}

// The quant word holding nibbles 4i .. 4i+3 of chunk `sub` of block j of row r, and whether
// they are its high nibbles: Q4_0/Q4_1/Q5_0/Q5_1 keep a block's 32 values in one vec4 (low
// nibbles 0..15, high 16..31); Q4_K/Q5_K keep chunk pair (2m, 2m + 1) in two vec4s (the even
// chunk in the low nibbles).
struct NibbleWord {
    w: u32,
    hi: bool,
}

fn nibble_word(r: WRow, j: u32, sub: u32, i: u32) -> NibbleWord {
    if (SUBS == 1u) {
        return NibbleWord(qword(quant_vec(r, j, 0u), i), i >= 4u);
    }
    return NibbleWord(qword(quant_vec(r, j, 2u * (sub / 2u) + i / 4u), i), (sub & 1u) == 1u);
}

// The integers 4i .. 4i+3 of chunk `sub` of block j of row r, for the factored types.
fn dq4_raw(r: WRow, j: u32, sub: u32, i: u32) -> vec4<f32> {
    let q = quant_vec(r, j, 0u); // a block's QV vec4s stay together
    switch WTYPE {
        case 2u, 3u, 12u: { // Q4_0, Q4_1, Q4_K: nibbles
            let n = nibble_word(r, j, sub, i);
            return nibbles(n.w, n.hi);
        }
        case 6u, 7u: { // Q5_0, Q5_1: nibbles | scales, qh (bit e = 5th bit of element e)
            let qh = scale_word(r, 2u * j + 1u);
            let sh = vec4<u32>(0u, 1u, 2u, 3u) + 4u * i;
            let h = vec4<f32>(((vec4<u32>(qh) >> sh) & vec4<u32>(1u)) << vec4<u32>(4u));
            let n = nibble_word(r, j, sub, i);
            return nibbles(n.w, n.hi) + h;
        }
        case 8u: { // Q8_0: 2 vec4s of int8 | d, two to a word
            return bytes_i8(qword(q + i / 4u, i));
        }
        case 13u: { // Q5_K: nibbles (8 vec4s), fifth bits (2) | as Q4_K
            let n = nibble_word(r, j, sub, i);
            let hw = qword(q + 8u + i / 4u, i) >> sub;
            let hb = vec4<f32>(vec4<u32>(hw, hw >> 8u, hw >> 16u, hw >> 24u) & vec4<u32>(1u));
            return nibbles(n.w, n.hi) + hb * 16.0;
        }
        default: {
            return vec4<f32>(0.0);
        }
    }
}

// Values 4i .. 4i+3 of chunk `sub` (32 values) of block j of row r.
// Returning one vec4 (not the chunk as an array) keeps everything in registers on compilers
// that do not promote local arrays (llvmpipe among them); the loads of one chunk's vec4s and
// scales repeat across i but are common subexpressions once inlined and unrolled.
fn dq4(r: WRow, j: u32, sub: u32, i: u32) -> vec4<f32> {
    if (factored()) {
        let dm = dq_scale(r, j, sub);
        return dq4_raw(r, j, sub, i) * dm.x + dm.y;
    }
    let q = quant_vec(r, j, 0u); // a block's QV vec4s stay together
    switch WTYPE {
        case 0u: { // F32: 8 vec4s per 32 values
            return bitcast<vec4<f32>>(W[q + i]);
        }
        case 1u: { // F16: 4 vec4s
            let v = W[q + i / 2u];
            let h = select(v.xy, v.zw, (i & 1u) == 1u);
            return vec4<f32>(unpack2x16float(h.x), unpack2x16float(h.y));
        }
        case 10u: { // Q2_K: 2-bit values (4 vec4s), 16 scale/min bytes (1) | (d, dmin)
            // Chunk sub: half sub / 4 (its 32 bytes), bit pair sub % 4; scale bytes
            // 8 * half + 2 * pair + (first or second 16 values).
            let dm = unpack2x16float(scale_word(r, j));
            let si = 8u * (sub / 4u) + 2u * (sub % 4u) + i / 4u;
            let sc = byte_of(qword(q + 4u, si / 4u), si % 4u);
            let w = qword(q + 2u * (sub / 4u) + i / 4u, i) >> (2u * (sub % 4u));
            let v = vec4<f32>(vec4<u32>(w, w >> 8u, w >> 16u, w >> 24u) & vec4<u32>(3u));
            return v * (dm.x * f32(sc & 0xFu)) - dm.y * f32(sc >> 4u);
        }
        case 11u: { // Q3_K: hmask (2 vec4s), 2-bit values (4), 12 scale bytes (1) | d
            let d = unpack2x16float(scale_word(r, j)).x;
            // Scale s (6 bits, offset 32): low 4 bits in byte (s / 4 % 2) * 4 + s % 4 (nibble
            // s / 8), high 2 bits in byte 8 + s % 4 at bit 2 * (s / 4).
            let s = 8u * (sub / 4u) + 2u * (sub % 4u) + i / 4u;
            let lo = (byte_of(qword(q + 6u, s / 4u % 2u), s % 4u) >> (4u * (s / 8u))) & 0xFu;
            let hi = (byte_of(qword(q + 6u, 2u), s % 4u) >> (2u * (s / 4u))) & 3u;
            let sc = f32(i32(lo | (hi << 4u)) - 32);
            let w = qword(q + 2u + 2u * (sub / 4u) + i / 4u, i) >> (2u * (sub % 4u));
            let m = qword(q + i / 4u, i) >> sub;
            let v = vec4<f32>(vec4<u32>(w, w >> 8u, w >> 16u, w >> 24u) & vec4<u32>(3u));
            let hb = vec4<f32>(vec4<u32>(m, m >> 8u, m >> 16u, m >> 24u) & vec4<u32>(1u));
            // A clear high bit means minus 4.
            return (v - 4.0 + 4.0 * hb) * (d * sc);
        }
        case 14u: { // Q6_K: ql (8 vec4s), qh (4), int8 scales (1) | d
            let d = unpack2x16float(scale_word(r, j)).x;
            let h = sub / 4u;
            let k = sub % 4u;
            let sw = qword(q + 12u, 2u * h + (k / 2u));
            // Scales h*8 + 2k + (0 | 1): the two 16-element halves of this chunk.
            let shift = 24u - 16u * (k & 1u) - 8u * (i / 4u);
            let s = f32(bitcast<i32>(sw << shift) >> 24u);
            let lw = qword(q + 4u * h + 2u * (k & 1u) + i / 4u, i);
            let lo = nibbles(lw, k >= 2u);
            let hw = qword(q + 8u + 2u * h + i / 4u, i) >> (2u * k);
            let hb = vec4<f32>(vec4<u32>(hw, hw >> 8u, hw >> 16u, hw >> 24u) & vec4<u32>(3u));
            return (lo + hb * 16.0 - 32.0) * (d * s);
        }
        default: {
            return vec4<f32>(0.0);
        }
    }
}

// The 32 values of chunk `sub` of block j of row r, written out (each vec4 and scale loaded
// once after inlining; a loop would keep the chunk in slow scratch memory on llvmpipe).
fn dq_chunk(r: WRow, j: u32, sub: u32) -> array<vec4<f32>, 8> {
    return array<vec4<f32>, 8>(dq4(r, j, sub, 0u), dq4(r, j, sub, 1u), dq4(r, j, sub, 2u),
        dq4(r, j, sub, 3u), dq4(r, j, sub, 4u), dq4(r, j, sub, 5u), dq4(r, j, sub, 6u),
        dq4(r, j, sub, 7u));
}

// Nibble k of w's bytes (low or high nibbles) left in place at bit 8k, times 2^(8k) as a
// float: one mask where `nibbles` shifts and masks. Exact (4 significant bits), and below 2^31,
// so the signed conversion (one instruction on x86) is right.
fn nibbles_spread(w: u32, hi: bool) -> vec4<f32> {
    let v = select(w, w >> 4u, hi);
    let m = vec4<u32>(v) & vec4<u32>(0xFu, 0xF00u, 0xF0000u, 0xF000000u);
    return vec4<f32>(bitcast<vec4<i32>>(m));
}

// The types whose raw integers are nibbles alone (dq4_spread spreads them).
fn nibbles_only() -> bool {
    return WTYPE == T_Q4_0 || WTYPE == T_Q4_1 || WTYPE == T_Q4_K;
}

// What X's vec4s are multiplied by before meeting dq4_spread (powers of two: exact, so each
// product is the one the plain integers give).
fn raw_x_scale() -> vec4<f32> {
    if (nibbles_only()) {
        return vec4<f32>(1.0, 1.0 / 256.0, 1.0 / 65536.0, 1.0 / 16777216.0);
    }
    return vec4<f32>(1.0);
}

// dq4_raw's integers, each component k times the k-th of 1 / raw_x_scale(): the nibble types
// (most models' weights) skip a shift a value, about a quarter of their decode work.
fn dq4_spread(r: WRow, j: u32, sub: u32, i: u32) -> vec4<f32> {
    if (nibbles_only()) {
        let n = nibble_word(r, j, sub, i);
        return nibbles_spread(n.w, n.hi);
    }
    return dq4_raw(r, j, sub, i);
}

// The same chunk's integers, for a factored type, spread as dq4_spread (the caller scales X
// by raw_x_scale() and applies dq_scale).
fn dq_chunk_raw(r: WRow, j: u32, sub: u32) -> array<vec4<f32>, 8> {
    return array<vec4<f32>, 8>(dq4_spread(r, j, sub, 0u), dq4_spread(r, j, sub, 1u),
        dq4_spread(r, j, sub, 2u), dq4_spread(r, j, sub, 3u), dq4_spread(r, j, sub, 4u),
        dq4_spread(r, j, sub, 5u), dq4_spread(r, j, sub, 6u), dq4_spread(r, j, sub, 7u));
}
