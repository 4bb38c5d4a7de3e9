//! Every kernel against its CPU reference on fresh random inputs, on both shader paths
//! (subgroups on and off). A missing device is a failure, never a skip.

use std::sync::Arc;

use lamina::gpu::{Gpu, GpuOptions};
use lamina::kernels::{self, reference, AttnShape, MatmulShape, QMatrix, Step};
use lamina::quant::{self, GgmlType};
use rand::{Rng, SeedableRng};

/// Every kernel path the device can take: all features with the device-class variants (on
/// llvmpipe the CPU-class ones), all features with the GPU-class variants, and neither f16
/// nor subgroups.
fn gpus() -> Vec<Arc<Gpu>> {
    let full = Gpu::new(GpuOptions {
        allow_f16: true,
        allow_subgroups: true,
        allow_cpu_kernels: true,
    })
    .expect("a GPU adapter (install mesa-vulkan-drivers for lavapipe)");
    let gpu_class = Gpu::new(GpuOptions {
        allow_f16: true,
        allow_subgroups: true,
        allow_cpu_kernels: false,
    })
    .unwrap();
    let plain = Gpu::new(GpuOptions {
        allow_f16: false,
        allow_subgroups: false,
        allow_cpu_kernels: false,
    })
    .unwrap();
    assert!(!plain.subgroups && !plain.f16 && !gpu_class.cpu_kernels);
    vec![full, gpu_class, plain]
}

fn rng() -> rand::rngs::StdRng {
    // Fresh inputs each run; the seed is printed so a failure can be replayed.
    let seed: u64 = std::env::var("LAMINA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("LAMINA_TEST_SEED={seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}

fn randn(r: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (r.random::<f32>() * 2.0 - 1.0) * scale)
        .collect()
}

fn max_rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let m = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |e, (x, y)| e.max((x - y).abs())) / m
}

fn upload_f32(gpu: &Gpu, data: &[f32]) -> lamina::gpu::Buffer {
    gpu.storage_init("test", bytemuck::cast_slice(data))
        .unwrap()
}

const TYPES: [GgmlType; 12] = quant::SUPPORTED_TYPES;

#[test]
fn matmul_matches_reference_for_every_type_and_token_count() {
    let mut r = rng();
    for gpu in gpus() {
        for ty in TYPES {
            for &(n, t) in &[(70usize, 1usize), (33, 13)] {
                let k = 512;
                let w = randn(&mut r, n * k, 1.0);
                let bytes = quant::quantize(ty, &w);
                let wq = quant::dequantize(ty, &bytes).unwrap();
                let m = QMatrix::upload(&gpu, "w", ty, n as u32, k as u32, &bytes).unwrap();
                let x = randn(&mut r, t * k, 1.0);
                let xb = upload_f32(&gpu, &x);
                let yb = gpu.storage("y", (t * n * 4) as u64).unwrap();
                let d = kernels::matmul(
                    &gpu,
                    &m,
                    None,
                    &xb,
                    &yb,
                    MatmulShape {
                        t: t as u32,
                        x_stride: k as u32,
                        x_row0: 0,
                        y_stride: n as u32,
                        y_col: 0,
                        swiglu_input: false,
                        accumulate: false,
                    },
                )
                .unwrap();
                kernels::run(&gpu, &d).unwrap();
                let got = gpu.read_f32(&yb, 0, (t * n) as u64).unwrap();
                let want = reference::matmul(&wq, &x, n, k);
                let e = max_rel_err(&got, &want);
                assert!(
                    e < 1e-5,
                    "{ty:?} n={n} t={t} subgroups={} cpu_kernels={}: rel err {e}",
                    gpu.subgroups,
                    gpu.cpu_kernels
                );
            }
        }
    }
}

