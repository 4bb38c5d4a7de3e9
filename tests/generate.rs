//! Generation on the real SmolLM2 file: greedy continuations equal transformers' token for
//! token; sampling is seeded and reproducible; stop strings, cancellation, cache reuse.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use lamina::engine::{Engine, EngineOptions};
use lamina::generate::{GenerateParams, SamplingParams, StopReason};
use lamina::model::ModelOptions;
use safetensors::SafeTensors;

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

fn ids(st: &SafeTensors, name: &str) -> Vec<u32> {
    bytemuck::pod_collect_to_vec::<u8, i64>(st.tensor(name).unwrap().data())
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

fn params(max_tokens: usize, sampling: SamplingParams) -> GenerateParams {
    GenerateParams {
        max_tokens,
        sampling,
        ..Default::default()
    }
}

#[test]
fn greedy_continuations_equal_transformers_and_counters_are_per_token() {
    let data = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/fixtures/smollm2/inference.safetensors"
    ))
    .unwrap();
    let st = SafeTensors::deserialize(&data).unwrap();
    let mut e = engine();
    let gpu = e.gpu().clone();
    let s = &mut e;
    for p in 0..3 {
        let prompt = ids(&st, &format!("prompt{p}.input_ids"));
        let want = ids(&st, &format!("prompt{p}.greedy_ids"));
        s.reset();
        let before = gpu.counters.snapshot();
        let g = s
            .generate_tokens(
                &prompt,
                &params(want.len(), SamplingParams::greedy()),
                &mut |_| true,
            )
            .unwrap();
        let after = gpu.counters.snapshot();
        assert_eq!(g.tokens, want, "prompt{p}");
        assert_eq!(g.stop_reason, StopReason::Length);
        // One submit per token (the prompt fits one batch), 4 bytes read back per token.
        assert_eq!(
            after.submits - before.submits,
            want.len() as u64,
            "prompt{p}"
        );
        assert_eq!(
            after.bytes_read_back - before.bytes_read_back,
            4 * want.len() as u64
        );
    }
}

#[test]
fn sampling_is_reproducible_and_honours_stops_cancel_and_the_cache() {
    let mut e = engine();
    let s = &mut e;
    let prompt = "Once upon a time";
    let sp = SamplingParams {
        temperature: 1.0,
        top_k: 40,
        seed: 42,
        ..Default::default()
    };
    let a = s
        .generate(prompt, &params(6, sp.clone()), &mut |_| true)
        .unwrap();
    // Same prompt again: served from the cache except for one token; same seed, same text.
    let b = s
        .generate(prompt, &params(6, sp.clone()), &mut |_| true)
        .unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(b.timings.prefill_tokens, 1);
    // Whole-vocabulary sampling (top_k = 0) and the repetition penalty run too.
    let full = SamplingParams {
        top_k: 0,
        repeat_penalty: 1.3,
        ..sp.clone()
    };
    let c = s
        .generate(prompt, &params(4, full.clone()), &mut |_| true)
        .unwrap();
    let d = s.generate(prompt, &params(4, full), &mut |_| true).unwrap();
    assert_eq!(c.tokens, d.tokens);

    // Streaming pieces concatenate to the text; a stop string ends it and is not included.
    let mut streamed = String::new();
    let g = s
        .generate(
            "The capital of France is",
            &GenerateParams {
                max_tokens: 12,
                sampling: SamplingParams::greedy(),
                stop: vec![".".into()],
                cancel: None,
                ignore_eos: false,
            },
            &mut |t| {
                streamed.push_str(t);
                true
            },
        )
        .unwrap();
    assert_eq!(streamed, g.text);
    assert_eq!(g.stop_reason, StopReason::StopString, "{:?}", g.text);
    assert!(!g.text.contains('.'));

    // The callback can stop generation, and so can the cancel flag.
    let g = s
        .generate(prompt, &params(20, SamplingParams::greedy()), &mut |_| {
            false
        })
        .unwrap();
    assert_eq!(g.stop_reason, StopReason::Cancelled);
    assert!(g.tokens.len() <= 2);
    let flag = Arc::new(AtomicBool::new(true));
    let g = s
        .generate(
            prompt,
            &GenerateParams {
                max_tokens: 20,
                sampling: SamplingParams::greedy(),
                stop: vec![],
                cancel: Some(flag),
                ignore_eos: false,
            },
            &mut |_| true,
        )
        .unwrap();
    assert_eq!(g.stop_reason, StopReason::Cancelled);
    assert_eq!(g.tokens.len(), 1);

    // Bad parameters are errors, not panics.
    let bad = SamplingParams {
        top_p: 0.0,
        ..Default::default()
    };
    assert!(s.generate(prompt, &params(2, bad), &mut |_| true).is_err());
}

#[test]
fn chat_turn_ends_at_end_of_turn() {
    let mut e = engine();
    let prompt = e
        .tokenizer()
        .apply_chat_template(
            &[lamina::tokenizer::ChatMessage::new("user", "Say hi.")],
            true,
        )
        .unwrap();
    let g = e
        .generate(&prompt, &params(48, SamplingParams::greedy()), &mut |_| {
            true
        })
        .unwrap();
    assert_eq!(g.stop_reason, StopReason::Eos, "{:?}", g.text);
    assert!(!g.text.is_empty() && !g.text.contains("<|im_end|>"));
}
