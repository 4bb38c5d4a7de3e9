//! The command line as a user runs it: `lamina grad` against PEFT's gradients (SmolLM2, and
//! Qwen2.5-Coder-0.5B named by `--model qwen2.5-0.5b`), and
//! `lamina train` then `lamina generate --adapter` on a small Hugging Face checkpoint,
//! `lamina merge --format hf` and `lamina quantize` to every type.

use std::path::Path;
use std::process::Command;

use safetensors::SafeTensors;

mod common;
use common::{rel_max_diff, temp_dir};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures");

fn lamina(args: &[&str]) -> std::process::Output {
    common::lamina_ok(args)
}

/// The fixture's LoRA tensors as a PEFT folder.
fn fixture_adapter(fixture: &str, dir: &Path) {
    std::fs::copy(
        format!("{FIXTURES}/{fixture}/lora.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        dir.join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 8, "lora_alpha": 16,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}"#,
    )
    .unwrap();
}

#[test]
fn grad_writes_peft_named_gradients_that_match_peft() {
    check_grad("smollm2", None, 30);
}

#[test]
fn grad_on_qwen_by_name_matches_peft() {
    check_grad("qwen2.5-0.5b", Some("qwen2.5-0.5b"), 24);
}

/// `lamina grad` on the fixture's batch and adapter against PEFT's loss and gradients.
fn check_grad(fixture: &str, model: Option<&str>, layers: usize) {
    let dir = temp_dir(&format!("grad-{fixture}"));
    fixture_adapter(fixture, &dir);
    let out = dir.join("grads.safetensors");
    let batch = format!("{FIXTURES}/{fixture}/lora.safetensors");
    let mut args = vec!["grad"];
    if let Some(m) = model {
        args.extend(["--model", m]);
    }
    lamina(
        &[
            args.as_slice(),
            &[
                "--adapter",
                dir.to_str().unwrap(),
                "--batch",
                &batch,
                "--out",
                out.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    let got_bytes = std::fs::read(&out).unwrap();
    let got = SafeTensors::deserialize(&got_bytes).unwrap();
    let want_bytes = std::fs::read(&batch).unwrap();
    let want = SafeTensors::deserialize(&want_bytes).unwrap();
    let f32s = |st: &SafeTensors, n: &str| -> Vec<f32> {
        bytemuck::pod_collect_to_vec(st.tensor(n).unwrap().data())
    };
    let loss = f32s(&got, "loss")[0] as f64;
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{FIXTURES}/{fixture}/expected.json")).unwrap(),
    )
    .unwrap();
    let want_loss = expected["lora"]["loss_mean_over_completion_tokens"]
        .as_f64()
        .unwrap();
    assert!(((loss - want_loss) / want_loss).abs() < 1e-4, "{loss}");
    let mut n = 0;
    for name in want.names() {
        if !name.ends_with(".grad") {
            continue;
        }
        let (g, w) = (f32s(&got, name), f32s(&want, name));
        assert_eq!(
            got.tensor(name).unwrap().shape(),
            want.tensor(name).unwrap().shape()
        );
        let num: f64 = g
            .iter()
            .zip(&w)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum();
        let den: f64 = w.iter().map(|b| (*b as f64).powi(2)).sum();
        assert!((num / den).sqrt() < 1e-3, "{name}");
        n += 1;
    }
    assert_eq!(n, layers * 7 * 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn train_then_generate_with_the_adapter() {
    let dir = temp_dir("train");
    let model = format!("{FIXTURES}/smollm2-2layer-hf/checkpoint");
    let data = dir.join("data.jsonl");
    std::fs::write(
        &data,
        concat!(
            r#"{"prompt": "Review: Tasty and fresh.\nSentiment:", "completion": " positive"}"#, "\n",
            r#"{"prompt": "Review: Stale, arrived broken.\nSentiment:", "completion": " negative"}"#, "\n",
            "not json\n",
            r#"{"prompt": "Review: My dog loves these.\nSentiment:", "completion": " positive"}"#, "\n",
        ),
    )
    .unwrap();
    let out = dir.join("adapter");
    // A malformed row stops training with its line number ...
    let run = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(["train", "--model", &model, "--data", data.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap(), "--max-steps", "2"])
        .output()
        .unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("line 3"), "{err}");
    // ... or is skipped and counted.
    let cfg = dir.join("train.toml");
    std::fs::write(
        &cfg,
        "lr = 1e-3\nbatch_size = 2\nvalidation_fraction = 0.0\n[lora]\nr = 4\n",
    )
    .unwrap();
    let run = lamina(&[
        "train",
        "--model",
        &model,
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--max-steps",
        "2",
        "--skip-malformed",
        "--log",
    ]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("1 skipped") && err.contains("step 2/2"),
        "{err}"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["r"], 4);
    // The base model is named, not located: no folder of the user's leaks into the adapter.
    let base = config["base_model_name_or_path"].as_str().unwrap();
    assert!(!base.contains('/') && !base.is_empty(), "{base}");
    let gen = lamina(&[
        "generate",
        "--model",
        &model,
        "--adapter",
        out.to_str().unwrap(),
        "--prompt",
        "Review: Great snack.\nSentiment:",
        "--max-tokens",
        "3",
        "--temperature",
        "0",
    ]);
    assert!(!gen.stdout.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_json_has_every_field_a_script_compares() {
    // A small run on the 2-layer checkpoint: the numbers are the device's, the fields are ours.
    let model = format!("{FIXTURES}/smollm2-2layer-hf/checkpoint");
    let out = lamina(&[
        "bench", "--model", &model, "-p", "16", "-n", "4", "--train", "2x16", "-r", "1", "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    for key in [
        "prefill_tok_s",
        "decode_tok_s",
        "train_tok_s",
        "train_recompute_tok_s",
        "dispatches_per_token",
        "submits_per_token",
        "readback_bytes_per_token",
        "peak_gpu_bytes",
    ] {
        let x = v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing in {stdout}"));
        assert!(x > 0.0 && x.is_finite(), "{key} = {x}");
    }
    assert!(v["device"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(v["driver"].as_str().is_some_and(|s| !s.is_empty()));
    // One submit and at most the sampled id per decoded token.
    assert!(v["submits_per_token"].as_f64().unwrap() <= 1.0 + 1e-9);
    assert!(v["readback_bytes_per_token"].as_f64().unwrap() <= 64.0);
    let bad = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(["bench", "--model", &model, "--train", "4by128"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("BATCHxTOKENS"));
}

/// `lamina merge --format hf`: base + adapter as a Hugging Face folder, which loads back (the
/// checkpoint reader, rope over (i, i + d/2) pairs with q/k rows in Hugging Face's order) to
/// the logits of the GGUF base with the adapter applied unmerged, and the same tokenizer and
/// chat template.
#[test]
fn merge_to_a_hugging_face_folder_gives_base_plus_adapter() {
    use lamina::engine::{Engine, EngineOptions};
    let dir = temp_dir("merge-hf");
    let adapter = dir.join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    fixture_adapter("smollm2", &adapter);
    let out = dir.join("hf");
    lamina(&[
        "merge",
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--format",
        "hf",
        "--type",
        "f32",
    ]);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let mut base = Engine::load(None, EngineOptions::default()).unwrap();
    base.set_adapters(&[adapter.to_str().unwrap().to_string()])
        .unwrap();
    let mut merged = Engine::load(Some(&out), EngineOptions::default()).unwrap();
    assert!(merged.model().cfg.rope_neox);
    let text = "The capital of France is <|im_start|>user\nHi!";
    let ids = base.tokenizer().encode(text, true).unwrap();
    assert_eq!(merged.tokenizer().encode(text, true).unwrap(), ids);
    assert_eq!(
        merged.tokenizer().chat_template(),
        base.tokenizer().chat_template()
    );
    assert_eq!(merged.tokenizer().eos_ids(), base.tokenizer().eos_ids());
    let want = base.model_mut().forward_all(&ids).unwrap();
    let got = merged.model_mut().forward_all(&ids).unwrap();
    let d = rel_max_diff(&want, &got);
    eprintln!("merged checkpoint vs base + adapter: max |diff| / max |logit| {d:.2e}");
    assert!(d < 1e-4, "{d}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Logits [T, vocab] of the prompt through `model`, and the vocabulary size.
fn logits(model: &Path, dir: &Path, name: &str) -> (Vec<f32>, usize) {
    let out = dir.join(format!("{name}.safetensors"));
    lamina(&[
        "logits",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "The capital of France is",
        "--out",
        out.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&out).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("logits").unwrap();
    (bytemuck::pod_collect_to_vec(t.data()), t.shape()[1])
}

fn argmax_last(l: &[f32], vocab: usize) -> usize {
    let last = &l[l.len() - vocab..];
    (0..vocab)
        .max_by(|&a, &b| last[a].total_cmp(&last[b]))
        .unwrap()
}

/// Largest relative RMS error a matrix written in `ty` may show on SmolLM2's Q4_1/Q8_0 values:
/// about 1.5x the worst this quantizer measured when the test was written.
fn bound(ty: lamina::quant::GgmlType) -> f64 {
    use lamina::quant::GgmlType::*;
    match ty {
        F32 => 0.0,
        F16 => 1e-3,
        Q8_0 => 0.01,
        Q6_K => 0.03,
        Q5_0 | Q5_1 | Q5_K => 0.08,
        Q4_0 | Q4_1 | Q4_K => 0.17,
        Q3_K => 0.3,
        Q2_K => 0.5,
        _ => unreachable!(),
    }
}

/// `lamina quantize`: SmolLM2 re-quantized to every type the runtime reads. Each written matrix
/// must dequantize (CPU reference) close to the source's values, within what its type's bits
/// allow; F32 must give the source's logits through the GPU kernels, and every type of 5 bits
/// or more the source's next token.
#[test]
fn quantize_writes_every_type_close_to_the_source() {
    use lamina::gguf::GgufFile;
    use lamina::quant::{self, GgmlType};
    let src_path = lamina::fetch::default_model().expect("fetch the default model");
    let src = GgufFile::open(&src_path).unwrap();
    let dir = temp_dir("quantize");
    let (base, vocab) = logits(&src_path, &dir, "source");
    let base_top = argmax_last(&base, vocab);
    for ty in quant::SUPPORTED_TYPES {
        let name = format!("{ty:?}").to_lowercase();
        let out = dir.join(format!("{name}.gguf"));
        lamina(&[
            "quantize",
            "--type",
            &name,
            src_path.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        let q = GgufFile::open(&out).unwrap();
        assert_eq!(q.tensors.len(), src.tensors.len());
        let mut worst = 0f64;
        for (s, t) in src.tensors.iter().zip(&q.tensors) {
            assert_eq!((&s.name, &s.dims), (&t.name, &t.dims));
            if s.dims.len() < 2 {
                assert_eq!(t.ty, s.ty, "{}: one-dimensional tensors are copied", s.name);
                continue;
            }
            assert!(
                t.ty == ty || t.ty == ty.fallback(),
                "{}: {:?} for {ty:?}",
                s.name,
                t.ty
            );
            let a = quant::dequantize(s.ty, src.tensor_bytes(s)).unwrap();
            let b = quant::dequantize(t.ty, q.tensor_bytes(t)).unwrap();
            let (mut num, mut den) = (0f64, 0f64);
            for (x, y) in a.iter().zip(&b) {
                num += ((x - y) as f64).powi(2);
                den += (*x as f64).powi(2);
            }
            let err = (num / den).sqrt();
            assert!(
                err <= bound(t.ty),
                "{}: {:?} relative RMS error {err}",
                t.name,
                t.ty
            );
            if t.ty == ty {
                worst = worst.max(err);
            }
        }
        eprintln!("{ty:?}: worst relative RMS error of its matrices {worst:.5}");
        let (l, _) = logits(&out, &dir, &name);
        assert_eq!(l.len(), base.len());
        let d = rel_max_diff(&base, &l);
        eprintln!("{ty:?}: logits max |diff| / max |logit| {d:.5}");
        match ty {
            // The same values through the F32 kernels.
            GgmlType::F32 => assert!(d < 1e-4, "{ty:?}: logits differ by {d}"),
            // Rounded to f16 (relative error ~2e-4 per weight).
            GgmlType::F16 => assert!(d < 1e-2, "{ty:?}: logits differ by {d}"),
            _ => {}
        }
        // Four bits and fewer re-quantizing 4-bit values round twice: only the error bound.
        use GgmlType::*;
        if matches!(ty, F32 | F16 | Q8_0 | Q6_K | Q5_0 | Q5_1 | Q5_K) {
            assert_eq!(
                argmax_last(&l, vocab),
                base_top,
                "{ty:?}: another next token"
            );
        }
        std::fs::remove_file(&out).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
