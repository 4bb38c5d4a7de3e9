//! LoRA adapters at inference: the kernels against their CPU reference, and PEFT's own loss
//! for the fixture adapter on the real SmolLM2 file (which checks loading, PEFT names, the
//! q/k row permutation into GGUF's layout, scale alpha / r and every insertion point).

use std::sync::Arc;

use lamina::adapter::{GpuAdapter, LoraConfig, LoraWeights};
use lamina::gguf::GgufFile;
use lamina::gpu::{Gpu, GpuOptions};
use lamina::kernels::{self, reference};
use lamina::model::{Llama, ModelOptions};
use rand::{Rng, SeedableRng};
use safetensors::SafeTensors;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/smollm2");

#[test]
fn lora_kernels_match_reference() {
    let gpu = Gpu::new(GpuOptions::default()).unwrap();
    let seed: u64 = rand::rng().random();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut randv =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect() };
    let (k, r, n, t) = (96usize, 5usize, 40usize, 3usize);
    for swiglu in [false, true] {
        let stride = if swiglu { 2 * k } else { k };
        let (a, b, x, y0) = (
            randv(r * k),
            randv(n * r),
            randv(t * stride),
            randv(t * (n + 2)),
        );
        let up = |d: &[f32]| gpu.storage_init("t", bytemuck::cast_slice(d)).unwrap();
        let (ab, bb, xb, yb) = (up(&a), up(&b), up(&x), up(&y0));
        let ub = gpu.storage("u", (t * r * 4) as u64).unwrap();
        let d1 = kernels::lora_down(
            &gpu,
            &ab,
            &xb,
            &ub,
            k as u32,
            r as u32,
            t as u32,
            stride as u32,
            swiglu,
            Default::default(),
        )
        .unwrap();
        let d2 = kernels::lora_up(
            &gpu,
            &bb,
            &ub,
            &yb,
            n as u32,
            r as u32,
            t as u32,
            (n + 2) as u32,
            2,
            0.5,
        )
        .unwrap();
        kernels::run(&gpu, &[d1, d2]).unwrap();
        let got = gpu.read_f32(&yb, 0, (t * (n + 2)) as u64).unwrap();
        let xin: Vec<f32> = (0..t)
            .flat_map(|ti| {
                let row = &x[ti * stride..][..stride];
                (0..k).map(move |j| {
                    if swiglu {
                        reference::silu(row[j]) * row[k + j]
                    } else {
                        row[j]
                    }
                })
            })
            .collect();
        let u = reference::matmul(&a, &xin, r, k);
        let z = reference::matmul(&b, &u, n, r);
        let mut want = y0.clone();
        for ti in 0..t {
            for o in 0..n {
                want[ti * (n + 2) + 2 + o] += 0.5 * z[ti * n + o];
            }
        }
        let err = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(err < 1e-4, "swiglu={swiglu}: max err {err}");
    }
}

fn i64s(st: &SafeTensors, name: &str) -> Vec<i64> {
    bytemuck::pod_collect_to_vec(st.tensor(name).unwrap().data())
}

/// Mean cross-entropy over label positions (labels shifted by one, -100 ignored), per PEFT.
fn batch_loss(model: &mut Llama, st: &SafeTensors) -> f64 {
    let ids = i64s(st, "batch.input_ids");
    let labels = i64s(st, "batch.labels");
    let mask = i64s(st, "batch.attention_mask");
    let seq = st.tensor("batch.input_ids").unwrap().shape()[1];
    let vocab = model.cfg.vocab as usize;
    let (mut total, mut count) = (0f64, 0usize);
    for row in 0..ids.len() / seq {
        let len = mask[row * seq..][..seq].iter().filter(|&&m| m == 1).count();
        let toks: Vec<u32> = ids[row * seq..][..len].iter().map(|&v| v as u32).collect();
        model.truncate(0);
        let logits = model.forward_all(&toks).unwrap();
        for t in 0..seq - 1 {
            let label = labels[row * seq + t + 1];
            if label < 0 {
                continue;
            }
            assert!(t < len, "a label on padding");
            let l = &logits[t * vocab..][..vocab];
            let m = l.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let lse = m + l.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            total += lse - l[label as usize] as f64;
            count += 1;
        }
    }
    total / count as f64
}

