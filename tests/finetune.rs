//! The training loop end to end on real reviews: the loss goes down, an interrupted run
//! resumes bit for bit, the saved PEFT adapter reads back exactly and gives the same loss at
//! inference as in training. Runs on the 2-layer SmolLM2 checkpoint (the loop does not depend
//! on depth; the full model is covered by tests/train.rs).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lamina::adapter::{GpuAdapter, LoraWeights};
use lamina::dataset::{collate, Dataset, DatasetOptions, Format};
use lamina::engine::{Engine, EngineOptions};
use lamina::finetune::{fine_tune, RunOptions, Schedule, TrainConfig, TrainEvent};
use lamina::model::ModelOptions;

mod common;
use common::temp_dir;

const CKPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/fixtures/smollm2-2layer-hf/checkpoint"
);
const REVIEWS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/reviews/fine_foods_train.jsonl"
);

fn engine() -> Engine {
    let opts = EngineOptions {
        model: ModelOptions {
            context: 64,
            batch: 16,
            ..Default::default()
        },
        ..Default::default()
    };
    Engine::load(Some(Path::new(CKPT)), opts).unwrap()
}

/// `n` reviews starting at line `skip`, shortened, as a JSONL file.
fn reviews(dir: &Path, skip: usize, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(REVIEWS).unwrap();
    let mut out = String::new();
    for line in text.lines().skip(skip).take(n) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let review: String = v["text"].as_str().unwrap().chars().take(80).collect();
        let row = serde_json::json!({"text": review, "label": v["label"]});
        out.push_str(&row.to_string());
        out.push('\n');
    }
    let p = dir.join("reviews.jsonl");
    std::fs::write(&p, out).unwrap();
    p
}

fn dataset(e: &Engine, path: &Path) -> Dataset {
    let opts = DatasetOptions {
        format: Some(Format::TextLabel {
            template: "Review: {text}\nSentiment:".into(),
            label_map: None,
        }),
        max_len: 40,
        ..Default::default()
    };
    Dataset::load(path, e.tokenizer(), &opts).unwrap()
}

fn config() -> TrainConfig {
    let mut c = TrainConfig {
        batch_size: 3,
        grad_accum: 2,
        lr: 2e-3,
        max_steps: 4,
        epochs: 2,
        warmup_steps: 2,
        schedule: Schedule::Cosine,
        max_len: 40,
        validation_fraction: 0.2,
        eval_every: 2,
        seed: 7,
        ..Default::default()
    };
    c.lora.r = 4;
    c.lora.alpha = 8.0;
    c.lora.dropout = 0.1;
    c.lora.targets = vec!["q_proj".into(), "v_proj".into(), "down_proj".into()];
    c
}

