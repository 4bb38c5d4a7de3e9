//! Fine-tune SmolLM2 on real product reviews, on this device, and measure what it learned.
//!
//! ```sh
//! cargo run --release --example sentiment                      # defaults below
//! cargo run --release --example sentiment -- --steps 40 --train 160 --test 80
//! ```
//!
//! Reviews (`examples/data/reviews.jsonl`, 400 real Amazon Fine Foods reviews, 5 stars =
//! `great`, else `other`) are split into train and held-out test rows. The base model's
//! accuracy on the test rows is measured first (does " positive" or " negative" get the higher
//! logit after `Review: ...\nSentiment:`), then a LoRA adapter is trained on the train rows,
//! the accuracy is measured again with the adapter applied unmerged, and the adapter is saved
//! in the PEFT layout for `lamina generate --adapter DIR`.

use std::path::PathBuf;
use std::time::Instant;

use lamina::dataset::{Dataset, DatasetOptions, Format};
use lamina::engine::{Engine, EngineOptions};
use lamina::finetune::{RunOptions, Schedule, TrainConfig, TrainEvent};
use lamina::model::ModelOptions;
use lamina::task::{EvalOptions, Evaluation, Labelled};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/reviews.jsonl");
const TEMPLATE: &str = "Review: {text}\nSentiment:";

struct Args {
    train: usize,
    test: usize,
    steps: u32,
    batch: u32,
    lr: f32,
    max_chars: usize,
    out: PathBuf,
}

fn parse_args() -> Args {
    let mut a = Args {
        train: 64,
        test: 40,
        steps: 16,
        batch: 4,
        lr: 1e-3,
        max_chars: 200,
        out: PathBuf::from("target/sentiment-adapter"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--train" => a.train = v.parse().expect("--train N"),
            "--test" => a.test = v.parse().expect("--test N"),
            "--steps" => a.steps = v.parse().expect("--steps N"),
            "--batch" => a.batch = v.parse().expect("--batch N"),
            "--lr" => a.lr = v.parse().expect("--lr X"),
            "--max-chars" => a.max_chars = v.parse().expect("--max-chars N"),
            "--out" => a.out = PathBuf::from(v),
            other => panic!("unknown argument {other} (see the file's header)"),
        }
        i += 2;
    }
    a
}

/// Held-out accuracy, per-label figures and the confusion matrix: does " positive" or
/// " negative" score higher after the prompt (many reviews per forward pass).
fn evaluate(engine: &Engine, rows: &[(String, bool)]) -> lamina::Result<Evaluation> {
    let data: Vec<Labelled> = rows
        .iter()
        .map(|(text, great)| Labelled {
            text: text.clone(),
            label: label(*great).trim().to_string(),
        })
        .collect();
    let labels = vec![
        label(true).trim().to_string(),
        label(false).trim().to_string(),
    ];
    engine.evaluate(&data, &labels, TEMPLATE, &EvalOptions::default())
}

fn label(great: bool) -> &'static str {
    if great {
        " positive"
    } else {
        " negative"
    }
}

fn main() -> lamina::Result<()> {
    let args = parse_args();
    let mut engine = Engine::load(
        None,
        EngineOptions {
            model: ModelOptions {
                context: 512,
                batch: 64,
                ..Default::default()
            },
            ..Default::default()
        },
    )?;
    eprintln!("device: {}", engine.gpu().describe());

    // Rows alternate great / other; the first `train` go to training, the next `test` are held out.
    let text = std::fs::read_to_string(DATA).map_err(|e| lamina::Error::File {
        path: DATA.into(),
        detail: e.to_string(),
    })?;
    let mut rows = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| lamina::Error::File {
            path: DATA.into(),
            detail: e.to_string(),
        })?;
        let review: String = v["text"]
            .as_str()
            .unwrap_or_default()
            .replace("<br />", " ")
            .chars()
            .take(args.max_chars)
            .collect();
        rows.push((review, v["label"] == "great"));
    }
    let (train_rows, rest) = rows.split_at(args.train.min(rows.len()));
    let test_rows = &rest[..args.test.min(rest.len())];

    let before = evaluate(&engine, test_rows)?;
    eprint!("base model, zero-shot:\n{}", lamina::task::report(&before));

    // The training rows as a prompt/completion file, through the dataset loader.
    std::fs::create_dir_all(&args.out).map_err(|e| lamina::Error::File {
        path: args.out.clone(),
        detail: e.to_string(),
    })?;
    let train_file = args.out.join("train.jsonl");
    let mut jsonl = String::new();
    for (text, great) in train_rows {
        let row =
            serde_json::json!({"text": text, "label": if *great { "great" } else { "other" }});
        jsonl.push_str(&row.to_string());
        jsonl.push('\n');
    }
    lamina::fetch::write_atomic(&train_file, jsonl.as_bytes())?;
    let opts = DatasetOptions {
        format: Some(Format::TextLabel {
            template: TEMPLATE.into(),
            label_map: Some(
                [("great", label(true)), ("other", label(false))]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        }),
        max_len: 96,
        ..Default::default()
    };
    let data = Dataset::load(&train_file, engine.tokenizer(), &opts)?;
    let mut cfg = TrainConfig {
        batch_size: args.batch,
        lr: args.lr,
        max_steps: args.steps,
        epochs: 0,
        warmup_steps: 2,
        schedule: Schedule::Cosine,
        max_len: 96,
        validation_fraction: 0.0,
        ..Default::default()
    };
    cfg.lora.r = 8;
    cfg.lora.alpha = 16.0;
    let train_start = Instant::now();
    let mut last = None;
    let result = engine.fine_tune(&data, &cfg, &RunOptions::default(), &mut |e| {
        if let TrainEvent::Step(s) = e {
            eprintln!(
                "step {:>3}/{} loss {:.4} lr {:.2e} | {:.1} tok/s | eta {:.0} s",
                s.step, s.total_steps, s.loss, s.lr, s.tokens_per_sec, s.eta_secs
            );
            last = Some(s.clone());
        }
    })?;
    let train_secs = train_start.elapsed().as_secs_f64();
    engine.apply_lora(vec![(result.weights.clone(), 1.0)])?;
    let after = evaluate(&engine, test_rows)?;
    eprint!("with the adapter:\n{}", lamina::task::report(&after));
    result
        .weights
        .save(&args.out, cfg.lora.dropout, Some(engine.model_name()))?;

    let last = last.expect("at least one step");
    println!(
        "accuracy on {} held-out reviews: {:.1}% before, {:.1}% after {} steps on {} reviews (majority baseline {:.1}%)",
        test_rows.len(),
        100.0 * before.accuracy,
        100.0 * after.accuracy,
        result.steps,
        train_rows.len(),
        100.0 * after.majority_baseline
    );
    println!(
        "training: {:.1} s, {:.1} tokens/s, peak GPU memory {:.0} MiB (weights {:.0} MiB)",
        train_secs,
        last.tokens_per_sec,
        last.peak_gpu_bytes as f64 / 1048576.0,
        engine.model().weights.gpu_bytes() as f64 / 1048576.0
    );
    println!(
        "adapter saved to {} — try: lamina generate --adapter {} --temperature 0 --max-tokens 2 --prompt \"Review: Stale and overpriced.\\nSentiment:\"",
        args.out.display(),
        args.out.display()
    );
    Ok(())
}
