//! Training data for fine-tuning: the user's data file -> tokenized [`Example`]s with loss
//! masks -> shuffled (optionally length-bucketed) batches -> right-padded tensors.
//!
//! Accepted files (chosen by extension):
//! - `.jsonl` / `.ndjson` / `.json`: one JSON object per line (blank lines are ignored). A
//!   `.json` file whose first character is `[` is read as one JSON array of objects instead;
//!   its rows are then numbered by item (1-based) rather than by line.
//! - `.csv`: RFC 4180 with a header row naming the columns (quoted fields may hold commas,
//!   doubled quotes and line breaks).
//!
//! Row formats ([`Format`]):
//! - `{"prompt": "...", "completion": "..."}`: input = `encode(prompt, add_special = true)` ++
//!   `encode(completion, false)` [++ EOS]; loss only on the completion (and EOS). Prompt and
//!   completion are tokenized separately and concatenated, the completion-only convention of
//!   PEFT/TRL fine-tuning, so the loss boundary falls exactly between them. A completion
//!   should therefore carry its own leading space (`" positive"`), as at generation time.
//! - `{"messages": [{"role": ..., "content": ...}, ...]}`: rendered with the model's chat
//!   template and tokenized without added special tokens (the template writes them); loss
//!   only on the assistant turns, each including its end-of-turn marker. The span of
//!   assistant message `i` is found by rendering incrementally: the tokens of
//!   `template(messages[..=i])` beyond those of `template(messages[..i], add_generation_prompt)`.
//!   Both must tokenize as prefixes of the whole conversation; if they do not (a template
//!   that rewrites earlier turns), the row is rejected rather than masked wrongly.
//! - `{"text": "...", "label": ...}` with a user template: prompt = template with `{text}`
//!   replaced by the text, completion = the label through `label_map`, or `" " + label`.
//!   Labels may be JSON strings, numbers or booleans (`1` is looked up as `"1"`).
//!
//! Labels follow the Hugging Face convention: `labels[t]` is `input_ids[t]` where loss is
//! taken and [`IGNORE_INDEX`] (-100) elsewhere, unshifted; the trainer predicts `labels[t]`
//! from the logits at `t - 1`.
//!
//! A malformed row (invalid JSON, missing field, wrong type, empty completion, a prompt that
//! leaves no room for the completion under right truncation, ...) is an error naming the
//! file and line, or with [`DatasetOptions::skip_malformed`] is skipped and listed in
//! [`Dataset::skipped`]. Shuffles use a small built-in generator (SplitMix64), so a seed
//! gives the same split and batches on every platform and with every version of `rand`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::tokenizer::{ChatMessage, Tokenizer};

/// The label of a position that takes no loss (PyTorch's `CrossEntropyLoss` default).
pub const IGNORE_INDEX: i64 = -100;

/// The template used for `{"text", "label"}` rows when the format is detected.
pub const DEFAULT_TEXT_TEMPLATE: &str = "{text}\nLabel:";

/// Shuffle windows for length bucketing, in batches.
const BUCKET_WINDOW_BATCHES: usize = 50;

/// Salts so that `split` and `batches` with the same seed draw unrelated permutations.
const SPLIT_SALT: u64 = 0x5350_4c49_545f_5631;
const BATCH_SALT: u64 = 0x4241_5443_485f_5631;

/// One tokenized training example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub input_ids: Vec<u32>,
    /// [`IGNORE_INDEX`] where no loss is taken, else the token id at that position (same
    /// indexing as `input_ids`; the caller shifts).
    pub labels: Vec<i64>,
}

impl Example {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Positions that contribute to the loss after the shift (position 0 predicts nothing).
    pub fn loss_tokens(&self) -> usize {
        self.labels
            .iter()
            .skip(1)
            .filter(|&&l| l != IGNORE_INDEX)
            .count()
    }
}

/// How the rows of a data file are turned into examples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// `{"prompt", "completion"}` (or the two fields named by `csv_columns`).
    PromptCompletion,
    /// `{"messages": [{"role", "content"}, ...]}`, rendered with the chat template.
    Messages,
    /// `{"text", "label"}` (or the two fields named by `csv_columns`) through `template`.
    TextLabel {
        /// The prompt, with `{text}` standing for the row's text, e.g.
        /// `"Review: {text}\nSentiment:"`.
        template: String,
        /// Label -> completion, e.g. `great -> " positive"`. Without it the completion is
        /// `" " + label`. A label missing from the map makes the row malformed.
        label_map: Option<BTreeMap<String, String>>,
    },
}

