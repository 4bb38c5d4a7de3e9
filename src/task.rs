//! The task API: classify a text among labels, and evaluate a labelled set.
//!
//! A prompt is `template` with `{text}` replaced, encoded with the tokenizer's special tokens
//! (BOS), and a label is scored as the continuation `" " + label` (unless it already starts
//! with white space), encoded without them: exactly the examples [`crate::dataset`] builds from
//! `{"text", "label"}` rows, so a model tuned on such rows is scored on what it learned. A
//! label of several tokens scores the sum of its tokens' log-probabilities; probabilities are
//! normalised over the labels.

use std::time::Instant;

use serde::Serialize;

use crate::adapter::LoraWeights;
use crate::error::{Error, Result};
use crate::model::Llama;
use crate::tokenizer::Tokenizer;
use crate::train::{LoraSettings, TrainableAdapter, Trainer, TrainerOptions};

/// One label's score after a prompt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelScore {
    pub label: String,
    /// Normalised over the labels given.
    pub probability: f64,
    /// The model's log-probability of the label's tokens after the prompt.
    pub log_prob: f64,
}

/// Per-label figures of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelStats {
    pub label: String,
    /// Examples whose true label this is.
    pub support: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// What [`evaluate`] measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    pub accuracy: f64,
    pub n: usize,
    /// Accuracy of always answering the most frequent true label.
    pub majority_baseline: f64,
    pub labels: Vec<LabelStats>,
    /// `confusion[true][predicted]`, in the order of the labels given.
    pub confusion: Vec<Vec<usize>>,
    pub secs: f64,
    /// Sequences per forward pass.
    pub batch: usize,
    /// Each example's predicted label, in order.
    pub predictions: Vec<String>,
    /// Each example's log-probability of each label (the order of the labels given).
    pub log_probs: Vec<Vec<f64>>,
}

/// Settings of [`evaluate`].
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Examples per forward pass (one sequence each when every label is one token, else one
    /// per label).
    pub batch_examples: usize,
    /// Longest prompt + label, in tokens; longer prompts lose their start (the BOS is kept).
    pub max_len: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            batch_examples: 8,
            max_len: 512,
        }
    }
}

/// The continuation a label is scored as.
pub fn label_completion(label: &str) -> String {
    if label.starts_with(char::is_whitespace) {
        label.to_string()
    } else {
        format!(" {label}")
    }
}

/// Checks the labels and template, and encodes each label's continuation.
fn label_ids(tok: &Tokenizer, labels: &[String], template: &str) -> Result<Vec<Vec<u32>>> {
    if labels.len() < 2 {
        return Err(Error::Invalid(format!(
            "classification needs at least two labels, got {labels:?}"
        )));
    }
    if !template.contains("{text}") {
        return Err(Error::Invalid(format!(
            "the template {template:?} has no {{text}} placeholder"
        )));
    }
    let mut out: Vec<Vec<u32>> = Vec::with_capacity(labels.len());
    for (i, l) in labels.iter().enumerate() {
        if l.trim().is_empty() || labels[..i].contains(l) {
            return Err(Error::Invalid(format!(
                "label {l:?} is empty or given twice"
            )));
        }
        let ids = tok.encode(&label_completion(l), false)?;
        if ids.is_empty() {
            return Err(Error::Invalid(format!("label {l:?} encodes to no tokens")));
        }
        out.push(ids);
    }
    Ok(out)
}

/// The prompt's ids, as the dataset encodes a prompt (a tokenizer that appends EOS on
/// special tokens would end the prompt with it: dropped).
fn prompt_ids(tok: &Tokenizer, template: &str, text: &str) -> Result<Vec<u32>> {
    let mut ids = tok.encode(&template.replace("{text}", text), true)?;
    let bare = tok.encode("", true)?;
    if let (Some(&last), Some(&bare_last)) = (ids.last(), bare.last()) {
        if tok.is_eos(bare_last) && last == bare_last {
            ids.pop();
        }
    }
    if ids.is_empty() {
        return Err(Error::Invalid("the prompt encodes to no tokens".into()));
    }
    Ok(ids)
}

fn log_softmax_at(row: &[f32], id: u32) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let z: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    row[id as usize] as f64 - max - z.ln()
}

fn normalise(labels: &[String], log_probs: Vec<f64>) -> Vec<LabelScore> {
    let max = log_probs.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    let z: f64 = log_probs.iter().map(|lp| (lp - max).exp()).sum();
    labels
        .iter()
        .zip(log_probs)
        .map(|(label, log_prob)| LabelScore {
            label: label.clone(),
            probability: (log_prob - max).exp() / z,
            log_prob,
        })
        .collect()
}

