//! LoRA training on the real SmolLM2 and Qwen2.5-Coder-0.5B files against Hugging Face PEFT
//! (`../shared/fixtures/{smollm2,qwen2.5-0.5b}/lora.safetensors`): the loss, every LoRA
//! gradient, and (SmolLM2) the losses over five AdamW steps on the same batch.

use lamina::adapter::{LoraConfig, LoraWeights, MODULES};
use lamina::gguf::GgufFile;
use lamina::gpu::{Gpu, GpuOptions};
use lamina::kernels::AdamW;
use lamina::model::{Llama, ModelOptions};
use lamina::train::{TrainableAdapter, Trainer, TrainerOptions};
use safetensors::SafeTensors;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/smollm2");
const QWEN_FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/fixtures/qwen2.5-0.5b"
);

struct Fixture {
    data: Vec<u8>,
    expected: serde_json::Value,
}

impl Fixture {
    fn load() -> Fixture {
        Fixture::load_from(FIXTURES)
    }

    fn load_from(dir: &str) -> Fixture {
        Fixture {
            data: std::fs::read(format!("{dir}/lora.safetensors")).unwrap(),
            expected: serde_json::from_str(
                &std::fs::read_to_string(format!("{dir}/expected.json")).unwrap(),
            )
            .unwrap(),
        }
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.data).unwrap()
    }

    fn weights(&self) -> LoraWeights {
        let lora = &self.expected["lora"];
        let config = LoraConfig {
            r: lora["r"].as_u64().unwrap() as u32,
            alpha: lora["lora_alpha"].as_f64().unwrap() as f32,
            use_rslora: false,
        };
        LoraWeights::from_safetensors(&self.data, config).unwrap()
    }

    /// (input ids, labels, rows)
    fn batch(&self) -> (Vec<u32>, Vec<i64>, usize) {
        let st = self.st();
        let i64s = |name: &str| -> Vec<i64> {
            bytemuck::pod_collect_to_vec(st.tensor(name).unwrap().data())
        };
        let ids = i64s("batch.input_ids").iter().map(|&v| v as u32).collect();
        let rows = st.tensor("batch.input_ids").unwrap().shape()[0];
        (ids, i64s("batch.labels"), rows)
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        bytemuck::pod_collect_to_vec(self.st().tensor(name).unwrap().data())
    }
}

fn model() -> Llama {
    model_from(&lamina::fetch::default_model().unwrap())
}

fn model_from(path: &std::path::Path) -> Llama {
    let g = GgufFile::open(path).unwrap();
    let gpu = Gpu::new(GpuOptions::default()).unwrap();
    let opts = ModelOptions {
        context: 64,
        batch: 8,
        ..Default::default()
    };
    Llama::load(gpu, &g, opts).unwrap()
}

