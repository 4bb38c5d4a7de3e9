//! Training datasets: the fine-foods reviews through a text/label template, and small
//! prompt/completion, chat and CSV files checked token by token against the tokenizer.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use lamina::dataset::{
    collate, Dataset, DatasetOptions, Example, Format, Truncation, DEFAULT_TEXT_TEMPLATE,
    IGNORE_INDEX,
};
use lamina::gguf::GgufFile;
use lamina::tokenizer::{ChatMessage, Tokenizer};
use lamina::Error;

const REVIEWS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/reviews/fine_foods_train.jsonl"
);
const REVIEW_TEMPLATE: &str = "Review: {text}\nSentiment:";
/// Short enough that some reviews are truncated.
const REVIEW_MAX_LEN: usize = 128;

fn tok() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let g = GgufFile::open(lamina::fetch::default_model().unwrap()).unwrap();
        Tokenizer::from_gguf(&g).unwrap()
    })
}

fn enc(text: &str, add_special: bool) -> Vec<u32> {
    tok().encode(text, add_special).unwrap()
}

fn eos() -> u32 {
    tok().eos_ids()[0]
}

fn review_labels() -> BTreeMap<String, String> {
    [("great", " positive"), ("other", " negative")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn review_options() -> DatasetOptions {
    DatasetOptions {
        format: Some(Format::TextLabel {
            template: REVIEW_TEMPLATE.into(),
            label_map: Some(review_labels()),
        }),
        max_len: REVIEW_MAX_LEN,
        ..Default::default()
    }
}

fn reviews() -> &'static Dataset {
    static D: OnceLock<Dataset> = OnceLock::new();
    D.get_or_init(|| Dataset::load(REVIEWS.as_ref(), tok(), &review_options()).unwrap())
}

/// A file in the temp directory, removed when dropped.
struct Temp(PathBuf);

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp_file(ext: &str, content: &str) -> Temp {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "lamina-dataset-{}-{}.{ext}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, content).unwrap();
    Temp(path)
}

fn load(file: &Temp, opts: &DatasetOptions) -> lamina::Result<Dataset> {
    Dataset::load(&file.0, tok(), opts)
}

/// The `detail` of an `Error::File` about `file`.
fn file_detail(file: &Temp, e: Error) -> String {
    match e {
        Error::File { path, detail } => {
            assert_eq!(path, file.0);
            detail
        }
        other => panic!("expected a file error, got {other}"),
    }
}

/// prompt ++ completion [++ eos], loss on the completion, built by hand.
fn expected(prompt: &str, completion: &str, add_eos: bool) -> Example {
    let p = enc(prompt, true);
    let mut c = enc(completion, false);
    if add_eos {
        c.push(eos());
    }
    let labels = std::iter::repeat_n(IGNORE_INDEX, p.len())
        .chain(c.iter().map(|&t| i64::from(t)))
        .collect();
    Example {
        input_ids: [p, c].concat(),
        labels,
    }
}

fn json_line(v: serde_json::Value) -> String {
    format!("{v}\n")
}

#[test]
fn reviews_load_through_a_text_label_template() {
    let ds = reviews();
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(REVIEWS)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4000);
    assert_eq!(ds.examples.len(), 4000);
    assert!(ds.skipped.is_empty());

    let map = review_labels();
    let bos = tok().bos_id();
    let mut truncated = 0;
    for (row, ex) in rows.iter().zip(&ds.examples) {
        assert!(ex.len() <= REVIEW_MAX_LEN);
        assert_eq!(ex.labels.len(), ex.len());
        let prompt = REVIEW_TEMPLATE.replace("{text}", row["text"].as_str().unwrap());
        let completion = &map[row["label"].as_str().unwrap()];
        let whole = expected(&prompt, completion, true);
        if whole.len() <= REVIEW_MAX_LEN {
            assert_eq!(ex, &whole);
            continue;
        }
        // Left truncation: the completion (and EOS) kept whole, the prompt's start dropped
        // (a leading BOS stays).
        truncated += 1;
        assert_eq!(ex.len(), REVIEW_MAX_LEN);
        let mut c = enc(completion, false);
        c.push(eos());
        let cut = REVIEW_MAX_LEN - c.len();
        assert_eq!(&ex.input_ids[cut..], &c[..]);
        assert!(ex.labels[..cut].iter().all(|&l| l == IGNORE_INDEX));
        assert!(ex.labels[cut..]
            .iter()
            .zip(&c)
            .all(|(&l, &t)| l == i64::from(t)));
        let p = enc(&prompt, true);
        let head = usize::from(bos.is_some() && p.first() == bos.as_ref());
        assert_eq!(&ex.input_ids[..head], &p[..head]);
        assert_eq!(&ex.input_ids[head..cut], &p[p.len() - (cut - head)..]);
    }
    assert!(
        truncated > 0,
        "max_len {REVIEW_MAX_LEN} should cut some reviews"
    );
    assert_eq!(ds.truncated, truncated);
}