/// Each label's probability after the prompt, on the model as it is (adapters applied). The
/// prompt runs once; a label of several tokens runs its tokens after it.
pub fn classify(
    model: &mut Llama,
    tok: &Tokenizer,
    text: &str,
    labels: &[String],
    template: &str,
) -> Result<Vec<LabelScore>> {
    let lids = label_ids(tok, labels, template)?;
    let prompt = prompt_ids(tok, template, text)?;
    let longest = lids.iter().map(Vec::len).max().unwrap_or(1);
    let ctx = model.opts.context as usize;
    if prompt.len() + longest > ctx {
        return Err(Error::Invalid(format!(
            "a prompt of {} tokens and a label of {longest} do not fit the context of {ctx}",
            prompt.len()
        )));
    }
    let vocab = model.cfg.vocab as u64;
    model.truncate(0);
    model.forward_last(&prompt, None)?;
    let first = model.gpu.read_f32(model.logits_buffer(), 0, vocab)?;
    let mut log_probs = Vec::with_capacity(labels.len());
    for ids in &lids {
        let mut lp = log_softmax_at(&first, ids[0]);
        if ids.len() > 1 {
            // Rows for the label's own tokens, after the cached prompt.
            model.truncate(prompt.len() as u32);
            let rows = model.forward_all(&ids[..ids.len() - 1])?;
            for (j, &id) in ids[1..].iter().enumerate() {
                lp += log_softmax_at(&rows[j * vocab as usize..][..vocab as usize], id);
            }
        }
        log_probs.push(lp);
    }
    model.truncate(0);
    Ok(normalise(labels, log_probs))
}

/// A labelled example to evaluate on.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    pub text: String,
    pub label: String,
}

/// Accuracy and per-label figures of the model over `data`, many examples per forward pass:
/// every (example, label) pair is one sequence of a batch, scored by its label tokens' losses.
/// `adapter` is the LoRA on top of the base (none: the base model).
pub fn evaluate(
    model: &Llama,
    tok: &Tokenizer,
    adapter: Option<&LoraWeights>,
    data: &[Labelled],
    labels: &[String],
    template: &str,
    opts: &EvalOptions,
) -> Result<Evaluation> {
    let start = Instant::now();
    let lids = label_ids(tok, labels, template)?;
    let longest = lids.iter().map(Vec::len).max().unwrap_or(1);
    if opts.max_len < longest + 2 {
        return Err(Error::Invalid(format!(
            "max_len {} leaves no room for a prompt before a label of {longest} tokens",
            opts.max_len
        )));
    }
    let mut truth = Vec::with_capacity(data.len());
    for (i, ex) in data.iter().enumerate() {
        let t = labels.iter().position(|l| *l == ex.label).ok_or_else(|| {
            Error::Invalid(format!(
                "example {} has label {:?}, not one of {labels:?}",
                i + 1,
                ex.label
            ))
        })?;
        truth.push(t);
    }
    // Sequences (prompt + label) of one batch, padded to its longest.
    let prompts = data
        .iter()
        .map(|ex| {
            let mut p = prompt_ids(tok, template, &ex.text)?;
            let room = opts.max_len - longest;
            if p.len() > room {
                // Keep the end of the text (the template's question sits there), and the BOS.
                let keep_bos = tok.bos_id().is_some_and(|b| p[0] == b) as usize;
                let cut = p.len() - room;
                p.drain(keep_bos..keep_bos + cut);
            }
            Ok(p)
        })
        .collect::<Result<Vec<_>>>()?;
    let batch_examples = opts.batch_examples.max(1);
    // Labels of one token each (the common case) are all scored at the end of the prompt in
    // one sequence per example; longer labels get a sequence per (example, label).
    let single = lids.iter().all(|l| l.len() == 1);
    let per_example = if single { 1 } else { labels.len() };
    let per_batch = batch_examples * per_example;
    let max_seq = (prompts.iter().map(Vec::len).max().unwrap_or(1) + longest).max(labels.len());
    // B = 0 on one module: exactly the base model, at the cost of a rank-1 product.
    let trainable = match adapter {
        Some(w) => TrainableAdapter::from_weights(&model.gpu, &model.cfg, w)?,
        None => TrainableAdapter::new(
            &model.gpu,
            &model.cfg,
            &LoraSettings {
                r: 1,
                targets: vec!["v_proj".into()],
                ..Default::default()
            },
            0,
        )?,
    };
    let mut trainer = Trainer::new(
        model,
        trainable,
        TrainerOptions {
            max_batch: per_batch as u32,
            max_seq: max_seq as u32,
            recompute: true,
        },
    )?;
    let pad = tok.eos_ids().first().copied().unwrap_or(0);
    // A batch is padded to its longest sequence, so examples of similar length go together
    // (shortest first); results are put back in the data's order.
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| prompts[i].len());
    let mut predicted = vec![0; data.len()];
    let mut all_lps = vec![Vec::new(); data.len()];
    for chunk in order.chunks(batch_examples) {
        let seq = (chunk.iter().map(|&i| prompts[i].len()).max().unwrap_or(1) + longest)
            .max(labels.len());
        let (mut ids, mut targets) = (Vec::new(), Vec::new());
        for p in chunk.iter().map(|&i| &prompts[i]) {
            let rows: Vec<&[u32]> = if single {
                vec![&[]]
            } else {
                lids.iter().map(Vec::as_slice).collect()
            };
            for (k, label) in rows.into_iter().enumerate() {
                let b = ids.len() / seq;
                ids.extend_from_slice(p);
                ids.extend_from_slice(label);
                ids.resize((b + 1) * seq, pad);
                if single {
                    // Every label's (only) token, predicted from the prompt's last position.
                    for l in &lids {
                        targets.push((b, p.len() - 1, l[0]));
                    }
                } else {
                    for (j, &t) in lids[k].iter().enumerate() {
                        targets.push((b, p.len() - 1 + j, t));
                    }
                }
            }
        }
        let losses = trainer.target_losses(&ids, ids.len() / seq, &targets)?;
        // Targets were pushed example by example, label by label, token by token.
        let mut at = 0;
        for &i in chunk {
            let mut lps = Vec::with_capacity(lids.len());
            for l in &lids {
                let n = if single { 1 } else { l.len() };
                let lp: f64 = -losses[at..at + n].iter().map(|&v| v as f64).sum::<f64>();
                at += n;
                lps.push(lp);
            }
            let best = (0..lps.len())
                .max_by(|&a, &b| lps[a].total_cmp(&lps[b]).then(b.cmp(&a)))
                .unwrap_or(0);
            predicted[i] = best;
            all_lps[i] = lps;
        }
    }
    let mut e = metrics(
        labels,
        &truth,
        &predicted,
        start.elapsed().as_secs_f64(),
        per_batch,
    );
    e.log_probs = all_lps;
    Ok(e)
}