#[test]
fn matmul_fusions_swiglu_input_bias_accumulate_and_offsets() {
    let mut r = rng();
    for gpu in gpus() {
        let (n, k, t) = (40usize, 96usize, 5usize);
        let w = randn(&mut r, n * k, 1.0);
        let bytes = quant::quantize(GgmlType::Q8_0, &w);
        let wq = quant::dequantize(GgmlType::Q8_0, &bytes).unwrap();
        let m = QMatrix::upload(&gpu, "w", GgmlType::Q8_0, n as u32, k as u32, &bytes).unwrap();
        // X rows hold [gate | up]; one extra leading row checks x_row0.
        let gu = randn(&mut r, (t + 1) * 2 * k, 2.0);
        let bias = randn(&mut r, n + 3, 1.0);
        let y_stride = n + 3;
        let y0 = randn(&mut r, t * y_stride, 1.0);
        let (xb, bb, yb) = (
            upload_f32(&gpu, &gu),
            upload_f32(&gpu, &bias),
            upload_f32(&gpu, &y0),
        );
        let d = kernels::matmul(
            &gpu,
            &m,
            Some(&bb),
            &xb,
            &yb,
            MatmulShape {
                t: t as u32,
                x_stride: 2 * k as u32,
                x_row0: 1,
                y_stride: y_stride as u32,
                y_col: 3,
                swiglu_input: true,
                accumulate: true,
            },
        )
        .unwrap();
        kernels::run(&gpu, &d).unwrap();
        let got = gpu.read_f32(&yb, 0, (t * y_stride) as u64).unwrap();
        let act: Vec<f32> = (0..t)
            .flat_map(|ti| {
                let row = &gu[(ti + 1) * 2 * k..][..2 * k];
                (0..k).map(move |j| reference::silu(row[j]) * row[k + j])
            })
            .collect();
        let prod = reference::matmul(&wq, &act, n, k);
        let mut want = y0.clone();
        for ti in 0..t {
            for ni in 0..n {
                want[ti * y_stride + 3 + ni] += prod[ti * n + ni] + bias[3 + ni];
            }
        }
        let e = max_rel_err(&got, &want);
        assert!(e < 1e-5, "subgroups={}: rel err {e}", gpu.subgroups);
    }
}

/// Decoding on a CPU-class device, the rmsnorm before a projection runs inside its matmul
/// (kernels::matmul_normed): it must equal rmsnorm then matmul for every type, with a bias and
/// a later X row, and leave the normed row where the separate norm would.
#[test]
fn matmul_with_a_folded_rmsnorm_matches_rmsnorm_then_matmul() {
    let mut r = rng();
    for gpu in gpus() {
        let shape = |n: usize, k: usize| MatmulShape {
            x_row0: 2,
            ..MatmulShape::rows(1, k as u32, n as u32 + 3)
        };
        let (n, k) = (70usize, 512usize);
        if !kernels::folds_norm(&gpu, &shape(n, k)) {
            // Elsewhere the norm stays its own launch, and asking for the fold is an error.
            assert!(!gpu.cpu_kernels);
            let w = quant::quantize(GgmlType::Q8_0, &randn(&mut r, n * k, 1.0));
            let m = QMatrix::upload(&gpu, "w", GgmlType::Q8_0, n as u32, k as u32, &w).unwrap();
            let b = gpu.storage("b", (3 * k * 4) as u64).unwrap();
            let norm = kernels::NormInput {
                g: &b,
                eps: 1e-5,
                xn: None,
            };
            assert!(
                kernels::matmul_normed(&gpu, &m, None, &b, Some(norm), &b, shape(n, k)).is_err()
            );
            continue;
        }
        assert!(!kernels::folds_norm(
            &gpu,
            &MatmulShape {
                t: 2,
                ..shape(n, k)
            }
        ));
        for ty in TYPES {
            let w = randn(&mut r, n * k, 1.0);
            let bytes = quant::quantize(ty, &w);
            let wq = quant::dequantize(ty, &bytes).unwrap();
            let m = QMatrix::upload(&gpu, "w", ty, n as u32, k as u32, &bytes).unwrap();
            let x = randn(&mut r, 3 * k, 2.0);
            let g = randn(&mut r, k, 1.5);
            let bias = randn(&mut r, n + 3, 1.0);
            let (xb, gb, bb) = (
                upload_f32(&gpu, &x),
                upload_f32(&gpu, &g),
                upload_f32(&gpu, &bias),
            );
            let yb = gpu.storage("y", ((n + 3) * 4) as u64).unwrap();
            let xnb = gpu.storage("xn", (k * 4) as u64).unwrap();
            let norm = kernels::NormInput {
                g: &gb,
                eps: 1e-5,
                xn: Some(&xnb),
            };
            let s = MatmulShape {
                y_col: 3,
                ..shape(n, k)
            };
            let d = kernels::matmul_normed(&gpu, &m, Some(&bb), &xb, Some(norm), &yb, s).unwrap();
            kernels::run(&gpu, &d).unwrap();
            let got = gpu.read_f32(&yb, 3, n as u64).unwrap();
            let xn = reference::rmsnorm(&x[2 * k..], &g, 1e-5);
            let prod = reference::matmul(&wq, &xn, n, k);
            let want: Vec<f32> = prod.iter().zip(&bias[3..]).map(|(p, b)| p + b).collect();
            let e = max_rel_err(&got, &want);
            assert!(e < 1e-5, "{ty:?}: rel err {e}");
            let got_xn = gpu.read_f32(&xnb, 0, k as u64).unwrap();
            let e = max_rel_err(&got_xn, &xn);
            assert!(e < 1e-6, "{ty:?} normed row: rel err {e}");
        }
    }
}