/// Which end of an over-long example is cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Truncation {
    /// Keep the end (the completion): drop the oldest prompt tokens, keeping a leading BOS.
    /// A completion that alone does not fit is cut at its end.
    #[default]
    Left,
    /// Keep the start: drop tokens from the end. A row whose prompt leaves no room for any
    /// completion token is malformed.
    Right,
}

/// Options of [`Dataset::load`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetOptions {
    /// `None`: detect from the first valid row's keys (the CSV header): `messages` ->
    /// [`Format::Messages`]; `prompt` + `completion` -> [`Format::PromptCompletion`];
    /// `text` + `label` -> [`Format::TextLabel`] with [`DEFAULT_TEXT_TEMPLATE`].
    pub format: Option<Format>,
    /// Examples longer than this many tokens are truncated (at least 2).
    pub max_len: usize,
    pub truncation: Truncation,
    /// `false`: the first malformed row is an error; `true`: it is skipped and listed.
    pub skip_malformed: bool,
    /// The two fields to read, for CSV columns or JSON keys: (text, label) with
    /// [`Format::TextLabel`], (prompt, completion) with [`Format::PromptCompletion`]. When the
    /// format is detected, a pair named `prompt`/`completion` means prompt/completion and any
    /// other pair means text/label with [`DEFAULT_TEXT_TEMPLATE`].
    pub csv_columns: Option<(String, String)>,
    /// Append the tokenizer's EOS to completions (not to chat messages, whose template ends
    /// each turn itself).
    pub add_eos: bool,
}

impl Default for DatasetOptions {
    fn default() -> Self {
        DatasetOptions {
            format: None,
            max_len: 1024,
            truncation: Truncation::Left,
            skip_malformed: false,
            csv_columns: None,
            add_eos: true,
        }
    }
}

/// Tokenized examples of one data file.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    /// In file order.
    pub examples: Vec<Example>,
    /// Malformed rows left out with `skip_malformed`: (line, or item of a JSON array, reason).
    pub skipped: Vec<(usize, String)>,
    /// How many examples were cut to `max_len`.
    pub truncated: usize,
}

impl Dataset {
    /// Reads and tokenizes a `.jsonl` / `.json` / `.csv` file (see the module docs).
    pub fn load(path: &Path, tok: &Tokenizer, opts: &DatasetOptions) -> Result<Dataset> {
        let file_err = |detail: String| Error::File {
            path: path.to_path_buf(),
            detail,
        };
        let builder = Builder::new(tok, opts)?;

        let bytes = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let valid = e.utf8_error().valid_up_to();
                let line = 1 + e.as_bytes()[..valid]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count();
                return Err(file_err(format!("line {line}: not UTF-8 text")));
            }
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();

        let cols = opts.csv_columns.as_ref();
        let plan = opts.format.clone().map(|f| Plan::new(f, cols));
        if let Some(p) = &plan {
            builder.check_plan(p).map_err(file_err)?;
        }

