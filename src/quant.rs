//! ggml tensor types: block geometry, the CPU reference dequantizer (what the tests trust), and
//! the re-layout of blocks for the GPU.
//!
//! On the GPU a tensor stays quantized. Its blocks are only re-laid so that every block starts
//! on a 4-byte boundary with its f16 scale(s) in the first word: the kernels then read whole
//! `u32`s (Q8_0's 34-byte and Q6_K's 210-byte blocks are not word aligned in the file).

use half::f16;

#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    BF16,
}

impl std::str::FromStr for GgmlType {
    type Err = String;
    /// A supported type by its llama.cpp name, any case: `q4_k`, `Q8_0`, `f16`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        SUPPORTED_TYPES
            .into_iter()
            .find(|t| format!("{t:?}").eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<String> = SUPPORTED_TYPES
                    .iter()
                    .map(|t| format!("{t:?}").to_lowercase())
                    .collect();
                format!("tensor type '{s}' (one of {})", names.join(", "))
            })
    }
}

impl GgmlType {
    /// The type a weight matrix whose rows do not divide into `self`'s blocks gets instead
    /// (k-quants need rows of 256), as llama.cpp's quantizer falls back.
    pub fn fallback(self) -> GgmlType {
        use GgmlType::*;
        match self {
            Q2_K | Q3_K => Q4_0,
            Q4_K => Q5_0,
            Q5_K => Q5_1,
            Q6_K => Q8_0,
            t => t,
        }
    }

    /// The type a matrix with rows of `cols` values gets when `self` is asked for: `self`, or
    /// its [`fallback`](Self::fallback) where the rows do not divide into `self`'s blocks, or
    /// `None` where neither fits.
    pub fn for_rows_of(self, cols: usize) -> Option<GgmlType> {
        [self, self.fallback()]
            .into_iter()
            .find(|t| cols.is_multiple_of(t.block_size()))
    }

    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            30 => BF16,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2_K => 10,
            Q3_K => 11,
            Q4_K => 12,
            Q5_K => 13,
            Q6_K => 14,
            Q8_K => 15,
            BF16 => 30,
        }
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 => 32,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K => 256,
        }
    }

    /// Bytes per block in the file.
    pub fn block_bytes(self) -> usize {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2_K => 84,
            Q3_K => 110,
            Q4_K => 144,
            Q5_K => 176,
            Q6_K => 210,
            Q8_K => 292,
        }
    }

    /// Whether the GPU kernels, [`dequantize`] and [`quantize`] handle this type.
    pub fn supported(self) -> bool {
        SUPPORTED_TYPES.contains(&self)
    }

    /// 16-byte vectors of quants per block in the GPU layout ([`to_gpu_layout`]); a block of
    /// F32/F16 is treated as 32 elements so every type is read in 32-element chunks.
    pub fn gpu_quant_vec4s(self) -> usize {
        use GgmlType::*;
        match self {
            F32 => 8,
            F16 => 4,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 => 1,
            Q8_0 => 2,
            Q2_K => 5, // qs, then the 16 scale/min bytes
            Q3_K => 7, // hmask, qs, the 12 scale bytes (padded)
            Q4_K => 8,
            Q5_K => 10, // qs, then qh
            Q6_K => 13, // ql, qh and the int8 sub-block scales
            _ => 0,
        }
    }

    /// Whether every 32-value chunk shares one scale and one offset (value = q * d + m): the
    /// types `factored()` in `shaders/dequant.wgsl` lists, whose decode matmul scales once
    /// per chunk.
    pub fn one_scale_per_chunk(self) -> bool {
        use GgmlType::*;
        matches!(self, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K)
    }

    /// Scale words per two blocks in the GPU layout: Q4_0 and Q8_0 pack two f16 scales in a
    /// word, Q4_1 has (d, m), Q5_0 and Q5_1 those and the 32 fifth bits, Q4_K and Q5_K a whole
    /// vec4 (d, dmin and the 12 bytes of 6-bit scales), Q2_K (d, dmin), Q3_K and Q6_K their d.
    pub fn gpu_scale_words_x2(self) -> usize {
        use GgmlType::*;
        match self {
            Q4_0 | Q8_0 => 1,
            Q4_1 | Q2_K | Q3_K | Q6_K => 2,
            Q5_0 | Q5_1 => 4,
            Q4_K | Q5_K => 8,
            _ => 0,
        }
    }

    /// 16-byte vectors per row of `cols` values in the GPU layout: the quants of every block,
    /// then the scale words, padded to a vector. The same formula is `row_vec4s` in
    /// `shaders/dequant.wgsl`.
    pub fn gpu_row_vec4s(self, cols: usize) -> usize {
        let blocks = cols / self.gpu_block_elems();
        blocks * self.gpu_quant_vec4s()
            + (blocks * self.gpu_scale_words_x2()).div_ceil(2).div_ceil(4)
    }

    /// Elements covered by one GPU block.
    pub fn gpu_block_elems(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 => 32,
            t => t.block_size(),
        }
    }
}