/// The rows `toks` of `m` as the embedding kernel gathers them.
fn embed_rows(gpu: &Gpu, m: &QMatrix, toks: &[u32]) -> Vec<f32> {
    let tb = gpu.storage_init("tok", bytemuck::cast_slice(toks)).unwrap();
    let yb = gpu
        .storage("y", toks.len() as u64 * m.cols as u64 * 4)
        .unwrap();
    let dsp = kernels::embed(gpu, m, &tb, &yb, toks.len() as u32).unwrap();
    kernels::run(gpu, &dsp).unwrap();
    gpu.read_f32(&yb, 0, toks.len() as u64 * m.cols as u64)
        .unwrap()
}

/// The rows `toks` of a row-major matrix with `cols` columns.
fn rows_of(w: &[f32], cols: usize, toks: &[u32]) -> Vec<f32> {
    toks.iter()
        .flat_map(|&t| w[t as usize * cols..][..cols].to_vec())
        .collect()
}

#[test]
fn rmsnorm_and_embed_match_reference() {
    let mut r = rng();
    for gpu in gpus() {
        let (d, t) = (96usize, 7usize);
        let x = randn(&mut r, t * d, 3.0);
        let g = randn(&mut r, d, 1.0);
        let (xb, gb) = (upload_f32(&gpu, &x), upload_f32(&gpu, &g));
        let yb = gpu.storage("y", (t * d * 4) as u64).unwrap();
        let dsp = kernels::rmsnorm(&gpu, &xb, &gb, &yb, d as u32, (t - 2) as u32, 2, 1e-5).unwrap();
        kernels::run(&gpu, &[dsp]).unwrap();
        let got = gpu.read_f32(&yb, 0, ((t - 2) * d) as u64).unwrap();
        let want = reference::rmsnorm(&x[2 * d..], &g, 1e-5);
        assert!(max_rel_err(&got, &want) < 1e-5);

        for ty in TYPES {
            let (rows, cols) = (50usize, 256usize);
            let w = randn(&mut r, rows * cols, 1.0);
            let bytes = quant::quantize(ty, &w);
            let wq = quant::dequantize(ty, &bytes).unwrap();
            let m = QMatrix::upload(&gpu, "emb", ty, rows as u32, cols as u32, &bytes).unwrap();
            let toks: Vec<u32> = (0..9).map(|_| r.random_range(0..rows as u32)).collect();
            assert_eq!(
                embed_rows(&gpu, &m, &toks),
                rows_of(&wq, cols, &toks),
                "{ty:?}"
            );
        }
    }
}

