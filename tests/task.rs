//! The task API on the real SmolLM2 file: classify and the batched evaluate agree example by
//! example, for one-token and several-token labels, with and without an adapter; their
//! probabilities are normalised; bad labels and templates are errors.

use lamina::adapter::{LoraConfig, LoraWeights};
use lamina::engine::{Engine, EngineOptions};
use lamina::model::ModelOptions;
use lamina::task::{EvalOptions, Labelled};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures");
const TEMPLATE: &str = "Review: {text}\nSentiment:";

fn engine() -> Engine {
    Engine::load(
        None,
        EngineOptions {
            model: ModelOptions {
                context: 256,
                batch: 64,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap()
}

fn rows() -> Vec<Labelled> {
    [
        ("Absolutely delicious, my kids love it.", "positive"),
        ("Stale and overpriced, never again.", "negative"),
        ("Good value, arrived quickly.", "positive"),
        ("The box was crushed and the taste was bland.", "negative"),
        ("Best tea I have ever had!", "positive"),
    ]
    .iter()
    .map(|(t, l)| Labelled {
        text: t.to_string(),
        label: l.to_string(),
    })
    .collect()
}

fn labels(l: &[&str]) -> Vec<String> {
    l.iter().map(|s| s.to_string()).collect()
}

/// classify's argmax and log-probabilities for every row.
fn classify_all(
    e: &mut Engine,
    data: &[Labelled],
    labels: &[String],
) -> (Vec<String>, Vec<Vec<f64>>) {
    data.iter()
        .map(|r| {
            let scores = e.classify(&r.text, labels, TEMPLATE).unwrap();
            let sum: f64 = scores.iter().map(|s| s.probability).sum();
            assert!((sum - 1.0).abs() < 1e-9, "{scores:?}");
            let best = scores
                .iter()
                .max_by(|a, b| a.probability.total_cmp(&b.probability))
                .unwrap()
                .label
                .clone();
            (best, scores.iter().map(|s| s.log_prob).collect())
        })
        .unzip()
}

/// The batched path's log-probabilities equal the one-prompt path's (two different forwards:
/// the inference KV-cache model and the training batch), to f32 rounding.
fn assert_close(got: &[Vec<f64>], want: &[Vec<f64>]) {
    for (g, w) in got.iter().zip(want) {
        for (a, b) in g.iter().zip(w) {
            assert!(
                (a - b).abs() < 2e-3 * b.abs().max(1.0),
                "{got:?} vs {want:?}"
            );
        }
    }
}

#[test]
fn classify_and_evaluate_agree() {
    let mut e = engine();
    let data = rows();
    let opts = EvalOptions {
        batch_examples: 3,
        max_len: 128,
    };
    // One-token labels (scored in one sequence per example) and several-token ones.
    for ls in [
        labels(&["positive", "negative"]),
        labels(&["very positive", "rather negative"]),
    ] {
        let mapped: Vec<Labelled> = data
            .iter()
            .map(|r| Labelled {
                text: r.text.clone(),
                label: if r.label == "positive" {
                    ls[0].clone()
                } else {
                    ls[1].clone()
                },
            })
            .collect();
        let (want, want_lp) = classify_all(&mut e, &mapped, &ls);
        let got = e.evaluate(&mapped, &ls, TEMPLATE, &opts).unwrap();
        assert_eq!(got.predictions, want, "labels {ls:?}");
        assert_close(&got.log_probs, &want_lp);
        assert_eq!(got.n, data.len());
        assert!((got.majority_baseline - 0.6).abs() < 1e-12);
        let right = want
            .iter()
            .zip(&mapped)
            .filter(|(p, r)| **p == r.label)
            .count();
        assert!((got.accuracy - right as f64 / data.len() as f64).abs() < 1e-12);
        let total: usize = got.confusion.iter().flatten().sum();
        assert_eq!(total, data.len());
    }
    // With an adapter applied, both paths see it.
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
    e.apply_lora(vec![(w, 3.0)]).unwrap();
    let ls = labels(&["positive", "negative"]);
    let (want, want_lp) = classify_all(&mut e, &data, &ls);
    let got = e.evaluate(&data, &ls, TEMPLATE, &opts).unwrap();
    assert_eq!(got.predictions, want);
    assert_close(&got.log_probs, &want_lp);
    // And the adapter changed the scores.
    let (_, base_lp) = {
        e.apply_lora(vec![]).unwrap();
        classify_all(&mut e, &data, &ls)
    };
    assert!(base_lp
        .iter()
        .flatten()
        .zip(want_lp.iter().flatten())
        .any(|(a, b)| (a - b).abs() > 1e-2));
}

#[test]
fn bad_labels_and_templates_are_errors() {
    let mut e = engine();
    for (ls, template) in [
        (labels(&["only"]), TEMPLATE),
        (labels(&["a", "a"]), TEMPLATE),
        (labels(&["a", " "]), TEMPLATE),
        (labels(&["a", "b"]), "no placeholder"),
    ] {
        assert!(
            e.classify("text", &ls, template).is_err(),
            "{ls:?} {template:?}"
        );
    }
    let data = vec![Labelled {
        text: "x".into(),
        label: "unknown".into(),
    }];
    let err = e
        .evaluate(
            &data,
            &labels(&["a", "b"]),
            TEMPLATE,
            &EvalOptions::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("example 1"), "{err}");
}
