//! The engine under misuse and faults, on the real model: stop strings over non-ASCII text,
//! `max_tokens = 0`, adapter swaps between calls, a device error in the middle of a session,
//! and many calls in one process without growth.

use lamina::adapter::{GpuAdapter, LoraConfig, LoraWeights};
use lamina::engine::{Engine, EngineOptions};
use lamina::generate::{GenerateParams, SamplingParams, StopReason};
use lamina::model::ModelOptions;
use lamina::tokenizer::ChatMessage;
use std::sync::Arc;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures");

/// Held by every test here: the soak test measures the process's memory, which another
/// test's engine loaded in parallel would change.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn engine() -> Engine {
    Engine::load(
        None,
        EngineOptions {
            model: ModelOptions {
                context: 512,
                batch: 64,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap()
}

fn greedy(max_tokens: usize, stop: &[&str]) -> GenerateParams {
    GenerateParams {
        max_tokens,
        sampling: SamplingParams::greedy(),
        stop: stop.iter().map(|s| s.to_string()).collect(),
        cancel: None,
        ignore_eos: false,
    }
}

/// The fixture's PEFT tensors (all 30 layers, r 8) as an adapter on `e`'s model.
fn fixture_adapter(e: &Engine) -> Arc<GpuAdapter> {
    let bytes = std::fs::read(format!("{FIXTURES}/smollm2/lora.safetensors")).unwrap();
    let w = LoraWeights::from_safetensors(
        &bytes,
        LoraConfig {
            r: 8,
            alpha: 16.0,
            use_rslora: false,
        },
    )
    .unwrap();
    Arc::new(GpuAdapter::upload(e.gpu(), &w, &e.model().cfg).unwrap())
}

#[test]
fn stop_strings_over_accented_and_emoji_text_do_not_panic() {
    let _serial = serial();
    let mut e = engine();
    let prompts = [
        "Écris une phrase en français sur le café et les crêpes.",
        "Write three emoji that describe happiness, then explain them.",
        "Translate to German: The weather is nice. Größe, Übung, Straße.",
    ];
    for p in prompts {
        let msgs = [ChatMessage::new("user", p)];
        // Multi-byte stops and a one-byte stop next to multi-byte text.
        for stops in [&["."][..], &["é", "ü"][..], &["🙂", "😀"][..], &["ß."][..]] {
            let mut streamed = String::new();
            let g = e
                .chat(&msgs, &greedy(24, stops), &mut |t| {
                    streamed.push_str(t);
                    true
                })
                .unwrap();
            assert_eq!(streamed, g.text);
            for s in stops {
                assert!(!g.text.contains(s), "{s:?} in {:?}", g.text);
            }
        }
    }
}

#[test]
fn max_tokens_zero_yields_nothing() {
    let _serial = serial();
    let mut e = engine();
    let mut pieces = 0;
    let g = e
        .generate("Once upon a time", &greedy(0, &[]), &mut |_| {
            pieces += 1;
            true
        })
        .unwrap();
    assert!(
        g.tokens.is_empty() && g.text.is_empty() && pieces == 0,
        "{g:?}"
    );
    assert_eq!(g.stop_reason, StopReason::Length);
}

#[test]
fn swapping_adapters_between_calls_never_reuses_a_stale_cache() {
    let _serial = serial();
    let mut e = engine();
    let prompt = "The quick brown fox";
    let base = e.generate(prompt, &greedy(8, &[]), &mut |_| true).unwrap();
    let adapter = fixture_adapter(&e);
    e.apply_adapters(vec![(adapter.clone(), 1.0)]).unwrap();
    let tuned = e.generate(prompt, &greedy(8, &[]), &mut |_| true).unwrap();
    assert_eq!(tuned.timings.prefill_tokens, tuned.timings.prompt_tokens);
    e.apply_adapters(vec![]).unwrap();
    let again = e.generate(prompt, &greedy(8, &[]), &mut |_| true).unwrap();
    assert_eq!(
        again.tokens, base.tokens,
        "base text after an adapter round trip"
    );
    // A direct forward through the model also drops the cached conversation.
    let ids = e
        .tokenizer()
        .encode("Something else entirely", true)
        .unwrap();
    e.model_mut().forward_last(&ids, None).unwrap();
    let after = e.generate(prompt, &greedy(8, &[]), &mut |_| true).unwrap();
    assert_eq!(after.tokens, base.tokens);
    assert_eq!(after.timings.prefill_tokens, after.timings.prompt_tokens);
}

#[test]
fn a_device_error_fails_one_call_and_the_engine_keeps_working() {
    let _serial = serial();
    let mut e = engine();
    let prompt = "The capital of France is";
    let want = e.generate(prompt, &greedy(6, &[]), &mut |_| true).unwrap();
    // An invalid buffer (storage usage on a mappable buffer) raises a validation error
    // outside any scope, as a driver fault would.
    let gpu = e.gpu().clone();
    let _bad = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("invalid on purpose"),
        size: 64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let err = e
        .generate("Another prompt", &greedy(6, &[]), &mut |_| true)
        .expect_err("the device error surfaces in the next call");
    assert!(!err.to_string().is_empty());
    // The staging buffers were released and the cache dropped: the next calls are as before.
    for _ in 0..2 {
        let g = e.generate(prompt, &greedy(6, &[]), &mut |_| true).unwrap();
        assert_eq!(g.tokens, want.tokens);
    }
}

/// Resident host memory of this process, in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[test]
fn many_calls_and_adapter_swaps_do_not_grow_memory() {
    let _serial = serial();
    // CI runs a shorter soak; LAMINA_SOAK_CALLS=1000 LAMINA_SOAK_SWAPS=100 is the full one.
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let calls = env("LAMINA_SOAK_CALLS", 200);
    let swaps = env("LAMINA_SOAK_SWAPS", 40);
    let mut e = engine();
    let adapter = fixture_adapter(&e);
    let prompts = ["Hi", "Hello there", "One two", "Rain", "Why?"];
    let call = |e: &mut Engine, i: usize| {
        e.generate(prompts[i % prompts.len()], &greedy(1, &[]), &mut |_| true)
            .unwrap();
    };
    let swap = |e: &mut Engine, i: usize| {
        // A fresh upload every other time, as an app loading adapters from disk would.
        let a = if i.is_multiple_of(2) {
            fixture_adapter(e)
        } else {
            adapter.clone()
        };
        e.apply_adapters(vec![(a, 0.5)]).unwrap();
        e.generate("Hi", &greedy(1, &[]), &mut |_| true).unwrap();
        e.apply_adapters(vec![]).unwrap();
    };
    // Warm up on the same pattern: the forward plans for each prompt length (a bounded
    // cache, at most one per batch size) and the sampler's buffers get made here.
    for i in 0..2 * prompts.len() {
        call(&mut e, i);
    }
    for i in 0..4 {
        swap(&mut e, i);
    }
    for i in 0..2 * prompts.len() {
        call(&mut e, i);
    }
    let gpu0 = e.gpu().counters.snapshot().bytes_in_use;
    let rss0 = rss_bytes();
    for i in 0..calls {
        call(&mut e, i);
    }
    let gpu1 = e.gpu().counters.snapshot().bytes_in_use;
    let rss1 = rss_bytes();
    let mut rss_track = Vec::new();
    for i in 0..swaps {
        swap(&mut e, i);
        if i % 10 == 9 {
            rss_track.push(rss_bytes() >> 20);
        }
    }
    for i in 0..2 * prompts.len() {
        call(&mut e, i);
    }
    let gpu2 = e.gpu().counters.snapshot().bytes_in_use;
    let rss2 = rss_bytes();
    eprintln!(
        "{calls} generate calls: GPU bytes in use {gpu0} -> {gpu1}, host RSS {:.1} -> {:.1} MiB; \
         {swaps} adapter swaps: GPU {gpu1} -> {gpu2}, RSS -> {:.1} MiB (every 10 swaps: {rss_track:?} MiB)",
        rss0 as f64 / 1048576.0,
        rss1 as f64 / 1048576.0,
        rss2 as f64 / 1048576.0
    );
    assert_eq!(gpu1, gpu0, "GPU bytes grew over {calls} calls");
    assert_eq!(gpu2, gpu0, "GPU bytes grew over {swaps} adapter swaps");
    // Allocator noise is a few MiB; a leak of even 4 KiB per call would be 4 MiB at 1000.
    let grew = rss1.saturating_sub(rss0);
    assert!(
        grew < 16 << 20,
        "host memory grew by {} MiB over the calls",
        grew >> 20
    );
    let grew = rss2.saturating_sub(rss1);
    assert!(
        grew < 32 << 20,
        "host memory grew by {} MiB over the swaps",
        grew >> 20
    );
}
