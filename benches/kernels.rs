//! Kernel throughput on the device wgpu picks: quantized mat-vec (decode, GB/s of weights
//! read) and mat-mat (prefill, GFLOP/s), for the shapes of SmolLM2-135M.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lamina::gpu::{Gpu, GpuOptions};
use lamina::kernels::{self, MatmulShape, QMatrix};
use lamina::quant::{self, GgmlType};

/// Dispatches encoded per submit, so the numbers are the kernels', not the submit-and-wait
/// round trip (which `lamina bench` counts where it belongs, per token).
const REPEATS: usize = 16;

/// Encodes `d` REPEATS times in one pass and waits once.
fn run_repeated(gpu: &Gpu, d: &[kernels::Dispatch]) {
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        for _ in 0..REPEATS {
            for x in d {
                x.encode(gpu, &mut pass);
            }
        }
    }
    gpu.submit(enc);
    gpu.wait().unwrap();
}

fn bench(c: &mut Criterion) {
    lamina::gpu::two_software_threads_per_core();
    let gpu = Gpu::new(GpuOptions::default()).expect("a GPU adapter");
    eprintln!("device: {}", gpu.describe());
    let mut group = c.benchmark_group("matmul");
    group.sample_size(10);
    group.measurement_time(std::time::Duration::from_secs(5));
    let cases = [
        (GgmlType::Q4_1, 1536u32, 576u32, 1u32),
        (GgmlType::Q4_1, 576, 1536, 1),
        (GgmlType::Q8_0, 49152, 576, 1),
        (GgmlType::Q4_K, 1536, 1024, 1),
        (GgmlType::Q4_1, 1536, 576, 128),
    ];
    for (ty, n, k, t) in cases {
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let m = QMatrix::upload(&gpu, "w", ty, n, k, &quant::quantize(ty, &w)).unwrap();
        let x = gpu.storage("x", (t * k * 4) as u64).unwrap();
        let y = gpu.storage("y", (t * n * 4) as u64).unwrap();
        let shape = MatmulShape {
            t,
            x_stride: k,
            x_row0: 0,
            y_stride: n,
            y_col: 0,
            swiglu_input: false,
            accumulate: false,
        };
        let d = kernels::matmul(&gpu, &m, None, &x, &y, shape).unwrap();
        kernels::run(&gpu, &d).unwrap();
        if t == 1 {
            group.throughput(Throughput::Bytes(m.gpu_bytes() * REPEATS as u64));
        } else {
            group.throughput(Throughput::Elements(
                2 * (n * k * t) as u64 * REPEATS as u64,
            )); // flops
        }
        group.bench_function(format!("{ty:?}_{n}x{k}_t{t}"), |b| {
            b.iter(|| run_repeated(&gpu, &d))
        });
        if t > 1 {
            // The training backward: dX = dY W with the same frozen weights.
            let d = kernels::matmul_t(&gpu, &m, &y, &x, t, n, 0, k, false).unwrap();
            group.bench_function(format!("{ty:?}_{n}x{k}_t{t}_transposed"), |b| {
                b.iter(|| run_repeated(&gpu, &d))
            });
        }
    }
    group.finish();
}

/// What one dispatch costs on its own: a decode-sized rmsnorm (one row of 576), whose work is
/// tiny, launched DISPATCHES times in one submit (elements/s = dispatches/s), and once per
/// submit (the submit-and-wait round trip of one token's plan, without its work).
fn dispatch_cost(c: &mut Criterion) {
    lamina::gpu::two_software_threads_per_core();
    const DISPATCHES: usize = 256;
    let gpu = Gpu::new(GpuOptions::default()).expect("a GPU adapter");
    let mut group = c.benchmark_group("dispatch");
    group.sample_size(20);
    group.measurement_time(std::time::Duration::from_secs(5));
    let d = 576u32;
    let x = gpu.storage("x", d as u64 * 4).unwrap();
    let g = gpu.storage("g", d as u64 * 4).unwrap();
    let y = gpu.storage("y", d as u64 * 4).unwrap();
    let one = kernels::rmsnorm(&gpu, &x, &g, &y, d, 1, 0, 1e-5).unwrap();
    let run = |n: usize| {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for _ in 0..n {
                one.encode(&gpu, &mut pass);
            }
        }
        gpu.submit(enc);
        gpu.wait().unwrap();
    };
    group.throughput(Throughput::Elements(DISPATCHES as u64));
    group.bench_function(format!("rmsnorm_576_x{DISPATCHES}_one_submit"), |b| {
        b.iter(|| run(DISPATCHES))
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("rmsnorm_576_x1_one_submit", |b| b.iter(|| run(1)));
    group.finish();
}

criterion_group!(benches, bench, dispatch_cost);
criterion_main!(benches);