#[test]
fn rope_kv_and_attention_match_reference() {
    let mut r = rng();
    for gpu in gpus() {
        // fused: the decode step runs rope_attention (rope, cache append and attention in one
        // launch) instead of rope_kv then attention.
        // Head sizes and groups: the CPU-class decode serves a KV head's group in one subgroup
        // where head_dim is a multiple of 64, and runs per head otherwise.
        let shapes = [(6, 2, 16), (6, 2, 64), (4, 4, 64), (8, 1, 128)];
        for ((neox, fused), (n_head, n_kv_head, head_dim)) in
            [(false, false), (true, false), (false, true), (true, true)]
                .into_iter()
                .flat_map(|nf| shapes.map(|s| (nf, s)))
        {
            let a = AttnShape {
                n_head,
                n_kv_head,
                head_dim,
                kv_cap: 24,
                neox,
                kv_f16: gpu.f16,
                seq_len: 0,
            };
            let hd = a.head_dim as usize;
            let (nh, nkv, cap) = (a.n_head as usize, a.n_kv_head as usize, a.kv_cap as usize);
            let table = kernels::rope_table(a.head_dim, 10000.0, a.kv_cap);
            let tbl = gpu
                .storage_init("rope", bytemuck::cast_slice(&table))
                .unwrap();
            let kc = gpu.storage("k", (nkv * cap * hd * 4) as u64).unwrap();
            let vc = gpu.storage("v", (nkv * cap * hd * 4) as u64).unwrap();
            let stride = a.qkv_stride() as usize;
            let mut kref = vec![0f32; nkv * cap * hd];
            let mut vref = vec![0f32; nkv * cap * hd];
            // Two batches: a prefill of 5 tokens, then a decode of 1, as generation does.
            for (pos0, t) in [(0usize, 5usize), (5, 1)] {
                let qkv = randn(&mut r, t * stride, 1.0);
                let qb = upload_f32(&gpu, &qkv);
                let step = gpu
                    .uniform_init(
                        "step",
                        bytemuck::bytes_of(&Step {
                            pos0: pos0 as u32,
                            _pad: [0; 3],
                        }),
                    )
                    .unwrap();
                let out = gpu.storage("o", (t * nh * hd * 4) as u64).unwrap();
                if fused && t == 1 {
                    let d = kernels::rope_attention(
                        &gpu, a, t as u32, &step, &qb, &tbl, &kc, &vc, &out,
                    )
                    .unwrap();
                    kernels::run(&gpu, &[d]).unwrap();
                } else {
                    let d1 =
                        kernels::rope_kv(&gpu, a, t as u32, &step, &qb, &tbl, &kc, &vc).unwrap();
                    let d2 =
                        kernels::attention(&gpu, a, t as u32, &step, &qb, &kc, &vc, &out).unwrap();
                    kernels::run(&gpu, &[d1, d2]).unwrap();
                }
                let got = gpu.read_f32(&out, 0, (t * nh * hd) as u64).unwrap();
                let got_qkv = gpu.read_f32(&qb, 0, (t * stride) as u64).unwrap();

                let mut q = Vec::new();
                for ti in 0..t {
                    let row = &qkv[ti * stride..][..stride];
                    for h in 0..nh {
                        let mut v = row[h * hd..][..hd].to_vec();
                        reference::rope(&mut v, &table, pos0 + ti, neox);
                        q.extend(v);
                    }
                    // The cache holds f16 where the device has it: round as the kernel does.
                    let store = |v: &[f32]| -> Vec<f32> {
                        if a.kv_f16 {
                            v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
                        } else {
                            v.to_vec()
                        }
                    };
                    for h in 0..nkv {
                        let mut kv = row[(nh + h) * hd..][..hd].to_vec();
                        reference::rope(&mut kv, &table, pos0 + ti, neox);
                        kref[(h * cap + pos0 + ti) * hd..][..hd].copy_from_slice(&store(&kv));
                        vref[(h * cap + pos0 + ti) * hd..][..hd]
                            .copy_from_slice(&store(&row[(nh + nkv + h) * hd..][..hd]));
                    }
                }
                let want = reference::attention(&q, &kref, &vref, nh, nkv, hd, cap, pos0);
                let e = max_rel_err(&got, &want);
                assert!(
                    e < 1e-5,
                    "neox={neox} fused={fused} pos0={pos0} f16={} {n_head}/{n_kv_head}x{head_dim}: rel err {e}",
                    a.kv_f16
                );
                // Both paths leave q rotated in place (the backward reads it) and the cache
                // holding the rotated keys and the values of every position so far.
                let got_q: Vec<f32> = (0..t)
                    .flat_map(|ti| got_qkv[ti * stride..][..nh * hd].to_vec())
                    .collect();
                assert!(
                    max_rel_err(&got_q, &q) < 1e-6,
                    "q neox={neox} fused={fused}"
                );
                let n = nkv * cap * hd;
                let read_cache = |b| -> Vec<f32> {
                    if a.kv_f16 {
                        let raw = gpu.read_back(b, 0, (n * 2) as u64).unwrap();
                        let h: &[half::f16] = bytemuck::cast_slice(&raw);
                        h.iter().map(|x| x.to_f32()).collect()
                    } else {
                        gpu.read_f32(b, 0, n as u64).unwrap()
                    }
                };
                let end = pos0 + t;
                for (cache, want) in [(read_cache(&kc), &kref), (read_cache(&vc), &vref)] {
                    for h in 0..nkv {
                        let at = h * cap * hd;
                        let e = max_rel_err(&cache[at..at + end * hd], &want[at..at + end * hd]);
                        assert!(e < 1e-6, "cache neox={neox} fused={fused} rel err {e}");
                    }
                }
            }
        }
    }
}