#[test]
fn prompt_completion_rows_are_tokenized_in_two_parts() {
    let rows = [
        ("Translate to French: cheese\nFrench:", " fromage"),
        ("2 + 2 =", " 4"),
        ("Emoji: 🙂 and naïve text", " ok"),
        ("", "starts with no prompt"),
    ];
    let mut content = String::new();
    for (p, c) in rows {
        content += &json_line(serde_json::json!({"prompt": p, "completion": c, "id": 7}));
    }
    let file = temp_file("jsonl", &content);

    let ds = load(&file, &DatasetOptions::default()).unwrap();
    let want: Vec<Example> = rows.iter().map(|(p, c)| expected(p, c, true)).collect();
    assert_eq!(ds.examples, want);
    assert_eq!(ds.truncated, 0);
    assert!(ds.skipped.is_empty());

    let opts = DatasetOptions {
        format: Some(Format::PromptCompletion),
        add_eos: false,
        ..Default::default()
    };
    let ds = load(&file, &opts).unwrap();
    let want: Vec<Example> = rows.iter().map(|(p, c)| expected(p, c, false)).collect();
    assert_eq!(ds.examples, want);
}

#[test]
fn chat_rows_take_loss_on_assistant_turns_only() {
    let conversations = [
        vec![
            ChatMessage::new("system", "You are terse."),
            ChatMessage::new("user", "Capital of France?"),
            ChatMessage::new("assistant", "Paris."),
            ChatMessage::new("user", "And of Italy?"),
            ChatMessage::new("assistant", "Rome, of course."),
        ],
        vec![
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "Hello! How can I help?"),
            ChatMessage::new("user", "Nothing, thanks."),
        ],
    ];
    let content: String = conversations
        .iter()
        .map(|m| json_line(serde_json::json!({ "messages": m })))
        .collect();
    let file = temp_file("jsonl", &content);
    let ds = load(&file, &DatasetOptions::default()).unwrap();
    assert_eq!(ds.examples.len(), 2);

    for (msgs, ex) in conversations.iter().zip(&ds.examples) {
        let text = tok().apply_chat_template(msgs, false).unwrap();
        assert_eq!(ex.input_ids, enc(&text, false));
        // The labelled spans, in order, are the assistant turns with their end-of-turn
        // marker (SmolLM2's ChatML: "content<|im_end|>\n").
        let mut spans: Vec<Vec<u32>> = Vec::new();
        let mut prev_masked = true;
        for (&id, &l) in ex.input_ids.iter().zip(&ex.labels) {
            if l == IGNORE_INDEX {
                prev_masked = true;
                continue;
            }
            assert_eq!(l, i64::from(id));
            if prev_masked {
                spans.push(Vec::new());
            }
            spans.last_mut().unwrap().push(id);
            prev_masked = false;
        }
        let want: Vec<Vec<u32>> = msgs
            .iter()
            .filter(|m| m.role == "assistant")
            .map(|m| enc(&format!("{}<|im_end|>\n", m.content), false))
            .collect();
        assert_eq!(spans, want);
        // Everything before the first span is the prompt the model would be given.
        let first = msgs.iter().position(|m| m.role == "assistant").unwrap();
        let prompt = enc(
            &tok().apply_chat_template(&msgs[..first], true).unwrap(),
            false,
        );
        assert!(ex.labels[..prompt.len()].iter().all(|&l| l == IGNORE_INDEX));
        assert_ne!(ex.labels[prompt.len()], IGNORE_INDEX);
    }

    // A conversation without an assistant turn has nothing to learn.
    let file = temp_file(
        "jsonl",
        &(content
            + &json_line(serde_json::json!({"messages": [{"role": "user", "content": "x"}]}))),
    );
    let e = load(&file, &DatasetOptions::default()).unwrap_err();
    assert_eq!(
        file_detail(&file, e),
        "line 3: no assistant message to learn from"
    );
}

