//! Training kernels: cross-entropy forward/backward (against a CPU reference and finite
//! differences) and AdamW (against PyTorch's update rule in f64).

use lamina::gpu::{Gpu, GpuOptions};
use lamina::kernels::{
    self, reference, AdamW, AttnBackward, AttnShape, LoraGrad, LoraShape, QMatrix,
};
use lamina::quant;
use rand::{Rng, SeedableRng};

fn rng() -> rand::rngs::StdRng {
    let seed: u64 = rand::rng().random();
    eprintln!("seed {seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}

#[test]
fn cross_entropy_matches_reference_and_finite_differences() {
    let gpu = Gpu::new(GpuOptions::default()).unwrap();
    let mut r = rng();
    let (rows, vocab) = (4usize, 1000usize);
    let x: Vec<f32> = (0..rows * vocab)
        .map(|_| r.random::<f32>() * 8.0 - 4.0)
        .collect();
    let mut labels: Vec<u32> = (0..rows).map(|_| r.random_range(0..vocab as u32)).collect();
    // A padding row: no loss, zero gradient.
    labels[2] = kernels::PAD_ROW;
    let scale = 1.0 / rows as f32;
    let xb = gpu.storage_init("x", bytemuck::cast_slice(&x)).unwrap();
    // The kernel reads labels and writes losses from an offset (chunks of rows).
    let shifted: Vec<u32> = [7].into_iter().chain(labels.iter().copied()).collect();
    let lb = gpu
        .storage_init("l", bytemuck::cast_slice(&shifted))
        .unwrap();
    let loss_b = gpu.storage("loss", (rows as u64 + 1) * 4).unwrap();
    let d = kernels::cross_entropy(&gpu, &xb, &lb, &loss_b, vocab as u32, rows as u32, 1, scale)
        .unwrap();
    kernels::run(&gpu, &[d]).unwrap();
    let loss = gpu.read_f32(&loss_b, 1, rows as u64).unwrap();
    assert_eq!(loss[2], 0.0);
    let grad = gpu.read_f32(&xb, 0, (rows * vocab) as u64).unwrap();
    let (want_loss, want_grad) = reference::cross_entropy(&x, &labels, scale);
    for (a, b) in loss.iter().zip(&want_loss) {
        assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "loss {a} vs {b}");
    }
    let gmax = want_grad.iter().fold(0f32, |m, v| m.max(v.abs()));
    let gerr = grad
        .iter()
        .zip(&want_grad)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(gerr < 1e-5 * gmax.max(1e-3) + 1e-7, "grad err {gerr}");

    // Finite differences of the mean loss (f64 on the CPU reference) at a few coordinates,
    // including each label.
    let mean = |x: &[f32]| -> f64 {
        let (l, _) = reference::cross_entropy(x, &labels, 1.0);
        l.iter().map(|&v| v as f64).sum::<f64>() / rows as f64
    };
    let mut coords: Vec<usize> = labels
        .iter()
        .enumerate()
        .filter(|(_, &l)| l != kernels::PAD_ROW)
        .map(|(i, &l)| i * vocab + l as usize)
        .collect();
    coords.extend((0..5).map(|_| r.random_range(0..rows * vocab)));
    for c in coords {
        let h = 1e-2f32;
        let (mut xp, mut xm) = (x.clone(), x.clone());
        xp[c] += h;
        xm[c] -= h;
        let fd = (mean(&xp) - mean(&xm)) / (2.0 * h as f64);
        assert!(
            (fd - grad[c] as f64).abs() < 1e-4,
            "coord {c}: fd {fd} vs kernel {}",
            grad[c]
        );
    }
}

#[test]
fn gather_scatter_rows_and_sum_squares_match_reference() {
    let gpu = Gpu::new(GpuOptions::default()).unwrap();
    let mut r = rng();
    let (rows, d) = (9usize, 12usize);
    let src: Vec<f32> = (0..rows * d).map(|_| r.random::<f32>() - 0.5).collect();
    // Index list read from offset 2: rows 7, pad, 3, 0.
    let idx = [5u32, 5, 7, kernels::PAD_ROW, 3, 0];
    let sb = gpu.storage_init("s", bytemuck::cast_slice(&src)).unwrap();
    let ib = gpu.storage_init("i", bytemuck::cast_slice(&idx)).unwrap();
    let gathered = gpu.storage("g", (4 * d * 4) as u64).unwrap();
    let back = gpu
        .storage_init("b", bytemuck::cast_slice(&vec![9f32; rows * d]))
        .unwrap();
    let sums = gpu.storage("sums", 8).unwrap();
    let ds = vec![
        kernels::gather_rows(&gpu, true, &sb, &ib, &gathered, 4, d as u32, 2).unwrap(),
        kernels::gather_rows(&gpu, false, &gathered, &ib, &back, 4, d as u32, 2).unwrap(),
        kernels::sum_squares(&gpu, &sb, &sums, (rows * d) as u32, 1).unwrap(),
    ];
    kernels::run(&gpu, &ds).unwrap();
    let g = gpu.read_f32(&gathered, 0, (4 * d) as u64).unwrap();
    for (i, &j) in idx[2..].iter().enumerate() {
        let want: Vec<f32> = if j == kernels::PAD_ROW {
            vec![0.0; d]
        } else {
            src[j as usize * d..][..d].to_vec()
        };
        assert_eq!(&g[i * d..][..d], &want[..], "gathered row {i}");
    }
    let b = gpu.read_f32(&back, 0, (rows * d) as u64).unwrap();
    for row in 0..rows {
        let want = if [7, 3, 0].contains(&row) {
            src[row * d..][..d].to_vec()
        } else {
            vec![9.0; d]
        };
        assert_eq!(&b[row * d..][..d], &want[..], "scattered row {row}");
    }
    let want: f64 = src.iter().map(|&v| (v as f64).powi(2)).sum();
    let got = gpu.read_f32(&sums, 1, 1).unwrap()[0] as f64;
    assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
}

#[test]
fn adamw_matches_pytorch_rule_over_steps() {
    let gpu = Gpu::new(GpuOptions::default()).unwrap();
    let mut r = rng();
    let n = 1000usize;
    let opt = AdamW {
        lr: 1e-2,
        weight_decay: 0.1,
        ..Default::default()
    };
    let p0: Vec<f32> = (0..n).map(|_| r.random::<f32>() - 0.5).collect();
    let pb = gpu.storage_init("p", bytemuck::cast_slice(&p0)).unwrap();
    let gb = gpu.storage("g", n as u64 * 4).unwrap();
    let mb = gpu.storage_init("m", &vec![0u8; n * 4]).unwrap();
    let vb = gpu.storage_init("v", &vec![0u8; n * 4]).unwrap();
    let d = kernels::adamw(&gpu, &opt.params(n as u32, 1, 1.0), &pb, &gb, &mb, &vb).unwrap();
    let (mut p, mut m, mut v) = (
        p0.iter().map(|&x| x as f64).collect::<Vec<_>>(),
        vec![0f64; n],
        vec![0f64; n],
    );
    for step in 1..=5 {
        let g: Vec<f32> = (0..n).map(|_| r.random::<f32>() * 2.0 - 1.0).collect();
        let grad_scale = 0.5; // as clipping would
        gpu.queue.write_buffer(&gb, 0, bytemuck::cast_slice(&g));
        gpu.queue.write_buffer(
            d.uniform(),
            0,
            bytemuck::bytes_of(&opt.params(n as u32, step, grad_scale)),
        );
        kernels::run(&gpu, std::slice::from_ref(&d)).unwrap();
        let gs: Vec<f64> = g.iter().map(|&x| x as f64 * grad_scale as f64).collect();
        reference::adamw(
            &mut p,
            &gs,
            &mut m,
            &mut v,
            step as i32,
            1e-2,
            (0.9, 0.999),
            1e-8,
            0.1,
        );
    }
    let got = gpu.read_f32(&pb, 0, n as u64).unwrap();
    let err = got
        .iter()
        .zip(&p)
        .fold(0f64, |e, (a, b)| e.max((*a as f64 - b).abs()));
    assert!(err < 1e-5, "max err {err}");
}

/// Finite differences of `f` at a few coordinates of `x` against `grad`.
fn check_fd(
    f: &dyn Fn(&[f32]) -> f64,
    x: &[f32],
    grad: &[f32],
    coords: &[usize],
    h: f32,
    tol: f64,
) {
    for &c in coords {
        let (mut xp, mut xm) = (x.to_vec(), x.to_vec());
        xp[c] += h;
        xm[c] -= h;
        let fd = (f(&xp) - f(&xm)) / (2.0 * h as f64);
        let g = grad[c] as f64;
        assert!(
            (fd - g).abs() < tol * g.abs().max(1.0),
            "coord {c}: fd {fd} vs kernel {g}"
        );
    }
}

#[test]
fn quantized_matmul_backward_matches_finite_differences() {
    let gpu = Gpu::new(GpuOptions::default()).unwrap();
    let mut r = rng();
    for ty in quant::SUPPORTED_TYPES {
        // 3 tokens: one per invocation; 6: a block of 4 and a partial one.
        for (t, n, k) in [
            (3usize, 24usize, 256usize),
            (6, 24, 256),
            (9, 40, 512),
            (16, 40, 576),
            (16, 9000, 576),
        ] {
            if k % ty.gpu_block_elems() != 0 {
                continue;
            }
            let w: Vec<f32> = (0..n * k).map(|_| r.random::<f32>() - 0.5).collect();
            let bytes = quant::quantize(ty, &w);
            let wq = quant::dequantize(ty, &bytes).unwrap();
            let m = QMatrix::upload(&gpu, "w", ty, n as u32, k as u32, &bytes).unwrap();
            let x: Vec<f32> = (0..t * k).map(|_| r.random::<f32>() - 0.5).collect();
            let dy: Vec<f32> = (0..t * n).map(|_| r.random::<f32>() - 0.5).collect();
            let dyb = gpu.storage_init("dy", bytemuck::cast_slice(&dy)).unwrap();
            let dxb = gpu.storage("dx", (t * k * 4) as u64).unwrap();
            let d = kernels::matmul_t(&gpu, &m, &dyb, &dxb, t as u32, n as u32, 0, k as u32, false)
                .unwrap();
            kernels::run(&gpu, &d).unwrap();
            let dx = gpu.read_f32(&dxb, 0, (t * k) as u64).unwrap();
            // L = sum(dy * (x W^T)): dL/dx is what the kernel computes.
            let loss = |x: &[f32]| -> f64 {
                let y = reference::matmul(&wq, x, n, k);
                y.iter().zip(&dy).map(|(a, b)| *a as f64 * *b as f64).sum()
            };
            let coords: Vec<usize> = (0..6).map(|_| r.random_range(0..t * k)).collect();
            check_fd(&loss, &x, &dx, &coords, 1e-2, 1e-3);
            // Every coordinate against dY W on the CPU.
            for ti in 0..t {
                for kk in 0..k {
                    let want: f64 = (0..n)
                        .map(|j| dy[ti * n + j] as f64 * wq[j * k + kk] as f64)
                        .sum();
                    let got = dx[ti * k + kk] as f64;
                    assert!(
                        (got - want).abs() < 1e-4,
                        "{ty:?} t={t}: [{ti}, {kk}] {got} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let gpu = Gpu::new(GpuOptions::default()).unwrap();
    let mut r = rng();
    let (d, t) = (64usize, 4usize);
    let x: Vec<f32> = (0..t * d).map(|_| r.random::<f32>() * 4.0 - 2.0).collect();
    let g: Vec<f32> = (0..d).map(|_| r.random::<f32>() + 0.5).collect();
    let dy: Vec<f32> = (0..t * d).map(|_| r.random::<f32>() - 0.5).collect();
    let up = |v: &[f32]| gpu.storage_init("b", bytemuck::cast_slice(v)).unwrap();
    let (xb, gb, dyb) = (up(&x), up(&g), up(&dy));
    let prior: Vec<f32> = (0..t * d).map(|_| r.random::<f32>()).collect();
    let dxb = up(&prior);
    let k = kernels::rmsnorm_backward(&gpu, &xb, &gb, &dyb, &dxb, d as u32, t as u32, 1e-5, true)
        .unwrap();
    kernels::run(&gpu, &[k]).unwrap();
    let got = gpu.read_f32(&dxb, 0, (t * d) as u64).unwrap();
    let dx: Vec<f32> = got.iter().zip(&prior).map(|(a, b)| a - b).collect();
    let loss = |x: &[f32]| -> f64 {
        let y = reference::rmsnorm(x, &g, 1e-5);
        y.iter().zip(&dy).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    let coords: Vec<usize> = (0..8).map(|_| r.random_range(0..t * d)).collect();
    check_fd(&loss, &x, &dx, &coords, 1e-2, 2e-3);
}

#[test]
fn swiglu_backward_matches_finite_differences() {
    let gpu = Gpu::new(GpuOptions::default()).unwrap();
    let mut r = rng();
    let (f, t) = (48usize, 3usize);
    let gu: Vec<f32> = (0..t * 2 * f)
        .map(|_| r.random::<f32>() * 6.0 - 3.0)
        .collect();
    let dact: Vec<f32> = (0..t * f).map(|_| r.random::<f32>() - 0.5).collect();
    let up = |v: &[f32]| gpu.storage_init("b", bytemuck::cast_slice(v)).unwrap();
    let (gub, db) = (up(&gu), up(&dact));
    let out = gpu.storage("dgu", (t * 2 * f * 4) as u64).unwrap();
    let k = kernels::swiglu_backward(&gpu, &gub, &db, &out, f as u32, t as u32).unwrap();
    kernels::run(&gpu, &[k]).unwrap();
    let dgu = gpu.read_f32(&out, 0, (t * 2 * f) as u64).unwrap();
    let loss = |gu: &[f32]| -> f64 {
        (0..t)
            .flat_map(|ti| (0..f).map(move |j| (ti, j)))
            .map(|(ti, j)| {
                let (g, u) = (gu[ti * 2 * f + j] as f64, gu[ti * 2 * f + f + j] as f64);
                g / (1.0 + (-g).exp()) * u * dact[ti * f + j] as f64
            })
            .sum()
    };
    let coords: Vec<usize> = (0..10).map(|_| r.random_range(0..t * 2 * f)).collect();
    check_fd(&loss, &gu, &dgu, &coords, 1e-3, 1e-3);
}

#[test]
fn lora_backward_matches_finite_differences() {
    let gpu = Gpu::new(GpuOptions::default()).unwrap();
    let mut r = rng();
    // The kernels work in 4 x 4 blocks: ranks, outputs and tokens that are not multiples of 4
    // leave partial blocks.
    for (swiglu, p_drop, rank, n) in [
        (false, 0.0, 4usize, 24usize),
        (true, 0.0, 5, 22),
        (false, 0.3, 5, 22),
        (true, 0.3, 4, 24),
    ] {
        let (k, t) = (32usize, 3usize);
        let x_stride = if swiglu { 2 * k } else { k };
        let dropout = kernels::Dropout {
            p: p_drop,
            seed: r.random(),
        };
        let scale = 2.0f32;
        let mut randv =
            |len: usize| -> Vec<f32> { (0..len).map(|_| r.random::<f32>() - 0.5).collect() };
        let (x, a, b, dy) = (
            randv(t * x_stride),
            randv(rank * k),
            randv(n * rank),
            randv(t * n),
        );
        let xin = |x: &[f32]| -> Vec<f32> {
            (0..t)
                .flat_map(|ti| {
                    let row = x[ti * x_stride..][..x_stride].to_vec();
                    (0..k).map(move |j| {
                        let v = if swiglu {
                            reference::silu(row[j]) * row[k + j]
                        } else {
                            row[j]
                        };
                        v * reference::dropout_keep(dropout.seed, ti as u32, j as u32, dropout.p)
                    })
                })
                .collect()
        };
        if p_drop > 0.0 {
            let kept = xin(&vec![1.0; t * x_stride])
                .iter()
                .filter(|&&v| v != 0.0)
                .count();
            assert!((50..=90).contains(&kept), "{kept} of 96 kept at p = 0.3");
        }
        // The forward's down projection applies the same mask.
        {
            let up = |v: &[f32]| gpu.storage_init("b", bytemuck::cast_slice(v)).unwrap();
            let (xb, ab) = (up(&x), up(&a));
            let ub = gpu.storage("u", (t * rank * 4) as u64).unwrap();
            let d = kernels::lora_down(
                &gpu,
                &ab,
                &xb,
                &ub,
                k as u32,
                rank as u32,
                t as u32,
                x_stride as u32,
                swiglu,
                dropout,
            )
            .unwrap();
            kernels::run(&gpu, &[d]).unwrap();
            let got = gpu.read_f32(&ub, 0, (t * rank) as u64).unwrap();
            let want = reference::matmul(&a, &xin(&x), rank, k);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "lora_down with dropout: {g} vs {w}");
            }
        }
        // L = sum(dy * scale * (xin A^T) B^T)
        let loss = |x: &[f32], a: &[f32], b: &[f32]| -> f64 {
            let u = reference::matmul(a, &xin(x), rank, k);
            let y = reference::matmul(b, &u, n, rank);
            y.iter()
                .zip(&dy)
                .map(|(p, q)| scale as f64 * *p as f64 * *q as f64)
                .sum()
        };
        let up = |v: &[f32]| gpu.storage_init("b", bytemuck::cast_slice(v)).unwrap();
        let u_fwd = reference::matmul(&a, &xin(&x), rank, k);
        let (xb, ab, bb, dyb, ub) = (up(&x), up(&a), up(&b), up(&dy), up(&u_fwd));
        let du = gpu.storage("du", (t * rank * 4) as u64).unwrap();
        let (da, dbb, dx) = (
            up(&vec![0.0; rank * k]),
            up(&vec![0.0; n * rank]),
            up(&vec![0.0; t * k]),
        );
        let s = LoraShape {
            k: k as u32,
            n: n as u32,
            r: rank as u32,
            t: t as u32,
            x_stride: x_stride as u32,
            dy_stride: n as u32,
            dy_col: 0,
            dx_stride: k as u32,
            scale,
            swiglu_input: swiglu,
            dropout,
        };
        let ds = vec![
            kernels::lora_backward(&gpu, LoraGrad::DU, s, &xb, &dyb, &ab, &bb, &ub, &du).unwrap(),
            kernels::lora_backward(
                &gpu,
                LoraGrad::DB { accumulate: true },
                s,
                &xb,
                &dyb,
                &ab,
                &bb,
                &ub,
                &dbb,
            )
            .unwrap(),
            kernels::lora_backward(
                &gpu,
                LoraGrad::DA { accumulate: false },
                s,
                &xb,
                &dyb,
                &ab,
                &bb,
                &du,
                &da,
            )
            .unwrap(),
            kernels::lora_backward(&gpu, LoraGrad::DX, s, &xb, &dyb, &ab, &bb, &du, &dx).unwrap(),
        ];
        kernels::run(&gpu, &ds).unwrap();
        let g_a = gpu.read_f32(&da, 0, (rank * k) as u64).unwrap();
        let g_b = gpu.read_f32(&dbb, 0, (n * rank) as u64).unwrap();
        let g_x = gpu.read_f32(&dx, 0, (t * k) as u64).unwrap();
        let coords = |len: usize, r: &mut rand::rngs::StdRng| -> Vec<usize> {
            (0..6).map(|_| r.random_range(0..len)).collect()
        };
        let mut rr = rand::rngs::StdRng::seed_from_u64(7);
        check_fd(
            &|v| loss(&x, v, &b),
            &a,
            &g_a,
            &coords(rank * k, &mut rr),
            1e-2,
            1e-3,
        );
        check_fd(
            &|v| loss(&x, &a, v),
            &b,
            &g_b,
            &coords(n * rank, &mut rr),
            1e-2,
            1e-3,
        );
        if !swiglu {
            // DX is the gradient of the LoRA input (for down_proj: of silu(gate) * up, chained
            // through swiglu_backward by the caller).
            check_fd(
                &|v| loss(v, &a, &b),
                &x,
                &g_x,
                &coords(t * k, &mut rr),
                1e-2,
                1e-3,
            );
        }
    }
}

#[test]
fn attention_and_rope_backward_match_finite_differences() {
    // The device-class kernels (on llvmpipe the CPU-class attention backward, which needs
    // sequences of a multiple of 8 tokens and head_dim a multiple of 32) and the GPU-class ones.
    let gpus = [true, false].map(|allow_cpu_kernels| {
        Gpu::new(GpuOptions {
            allow_cpu_kernels,
            ..GpuOptions::default()
        })
        .unwrap()
    });
    let mut r = rng();
    // Two sequences of t tokens end to end, each with its own cache slice.
    let shapes = [(4usize, 2usize, 8usize, 5usize, 2usize), (4, 2, 32, 16, 2)];
    for (gpu, (neox, (nh, nkv, hd, t, n_seq))) in gpus.iter().flat_map(|g| {
        [false, true]
            .into_iter()
            .flat_map(move |n| shapes.into_iter().map(move |s| (g, (n, s))))
    }) {
        eprintln!(
            "cpu_kernels={} neox={neox} head_dim={hd} t={t}",
            gpu.cpu_kernels
        );
        let a = AttnShape {
            n_head: nh as u32,
            n_kv_head: nkv as u32,
            head_dim: hd as u32,
            kv_cap: t as u32,
            neox,
            kv_f16: false,
            seq_len: t as u32,
        };
        let rows = t * n_seq;
        let stride = a.qkv_stride() as usize;
        let table = kernels::rope_table(a.head_dim, 10000.0, t.max(8) as u32);
        // Unrotated q, k, v rows (what the QKV matmul produces).
        let qkv: Vec<f32> = (0..rows * stride)
            .map(|_| r.random::<f32>() * 2.0 - 1.0)
            .collect();
        let d_out: Vec<f32> = (0..rows * nh * hd)
            .map(|_| r.random::<f32>() - 0.5)
            .collect();
        // CPU forward from unrotated rows: rope, then causal attention, per sequence.
        let forward = |qkv: &[f32]| -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
            let mut rot = qkv.to_vec();
            let mut k = vec![0f32; n_seq * nkv * t * hd];
            let mut v = vec![0f32; n_seq * nkv * t * hd];
            let mut o = Vec::new();
            for sq in 0..n_seq {
                let mut q = Vec::new();
                for ti in 0..t {
                    let row = (sq * t + ti) * stride;
                    for h in 0..nh + nkv {
                        reference::rope(&mut rot[row + h * hd..][..hd], &table, ti, neox);
                    }
                    q.extend_from_slice(&rot[row..][..nh * hd]);
                    for h in 0..nkv {
                        let c = ((sq * nkv + h) * t + ti) * hd;
                        k[c..][..hd].copy_from_slice(&rot[row + (nh + h) * hd..][..hd]);
                        v[c..][..hd].copy_from_slice(&qkv[row + (nh + nkv + h) * hd..][..hd]);
                    }
                }
                let kv = sq * nkv * t * hd..(sq + 1) * nkv * t * hd;
                o.extend(reference::attention(
                    &q,
                    &k[kv.clone()],
                    &v[kv],
                    nh,
                    nkv,
                    hd,
                    t,
                    0,
                ));
            }
            (rot, k, v, o)
        };
        let loss = |qkv: &[f32]| -> f64 {
            let (_, _, _, o) = forward(qkv);
            o.iter()
                .zip(&d_out)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum()
        };
        let (rot, k, v, o) = forward(&qkv);
        // The batched forward (rope + cache append + attention per sequence) against the CPU.
        {
            let up = |x: &[f32]| gpu.storage_init("b", bytemuck::cast_slice(x)).unwrap();
            let (qkv_b, tb) = (up(&qkv), up(bytemuck::cast_slice(&table)));
            let kc = gpu.storage("k", (k.len() * 4) as u64).unwrap();
            let vc = gpu.storage("v", (v.len() * 4) as u64).unwrap();
            let out = gpu.storage("o", (o.len() * 4) as u64).unwrap();
            let step = gpu
                .uniform_init("step", bytemuck::bytes_of(&kernels::Step::default()))
                .unwrap();
            let n = rows as u32;
            let ds = vec![
                kernels::rope_kv(gpu, a, n, &step, &qkv_b, &tb, &kc, &vc).unwrap(),
                kernels::attention(gpu, a, n, &step, &qkv_b, &kc, &vc, &out).unwrap(),
            ];
            kernels::run(gpu, &ds).unwrap();
            let max_err = |got: Vec<f32>, want: &[f32]| {
                got.iter()
                    .zip(want)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            };
            assert!(max_err(gpu.read_f32(&out, 0, o.len() as u64).unwrap(), &o) < 1e-5);
            assert!(max_err(gpu.read_f32(&kc, 0, k.len() as u64).unwrap(), &k) < 1e-5);
            assert!(max_err(gpu.read_f32(&vc, 0, v.len() as u64).unwrap(), &v) < 1e-6);
            // q is rotated in place (k goes to the cache).
            let got_q = gpu.read_f32(&qkv_b, 0, rot.len() as u64).unwrap();
            for row in 0..rows {
                let q = row * stride..row * stride + nh * hd;
                assert!(max_err(got_q[q.clone()].to_vec(), &rot[q]) < 1e-5);
            }
        }
        let up = |x: &[f32]| gpu.storage_init("b", bytemuck::cast_slice(x)).unwrap();
        let (qb, kb, vb, ob, dob) = (up(&rot), up(&k), up(&v), up(&o), up(&d_out));
        let stats = gpu.storage("stats", (rows * nh * 8) as u64).unwrap();
        let dqkv = gpu.storage("dqkv", (rows * stride * 4) as u64).unwrap();
        let tb = up(bytemuck::cast_slice(&table));
        let mut ds = kernels::attention_backward(
            gpu,
            a,
            rows as u32,
            AttnBackward {
                qkv: &qb,
                k_cache: &kb,
                v_cache: &vb,
                out: &ob,
                d_out: &dob,
                stats: &stats,
                d_qkv: &dqkv,
            },
        )
        .unwrap();
        ds.push(kernels::rope_backward(gpu, a, rows as u32, &dqkv, &tb).unwrap());
        kernels::run(gpu, &ds).unwrap();
        let grad = gpu.read_f32(&dqkv, 0, (rows * stride) as u64).unwrap();
        // Every coordinate (q, k and v of every token and head) of the small shape; a random
        // tenth of the larger one's.
        let coords: Vec<usize> = (0..rows * stride)
            .filter(|_| hd == 8 || r.random::<f32>() < 0.1)
            .collect();
        check_fd(&loss, &qkv, &grad, &coords, 1e-2, 2e-3);
    }
}