        match ext.as_str() {
            "csv" => {
                let mut acc = Acc::new(path, "line", opts.skip_malformed);
                let records = parse_csv(text).map_err(file_err)?;
                let Some(((header_line, header), rows)) = records.split_first() else {
                    return Err(file_err("no rows (the file is empty)".into()));
                };
                let header: Vec<String> = header.iter().map(|h| h.trim().to_string()).collect();
                let head = Record::Csv {
                    header: &header,
                    fields: &header,
                };
                let plan = match plan {
                    Some(p) => p,
                    None => {
                        let p = Plan::new(
                            detect(&head, cols)
                                .map_err(|e| file_err(format!("line {header_line}: {e}")))?,
                            cols,
                        );
                        builder.check_plan(&p).map_err(file_err)?;
                        p
                    }
                };
                if plan.format == Format::Messages {
                    return Err(file_err(
                        "\"messages\" rows need JSON Lines, not CSV".into(),
                    ));
                }
                for key in [&plan.keys.0, &plan.keys.1] {
                    if !head.has(key) {
                        return Err(file_err(format!(
                            "line {header_line}: no column \"{key}\" (columns: {})",
                            header.join(", ")
                        )));
                    }
                }
                for (line, fields) in rows {
                    let built = if fields.len() != header.len() {
                        Err(format!(
                            "{} fields where the header has {}",
                            fields.len(),
                            header.len()
                        ))
                    } else {
                        builder.build(
                            &plan,
                            &Record::Csv {
                                header: &header,
                                fields,
                            },
                        )
                    };
                    acc.accept(*line, built)?;
                }
                acc.finish()
            }
            "jsonl" | "ndjson" | "json" => {
                let array = ext == "json" && text.trim_start().starts_with('[');
                let rows: Vec<(usize, std::result::Result<serde_json::Value, String>)> = if array {
                    let items: Vec<serde_json::Value> = serde_json::from_str(text)
                        .map_err(|e| file_err(format!("not valid JSON: {e}")))?;
                    items
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| (i + 1, Ok(v)))
                        .collect()
                } else {
                    text.lines()
                        .enumerate()
                        .filter(|(_, l)| !l.trim().is_empty())
                        .map(|(i, l)| (i + 1, serde_json::from_str(l).map_err(|e| json_error(&e))))
                        .collect()
                };
                let acc = Acc::new(
                    path,
                    if array { "item" } else { "line" },
                    opts.skip_malformed,
                );
                load_json_rows(&builder, plan, cols, rows, acc)
            }
            _ => Err(file_err(format!(
                "unknown data file type (extension {ext:?}): expected .jsonl, .json or .csv"
            ))),
        }
    }

    /// Tokenizes rows held in memory (an app's own storage), each a JSON object of the same
    /// shapes a `.jsonl` file holds: `{"prompt", "completion"}`, `{"text", "label"}` or
    /// `{"messages": [...]}`. `source` names the rows in errors, which give the 1-based item:
    /// `"examples: item 3: ..."`.
    pub fn from_rows(
        source: &str,
        rows: Vec<serde_json::Value>,
        tok: &Tokenizer,
        opts: &DatasetOptions,
    ) -> Result<Dataset> {
        let path = Path::new(source);
        if rows.is_empty() {
            return Err(Error::File {
                path: path.to_path_buf(),
                detail: "no rows (none were given)".into(),
            });
        }
        let builder = Builder::new(tok, opts)?;
        let cols = opts.csv_columns.as_ref();
        let plan = opts.format.clone().map(|f| Plan::new(f, cols));
        if let Some(p) = &plan {
            builder.check_plan(p).map_err(|detail| Error::File {
                path: path.to_path_buf(),
                detail,
            })?;
        }
        let rows = rows
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i + 1, Ok(v)))
            .collect();
        let acc = Acc::new(path, "item", opts.skip_malformed);
        load_json_rows(&builder, plan, cols, rows, acc)
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Splits the example indices into (train, validation) by a seeded shuffle; both lists
    /// come back sorted. The validation part is `round(n * validation_fraction)` examples,
    /// but at least one and at most `n - 1` when the fraction is strictly between 0 and 1
    /// and there are two examples or more. The fraction is clamped to [0, 1].
    pub fn split(&self, validation_fraction: f32, seed: u64) -> (Vec<usize>, Vec<usize>) {
        let n = self.examples.len();
        let mut order: Vec<usize> = (0..n).collect();
        SplitMix64(seed ^ SPLIT_SALT).shuffle(&mut order);
        let f = if validation_fraction.is_nan() {
            0.0
        } else {
            f64::from(validation_fraction.clamp(0.0, 1.0))
        };
        let mut n_val = ((n as f64 * f).round() as usize).min(n);
        if f > 0.0 && f < 1.0 && n >= 2 {
            n_val = n_val.clamp(1, n - 1);
        }
        let mut val = order[..n_val].to_vec();
        let mut train = order[n_val..].to_vec();
        val.sort_unstable();
        train.sort_unstable();
        (train, val)
    }

    /// Groups `indices` into batches of `batch_size` (the last may be smaller; a size of 0
    /// counts as 1) after a seeded shuffle. With `bucket_by_length`, each window of
    /// 50 * `batch_size` shuffled indices is sorted by example length before being cut into
    /// batches, and the batches are then shuffled, so a batch holds examples of similar
    /// length (less padding) while the order stays random. The same seed gives the same
    /// batches. Indices outside the dataset count as length 0.
    pub fn batches(
        &self,
        indices: &[usize],
        batch_size: usize,
        seed: u64,
        bucket_by_length: bool,
    ) -> Vec<Vec<usize>> {
        let bs = batch_size.max(1);
        let mut rng = SplitMix64(seed ^ BATCH_SALT);
        let mut order = indices.to_vec();
        rng.shuffle(&mut order);
        if bucket_by_length {
            let len = |i: usize| self.examples.get(i).map_or(0, Example::len);
            for window in order.chunks_mut(bs.saturating_mul(BUCKET_WINDOW_BATCHES)) {
                window.sort_by_key(|&i| len(i));
            }
        }
        let mut batches: Vec<Vec<usize>> = order.chunks(bs).map(<[usize]>::to_vec).collect();
        if bucket_by_length {
            rng.shuffle(&mut batches);
        }
        batches
    }
}