#[test]
fn csv_rows_with_named_columns() {
    let file = temp_file(
        "csv",
        "id,review,sentiment\r\n\
         1,\"Great, really \"\"great\"\" stuff\",great\r\n\
         2,\"Two\nlines\",other\r\n\
         \r\n\
         3,plain,great\r\n",
    );
    let opts = DatasetOptions {
        format: Some(Format::TextLabel {
            template: REVIEW_TEMPLATE.into(),
            label_map: None,
        }),
        csv_columns: Some(("review".into(), "sentiment".into())),
        ..Default::default()
    };
    let ds = load(&file, &opts).unwrap();
    let want: Vec<Example> = [
        ("Great, really \"great\" stuff", "great"),
        ("Two\nlines", "other"),
        ("plain", "great"),
    ]
    .iter()
    .map(|(text, label)| {
        expected(
            &REVIEW_TEMPLATE.replace("{text}", text),
            &format!(" {label}"),
            true,
        )
    })
    .collect();
    assert_eq!(ds.examples, want);

    // Detected from the named columns: text/label with the default template.
    let opts = DatasetOptions {
        csv_columns: Some(("review".into(), "sentiment".into())),
        ..Default::default()
    };
    let ds = load(&file, &opts).unwrap();
    assert_eq!(
        ds.examples[2],
        expected(
            &DEFAULT_TEXT_TEMPLATE.replace("{text}", "plain"),
            " great",
            true
        )
    );

    // A prompt/completion header is detected as such.
    let file = temp_file("csv", "prompt,completion\n\"Q: why?\nA:\", because\n");
    let ds = load(&file, &DatasetOptions::default()).unwrap();
    assert_eq!(ds.examples, vec![expected("Q: why?\nA:", " because", true)]);

    // Errors name the record's first line, counting line breaks inside quotes.
    let file = temp_file(
        "csv",
        "prompt,completion\n\"multi\nline\",\" ok\"\nshort\n\"a\",\" b\"\n",
    );
    let e = load(&file, &DatasetOptions::default()).unwrap_err();
    assert_eq!(
        file_detail(&file, e),
        "line 4: 1 fields where the header has 2"
    );
    let opts = DatasetOptions {
        skip_malformed: true,
        ..Default::default()
    };
    let ds = load(&file, &opts).unwrap();
    assert_eq!(ds.examples.len(), 2);
    assert_eq!(
        ds.skipped,
        vec![(4, "1 fields where the header has 2".to_string())]
    );

    let file = temp_file("csv", "prompt,answer\na,b\n");
    let opts = DatasetOptions {
        format: Some(Format::PromptCompletion),
        ..Default::default()
    };
    let e = load(&file, &opts).unwrap_err();
    assert_eq!(
        file_detail(&file, e),
        "line 1: no column \"completion\" (columns: prompt, answer)"
    );
}

#[test]
fn json_array_files_number_rows_by_item() {
    let file = temp_file(
        "json",
        r#"[{"text": "fine", "label": 1},
            {"text": "bad", "label": 0},
            {"text": "odd", "label": 2}]"#,
    );
    let map: BTreeMap<String, String> = [("0", " no"), ("1", " yes")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let opts = DatasetOptions {
        format: Some(Format::TextLabel {
            template: "{text} ->".into(),
            label_map: Some(map),
        }),
        skip_malformed: true,
        ..Default::default()
    };
    let ds = load(&file, &opts).unwrap();
    assert_eq!(
        ds.examples,
        vec![
            expected("fine ->", " yes", true),
            expected("bad ->", " no", true)
        ]
    );
    assert_eq!(
        ds.skipped,
        vec![(3, "label \"2\" is not in the label map".to_string())]
    );
    let opts = DatasetOptions {
        skip_malformed: false,
        ..opts
    };
    let e = load(&file, &opts).unwrap_err();
    assert_eq!(
        file_detail(&file, e),
        "item 3: label \"2\" is not in the label map"
    );
}