/// Every type the runtime reads (and [`quantize`] writes).
pub const SUPPORTED_TYPES: [GgmlType; 12] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// Why [`to_gpu_layout`] refused a tensor.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(transparent)]
    Unsupported(#[from] UnsupportedType),
    #[error("{bytes} bytes are not whole rows of {cols} {ty:?} values (in blocks of {})", ty.gpu_block_elems())]
    Shape {
        ty: GgmlType,
        cols: usize,
        bytes: usize,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("tensor type {0:?} is not supported by this runtime (supported: F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)")]
pub struct UnsupportedType(pub GgmlType);

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q4_K / Q5_K: 6-bit scale and min of sub-block `j` (0..8) from the 12 packed bytes.
fn k_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// CPU reference: `bytes` (whole blocks in the file layout) to f32.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Result<Vec<f32>, UnsupportedType> {
    use GgmlType::*;
    let bb = ty.block_bytes();
    let n_blocks = bytes.len() / bb;
    let mut out = Vec::with_capacity(n_blocks * ty.block_size());
    for blk in bytes.chunks_exact(bb) {
        match ty {
            F32 => out.push(f32::from_le_bytes(blk.try_into().unwrap())),
            F16 => out.push(f16_at(blk, 0)),
            Q4_0 => {
                let d = f16_at(blk, 0);
                let qs = &blk[2..18];
                out.extend(qs.iter().map(|q| ((q & 0xF) as f32 - 8.0) * d));
                out.extend(qs.iter().map(|q| ((q >> 4) as f32 - 8.0) * d));
            }
            Q4_1 => {
                let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
                let qs = &blk[4..20];
                out.extend(qs.iter().map(|q| (q & 0xF) as f32 * d + m));
                out.extend(qs.iter().map(|q| (q >> 4) as f32 * d + m));
            }
            Q5_0 => {
                let d = f16_at(blk, 0);
                let qh = u32::from_le_bytes(blk[2..6].try_into().unwrap());
                let qs = &blk[6..22];
                for (j, q) in qs.iter().enumerate() {
                    let hi = ((qh >> j) & 1) << 4;
                    out.push((((q & 0xF) as u32 | hi) as f32 - 16.0) * d);
                }
                for (j, q) in qs.iter().enumerate() {
                    let hi = ((qh >> (j + 16)) & 1) << 4;
                    out.push((((q >> 4) as u32 | hi) as f32 - 16.0) * d);
                }
            }
            Q5_1 => {
                let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
                let qh = u32::from_le_bytes(blk[4..8].try_into().unwrap());
                let qs = &blk[8..24];
                for (j, q) in qs.iter().enumerate() {
                    out.push(((q & 0xF) as u32 | ((qh >> j) & 1) << 4) as f32 * d + m);
                }
                for (j, q) in qs.iter().enumerate() {
                    out.push(((q >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4) as f32 * d + m);
                }
            }
            Q8_0 => {
                let d = f16_at(blk, 0);
                out.extend(blk[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
            Q2_K => {
                // scales[16] (low nibble scale, high nibble min) | qs[64] (2 bits) | d | dmin.
                let (sc, qs) = (&blk[..16], &blk[16..80]);
                let (d, dmin) = (f16_at(blk, 80), f16_at(blk, 82));
                // Element e: half h = e / 128 reads qs[32h + l] (l = e % 32) at shift
                // 2 * ((e % 128) / 32), with scale byte 8h + 2 * ((e % 128) / 32) + l / 16.
                for e in 0..256 {
                    let (h, j, l) = (e / 128, e % 128 / 32, e % 32);
                    let s = sc[8 * h + 2 * j + l / 16];
                    let q = (qs[32 * h + l] >> (2 * j)) & 3;
                    out.push(d * (s & 0xF) as f32 * q as f32 - dmin * (s >> 4) as f32);
                }
            }
            Q3_K => {
                // hmask[32] | qs[64] (low 2 bits) | scales[12] (16 6-bit, offset 32) | d.
                let (hm, qs, sc) = (&blk[..32], &blk[32..96], &blk[96..108]);
                let d = f16_at(blk, 108);
                // Scale s: low 4 bits from byte (s / 4 % 2) * 4 + s % 4 (nibble s / 8), high 2
                // bits from byte 8 + s % 4 at bit 2 * (s / 4).
                let scale = |s: usize| {
                    let lo = (sc[(s / 4 % 2) * 4 + s % 4] >> (4 * (s / 8))) & 0xF;
                    let hi = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
                    (lo | hi << 4) as i32 - 32
                };
                for e in 0..256 {
                    let (h, j, l) = (e / 128, e % 128 / 32, e % 32);
                    let q = ((qs[32 * h + l] >> (2 * j)) & 3) as i32;
                    let high = (hm[l] >> (4 * h + j)) & 1;
                    let v = q - if high == 1 { 0 } else { 4 };
                    out.push(d * scale(8 * h + 2 * j + l / 16) as f32 * v as f32);
                }
            }
            Q5_K => {
                // d | dmin | scales[12] (as Q4_K) | qh[32] | qs[128].
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                let (scales, qh, qs) = (&blk[4..16], &blk[16..48], &blk[48..176]);
                // Sub-block s (32 elements): nibbles of qs[32 * (s / 2) ..] (low for even s),
                // fifth bit s of qh[l].
                for s in 0..8 {
                    let (sc, m) = k_scale_min(s, scales);
                    let (ds, ms) = (d * sc as f32, dmin * m as f32);
                    for l in 0..32 {
                        let q = (qs[32 * (s / 2) + l] >> (4 * (s % 2))) & 0xF;
                        let h = (qh[l] >> s) & 1;
                        out.push(ds * (q | h << 4) as f32 - ms);
                    }
                }
            }
            Q4_K => {
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                let scales = &blk[4..16];
                let qs = &blk[16..144];
                // 4 groups of 64 elements; each group's 32 bytes hold two sub-blocks (low, high nibbles).
                for g in 0..4 {
                    let q = &qs[g * 32..g * 32 + 32];
                    let (s0, m0) = k_scale_min(2 * g, scales);
                    let (s1, m1) = k_scale_min(2 * g + 1, scales);
                    let (d0, mn0) = (d * s0 as f32, dmin * m0 as f32);
                    let (d1, mn1) = (d * s1 as f32, dmin * m1 as f32);
                    out.extend(q.iter().map(|b| (b & 0xF) as f32 * d0 - mn0));
                    out.extend(q.iter().map(|b| (b >> 4) as f32 * d1 - mn1));
                }
            }
            Q6_K => {
                let ql = &blk[0..128];
                let qh = &blk[128..192];
                let sc = &blk[192..208];
                let d = f16_at(blk, 208);
                // Two halves of 128 elements; in each, element l + 32*i uses ql/qh bit planes.
                for half in 0..2 {
                    let ql = &ql[half * 64..half * 64 + 64];
                    let qh = &qh[half * 32..half * 32 + 32];
                    let sc = &sc[half * 8..half * 8 + 8];
                    let mut vals = [0f32; 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        vals[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        vals[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        vals[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        vals[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                    out.extend(vals);
                }
            }
            _ => return Err(UnsupportedType(ty)),
        }
    }
    Ok(out)
}

/// Re-lays whole rows of `cols` values for the GPU, row by row: first the quants of every
/// block (whole 16-byte vectors, so kernels read them with wide loads, the cheap path on
/// CPU-class devices and the coalesced one on GPUs), then the f16 scales and other per-block
/// words, padded to a vector ([`GgmlType::gpu_row_vec4s`] vectors per row).
pub fn to_gpu_layout(ty: GgmlType, bytes: &[u8], cols: usize) -> Result<Vec<u32>, LayoutError> {
    use GgmlType::*;
    if !ty.supported() {
        return Err(UnsupportedType(ty).into());
    }
    // Whole rows only (at least one); checked, since the shape may come from a hostile file.
    let row_bytes = (cols / ty.block_size())
        .checked_mul(ty.block_bytes())
        .filter(|&r| r > 0 && r <= bytes.len() && bytes.len().is_multiple_of(r));
    let Some(row_bytes) = row_bytes.filter(|_| cols.is_multiple_of(ty.gpu_block_elems())) else {
        return Err(LayoutError::Shape {
            ty,
            cols,
            bytes: bytes.len(),
        });
    };
    let row_words = ty.gpu_row_vec4s(cols) * 4;
    let le = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]);
    let mut out = Vec::with_capacity(bytes.len() / row_bytes.max(1) * row_words);
    let mut halves: Vec<u16> = Vec::new();
    for row in bytes.chunks_exact(row_bytes) {
        let start = out.len();
        halves.clear();
        let mut quants = |q: &[u8]| {
            out.extend(
                q.chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            )
        };
        match ty {
            F32 | F16 => quants(row),
            _ => {
                for blk in row.chunks_exact(ty.block_bytes()) {
                    match ty {
                        Q4_0 | Q8_0 => {
                            halves.push(le(blk));
                            quants(&blk[2..]);
                        }
                        Q4_1 => {
                            halves.extend([le(blk), le(&blk[2..])]);
                            quants(&blk[4..]);
                        }
                        Q5_0 => {
                            halves.extend([le(blk), 0, le(&blk[2..]), le(&blk[4..])]);
                            quants(&blk[6..]);
                        }
                        Q5_1 => {
                            halves.extend([le(blk), le(&blk[2..]), le(&blk[4..]), le(&blk[6..])]);
                            quants(&blk[8..]);
                        }
                        Q2_K => {
                            halves.extend([le(&blk[80..]), le(&blk[82..])]);
                            quants(&blk[16..80]);
                            quants(&blk[..16]);
                        }
                        Q3_K => {
                            halves.extend([le(&blk[108..]), 0]);
                            quants(&blk[..108]);
                            quants(&[0; 4]);
                        }
                        Q4_K => {
                            halves.extend(blk[..16].chunks_exact(2).map(le));
                            quants(&blk[16..]);
                        }
                        Q5_K => {
                            halves.extend(blk[..16].chunks_exact(2).map(le));
                            quants(&blk[48..]);
                            quants(&blk[16..48]);
                        }
                        Q6_K => {
                            halves.extend([le(&blk[208..]), 0]);
                            quants(&blk[..208]);
                        }
                        _ => unreachable!(),
                    }
                }
            }
        }
        halves.resize(halves.len().div_ceil(8) * 8, 0);
        out.extend(
            halves
                .chunks_exact(2)
                .map(|h| h[0] as u32 | (h[1] as u32) << 16),
        );
        debug_assert_eq!(out.len() - start, row_words);
    }
    Ok(out)
}

/// Interleaves whole rows in the GPU layout ([`to_gpu_layout`]) into panels of `panel` rows,
/// the layout `wrow` in `shaders/dequant.wgsl` reads with `PANEL` = `panel`: in each panel,
/// block j's quant vectors of the panel's rows one row after another, for every block, then
/// the rows' scale vectors the same way, vector by vector. A last panel with fewer rows is
/// padded with zero rows (never read). Panels of 1 are the plain rows, returned as they came.
///
/// Why: a CPU-class decode matmul has each subgroup own a panel's rows and walk their blocks
/// in step, so with panels it streams one contiguous region instead of one per row (cores
/// prefetch a few streams well, not 32).
pub fn to_panels(ty: GgmlType, cols: usize, rows_layout: Vec<u32>, panel: usize) -> Vec<u32> {
    let row_vec4s = ty.gpu_row_vec4s(cols);
    if panel <= 1 || row_vec4s == 0 {
        return rows_layout;
    }
    let vec = |v: usize| &rows_layout[v * 4..v * 4 + 4];
    let rows = rows_layout.len() / (row_vec4s * 4);
    let quant_vec4s = ty.gpu_quant_vec4s();
    let blocks = cols / ty.gpu_block_elems();
    let scale_vec4s = row_vec4s - blocks * quant_vec4s;
    let mut out = Vec::with_capacity(rows.div_ceil(panel) * panel * row_vec4s * 4);
    for first in (0..rows).step_by(panel) {
        let mut put = |row: usize, v: usize| {
            if row < rows {
                out.extend_from_slice(vec(row * row_vec4s + v));
            } else {
                out.extend([0; 4]);
            }
        };
        for j in 0..blocks {
            for row in first..first + panel {
                for o in 0..quant_vec4s {
                    put(row, j * quant_vec4s + o);
                }
            }
        }
        for v in 0..scale_vec4s {
            for row in first..first + panel {
                put(row, blocks * quant_vec4s + v);
            }
        }
    }
    out
}

/// Quantizes f32 values to a block type; for tests and for building small models.
/// Simple round-to-nearest: the tests only need valid blocks, not the best ones.
pub fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    use GgmlType::*;
    let mut out = Vec::new();
    let put_f16 = |out: &mut Vec<u8>, v: f32| out.extend(f16::from_f32(v).to_le_bytes());
    match ty {
        F32 => x.iter().for_each(|v| out.extend(v.to_le_bytes())),
        F16 => x.iter().for_each(|&v| put_f16(&mut out, v)),
        Q8_0 => {
            for b in x.chunks_exact(32) {
                let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                put_f16(&mut out, d);
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend(b.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        Q4_0 | Q5_0 => {
            let (levels, offset) = if ty == Q4_0 { (8.0, 8) } else { (16.0, 16) };
            for b in x.chunks_exact(32) {
                let max = b
                    .iter()
                    .fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                let d = max / -levels;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                put_f16(&mut out, d);
                let q: Vec<u8> = b
                    .iter()
                    .map(|v| ((v * id + offset as f32 + 0.5) as i32).clamp(0, 2 * offset - 1) as u8)
                    .collect();
                if ty == Q5_0 {
                    let mut qh = 0u32;
                    for (j, &qj) in q.iter().enumerate() {
                        qh |= ((qj as u32 >> 4) & 1) << j;
                    }
                    out.extend(qh.to_le_bytes());
                }
                out.extend((0..16).map(|j| (q[j] & 0xF) | ((q[j + 16] & 0xF) << 4)));
            }
        }
        Q4_1 | Q5_1 => {
            let levels = if ty == Q4_1 { 15 } else { 31 };
            for b in x.chunks_exact(32) {
                let min = b.iter().fold(f32::INFINITY, |a, &v| a.min(v));
                let max = b.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let d = (max - min) / levels as f32;
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                put_f16(&mut out, d);
                put_f16(&mut out, min);
                let q: Vec<u8> = b
                    .iter()
                    .map(|v| (((v - min) * id + 0.5) as i32).clamp(0, levels) as u8)
                    .collect();
                if ty == Q5_1 {
                    let qh = q
                        .iter()
                        .enumerate()
                        .fold(0u32, |a, (j, &qj)| a | ((qj as u32 >> 4) & 1) << j);
                    out.extend(qh.to_le_bytes());
                }
                out.extend((0..16).map(|j| (q[j] & 0xF) | ((q[j + 16] & 0xF) << 4)));
            }
        }
        Q2_K => {
            for sb in x.chunks_exact(256) {
                // Per 16 values: a 4-bit scale (of d) and min (of dmin), 2-bit values.
                let mut sc = [0f32; 16];
                let mut mn = [0f32; 16];
                for (j, b) in sb.chunks_exact(16).enumerate() {
                    let min = b.iter().fold(0f32, |a, &v| a.min(v));
                    let max = b.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                    sc[j] = (max - min) / 3.0;
                    mn[j] = -min;
                }
                let d = f16::from_f32(sc.iter().fold(0f32, |a, &v| a.max(v)) / 15.0).to_f32();
                let dmin = f16::from_f32(mn.iter().fold(0f32, |a, &v| a.max(v)) / 15.0).to_f32();
                let level = |v: f32, unit: f32| {
                    if unit > 0.0 {
                        (v / unit).round().clamp(0.0, 15.0) as u8
                    } else {
                        0
                    }
                };
                let ls: Vec<u8> = sc.iter().map(|&v| level(v, d)).collect();
                let lm: Vec<u8> = mn.iter().map(|&v| level(v, dmin)).collect();
                out.extend((0..16).map(|j| ls[j] | lm[j] << 4));
                let mut qs = [0u8; 64];
                for (e, &v) in sb.iter().enumerate() {
                    let (h, j, l) = (e / 128, e % 128 / 32, e % 32);
                    let s = 8 * h + 2 * j + l / 16;
                    let ds = d * ls[s] as f32;
                    let q = if ds > 0.0 {
                        ((v + dmin * lm[s] as f32) / ds).round().clamp(0.0, 3.0) as u8
                    } else {
                        0
                    };
                    qs[32 * h + l] |= q << (2 * j);
                }
                out.extend(qs);
                put_f16(&mut out, d);
                put_f16(&mut out, dmin);
            }
        }
        Q3_K => {
            for sb in x.chunks_exact(256) {
                // Per 16 values: a signed 6-bit scale (of d), values -4..=3.
                let sc: Vec<f32> = sb
                    .chunks_exact(16)
                    .map(|b| b.iter().fold(0f32, |a, &v| a.max(v.abs())) / 4.0)
                    .collect();
                let d = f16::from_f32(sc.iter().fold(0f32, |a, &v| a.max(v)) / 31.0).to_f32();
                let ls: Vec<i32> = sc
                    .iter()
                    .map(|&v| {
                        if d > 0.0 {
                            (v / d).round().clamp(-32.0, 31.0) as i32
                        } else {
                            0
                        }
                    })
                    .collect();
                let mut hm = [0u8; 32];
                let mut qs = [0u8; 64];
                for (e, &v) in sb.iter().enumerate() {
                    let (h, j, l) = (e / 128, e % 128 / 32, e % 32);
                    let ds = d * ls[8 * h + 2 * j + l / 16] as f32;
                    let q = if ds != 0.0 {
                        (v / ds).round().clamp(-4.0, 3.0) as i32
                    } else {
                        0
                    };
                    let u = (q + 4) as u8;
                    qs[32 * h + l] |= (u & 3) << (2 * j);
                    hm[l] |= (u >> 2) << (4 * h + j);
                }
                let mut packed = [0u8; 12];
                for (s, &l) in ls.iter().enumerate() {
                    let u = (l + 32) as u8;
                    packed[(s / 4 % 2) * 4 + s % 4] |= (u & 0xF) << (4 * (s / 8));
                    packed[8 + s % 4] |= (u >> 4) << (2 * (s / 4));
                }
                out.extend(hm);
                out.extend(qs);
                out.extend(packed);
                put_f16(&mut out, d);
            }
        }
        Q4_K | Q5_K => {
            let levels = if ty == Q4_K { 15.0 } else { 31.0 };
            for sb in x.chunks_exact(256) {
                // Per sub-block scale/min as 6-bit multiples of d/dmin.
                let mut sc = [0f32; 8];
                let mut mn = [0f32; 8];
                for (j, b) in sb.chunks_exact(32).enumerate() {
                    let min = b.iter().fold(0f32, |a, &v| a.min(v));
                    let max = b.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                    sc[j] = (max - min) / levels;
                    mn[j] = -min;
                }
                let d = sc.iter().fold(0f32, |a, &v| a.max(v)) / 63.0;
                let dmin = mn.iter().fold(0f32, |a, &v| a.max(v)) / 63.0;
                let ls: Vec<u8> = sc
                    .iter()
                    .map(|s| {
                        if d > 0.0 {
                            (s / d).round().min(63.0) as u8
                        } else {
                            0
                        }
                    })
                    .collect();
                let lm: Vec<u8> = mn
                    .iter()
                    .map(|m| {
                        if dmin > 0.0 {
                            (m / dmin).round().min(63.0) as u8
                        } else {
                            0
                        }
                    })
                    .collect();
                put_f16(&mut out, d);
                put_f16(&mut out, dmin);
                let mut s = [0u8; 12];
                for j in 0..8 {
                    if j < 4 {
                        s[j] = ls[j];
                        s[j + 4] = lm[j];
                    } else {
                        s[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
                        s[j - 4] |= (ls[j] >> 4) << 6;
                        s[j] |= (lm[j] >> 4) << 6;
                    }
                }
                out.extend(s);
                let dh = f16::from_f32(d).to_f32();
                let mh = f16::from_f32(dmin).to_f32();
                let q: Vec<u8> = sb
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let (s, m) = k_scale_min(i / 32, &s);
                        let ds = dh * s as f32;
                        if ds == 0.0 {
                            0
                        } else {
                            (((v + mh * m as f32) / ds).round() as i32).clamp(0, levels as i32)
                                as u8
                        }
                    })
                    .collect();
                if ty == Q5_K {
                    out.extend(
                        (0..32)
                            .map(|l| (0..8).fold(0u8, |a, s| a | ((q[32 * s + l] >> 4) & 1) << s)),
                    );
                }
                for g in 0..4 {
                    for l in 0..32 {
                        out.push((q[g * 64 + l] & 0xF) | ((q[g * 64 + 32 + l] & 0xF) << 4));
                    }
                }
            }
        }
        Q6_K => {
            for sb in x.chunks_exact(256) {
                let mut scales = [0f32; 16];
                for (j, b) in sb.chunks_exact(16).enumerate() {
                    scales[j] = b.iter().fold(0f32, |a, &v| a.max(v.abs())) / 31.0;
                }
                let d = scales.iter().fold(0f32, |a, &v| a.max(v)) / 127.0;
                let isc: Vec<i8> = scales
                    .iter()
                    .map(|s| {
                        if d > 0.0 {
                            (s / d).round().min(127.0) as i8
                        } else {
                            0
                        }
                    })
                    .collect();
                let dh = f16::from_f32(d).to_f32();
                let q: Vec<u8> = sb
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let ds = dh * isc[i / 16] as f32;
                        let qi = if ds == 0.0 {
                            0
                        } else {
                            (v / ds).round() as i32
                        };
                        (qi.clamp(-32, 31) + 32) as u8
                    })
                    .collect();
                let mut ql = [0u8; 128];
                let mut qh = [0u8; 64];
                for half in 0..2 {
                    let q = &q[half * 128..];
                    for l in 0..32 {
                        ql[half * 64 + l] = (q[l] & 0xF) | ((q[l + 64] & 0xF) << 4);
                        ql[half * 64 + l + 32] = (q[l + 32] & 0xF) | ((q[l + 96] & 0xF) << 4);
                        qh[half * 32 + l] = (q[l] >> 4)
                            | ((q[l + 32] >> 4) << 2)
                            | ((q[l + 64] >> 4) << 4)
                            | ((q[l + 96] >> 4) << 6);
                    }
                }
                out.extend(ql);
                out.extend(qh);
                out.extend(isc.iter().map(|&v| v as u8));
                put_f16(&mut out, d);
            }
        }
        _ => panic!("quantize: {ty:?} not implemented"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_vals(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn quantize_then_dequantize_is_close() {
        use GgmlType::*;
        for (ty, tol) in [
            (F16, 1e-3),
            (Q8_0, 0.01),
            (Q4_0, 0.15),
            (Q4_1, 0.08),
            (Q5_0, 0.07),
            (Q5_1, 0.04),
            (Q2_K, 0.5),
            (Q3_K, 0.3),
            (Q4_K, 0.1),
            (Q5_K, 0.05),
            (Q6_K, 0.05),
        ] {
            let x = rand_vals(512, 7);
            let q = quantize(ty, &x);
            assert_eq!(q.len(), 512 / ty.block_size() * ty.block_bytes(), "{ty:?}");
            let y = dequantize(ty, &q).unwrap();
            let err = x
                .iter()
                .zip(&y)
                .fold(0f32, |a, (p, q)| a.max((p - q).abs()));
            assert!(err < tol, "{ty:?}: max error {err}");
        }
    }

    /// Random blocks of every quantized type, dequantized by gguf-py (the ggml project's
    /// reference reader; `tests/data/make_quant_blocks.py` made the file).
    #[test]
    fn dequantize_matches_the_reference_implementation() {
        let cases: Vec<serde_json::Value> =
            serde_json::from_str(include_str!("../tests/data/quant_blocks.json")).unwrap();
        assert_eq!(cases.len(), 10);
        for case in cases {
            let name = case["type"].as_str().unwrap();
            let ty = (0..32)
                .filter_map(GgmlType::from_id)
                .find(|t| format!("{t:?}") == name)
                .unwrap_or_else(|| panic!("{name}"));
            let hex = case["bytes"].as_str().unwrap();
            let bytes: Vec<u8> = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            let want: Vec<f32> = case["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let got = dequantize(ty, &bytes).unwrap();
            assert_eq!(got.len(), want.len(), "{name}");
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-6 * scale,
                    "{name} value {i}: {g} vs {w}"
                );
            }
        }
    }

    /// Every row's blocks and scale vectors are where `wrow` (dequant.wgsl) looks for them.
    #[test]
    fn panels_put_each_vector_where_the_shader_reads_it() {
        for ty in SUPPORTED_TYPES {
            let cols = 256;
            for rows in [1, 5, 32, 37] {
                let q = quantize(ty, &rand_vals(rows * cols, rows as u64));
                let plain = to_gpu_layout(ty, &q, cols).unwrap();
                for panel in [1, 4, 32] {
                    let p = to_panels(ty, cols, plain.clone(), panel);
                    let rv = ty.gpu_row_vec4s(cols);
                    assert_eq!(p.len(), rows.div_ceil(panel) * panel * rv * 4, "{ty:?}");
                    let (qv, blocks) = (ty.gpu_quant_vec4s(), cols / ty.gpu_block_elems());
                    for n in 0..rows {
                        // wrow(n, cols), as the shader computes it.
                        let base = n / panel * panel * rv;
                        let (q0, q_step) = (base + n % panel * qv, panel * qv);
                        let (s0, s_step) = (base + panel * blocks * qv + n % panel, panel);
                        let got = |v: usize| &p[v * 4..v * 4 + 4];
                        let want = |v: usize| &plain[(n * rv + v) * 4..(n * rv + v) * 4 + 4];
                        for j in 0..blocks {
                            for o in 0..qv {
                                assert_eq!(got(q0 + j * q_step + o), want(j * qv + o), "{ty:?}");
                            }
                        }
                        for v in 0..rv - blocks * qv {
                            assert_eq!(got(s0 + v * s_step), want(blocks * qv + v), "{ty:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn gpu_layout_has_declared_size() {
        for ty in SUPPORTED_TYPES {
            let q = quantize(ty, &rand_vals(512, 3));
            // Two rows of 256, or one of 512.
            for (rows, cols) in [(2, 256), (1, 512)] {
                let w = to_gpu_layout(ty, &q, cols).unwrap();
                assert_eq!(w.len(), rows * ty.gpu_row_vec4s(cols) * 4, "{ty:?}");
            }
        }
    }
}