/// Right-pads a batch: `input_ids` padded with `pad_id`, attention mask 1 on tokens and 0 on
/// padding, labels [`IGNORE_INDEX`] on padding. Returns (ids `[B*T]`, labels `[B*T]`,
/// mask `[B*T]`, T) with T the longest example's length (0 for an empty batch).
/// `(text, label)` rows of a `.jsonl` / `.json` / `.csv` file, untokenized (for evaluation
/// and classification): the fields are `text` and `label`, or the pair `columns` names. A
/// malformed row is an error that names its line (or JSON array item).
pub fn read_labelled(
    path: &Path,
    columns: Option<&(String, String)>,
) -> Result<Vec<(String, String)>> {
    let file_err = |detail: String| Error::File {
        path: path.to_path_buf(),
        detail,
    };
    let bytes = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..valid]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        file_err(format!("line {line}: not UTF-8 text"))
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let (k_text, k_label) = columns
        .cloned()
        .unwrap_or_else(|| ("text".to_string(), "label".to_string()));
    let pair = |loc: &str, rec: &Record| -> Result<(String, String)> {
        let t = rec
            .text(&k_text)
            .map_err(|e| file_err(format!("{loc}: {e}")))?;
        let l = rec
            .label(&k_label)
            .map_err(|e| file_err(format!("{loc}: {e}")))?;
        if l.is_empty() {
            return Err(file_err(format!("{loc}: empty \"{k_label}\"")));
        }
        Ok((t.to_string(), l))
    };
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let mut out = Vec::new();
    match ext.as_str() {
        "csv" => {
            let records = parse_csv(text).map_err(file_err)?;
            let Some(((_, header), rows)) = records.split_first() else {
                return Err(file_err("no rows (the file is empty)".into()));
            };
            let header: Vec<String> = header.iter().map(|h| h.trim().to_string()).collect();
            for (line, fields) in rows {
                if fields.len() != header.len() {
                    return Err(file_err(format!(
                        "line {line}: {} fields where the header has {}",
                        fields.len(),
                        header.len()
                    )));
                }
                let rec = Record::Csv {
                    header: &header,
                    fields,
                };
                out.push(pair(&format!("line {line}"), &rec)?);
            }
        }
        "jsonl" | "ndjson" | "json" => {
            let array = ext == "json" && text.trim_start().starts_with('[');
            let rows: Vec<(String, serde_json::Value)> = if array {
                let items: Vec<serde_json::Value> = serde_json::from_str(text)
                    .map_err(|e| file_err(format!("not valid JSON: {e}")))?;
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (format!("item {}", i + 1), v))
                    .collect()
            } else {
                let mut rows = Vec::new();
                for (i, l) in text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                {
                    let v = serde_json::from_str(l)
                        .map_err(|e| file_err(format!("line {}: {}", i + 1, json_error(&e))))?;
                    rows.push((format!("line {}", i + 1), v));
                }
                rows
            };
            for (loc, v) in rows {
                let map = v.as_object().ok_or_else(|| {
                    file_err(format!("{loc}: not a JSON object (found {})", kind(&v)))
                })?;
                out.push(pair(&loc, &Record::Json(map))?);
            }
        }
        _ => {
            return Err(file_err(format!(
                "unknown data file type (extension {ext:?}): expected .jsonl, .json or .csv"
            )))
        }
    }
    if out.is_empty() {
        return Err(file_err("no rows".into()));
    }
    Ok(out)
}

pub fn collate(examples: &[&Example], pad_id: u32) -> (Vec<u32>, Vec<i64>, Vec<u32>, usize) {
    let t = examples.iter().map(|e| e.len()).max().unwrap_or(0);
    let total = examples.len() * t;
    let (mut ids, mut labels, mut mask) = (
        Vec::with_capacity(total),
        Vec::with_capacity(total),
        Vec::with_capacity(total),
    );
    for e in examples {
        let n = e.len();
        ids.extend_from_slice(&e.input_ids);
        ids.resize(ids.len() + t - n, pad_id);
        labels.extend((0..n).map(|j| e.labels.get(j).copied().unwrap_or(IGNORE_INDEX)));
        labels.resize(labels.len() + t - n, IGNORE_INDEX);
        mask.resize(mask.len() + n, 1);
        mask.resize(mask.len() + t - n, 0);
    }
    (ids, labels, mask, t)
}