#[test]
fn malformed_rows_are_named_or_skipped() {
    let content = "{\"prompt\": \"a\", \"completion\": \" b\"}\n\
                   \n\
                   {\"prompt\": \"a\", \"completion\"\n\
                   {\"prompt\": \"a\"}\n\
                   {\"prompt\": \"a\", \"completion\": 5}\n\
                   {\"prompt\": \"a\", \"completion\": \"\"}\n\
                   [1, 2]\n\
                   {\"prompt\": \"c\", \"completion\": \" d\"}\n";
    let file = temp_file("jsonl", content);
    let e = load(&file, &DatasetOptions::default()).unwrap_err();
    let shown = e.to_string();
    assert!(shown.contains(file.0.to_str().unwrap()), "{shown}");
    let detail = file_detail(&file, e);
    assert!(detail.starts_with("line 3: invalid JSON"), "{detail}");

    let opts = DatasetOptions {
        skip_malformed: true,
        ..Default::default()
    };
    let ds = load(&file, &opts).unwrap();
    assert_eq!(
        ds.examples,
        vec![expected("a", " b", true), expected("c", " d", true)]
    );
    let lines: Vec<usize> = ds.skipped.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [3, 4, 5, 6, 7]);
    let reasons: Vec<&str> = ds.skipped.iter().map(|(_, r)| r.as_str()).collect();
    assert!(reasons[0].starts_with("invalid JSON"), "{}", reasons[0]);
    assert_eq!(reasons[1], "missing field \"completion\"");
    assert_eq!(
        reasons[2],
        "field \"completion\" must be a string, found a number"
    );
    assert_eq!(reasons[3], "empty completion");
    assert_eq!(reasons[4], "not a JSON object (found an array)");

    // Rows before the first usable one do not decide the format.
    let file = temp_file(
        "jsonl",
        "{\"question\": \"x\"}\n{\"text\": \"t\", \"label\": \"l\"}\n",
    );
    let e = load(&file, &DatasetOptions::default()).unwrap_err();
    let detail = file_detail(&file, e);
    assert!(detail.starts_with("line 1: no known fields"), "{detail}");
    let ds = load(&file, &opts).unwrap();
    assert_eq!(
        ds.examples,
        vec![expected(
            &DEFAULT_TEXT_TEMPLATE.replace("{text}", "t"),
            " l",
            true
        )]
    );

    // Nothing usable is an error, skipping or not.
    for content in ["", "\n  \n"] {
        let file = temp_file("jsonl", content);
        let e = load(&file, &opts).unwrap_err();
        assert_eq!(file_detail(&file, e), "no rows (the file is empty)");
    }
    let file = temp_file("jsonl", "{\"prompt\": 1, \"completion\": \" b\"}\nnope\n");
    let e = load(&file, &opts).unwrap_err();
    assert_eq!(
        file_detail(&file, e),
        "no usable rows: all 2 were malformed (first: line 1: field \"prompt\" must be a \
         string, found a number)"
    );
    let file = temp_file("txt", "{\"prompt\": \"a\", \"completion\": \" b\"}\n");
    assert!(load(&file, &opts).is_err());
    assert!(Dataset::load("/nonexistent/data.jsonl".as_ref(), tok(), &opts).is_err());
}