fn trainer(model: &Llama, fx: &Fixture, recompute: bool) -> Trainer {
    let (ids, _, rows) = fx.batch();
    let adapter = TrainableAdapter::from_weights(&model.gpu, &model.cfg, &fx.weights()).unwrap();
    let opts = TrainerOptions {
        max_batch: rows as u32,
        max_seq: (ids.len() / rows) as u32,
        recompute,
    };
    Trainer::new(model, adapter, opts).unwrap()
}

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in got.iter().zip(want) {
        num += (*a as f64 - *b as f64).powi(2);
        den += (*b as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn loss_and_every_lora_gradient_match_peft() {
    check_loss_and_gradients(&Fixture::load(), &model());
}

/// Qwen2: q/k/v biases (frozen), GQA 7:1, and GGUF q/k rows in Hugging Face's order.
#[test]
fn qwen_loss_and_every_lora_gradient_match_peft() {
    let path = lamina::fetch::qwen25_05b().unwrap();
    check_loss_and_gradients(&Fixture::load_from(QWEN_FIXTURES), &model_from(&path));
}

fn check_loss_and_gradients(fx: &Fixture, model: &Llama) {
    let want_loss = fx.expected["lora"]["loss_mean_over_completion_tokens"]
        .as_f64()
        .unwrap();
    let (ids, labels, rows) = fx.batch();
    for recompute in [false, true] {
        let mut tr = trainer(model, fx, recompute);
        tr.zero_grad();
        let out = tr.accumulate(&ids, &labels, rows).unwrap();
        let loss = out.sum / out.tokens as f64;
        eprintln!("recompute {recompute}: loss {loss:.7} vs PEFT {want_loss:.7}");
        assert!(((loss - want_loss) / want_loss).abs() < 1e-4);
        let grads = tr.gradients().unwrap();
        assert_eq!(grads.len(), model.cfg.n_layer as usize * 7);
        let mut worst = (0f64, String::new());
        for ((layer, m), (da, db)) in &grads {
            let module = MODULES[*m];
            let part = if *m < 4 { "self_attn" } else { "mlp" };
            for (ab, got) in [("A", da), ("B", db)] {
                let name = format!(
                    "base_model.model.model.layers.{layer}.{part}.{module}.lora_{ab}.weight.grad"
                );
                let want = fx.f32s(&name);
                assert_eq!(got.len(), want.len(), "{name}");
                let e = rel_l2(got, &want);
                if e > worst.0 {
                    worst = (e, name);
                }
            }
        }
        eprintln!(
            "worst gradient relative L2 error {:.2e} ({})",
            worst.0, worst.1
        );
        assert!(worst.0 < 1e-3, "{worst:?}");
    }
}

#[test]
fn five_adamw_steps_follow_peft_losses() {
    let fx = Fixture::load();
    let model = model();
    let lora = &fx.expected["lora"];
    let want: Vec<f64> = lora["losses_over_5_adamw_steps_same_batch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let adam = &lora["adamw"];
    let opt = AdamW {
        lr: adam["lr"].as_f64().unwrap() as f32,
        beta1: adam["betas"][0].as_f64().unwrap() as f32,
        beta2: adam["betas"][1].as_f64().unwrap() as f32,
        eps: adam["eps"].as_f64().unwrap() as f32,
        weight_decay: adam["weight_decay"].as_f64().unwrap() as f32,
    };
    let (ids, labels, rows) = fx.batch();
    let mut tr = trainer(&model, &fx, false);
    tr.zero_grad();
    let mut got = Vec::new();
    for _ in 0..want.len() {
        let out = tr.accumulate(&ids, &labels, rows).unwrap();
        got.push(out.sum / out.tokens as f64);
        let step = tr.optimizer_step(&opt, None).unwrap();
        assert!(!step.skipped);
    }
    eprintln!("losses {got:?}\nPEFT   {want:?}");
    for (g, w) in got.iter().zip(&want) {
        assert!(((g - w) / w).abs() < 0.01, "{got:?} vs {want:?}");
    }
}

/// An adapter on the top layers only trains exactly as the same adapter with zero B below:
/// same loss, same gradients for the layers it has; its backward stops at its lowest layer,
/// so a step runs fewer dispatches. Saved, it names its layers for PEFT.
#[test]
fn adapters_on_the_top_layers_only_stop_the_backward_there() {
    let fx = Fixture::load();
    let model = model();
    let (ids, labels, rows) = fx.batch();
    let full = fx.weights();
    let lowest = 22u32;
    let mut top = full.clone();
    top.tensors.retain(|&(l, _), _| l >= lowest);
    let mut zero_below = full.clone();
    for ((l, _), (_, b)) in zero_below.tensors.iter_mut() {
        if *l < lowest {
            b.iter_mut().for_each(|x| *x = 0.0);
        }
    }
    let opts = TrainerOptions {
        max_batch: rows as u32,
        max_seq: (ids.len() / rows) as u32,
        recompute: false,
    };
    let run = |w: &LoraWeights| {
        let adapter = TrainableAdapter::from_weights(&model.gpu, &model.cfg, w).unwrap();
        let mut tr = Trainer::new(&model, adapter, opts).unwrap();
        let before = model.gpu.counters.snapshot().dispatches;
        let loss = tr.accumulate(&ids, &labels, rows).unwrap();
        let dispatches = model.gpu.counters.snapshot().dispatches - before;
        (loss, tr.gradients().unwrap(), dispatches)
    };
    let (loss_top, grads_top, d_top) = run(&top);
    let (loss_ref, grads_ref, d_ref) = run(&zero_below);
    assert!(((loss_top.sum - loss_ref.sum) / loss_ref.sum).abs() < 1e-6);
    assert_eq!(grads_top.len(), 7 * (30 - lowest as usize));
    for (key, (ga, gb)) in &grads_top {
        let (ra, rb) = &grads_ref[key];
        assert!(
            rel_l2(ga, ra) < 1e-5 && rel_l2(gb, rb) < 1e-5,
            "layer {} {}",
            key.0,
            MODULES[key.1]
        );
    }
    eprintln!("dispatches per micro-batch: top 8 layers {d_top}, all 30 layers {d_ref}");
    assert!(d_top * 10 < d_ref * 8, "{d_top} vs {d_ref}");

    let dir = std::env::temp_dir().join(format!("lamina-top-layers-{}", std::process::id()));
    top.save(&dir, 0.0, None).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        cfg["layers_to_transform"],
        serde_json::json!((22..30).collect::<Vec<u32>>())
    );
    let back = LoraWeights::load(&dir).unwrap();
    assert_eq!(back.tensors.len(), top.tensors.len());
    let _ = std::fs::remove_dir_all(&dir);

    // The settings pick the same layers by number or by count from the top.
    let by_count = lamina::train::LoraSettings {
        last_layers: Some(8),
        ..Default::default()
    };
    let by_number = lamina::train::LoraSettings {
        layers: Some((22..30).collect()),
        ..Default::default()
    };
    assert_eq!(
        by_count.layer_mask(30).unwrap(),
        by_number.layer_mask(30).unwrap()
    );
    assert!(lamina::train::LoraSettings {
        layers: Some(vec![30]),
        ..Default::default()
    }
    .layer_mask(30)
    .is_err());
}