// ------------------------------------------------------------------------------------------
// Rows

/// A resolved format with the two field names it reads (unused for messages).
struct Plan {
    format: Format,
    keys: (String, String),
}

impl Plan {
    fn new(format: Format, cols: Option<&(String, String)>) -> Plan {
        let keys = match (&format, cols) {
            (_, Some(c)) => c.clone(),
            (Format::TextLabel { .. }, None) => ("text".into(), "label".into()),
            _ => ("prompt".into(), "completion".into()),
        };
        Plan { format, keys }
    }
}

/// The format the keys of a row (or CSV header) call for.
fn detect(rec: &Record, cols: Option<&(String, String)>) -> std::result::Result<Format, String> {
    let text_label = || Format::TextLabel {
        template: DEFAULT_TEXT_TEMPLATE.into(),
        label_map: None,
    };
    if let Some((a, b)) = cols {
        if let Some(missing) = [a, b].into_iter().find(|k| !rec.has(k)) {
            return Err(format!("missing field \"{missing}\""));
        }
        return Ok(if a == "prompt" && b == "completion" {
            Format::PromptCompletion
        } else {
            text_label()
        });
    }
    if rec.has("messages") {
        Ok(Format::Messages)
    } else if rec.has("prompt") && rec.has("completion") {
        Ok(Format::PromptCompletion)
    } else if rec.has("text") && rec.has("label") {
        Ok(text_label())
    } else {
        Err(format!(
            "no known fields: expected \"messages\", \"prompt\" and \"completion\", or \"text\" \
             and \"label\" (found {})",
            rec.keys()
        ))
    }
}

/// One row: a JSON object, or a CSV record with its header.
enum Record<'a> {
    Json(&'a serde_json::Map<String, serde_json::Value>),
    Csv {
        header: &'a [String],
        fields: &'a [String],
    },
}

impl Record<'_> {
    fn has(&self, key: &str) -> bool {
        match self {
            Record::Json(m) => m.contains_key(key),
            Record::Csv { header, .. } => header.iter().any(|h| h == key),
        }
    }

    fn keys(&self) -> String {
        let keys: Vec<String> = match self {
            Record::Json(m) => m.keys().map(|k| format!("\"{k}\"")).collect(),
            Record::Csv { header, .. } => header.iter().map(|k| format!("\"{k}\"")).collect(),
        };
        if keys.is_empty() {
            "no fields".into()
        } else {
            keys.join(", ")
        }
    }

    fn value(&self, key: &str) -> std::result::Result<Value<'_>, String> {
        let missing = || format!("missing field \"{key}\"");
        match self {
            Record::Json(m) => m.get(key).map(Value::Json).ok_or_else(missing),
            Record::Csv { header, fields } => header
                .iter()
                .position(|h| h == key)
                .and_then(|i| fields.get(i))
                .map(|s| Value::Str(s.as_str()))
                .ok_or_else(missing),
        }
    }

    /// A string field.
    fn text(&self, key: &str) -> std::result::Result<&str, String> {
        match self.value(key)? {
            Value::Str(s) => Ok(s),
            Value::Json(serde_json::Value::String(s)) => Ok(s),
            Value::Json(v) => Err(format!(
                "field \"{key}\" must be a string, found {}",
                kind(v)
            )),
        }
    }

    /// A label: a string, number or boolean, as text.
    fn label(&self, key: &str) -> std::result::Result<String, String> {
        match self.value(key)? {
            Value::Str(s) => Ok(s.to_string()),
            Value::Json(serde_json::Value::String(s)) => Ok(s.clone()),
            Value::Json(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                Ok(v.to_string())
            }
            Value::Json(v) => Err(format!(
                "field \"{key}\" must be a string, number or boolean, found {}",
                kind(v)
            )),
        }
    }

    fn messages(&self) -> std::result::Result<Vec<ChatMessage>, String> {
        let list = match self.value("messages")? {
            Value::Json(serde_json::Value::Array(a)) => a,
            Value::Json(v) => {
                return Err(format!(
                    "field \"messages\" must be an array, found {}",
                    kind(v)
                ))
            }
            Value::Str(_) => return Err("field \"messages\" must be an array".into()),
        };
        if list.is_empty() {
            return Err("field \"messages\" is empty".into());
        }
        list.iter()
            .enumerate()
            .map(|(i, m)| -> std::result::Result<ChatMessage, String> {
                let obj = m
                    .as_object()
                    .ok_or_else(|| format!("messages[{i}] must be an object, found {}", kind(m)))?;
                let field = |k: &str| match obj.get(k) {
                    Some(serde_json::Value::String(s)) => Ok(s.clone()),
                    Some(v) => Err(format!(
                        "messages[{i}].{k} must be a string, found {}",
                        kind(v)
                    )),
                    None => Err(format!("messages[{i}] has no \"{k}\"")),
                };
                Ok(ChatMessage::new(field("role")?, field("content")?))
            })
            .collect()
    }
}

