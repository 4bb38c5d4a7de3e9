//! End to end on SmolLM2-135M: prefill of 128 tokens and decode, in tokens/s, plus the
//! device-independent counters per decoded token (dispatches, submits, bytes read back) and
//! peak buffer bytes.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lamina::engine::{Engine, EngineOptions};
use lamina::generate::{GenerateParams, SamplingParams};

fn bench(c: &mut Criterion) {
    lamina::gpu::two_software_threads_per_core();
    let mut engine = Engine::load(None, EngineOptions::default()).expect("default model");
    let gpu = engine.gpu().clone();
    eprintln!("device: {}", gpu.describe());
    let prompt: Vec<u32> = (0..128u32).map(|i| 1000 + (i * 37) % 20000).collect();
    let mut group = c.benchmark_group("smollm2");
    group.sample_size(10);
    group.measurement_time(std::time::Duration::from_secs(20));

    group.throughput(Throughput::Elements(128));
    group.bench_function("prefill_128", |b| {
        b.iter(|| {
            engine.model_mut().truncate(0);
            engine.model_mut().forward_last(&prompt, None).unwrap();
            gpu.wait().unwrap();
        })
    });

    let decode_tokens = 16usize;
    let params = GenerateParams {
        max_tokens: decode_tokens + 1,
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    let session = &mut engine;
    // Counters for one generation: prefill of 8 tokens, then decode.
    let before = gpu.counters.snapshot();
    let g = session
        .generate_tokens(&prompt[..8], &params, &mut |_| true)
        .unwrap();
    let after = gpu.counters.snapshot();
    let n = g.tokens.len() as u64;
    eprintln!(
        "per generated token: {:.1} dispatches, {:.2} submits, {:.1} bytes read back; peak buffers {:.1} MiB; decode {:.2} tok/s",
        (after.dispatches - before.dispatches) as f64 / n as f64,
        (after.submits - before.submits) as f64 / n as f64,
        (after.bytes_read_back - before.bytes_read_back) as f64 / n as f64,
        after.peak_bytes as f64 / 1048576.0,
        g.timings.decode_tok_s(),
    );
    group.throughput(Throughput::Elements(decode_tokens as u64));
    group.bench_function("decode_16", |b| {
        b.iter(|| {
            session.reset();
            session
                .generate_tokens(&prompt[..8], &params, &mut |_| true)
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
