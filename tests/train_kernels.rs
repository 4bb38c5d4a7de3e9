//! Training kernels: cross-entropy forward/backward (against a CPU reference and finite
//! differences) and AdamW (against PyTorch's update rule in f64).

use lamina::gpu::{Gpu, GpuOptions};
use lamina::kernels::{self, reference, AdamW, QMatrix};
use lamina::quant::{self, GgmlType};
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
    let (rows, vocab) = (3usize, 1000usize);
    let x: Vec<f32> = (0..rows * vocab)
        .map(|_| r.random::<f32>() * 8.0 - 4.0)
        .collect();
    let labels: Vec<u32> = (0..rows).map(|_| r.random_range(0..vocab as u32)).collect();
    let scale = 1.0 / rows as f32;
    let xb = gpu.storage_init("x", bytemuck::cast_slice(&x)).unwrap();
    let lb = gpu
        .storage_init("l", bytemuck::cast_slice(&labels))
        .unwrap();
    let loss_b = gpu.storage("loss", rows as u64 * 4).unwrap();
    let d =
        kernels::cross_entropy(&gpu, &xb, &lb, &loss_b, vocab as u32, rows as u32, scale).unwrap();
    kernels::run(&gpu, &[d]).unwrap();
    let loss = gpu.read_f32(&loss_b, 0, rows as u64).unwrap();
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
    for ty in [
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ] {
        let (n, k, t) = (24usize, 256usize, 3usize);
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