enum Value<'a> {
    Json(&'a serde_json::Value),
    Str(&'a str),
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// serde_json's message without its "at line 1 column N" (each row is parsed alone).
fn json_error(e: &serde_json::Error) -> String {
    let s = e.to_string();
    let msg = s.rsplit_once(" at line ").map_or(s.as_str(), |(m, _)| m);
    format!("invalid JSON: {msg} (column {})", e.column())
}

// ------------------------------------------------------------------------------------------
// Tokenizing

struct Built {
    example: Example,
    truncated: bool,
}

struct Builder<'a> {
    tok: &'a Tokenizer,
    opts: &'a DatasetOptions,
    bos: Option<u32>,
    eos: Option<u32>,
    /// EOS that `encode(_, true)` appends and a prompt must not end with.
    prompt_eos: Option<u32>,
}

impl<'a> Builder<'a> {
    /// Checks the options against the tokenizer.
    fn new(tok: &'a Tokenizer, opts: &'a DatasetOptions) -> Result<Builder<'a>> {
        if opts.max_len < 2 {
            return Err(Error::Invalid(format!(
                "max_len must be at least 2 (got {})",
                opts.max_len
            )));
        }
        if let Some(Format::TextLabel { template, .. }) = &opts.format {
            if !template.contains("{text}") {
                return Err(Error::Invalid(format!(
                    "the text template {template:?} has no {{text}} placeholder"
                )));
            }
        }
        let eos = tok.eos_ids().first().copied();
        if opts.add_eos && eos.is_none() {
            return Err(Error::Invalid(
                "add_eos is set but the tokenizer has no EOS token".into(),
            ));
        }
        // A tokenizer that appends EOS on `add_special` would end every prompt with it.
        let bare = tok.encode("", true)?;
        let prompt_eos = match bare.as_slice() {
            [] => None,
            [only] if Some(*only) == tok.bos_id() => None,
            [.., last] if Some(*last) == eos => eos,
            _ => None,
        };

        Ok(Builder {
            tok,
            opts,
            bos: tok.bos_id(),
            eos,
            prompt_eos,
        })
    }
}

