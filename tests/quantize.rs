//! `lamina quantize` as a user runs it: SmolLM2 re-quantized to every type the runtime reads.
//! Each written matrix must dequantize (CPU reference) close to the source's values, within
//! what its type's bits allow; the lossless types must give the source's logits through the
//! GPU kernels, and every type of 5 bits or more the source's next token.

use std::path::Path;
use std::process::Command;

use lamina::gguf::GgufFile;
use lamina::quant::{self, GgmlType};
use safetensors::SafeTensors;

fn lamina(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(args)
        .output()
        .expect("run lamina");
    assert!(
        out.status.success(),
        "lamina {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
fn bound(ty: GgmlType) -> f64 {
    use GgmlType::*;
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

#[test]
fn quantize_writes_every_type_close_to_the_source() {
    let src_path = lamina::fetch::default_model().expect("fetch the default model");
    let src = GgufFile::open(&src_path).unwrap();
    let dir = std::env::temp_dir().join(format!("lamina-quantize-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
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
        let m = base.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = base
            .iter()
            .zip(&l)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()))
            / m;
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