#[test]
fn fine_tune_lowers_the_loss_and_resumes_bit_for_bit() {
    let e = engine();
    let dir = temp_dir("finetune");
    let data = dataset(&e, &reviews(&dir, 0, 15));
    let pad = e.tokenizer().eos_ids()[0];
    let cfg = config();

    // One uninterrupted run.
    let mut events = Vec::new();
    let full_dir = dir.join("full");
    let run = RunOptions {
        checkpoint_dir: Some(full_dir.clone()),
        ..Default::default()
    };
    let full = fine_tune(e.model(), &data, pad, &cfg, &run, &mut |ev| {
        events.push(ev.clone())
    })
    .unwrap();
    assert_eq!(full.steps, 4);
    assert!(!full.cancelled);
    eprintln!(
        "losses {:?}, validation {:?}",
        full.losses, full.validation_losses
    );
    assert!(full.losses.iter().all(|l| l.is_finite()));
    assert_eq!(full.validation_losses.len(), 2);
    // The validation loss (same held-out rows each time) goes down.
    assert!(full.validation_losses[1].1 < full.validation_losses[0].1);
    let steps: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(steps.len(), 4);
    assert!(steps
        .iter()
        .all(|s| s.tokens_per_sec > 0.0 && s.peak_gpu_bytes > 0));
    assert!(steps[0].lr < steps[1].lr, "warmup");
    assert!(
        steps[3].epoch > 1.0,
        "4 steps of 2 x 3 rows cover more than 12 examples"
    );
    assert!(full_dir
        .join("checkpoint/adapter_model.safetensors")
        .exists());

    // The same run cancelled after step 2, then resumed from its checkpoint.
    let part_dir = dir.join("part");
    let cancel = Arc::new(AtomicBool::new(false));
    let run = RunOptions {
        checkpoint_dir: Some(part_dir.clone()),
        resume: true,
        cancel: Some(cancel.clone()),
    };
    let first = fine_tune(e.model(), &data, pad, &cfg, &run, &mut |ev| {
        if let TrainEvent::Step(s) = ev {
            if s.step == 2 {
                cancel.store(true, Ordering::Relaxed);
            }
        }
    })
    .unwrap();
    assert!(first.cancelled);
    assert_eq!(first.steps, 2);
    cancel.store(false, Ordering::Relaxed);
    let mut resumed_at = 0;
    let second = fine_tune(e.model(), &data, pad, &cfg, &run, &mut |ev| {
        if let TrainEvent::Started { first_step, .. } = ev {
            resumed_at = *first_step;
        }
    })
    .unwrap();
    assert_eq!(resumed_at, 3);
    assert_eq!(second.steps, 4);
    assert_eq!(second.losses, full.losses, "the loss curve is the same");
    assert_eq!(second.validation_losses, full.validation_losses);
    assert_eq!(second.weights.tensors, full.weights.tensors, "bit-for-bit");

    // A different config does not resume from that checkpoint.
    let mut other = cfg.clone();
    other.lr = 1e-3;
    let err = fine_tune(e.model(), &data, pad, &other, &run, &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("another config"), "{err}");

    // The PEFT folder reads back exactly, and the adapter gives the same loss at inference
    // (unmerged in the model's forward) as the trainer's own forward.
    let out = dir.join("adapter");
    full.weights.save(&out, 0.0, Some("test")).unwrap();
    let back = LoraWeights::load(&out).unwrap();
    assert_eq!(back.tensors, full.weights.tensors);
    assert_eq!(back.config, full.weights.config);
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg_json["peft_type"], "LORA");
    assert_eq!(cfg_json["r"], 4);
    assert_eq!(
        cfg_json["target_modules"],
        serde_json::json!(["q_proj", "v_proj", "down_proj"])
    );

    let mut eng = engine();
    let model = eng.model_mut();
    let adapter = GpuAdapter::upload(&model.gpu, &back, &model.cfg).unwrap();
    model.set_adapters(vec![(Arc::new(adapter), 1.0)]).unwrap();
    let ex = &data.examples[0];
    model.truncate(0);
    let logits = model.forward_all(&ex.input_ids).unwrap();
    let vocab = model.cfg.vocab as usize;
    let (mut sum, mut n) = (0f64, 0);
    for t in 0..ex.len() - 1 {
        let label = ex.labels[t + 1];
        if label < 0 {
            continue;
        }
        let row = &logits[t * vocab..][..vocab];
        let m = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
        let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        sum += lse - row[label as usize] as f64;
        n += 1;
    }
    let inference_loss = sum / n as f64;
    let trained =
        lamina::train::TrainableAdapter::from_weights(&e.model().gpu, &e.model().cfg, &back)
            .unwrap();
    let mut tr = lamina::train::Trainer::new(
        e.model(),
        trained,
        lamina::train::TrainerOptions {
            max_batch: 1,
            max_seq: 40,
            recompute: false,
        },
    )
    .unwrap();
    let (ids, labels, _, _) = collate(&[ex], pad);
    let ev = tr.evaluate(&ids, &labels, 1).unwrap();
    let train_loss = ev.sum / ev.tokens as f64;
    eprintln!("inference loss {inference_loss:.6}, trainer loss {train_loss:.6}");
    assert!((inference_loss - train_loss).abs() < 1e-4 * inference_loss.max(1.0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_training_config_is_a_clear_error() {
    let e = engine();
    let dir = temp_dir("badcfg");
    let data = dataset(&e, &reviews(&dir, 100, 4));
    let mut cfg = config();
    cfg.lora.targets = vec!["qproj".into()];
    let err = fine_tune(
        e.model(),
        &data,
        0,
        &cfg,
        &RunOptions::default(),
        &mut |_| {},
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("unknown LoRA target 'qproj'"), "{err}");
    let run = |cfg: &TrainConfig| {
        fine_tune(
            e.model(),
            &data,
            0,
            cfg,
            &RunOptions::default(),
            &mut |_| {},
        )
        .err()
        .unwrap()
        .to_string()
    };
    let mut cfg = config();
    cfg.beta1 = 1.0;
    assert!(run(&cfg).contains("betas"));
    let mut cfg = config();
    cfg.max_len = 8;
    assert!(run(&cfg).contains("more than max_len 8"));
    let err = TrainConfig::from_toml("lr = 1e-3\nbatch = 4\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("batch"), "{err}");
    let cfg =
        TrainConfig::from_toml("lr = 1e-3\n[lora]\nr = 16\ntargets = [\"q_proj\"]\n").unwrap();
    assert_eq!(cfg.lora.r, 16);
    assert_eq!(cfg.lr, 1e-3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_step_with_a_non_finite_gradient_is_skipped() {
    use lamina::kernels::AdamW;
    use lamina::train::{LoraSettings, TrainableAdapter, Trainer, TrainerOptions};
    let e = engine();
    let (gpu, cfg) = (&e.model().gpu, &e.model().cfg);
    let settings = LoraSettings {
        r: 2,
        targets: vec!["v_proj".into()],
        ..Default::default()
    };
    let adapter = TrainableAdapter::new(gpu, cfg, &settings, 3).unwrap();
    let mut w = adapter.weights(gpu, cfg).unwrap();
    let moments = adapter.read_moments(gpu, cfg).unwrap();
    // A NaN in one A makes the loss and every gradient downstream non-finite.
    w.tensors.get_mut(&(1, 2)).unwrap().0[0] = f32::NAN;
    adapter.restore(gpu, cfg, &w, &moments).unwrap();
    let opts = TrainerOptions {
        max_batch: 1,
        max_seq: 8,
        recompute: false,
    };
    let mut tr = Trainer::new(e.model(), adapter, opts).unwrap();
    tr.zero_grad();
    let ids = [1u32, 2, 3, 4, 5, 6];
    let labels = [1i64, 2, 3, 4, 5, 6];
    let out = tr.accumulate(&ids, &labels, 1).unwrap();
    assert!(!out.sum.is_finite());
    let step = tr.optimizer_step(&AdamW::default(), Some(1.0)).unwrap();
    assert!(step.skipped && step.grad_norm.is_nan());
    assert_eq!(tr.steps, 0, "no AdamW update counted");
    // The parameters are untouched (layer 0 is finite and unchanged).
    let after = tr.adapter.weights(gpu, cfg).unwrap();
    assert_eq!(after.tensors[&(0, 2)], w.tensors[&(0, 2)]);
}
