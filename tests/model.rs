//! The whole model against Hugging Face transformers on the real SmolLM2 file
//! (fixtures in ../shared/fixtures/smollm2, produced from the same GGUF).

use std::sync::Arc;

use lamina::gguf::GgufFile;
use lamina::gpu::{Gpu, GpuOptions};
use lamina::model::{Llama, ModelOptions};
use safetensors::SafeTensors;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/smollm2");

fn fixture() -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/inference.safetensors")).expect("shared fixtures")
}

fn i64s(st: &SafeTensors, name: &str) -> Vec<u32> {
    let t = st.tensor(name).unwrap();
    bytemuck::pod_collect_to_vec::<u8, i64>(t.data())
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    bytemuck::pod_collect_to_vec::<u8, f32>(st.tensor(name).unwrap().data())
}

fn load(opts: GpuOptions, batch: u32, kv_f16: bool) -> Llama {
    let path = lamina::fetch::default_model().unwrap();
    let g = GgufFile::open(&path).unwrap();
    let gpu: Arc<Gpu> = Gpu::new(opts).unwrap();
    Llama::load(
        gpu,
        &g,
        ModelOptions {
            context: 256,
            batch,
            kv_f16,
            ..Default::default()
        },
    )
    .unwrap()
}

fn check_logits(model: &mut Llama) {
    let data = fixture();
    let st = SafeTensors::deserialize(&data).unwrap();
    let vocab = model.cfg.vocab as usize;
    for p in 0..3 {
        let ids = i64s(&st, &format!("prompt{p}.input_ids"));
        let want = f32s(&st, &format!("prompt{p}.logits"));
        model.truncate(0);
        let got = model.forward_all(&ids).unwrap();
        assert_eq!(got.len(), want.len());
        let max_logit = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let max_diff = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!(
            "prompt{p}: {} tokens, max |diff| {max_diff:.2e}, max |logit| {max_logit:.2}",
            ids.len()
        );
        assert!(
            max_diff / max_logit < 1e-3,
            "prompt{p}: rel {}",
            max_diff / max_logit
        );
        // Same argmax at every position where the reference's top-2 are not a near tie.
        for t in 0..ids.len() {
            let row = &want[t * vocab..][..vocab];
            let grow = &got[t * vocab..][..vocab];
            let am = lamina::kernels::reference::argmax(row);
            let gm = lamina::kernels::reference::argmax(grow);
            if am != gm {
                assert!(
                    (row[am] - row[gm]).abs() < 1e-3,
                    "prompt{p} pos {t}: argmax {gm} vs {am}"
                );
            }
        }
    }
}

#[test]
fn logits_match_transformers_with_all_features_and_an_f16_kv_cache() {
    let on = GpuOptions {
        allow_f16: true,
        allow_subgroups: true,
        allow_cpu_kernels: true,
    };
    let mut m = load(on, 128, true);
    assert!(
        m.opts.kv_f16,
        "lavapipe has shader-f16: the f16 cache must be in use"
    );
    check_logits(&mut m);
}

#[test]
fn logits_match_transformers_without_f16_or_subgroups_and_in_small_batches() {
    // Batches of 5 also exercise prefill split across submits and the KV cache between them.
    // Asking for an f16 cache on a device without f16 falls back to f32.
    let off = GpuOptions {
        allow_f16: false,
        allow_subgroups: false,
        allow_cpu_kernels: false,
    };
    let mut m = load(off, 5, true);
    assert!(!m.opts.kv_f16);
    check_logits(&mut m);
}

#[test]
fn logits_match_transformers_decoding_one_token_at_a_time() {
    // Batches of one token take the decode path: rope inside attention and, on a CPU-class
    // device, each rmsnorm inside the matmul after it.
    let on = GpuOptions {
        allow_f16: true,
        allow_subgroups: true,
        allow_cpu_kernels: true,
    };
    let mut m = load(on, 1, true);
    check_logits(&mut m);
}