#[test]
fn argmax_topk_and_penalty_match_reference() {
    let mut r = rng();
    let gpu = &gpus()[0];
    let n = 5000usize;
    let mut x = randn(&mut r, n + 10, 10.0);
    x[10 + 1234] = 50.0; // a clear maximum
    x[10 + 77] = -3.0;
    let xb = upload_f32(gpu, &x);
    let out = gpu.storage("o", 16).unwrap();
    let d = kernels::argmax(gpu, &xb, 10, n as u32, &out).unwrap();
    kernels::run(gpu, &[d]).unwrap();
    let got = gpu.read_back(&out, 0, 4).unwrap();
    assert_eq!(
        u32::from_le_bytes(got.try_into().unwrap()) as usize,
        reference::argmax(&x[10..])
    );

    // Penalty on the max and one negative value: the maximum moves elsewhere.
    let toks = [1234u32, 77];
    let tb = gpu.storage_init("t", bytemuck::cast_slice(&toks)).unwrap();
    let d = kernels::penalty(gpu, &tb, 2, &xb, 10, 100.0).unwrap();
    kernels::run(gpu, &[d]).unwrap();
    let after = gpu.read_f32(&xb, 10, n as u64).unwrap();
    let mut want = x[10..].to_vec();
    want[1234] /= 100.0;
    want[77] *= 100.0;
    assert_eq!(after, want);

    for k in [1u32, 40, 256] {
        let ov = gpu.storage("v", k as u64 * 4).unwrap();
        let oi = gpu.storage("i", k as u64 * 4).unwrap();
        let d = kernels::topk(gpu, &xb, 10, n as u32, k, &ov, &oi).unwrap();
        kernels::run(gpu, &[d]).unwrap();
        let vals = gpu.read_f32(&ov, 0, k as u64).unwrap();
        let idx: Vec<u32> =
            bytemuck::cast_slice(&gpu.read_back(&oi, 0, k as u64 * 4).unwrap()).to_vec();
        let mut got: Vec<f32> = idx.iter().map(|&i| after[i as usize]).collect();
        assert_eq!(got.iter().zip(&vals).filter(|(a, b)| a != b).count(), 0);
        got.sort_by(|a, b| b.partial_cmp(a).unwrap());
        let mut sorted = after.clone();
        sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
        assert_eq!(got, sorted[..k as usize].to_vec(), "k={k}");
    }
}

/// A query late in a long cache (SmolLM2's whole 8192-token context): software devices cap
/// the loop iterations of one invocation, so this checks nothing is cut off.
#[test]
fn attention_over_a_long_cache_matches_reference() {
    let mut r = rng();
    let gpu = &gpus()[0];
    let (nh, nkv, hd, cap) = (3usize, 1usize, 64usize, 8192usize);
    let a = AttnShape {
        n_head: nh as u32,
        n_kv_head: nkv as u32,
        head_dim: hd as u32,
        kv_cap: cap as u32,
        neox: false,
        kv_f16: false,
        seq_len: 0,
    };
    let pos0 = cap - 1;
    let k = randn(&mut r, nkv * cap * hd, 1.0);
    let v = randn(&mut r, nkv * cap * hd, 1.0);
    let qkv = randn(&mut r, a.qkv_stride() as usize, 1.0);
    let (kb, vb, qb) = (
        upload_f32(gpu, &k),
        upload_f32(gpu, &v),
        upload_f32(gpu, &qkv),
    );
    let step = gpu
        .uniform_init(
            "step",
            bytemuck::bytes_of(&Step {
                pos0: pos0 as u32,
                _pad: [0; 3],
            }),
        )
        .unwrap();
    let out = gpu.storage("o", (nh * hd * 4) as u64).unwrap();
    let d = kernels::attention(gpu, a, 1, &step, &qb, &kb, &vb, &out).unwrap();
    kernels::run(gpu, &[d]).unwrap();
    let got = gpu.read_f32(&out, 0, (nh * hd) as u64).unwrap();
    let want = reference::attention(&qkv[..nh * hd], &k, &v, nh, nkv, hd, cap, pos0);
    let e = max_rel_err(&got, &want);
    assert!(e < 1e-4, "rel err {e}");

    // The decode kernel with rope and the cache append folded in, at the same position: the
    // new key (rotated) is scored after all 8,191 cached ones.
    let table = kernels::rope_table(a.head_dim, 10000.0, a.kv_cap);
    let tbl = gpu
        .storage_init("rope", bytemuck::cast_slice(&table))
        .unwrap();
    let (kb, vb, qb) = (
        upload_f32(gpu, &k),
        upload_f32(gpu, &v),
        upload_f32(gpu, &qkv),
    );
    let d = kernels::rope_attention(gpu, a, 1, &step, &qb, &tbl, &kb, &vb, &out).unwrap();
    kernels::run(gpu, &[d]).unwrap();
    let got = gpu.read_f32(&out, 0, (nh * hd) as u64).unwrap();
    let mut q = qkv[..nh * hd].to_vec();
    for h in 0..nh {
        reference::rope(&mut q[h * hd..][..hd], &table, pos0, false);
    }
    let (mut k2, mut v2) = (k.clone(), v.clone());
    for h in 0..nkv {
        let mut kn = qkv[(nh + h) * hd..][..hd].to_vec();
        reference::rope(&mut kn, &table, pos0, false);
        k2[(h * cap + pos0) * hd..][..hd].copy_from_slice(&kn);
        v2[(h * cap + pos0) * hd..][..hd].copy_from_slice(&qkv[(nh + nkv + h) * hd..][..hd]);
    }
    let want = reference::attention(&q, &k2, &v2, nh, nkv, hd, cap, pos0);
    let e = max_rel_err(&got, &want);
    assert!(e < 1e-4, "fused: rel err {e}");
}

