use lamina::gpu::{Gpu, GpuOptions};
use lamina::kernels::{self, MatmulShape, QMatrix};
use lamina::quant::{self, GgmlType};
use std::time::Instant;
fn main() {
    let sg = std::env::args().nth(1).map(|a| a == "sg").unwrap_or(true);
    let gpu = Gpu::new(GpuOptions {
        allow_f16: true,
        allow_subgroups: sg,
    })
    .unwrap();
    println!("{}", gpu.describe());
    for &(ty, n, k, t) in &[
        (GgmlType::Q8_0, 49152u32, 576u32, 1u32),
        (GgmlType::Q4_1, 1536, 576, 1),
        (GgmlType::Q4_1, 576, 1536, 1),
        (GgmlType::Q4_1, 1536, 576, 128),
    ] {
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let bytes = quant::quantize(ty, &w);
        let m = QMatrix::upload(&gpu, "w", ty, n, k, &bytes).unwrap();
        let x = gpu.storage("x", (t * k * 4) as u64).unwrap();
        let y = gpu.storage("y", (t * n * 4) as u64).unwrap();
        let d = kernels::matmul(
            &gpu,
            &m,
            None,
            &x,
            &y,
            MatmulShape {
                t,
                x_stride: k,
                x_row0: 0,
                y_stride: n,
                y_col: 0,
                swiglu_input: false,
                accumulate: false,
            },
        )
        .unwrap();
        kernels::run(&gpu, &d).unwrap();
        let reps = 10;
        let s = Instant::now();
        for _ in 0..reps {
            kernels::run(&gpu, &d).unwrap();
        }
        let dt = s.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{ty:?} n={n} k={k} t={t}: {:.3} ms, {:.2} GB/s, {:.2} GFLOP/s",
            dt * 1e3,
            m.gpu_bytes() as f64 / dt / 1e9,
            2.0 * (n * k * t) as f64 / dt / 1e9
        );
    }
}