/// A readable report: accuracy against the majority baseline, per-label figures and the
/// confusion matrix (rows: true label, columns: predicted).
pub fn report(e: &Evaluation) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "accuracy {:.2}% on {} examples (majority baseline {:.2}%), {:.1} s, {} sequences per pass",
        100.0 * e.accuracy,
        e.n,
        100.0 * e.majority_baseline,
        e.secs,
        e.batch
    );
    let w = e
        .labels
        .iter()
        .map(|l| l.label.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = writeln!(out, "{:w$}  precision  recall  f1     support", "label");
    for l in &e.labels {
        let _ = writeln!(
            out,
            "{:w$}  {:9.3}  {:6.3}  {:5.3}  {}",
            l.label, l.precision, l.recall, l.f1, l.support
        );
    }
    let _ = writeln!(
        out,
        "confusion matrix (rows: true label, columns: predicted)"
    );
    let cw = w.max(6);
    let _ = write!(out, "{:w$}", "");
    for l in &e.labels {
        let _ = write!(out, "  {:>cw$}", l.label);
    }
    let _ = writeln!(out);
    for (l, row) in e.labels.iter().zip(&e.confusion) {
        let _ = write!(out, "{:w$}", l.label);
        for c in row {
            let _ = write!(out, "  {c:>cw$}");
        }
        let _ = writeln!(out);
    }
    out
}

/// Accuracy, majority baseline, per-label precision/recall/F1 and the confusion matrix.
pub fn metrics(
    labels: &[String],
    truth: &[usize],
    predicted: &[usize],
    secs: f64,
    batch: usize,
) -> Evaluation {
    let k = labels.len();
    let mut confusion = vec![vec![0usize; k]; k];
    for (&t, &p) in truth.iter().zip(predicted) {
        confusion[t][p] += 1;
    }
    let n = truth.len();
    let right: usize = (0..k).map(|i| confusion[i][i]).sum();
    let support: Vec<usize> = confusion.iter().map(|r| r.iter().sum()).collect();
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let stats = (0..k)
        .map(|i| {
            let predicted_i: usize = (0..k).map(|t| confusion[t][i]).sum();
            let precision = ratio(confusion[i][i], predicted_i);
            let recall = ratio(confusion[i][i], support[i]);
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            LabelStats {
                label: labels[i].clone(),
                support: support[i],
                precision,
                recall,
                f1,
            }
        })
        .collect();
    Evaluation {
        predictions: predicted.iter().map(|&p| labels[p].clone()).collect(),
        log_probs: Vec::new(),
        accuracy: ratio(right, n),
        n,
        majority_baseline: ratio(support.iter().copied().max().unwrap_or(0), n),
        labels: stats,
        confusion,
        secs,
        batch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_a_small_confusion() {
        let labels = vec!["a".to_string(), "b".to_string()];
        // truth a a a b, predicted a b a b
        let e = metrics(&labels, &[0, 0, 0, 1], &[0, 1, 0, 1], 1.0, 4);
        assert_eq!(e.confusion, vec![vec![2, 1], vec![0, 1]]);
        assert_eq!(e.accuracy, 0.75);
        assert_eq!(e.majority_baseline, 0.75);
        assert_eq!(e.labels[0].precision, 1.0);
        assert!((e.labels[0].recall - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(e.labels[1].precision, 0.5);
        assert_eq!(e.labels[1].recall, 1.0);
        assert!((e.labels[1].f1 - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn labels_are_scored_with_a_leading_space() {
        assert_eq!(label_completion("great"), " great");
        assert_eq!(label_completion(" great"), " great");
        let n = normalise(&["x".into(), "y".into()], vec![-1.0, -1.0]);
        assert!((n[0].probability - 0.5).abs() < 1e-12);
    }
}