/// A matrix larger than one storage binding is split by rows into pieces of whole panels (the
/// CPU-class layout; plain rows on GPU-class kernels): the matmul, its transpose and the
/// embedding read every piece, the last one ending in a partial panel.
#[test]
fn matrices_split_over_several_bindings_match_reference() {
    let mut r = rng();
    for cpu_kernels in [true, false] {
        let mut gpu = Gpu::new(GpuOptions {
            allow_f16: true,
            allow_subgroups: true,
            allow_cpu_kernels: cpu_kernels,
        })
        .unwrap();
        let (n, k, t) = (101usize, 256usize, 5usize);
        for ty in [
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
        ] {
            // About 40 rows to a binding: pieces of 32 rows (whole panels) on the CPU class.
            Arc::get_mut(&mut gpu)
                .unwrap()
                .limits
                .max_storage_buffer_binding_size = (40 * ty.gpu_row_vec4s(k) * 16) as u64;
            let w = randn(&mut r, n * k, 1.0);
            let bytes = quant::quantize(ty, &w);
            let wq = quant::dequantize(ty, &bytes).unwrap();
            let m = QMatrix::upload(&gpu, "w", ty, n as u32, k as u32, &bytes).unwrap();
            assert!(m.pieces.len() >= 3, "{ty:?}: {} pieces", m.pieces.len());
            if gpu.cpu_kernels {
                assert!(m.pieces.iter().all(|p| p.row0 % m.panel == 0), "{ty:?}");
            }
            for t in [1, t] {
                let x = randn(&mut r, t * k, 1.0);
                let xb = upload_f32(&gpu, &x);
                let yb = gpu.storage("y", (t * n * 4) as u64).unwrap();
                let shape = MatmulShape::rows(t as u32, k as u32, n as u32);
                kernels::run(
                    &gpu,
                    &kernels::matmul(&gpu, &m, None, &xb, &yb, shape).unwrap(),
                )
                .unwrap();
                let got = gpu.read_f32(&yb, 0, (t * n) as u64).unwrap();
                let want = reference::matmul(&wq, &x, n, k);
                let e = max_rel_err(&got, &want);
                assert!(e < 2e-3, "{ty:?} t {t} cpu {cpu_kernels}: matmul {e}");
            }
            let dy = randn(&mut r, t * n, 1.0);
            let dyb = upload_f32(&gpu, &dy);
            let dxb = gpu.storage("dx", (t * k * 4) as u64).unwrap();
            let d = kernels::matmul_t(&gpu, &m, &dyb, &dxb, t as u32, n as u32, 0, k as u32, false)
                .unwrap();
            kernels::run(&gpu, &d).unwrap();
            let got = gpu.read_f32(&dxb, 0, (t * k) as u64).unwrap();
            let want: Vec<f32> = (0..t * k)
                .map(|i| (0..n).map(|j| dy[i / k * n + j] * wq[j * k + i % k]).sum())
                .collect();
            let e = max_rel_err(&got, &want);
            assert!(e < 2e-3, "{ty:?} cpu {cpu_kernels}: transposed {e}");
            let toks = [0, 31, 32, 63, 64, 100, 99, 5];
            let (got, want) = (embed_rows(&gpu, &m, &toks), rows_of(&wq, k, &toks));
            assert_eq!(got, want, "{ty:?} cpu {cpu_kernels}: embed");
        }
    }
}