impl Builder<'_> {
    /// File-level requirements of a format.
    fn check_plan(&self, plan: &Plan) -> std::result::Result<(), String> {
        match &plan.format {
            Format::Messages if self.tok.chat_template().is_none() => {
                Err("\"messages\" rows need a chat template and the model has none".into())
            }
            _ => Ok(()),
        }
    }

    fn build(&self, plan: &Plan, rec: &Record) -> std::result::Result<Built, String> {
        let (k1, k2) = (&plan.keys.0, &plan.keys.1);
        match &plan.format {
            Format::Messages => self.messages(&rec.messages()?),
            Format::PromptCompletion => self.completion(rec.text(k1)?, rec.text(k2)?),
            Format::TextLabel {
                template,
                label_map,
            } => {
                let text = rec.text(k1)?;
                let label = rec.label(k2)?;
                if label.is_empty() {
                    return Err(format!("empty \"{k2}\""));
                }
                let completion = match label_map {
                    Some(map) => map
                        .get(&label)
                        .cloned()
                        .ok_or_else(|| format!("label {label:?} is not in the label map"))?,
                    None => format!(" {label}"),
                };
                self.completion(&template.replace("{text}", text), &completion)
            }
        }
    }

    fn completion(&self, prompt: &str, completion: &str) -> std::result::Result<Built, String> {
        if completion.is_empty() {
            return Err("empty completion".into());
        }
        let mut ids = self.tok.encode(prompt, true).map_err(|e| e.to_string())?;
        if self.prompt_eos.is_some() && ids.last() == self.prompt_eos.as_ref() {
            ids.pop();
        }
        let p = ids.len();
        ids.extend(
            self.tok
                .encode(completion, false)
                .map_err(|e| e.to_string())?,
        );
        if self.opts.add_eos {
            ids.extend(self.eos);
        }
        let labels = ids
            .iter()
            .enumerate()
            .map(|(j, &id)| if j < p { IGNORE_INDEX } else { i64::from(id) })
            .collect();
        self.finish(ids, labels, p, p)
    }

    fn messages(&self, msgs: &[ChatMessage]) -> std::result::Result<Built, String> {
        if !msgs.iter().any(|m| m.role == "assistant") {
            return Err("no assistant message to learn from".into());
        }
        let render = |m: &[ChatMessage], gen: bool| {
            self.tok
                .apply_chat_template(m, gen)
                .map_err(|e| e.to_string())
        };
        let encode = |s: &str| self.tok.encode(s, false).map_err(|e| e.to_string());
        let ids = encode(&render(msgs, false)?)?;
        let mut labels = vec![IGNORE_INDEX; ids.len()];
        let (mut first, mut last) = (None, 0);
        for (i, _) in msgs
            .iter()
            .enumerate()
            .filter(|(_, m)| m.role == "assistant")
        {
            let inconsistent = || {
                format!(
                    "messages[{i}]: the chat template's rendering up to this assistant turn \
                     does not tokenize as a prefix of the whole conversation, so its loss \
                     mask cannot be placed"
                )
            };
            let prefix = encode(&render(&msgs[..i], true)?)?;
            let end = if i + 1 == msgs.len() {
                ids.len()
            } else {
                let full = encode(&render(&msgs[..=i], false)?)?;
                if !ids.starts_with(&full) {
                    return Err(inconsistent());
                }
                full.len()
            };
            if !ids[..end].starts_with(&prefix) {
                return Err(inconsistent());
            }
            let span = prefix.len()..end;
            for (l, &id) in labels[span.clone()].iter_mut().zip(&ids[span]) {
                *l = i64::from(id);
            }
            first.get_or_insert(prefix.len());
            last = prefix.len();
        }
        let first = first.unwrap_or(0);
        self.finish(ids, labels, first, last)
    }

    /// Truncates to `max_len` and checks that something is left to learn. `first_label` is
    /// where the first labelled span starts (the end of the prompt), `last_turn` where the
    /// last one starts (the start of what left truncation keeps).
    fn finish(
        &self,
        ids: Vec<u32>,
        labels: Vec<i64>,
        first_label: usize,
        last_turn: usize,
    ) -> std::result::Result<Built, String> {
        let (n, max) = (ids.len(), self.opts.max_len);
        let truncated = n > max;
        let (ids, labels) = if !truncated {
            (ids, labels)
        } else {
            match self.opts.truncation {
                Truncation::Right => {
                    if first_label >= max {
                        return Err(format!(
                            "the prompt alone is {first_label} tokens, leaving no room for \
                             the completion within max_len {max}"
                        ));
                    }
                    (ids[..max].to_vec(), labels[..max].to_vec())
                }
                Truncation::Left => {
                    let head = usize::from(
                        last_turn > 0 && self.bos.is_some() && ids.first() == self.bos.as_ref(),
                    );
                    let tail = n - last_turn;
                    // Keep `[..head] ++ [a..b]`, `head + b - a == max`.
                    let (a, b) = if tail + head > max {
                        (last_turn, last_turn + max - head)
                    } else {
                        (n - (max - head), n)
                    };
                    (keep(&ids, head, a, b), keep(&labels, head, a, b))
                }
            }
        };
        let example = Example {
            input_ids: ids,
            labels,
        };
        if example.loss_tokens() == 0 {
            return Err(if truncated {
                format!("no completion tokens left to learn from after truncation to {max}")
            } else {
                "no completion tokens to learn from".into()
            });
        }
        Ok(Built { example, truncated })
    }
}

/// `v[..head] ++ v[a..b]`.
fn keep<T: Copy>(v: &[T], head: usize, a: usize, b: usize) -> Vec<T> {
    v[..head].iter().chain(&v[a..b]).copied().collect()
}

/// JSON rows (an object each) into examples: the format is detected from the first valid row
/// unless `plan` is given.
fn load_json_rows(
    builder: &Builder,
    mut plan: Option<Plan>,
    cols: Option<&(String, String)>,
    rows: Vec<(usize, std::result::Result<serde_json::Value, String>)>,
    mut acc: Acc,
) -> Result<Dataset> {
    for (loc, parsed) in rows {
        let value = match parsed {
            Ok(v) => v,
            Err(e) => {
                acc.reject(loc, e)?;
                continue;
            }
        };
        let Some(map) = value.as_object() else {
            acc.reject(loc, format!("not a JSON object (found {})", kind(&value)))?;
            continue;
        };
        let rec = Record::Json(map);
        if plan.is_none() {
            match detect(&rec, cols) {
                Ok(f) => {
                    let p = Plan::new(f, cols);
                    builder.check_plan(&p).map_err(|detail| Error::File {
                        path: acc.path.to_path_buf(),
                        detail,
                    })?;
                    plan = Some(p);
                }
                Err(e) => {
                    acc.reject(loc, e)?;
                    continue;
                }
            }
        }
        let Some(p) = &plan else { continue };
        acc.accept(loc, builder.build(p, &rec))?;
    }
    acc.finish()
}