#[test]
fn truncation_left_and_right() {
    let prompt: String = (1..=40).map(|i| format!("word{i} ")).collect();
    let completion = " the very end";
    let file = temp_file(
        "jsonl",
        &json_line(serde_json::json!({"prompt": prompt, "completion": completion})),
    );
    let whole = expected(&prompt, completion, true);
    let max_len = 16;
    assert!(whole.len() > max_len);
    let c_len = enc(completion, false).len() + 1;
    let bos = tok().bos_id();
    let head = usize::from(bos.is_some() && whole.input_ids.first() == bos.as_ref());

    // Left keeps the completion and the end of the prompt.
    let opts = DatasetOptions {
        max_len,
        ..Default::default()
    };
    let ds = load(&file, &opts).unwrap();
    assert_eq!(ds.truncated, 1);
    let ex = &ds.examples[0];
    assert_eq!(ex.len(), max_len);
    let n = whole.len();
    let want_ids: Vec<u32> = whole.input_ids[..head]
        .iter()
        .chain(&whole.input_ids[n - (max_len - head)..])
        .copied()
        .collect();
    let want_labels: Vec<i64> = whole.labels[..head]
        .iter()
        .chain(&whole.labels[n - (max_len - head)..])
        .copied()
        .collect();
    assert_eq!(ex.input_ids, want_ids);
    assert_eq!(ex.labels, want_labels);
    assert_eq!(ex.loss_tokens(), c_len);

    // Right: a prompt that fills max_len leaves nothing to learn, and is malformed.
    let opts = DatasetOptions {
        max_len,
        truncation: Truncation::Right,
        ..Default::default()
    };
    let e = load(&file, &opts).unwrap_err();
    let detail = file_detail(&file, e);
    assert!(
        detail.starts_with("line 1: the prompt alone is"),
        "{detail}"
    );

    // Right keeps the start: a short prompt and a long completion cut at its end.
    let long: String = (1..=40).map(|i| format!(" item{i}")).collect();
    let file = temp_file(
        "jsonl",
        &json_line(serde_json::json!({"prompt": "List:", "completion": long})),
    );
    let whole = expected("List:", &long, true);
    let ds = load(&file, &opts).unwrap();
    assert_eq!(ds.truncated, 1);
    assert_eq!(ds.examples[0].input_ids, &whole.input_ids[..max_len]);
    assert_eq!(ds.examples[0].labels, &whole.labels[..max_len]);

    // Left with a completion longer than max_len: the completion is cut at its end too.
    let opts = DatasetOptions {
        max_len,
        ..Default::default()
    };
    let ds = load(&file, &opts).unwrap();
    assert_eq!(ds.truncated, 1);
    let p_len = enc("List:", true).len();
    let want_ids: Vec<u32> = whole.input_ids[..head]
        .iter()
        .chain(&whole.input_ids[p_len..p_len + max_len - head])
        .copied()
        .collect();
    assert_eq!(ds.examples[0].input_ids, want_ids);
    assert!(ds.examples[0].labels[head..]
        .iter()
        .all(|&l| l != IGNORE_INDEX));
}

#[test]
fn split_is_reproducible_and_covers_every_example() {
    let ds = reviews();
    let n = ds.len();
    let (train, val) = ds.split(0.1, 42);
    assert_eq!(val.len(), 400);
    assert_eq!(train.len(), n - 400);
    let mut all = [train.clone(), val.clone()].concat();
    all.sort_unstable();
    assert_eq!(all, (0..n).collect::<Vec<_>>());
    assert_eq!(ds.split(0.1, 42), (train, val.clone()));
    assert_ne!(ds.split(0.1, 43).1, val);

    assert!(ds.split(0.0, 1).1.is_empty());
    assert!(ds.split(1.0, 1).0.is_empty());
    let tiny = Dataset {
        examples: vec![reviews().examples[0].clone(); 2],
        ..Default::default()
    };
    let (t, v) = tiny.split(0.01, 5);
    assert_eq!((t.len(), v.len()), (1, 1));
    assert_eq!(Dataset::default().split(0.5, 1), (vec![], vec![]));
}

/// Sum over batches of (longest - shortest) example.
fn spread(ds: &Dataset, batches: &[Vec<usize>]) -> usize {
    batches
        .iter()
        .map(|b| {
            let lens = b.iter().map(|&i| ds.examples[i].len());
            lens.clone().max().unwrap() - lens.min().unwrap()
        })
        .sum()
}

#[test]
fn batches_are_reproducible_and_bucketing_groups_lengths() {
    let ds = reviews();
    let (train, _) = ds.split(0.1, 42);
    for bucket in [false, true] {
        let b = ds.batches(&train, 8, 7, bucket);
        assert_eq!(b, ds.batches(&train, 8, 7, bucket));
        assert_ne!(b, ds.batches(&train, 8, 8, bucket));
        assert_eq!(b.len(), train.len().div_ceil(8));
        assert!(b.iter().all(|x| !x.is_empty() && x.len() <= 8));
        assert_eq!(
            b.iter().filter(|x| x.len() < 8).count(),
            usize::from(train.len() % 8 != 0)
        );
        let mut all: Vec<usize> = b.concat();
        all.sort_unstable();
        assert_eq!(all, train);
    }
    let plain = spread(ds, &ds.batches(&train, 8, 7, false));
    let bucketed = spread(ds, &ds.batches(&train, 8, 7, true));
    assert!(
        bucketed * 4 < plain,
        "bucketed spread {bucketed} vs unbucketed {plain}"
    );
    // The bucketed batch order is shuffled, not sorted by length.
    let firsts: Vec<usize> = ds
        .batches(&train, 8, 7, true)
        .iter()
        .map(|b| ds.examples[b[0]].len())
        .collect();
    assert!(firsts.windows(2).any(|w| w[0] > w[1]));
    assert!(ds.batches(&[], 8, 1, true).is_empty());
    assert_eq!(ds.batches(&[3, 1], 0, 1, false).len(), 2);
}

