//! Training data in every format (JSONL prompt/completion, messages, text/label; JSON arrays;
//! CSV), detected or forced, with both truncation policies; then split, batched and collated.
#![no_main]
mod common;
use lamina::dataset::{collate, Dataset, DatasetOptions, Format, Truncation};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let ext = ["jsonl", "json", "csv"][(sel % 3) as usize];
    let path = common::scratch().join(format!("data.{ext}"));
    std::fs::write(&path, rest).unwrap();
    let format = match (sel / 3) % 4 {
        0 => None,
        1 => Some(Format::PromptCompletion),
        2 => Some(Format::Messages),
        _ => Some(Format::TextLabel {
            template: "Review: {text}\nSentiment:".into(),
            label_map: None,
        }),
    };
    let opts = DatasetOptions {
        format,
        max_len: 2 + (sel as usize % 61),
        truncation: if sel & 0x40 != 0 {
            Truncation::Right
        } else {
            Truncation::Left
        },
        skip_malformed: sel & 0x80 != 0,
        csv_columns: None,
        add_eos: true,
    };
    let Ok(ds) = Dataset::load(&path, common::tokenizer(), &opts) else {
        return;
    };
    for ex in &ds.examples {
        assert!(ex.len() <= opts.max_len);
    }
    let (train, _val) = ds.split(0.25, sel as u64);
    let batches = ds.batches(&train, 3, sel as u64, true);
    for b in batches.iter().take(8) {
        let exs: Vec<_> = b.iter().map(|&i| &ds.examples[i]).collect();
        let _ = collate(&exs, 0);
    }
});