/// Collects examples and malformed rows.
struct Acc<'a> {
    path: &'a Path,
    unit: &'static str,
    skip: bool,
    data: Dataset,
}

impl<'a> Acc<'a> {
    fn new(path: &'a Path, unit: &'static str, skip: bool) -> Self {
        Acc {
            path,
            unit,
            skip,
            data: Dataset::default(),
        }
    }

    fn reject(&mut self, loc: usize, reason: String) -> Result<()> {
        if self.skip {
            self.data.skipped.push((loc, reason));
            Ok(())
        } else {
            Err(Error::File {
                path: self.path.to_path_buf(),
                detail: format!("{} {loc}: {reason}", self.unit),
            })
        }
    }

    fn accept(&mut self, loc: usize, built: std::result::Result<Built, String>) -> Result<()> {
        match built {
            Ok(b) => {
                self.data.truncated += usize::from(b.truncated);
                self.data.examples.push(b.example);
                Ok(())
            }
            Err(reason) => self.reject(loc, reason),
        }
    }

    fn finish(self) -> Result<Dataset> {
        if !self.data.examples.is_empty() {
            return Ok(self.data);
        }
        let detail = match self.data.skipped.first() {
            None => "no rows (the file is empty)".to_string(),
            Some((loc, reason)) => format!(
                "no usable rows: all {} were malformed (first: {} {loc}: {reason})",
                self.data.skipped.len(),
                self.unit
            ),
        };
        Err(Error::File {
            path: self.path.to_path_buf(),
            detail,
        })
    }
}

// ------------------------------------------------------------------------------------------
// CSV

/// RFC 4180 records as (line where the record starts, fields). Blank lines are skipped;
/// a quote inside an unquoted field, or after a closing quote, is kept as text.
fn parse_csv(text: &str) -> std::result::Result<Vec<(usize, Vec<String>)>, String> {
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let (mut line, mut start_line, mut quote_line) = (1, 1, 1);
    let (mut in_quotes, mut field_quoted) = (false, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !field_quoted => {
                in_quotes = true;
                field_quoted = true;
                quote_line = line;
            }
            ',' => {
                fields.push(std::mem::take(&mut field));
                field_quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' => {
                let blank = fields.is_empty() && field.is_empty() && !field_quoted;
                fields.push(std::mem::take(&mut field));
                if blank {
                    fields.clear();
                } else {
                    records.push((start_line, std::mem::take(&mut fields)));
                }
                field_quoted = false;
                line += 1;
                start_line = line;
            }
            _ => field.push(c),
        }
    }
    if in_quotes {
        return Err(format!("line {quote_line}: quoted field is never closed"));
    }
    if !fields.is_empty() || !field.is_empty() || field_quoted {
        fields.push(field);
        records.push((start_line, fields));
    }
    Ok(records)
}

// ------------------------------------------------------------------------------------------
// Shuffling

/// SplitMix64 (Steele, Lea and Flood): small, fast and fixed forever, so seeds reproduce.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift; the bias is below 2^-32 for any `n` we shuffle).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Fisher-Yates.
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_newlines_and_lines() {
        let text = "a,b\n\"x, \"\"y\"\"\",2\r\n\n\"multi\nline\",3\nlast,\"\"";
        let recs = parse_csv(text).unwrap();
        assert_eq!(
            recs,
            vec![
                (1, vec!["a".to_string(), "b".to_string()]),
                (2, vec!["x, \"y\"".to_string(), "2".to_string()]),
                (4, vec!["multi\nline".to_string(), "3".to_string()]),
                (6, vec!["last".to_string(), String::new()]),
            ]
        );
        assert_eq!(
            parse_csv("a,b\n\"open,1\n").unwrap_err(),
            "line 2: quoted field is never closed"
        );
        assert!(parse_csv("").unwrap().is_empty());
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<usize> = (0..100).collect();
        SplitMix64(7).shuffle(&mut v);
        let mut s = v.clone();
        s.sort_unstable();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_ne!(v, s);
    }
}