#[test]
fn collate_pads_on_the_right() {
    let a = Example {
        input_ids: vec![1, 2, 3],
        labels: vec![IGNORE_INDEX, 2, 3],
    };
    let b = Example {
        input_ids: vec![4, 5, 6, 7, 8],
        labels: vec![IGNORE_INDEX, IGNORE_INDEX, 6, 7, 8],
    };
    let (ids, labels, mask, t) = collate(&[&a, &b], 0);
    assert_eq!(t, 5);
    assert_eq!(ids, [1, 2, 3, 0, 0, 4, 5, 6, 7, 8]);
    assert_eq!(labels, [-100, 2, 3, -100, -100, -100, -100, 6, 7, 8]);
    assert_eq!(mask, [1, 1, 1, 0, 0, 1, 1, 1, 1, 1]);
    assert_eq!(collate(&[], 0), (vec![], vec![], vec![], 0));

    // A real batch: T is the longest, every row's tokens first.
    let ds = reviews();
    let batch: Vec<&Example> = ds.batches(&[0, 1, 2, 3], 4, 1, false)[0]
        .iter()
        .map(|&i| &ds.examples[i])
        .collect();
    let pad = eos();
    let (ids, labels, mask, t) = collate(&batch, pad);
    assert_eq!(t, batch.iter().map(|e| e.len()).max().unwrap());
    for (row, ex) in batch.iter().enumerate() {
        let r = row * t..(row + 1) * t;
        assert_eq!(&ids[r.clone()][..ex.len()], &ex.input_ids[..]);
        assert!(ids[r.clone()][ex.len()..].iter().all(|&x| x == pad));
        assert_eq!(&labels[r.clone()][..ex.len()], &ex.labels[..]);
        assert!(labels[r.clone()][ex.len()..]
            .iter()
            .all(|&x| x == IGNORE_INDEX));
        assert_eq!(mask[r].iter().sum::<u32>() as usize, ex.len());
    }
}

#[test]
fn rows_in_memory_tokenize_as_the_same_rows_in_a_file() {
    let rows = vec![
        serde_json::json!({"text": "Crisp and fresh.", "label": "positive"}),
        serde_json::json!({"text": "Stale.", "label": "negative"}),
    ];
    let template = "Review: {text}\nSentiment:";
    let opts = DatasetOptions {
        format: Some(Format::TextLabel {
            template: template.into(),
            label_map: None,
        }),
        ..Default::default()
    };
    let content: String = rows.iter().map(|r| json_line(r.clone())).collect();
    let file = temp_file("jsonl", &content);
    let from_file = load(&file, &opts).unwrap();
    let in_memory = Dataset::from_rows("examples", rows, tok(), &opts).unwrap();
    assert_eq!(in_memory.examples, from_file.examples);
    assert_eq!(
        in_memory.examples[1],
        expected("Review: Stale.\nSentiment:", " negative", true)
    );

    // Detected formats, and the item a malformed row is at.
    let chat = vec![serde_json::json!({"messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}
    ]})];
    let ds = Dataset::from_rows("examples", chat, tok(), &DatasetOptions::default()).unwrap();
    assert_eq!(ds.len(), 1);
    let mixed = vec![
        serde_json::json!({"prompt": "2 + 2 =", "completion": " 4"}),
        serde_json::json!({"prompt": "3 + 3 ="}),
    ];
    let e = Dataset::from_rows("examples", mixed, tok(), &DatasetOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("examples: item 2:"), "{msg}");
    let e = Dataset::from_rows("examples", vec![], tok(), &DatasetOptions::default()).unwrap_err();
    assert_eq!(e.to_string(), "examples: no rows (none were given)");
}