#[test]
fn peft_fixture_adapter_gives_peft_loss_on_the_gguf_model() {
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{FIXTURES}/expected.json")).unwrap(),
    )
    .unwrap();
    let lora = &expected["lora"];
    let want = lora["loss_mean_over_completion_tokens"].as_f64().unwrap();
    let data = std::fs::read(format!("{FIXTURES}/lora.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&data).unwrap();
    let config = LoraConfig {
        r: lora["r"].as_u64().unwrap() as u32,
        alpha: lora["lora_alpha"].as_f64().unwrap() as f32,
        use_rslora: false,
    };
    let weights = LoraWeights::from_safetensors(&data, config).unwrap();
    assert_eq!(weights.tensors.len(), 30 * 7);

    let g = GgufFile::open(lamina::fetch::default_model().unwrap()).unwrap();
    let gpu = Gpu::new(GpuOptions::default()).unwrap();
    let opts = ModelOptions {
        context: 64,
        batch: 32,
        ..Default::default()
    };
    let mut model = Llama::load(gpu.clone(), &g, opts).unwrap();
    let base = batch_loss(&mut model, &st);
    let adapter = Arc::new(GpuAdapter::upload(&gpu, &weights, &model.cfg).unwrap());
    model.set_adapters(vec![(adapter.clone(), 1.0)]).unwrap();
    let got = batch_loss(&mut model, &st);
    eprintln!("loss: base {base:.6}, with adapter {got:.6}, PEFT {want:.6}");
    assert!(
        ((got - want) / want).abs() < 1e-4,
        "loss {got} vs PEFT {want}"
    );
    assert!(
        (base - want).abs() > 1e-2,
        "the adapter must change the loss"
    );
    // Removing it gives the base model back.
    model.set_adapters(vec![]).unwrap();
    assert!((batch_loss(&mut model, &st) - base).abs() < 1e-9);

    // One token at a time (the decode path, where the LoRA branches read the normed input
    // that a matmul with the folded norm writes) gives the same loss.
    let one = ModelOptions {
        context: 64,
        batch: 1,
        ..Default::default()
    };
    let mut model = Llama::load(gpu.clone(), &g, one).unwrap();
    model.set_adapters(vec![(adapter.clone(), 1.0)]).unwrap();
    let decoded = batch_loss(&mut model, &st);
    eprintln!("with adapter, one token at a time: {decoded:.6}");
    assert!(
        ((decoded - want) / want).abs() < 1e-4,
        "loss {decoded} vs PEFT {want}"
    );
}

#[test]
fn a_peft_folder_loads_and_a_bad_one_names_its_file() {
    let dir = std::env::temp_dir().join(format!("lamina-peft-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        format!("{FIXTURES}/lora.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        dir.join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_rslora": true,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}"#,
    )
    .unwrap();
    let w = LoraWeights::load(&dir).unwrap();
    assert_eq!(w.tensors.len(), 210);
    assert!((w.config.scale() - 16.0 / 8f32.sqrt()).abs() < 1e-6);
    std::fs::write(dir.join("adapter_model.safetensors"), b"not safetensors").unwrap();
    let e = LoraWeights::load(&dir).unwrap_err().to_string();
    assert!(e.contains("adapter_model.safetensors"), "{e}");
    std::fs::write(dir.join("adapter_config.json"), "{}").unwrap();
    let e = LoraWeights::load(&dir).unwrap_err().to_string();
    assert!(
        e.contains("adapter_config.json") && e.contains("'r'"),
        "{e}"
    );
}

#[test]
fn an_adapter_that_does_not_fit_is_an_error() {
    let data = std::fs::read(format!("{FIXTURES}/lora.safetensors")).unwrap();
    // Rank 4 does not match the fixture's rank-8 tensors.
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        use_rslora: false,
    };
    let e = LoraWeights::from_safetensors(&data, cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("rank 4"), "{e}");
    // A SmolLM2 adapter on a model of another shape.
    let cfg = LoraConfig {
        r: 8,
        alpha: 16.0,
        use_rslora: false,
    };
    let w = LoraWeights::from_safetensors(&data, cfg).unwrap();
    let gpu = Gpu::new(GpuOptions::default()).unwrap();
    let mut other = lamina::hf::Checkpoint::open(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/fixtures/smollm2-2layer-hf/checkpoint"
    )))
    .unwrap()
    .config;
    other.n_layer = 2;
    let e = GpuAdapter::upload(&gpu, &w, &other)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("does not fit"), "{e}");
}

#[test]
fn merged_gguf_gives_the_adapter_loss_without_the_adapter() {
    let data = std::fs::read(format!("{FIXTURES}/lora.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&data).unwrap();
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{FIXTURES}/expected.json")).unwrap(),
    )
    .unwrap();
    let want = expected["lora"]["loss_mean_over_completion_tokens"]
        .as_f64()
        .unwrap();
    let config = LoraConfig {
        r: 8,
        alpha: 16.0,
        use_rslora: false,
    };
    let weights = LoraWeights::from_safetensors(&data, config).unwrap();
    let src = GgufFile::open(lamina::fetch::default_model().unwrap()).unwrap();
    let out = std::env::temp_dir().join(format!("lamina-merged-{}.gguf", std::process::id()));
    let n = lamina::merge::merge_into_gguf(
        &src,
        &[(weights, 1.0)],
        lamina::merge::MergeType::F16,
        &out,
    )
    .unwrap();
    assert_eq!(n, 30 * 7);
    let merged = GgufFile::open(&out).unwrap();
    let gpu = Gpu::new(GpuOptions::default()).unwrap();
    let opts = ModelOptions {
        context: 64,
        batch: 32,
        ..Default::default()
    };
    let mut model = Llama::load(gpu, &merged, opts).unwrap();
    let got = batch_loss(&mut model, &st);
    eprintln!("merged (f16) loss {got:.6}, PEFT {want:.6}");
    assert!(((got - want) / want).abs() < 1e-3, "{got} vs {want}");
    let _ = std::fs::remove_file(&out);
}
