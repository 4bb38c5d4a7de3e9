//! Text <-> token ids, chat templates and streaming detokenization.
//!
//! A [`Tokenizer`] is built either from the `tokenizer.ggml.*` metadata of a GGUF file or from a
//! Hugging Face `tokenizer.json`. In both cases the work is done by the `tokenizers` crate; from
//! GGUF the pipeline (model, normalizer, pre-tokenizer, decoder, added tokens) is assembled here
//! the way the model's own `tokenizer.json` would describe it:
//!
//! - `tokenizer.ggml.model = "gpt2"`: byte-level BPE from `tokens` + `merges`, with the
//!   pre-tokenizer chosen by `tokenizer.ggml.pre`.
//! - `tokenizer.ggml.model = "llama"`: SentencePiece-style BPE with byte fallback, merges derived
//!   from the token scores (the merge producing the higher-scoring piece is applied first).
//!
//! Control (type 3) and unknown (type 2) tokens become special added tokens, user-defined
//! (type 4) tokens plain added tokens, so that e.g. `<|im_start|>` written in a prompt is one
//! token.
//!
//! Chat templates are rendered with minijinja, configured like the Jinja environment of
//! Hugging Face transformers (`trim_blocks`, `lstrip_blocks`, Python string methods,
//! `raise_exception`, `strftime_now`, Python-style `tojson`).

use std::collections::HashMap;
use std::path::Path;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::normalizers::Sequence as NormalizerSequence;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};

use crate::error::{Error, Result};
use crate::gguf::{GgufError, GgufFile, Value};

const K_MODEL: &str = "tokenizer.ggml.model";
const K_PRE: &str = "tokenizer.ggml.pre";
const K_TOKENS: &str = "tokenizer.ggml.tokens";
const K_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const K_SCORES: &str = "tokenizer.ggml.scores";
const K_MERGES: &str = "tokenizer.ggml.merges";
const K_BOS: &str = "tokenizer.ggml.bos_token_id";
const K_EOS: &str = "tokenizer.ggml.eos_token_id";
const K_EOT: &str = "tokenizer.ggml.eot_token_id";
const K_EOM: &str = "tokenizer.ggml.eom_token_id";
const K_UNK: &str = "tokenizer.ggml.unknown_token_id";
const K_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const K_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const K_ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
const K_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// GGUF token types (llama.cpp `llama_token_type`).
const TYPE_NORMAL: i64 = 1;
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

/// Tokens that end a turn in common chat formats; they stop generation when the model marks
/// them as control tokens.
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
];

/// The pre-tokenizer regex of Qwen2 (single digits).
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The pre-tokenizer regex of Llama 3 (digits in groups of up to three).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// One chat message for [`Tokenizer::apply_chat_template`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A model's tokenizer: encoding, decoding, special tokens and chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    vocab_size: usize,
    bos: Option<u32>,
    eos_ids: Vec<u32>,
    /// Added by [`Tokenizer::encode`] itself when `add_special` (GGUF tokenizers have no
    /// post-processor; for `tokenizer.json` the post-processor usually does this).
    add_bos: bool,
    add_eos: bool,
    bos_token: Option<String>,
    eos_token: Option<String>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos_ids", &self.eos_ids)
            .field("add_bos", &self.add_bos)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

fn wrong_type(key: &str, expected: &'static str, found: &Value) -> Error {
    Error::Gguf(GgufError::WrongType {
        key: key.into(),
        expected,
        found: found.type_name(),
    })
}

fn as_int(v: &Value) -> Option<i64> {
    match *v {
        Value::I8(x) => Some(x as i64),
        Value::I16(x) => Some(x as i64),
        Value::I32(x) => Some(x as i64),
        Value::I64(x) => Some(x),
        _ => v.as_u64().and_then(|x| i64::try_from(x).ok()),
    }
}

/// An optional integer array of exactly `n` elements.
fn opt_int_array(g: &GgufFile, key: &str, n: usize) -> Result<Option<Vec<i64>>> {
    if g.get(key).is_none() {
        return Ok(None);
    }
    let arr = g.get_array(key)?;
    check_len(key, arr.len(), n)?;
    arr.to_i64s()
        .ok_or_else(|| wrong_array_type(key, "array of integers", arr))
        .map(Some)
}

fn wrong_array_type(key: &str, expected: &str, found: &crate::gguf::Array) -> Error {
    Error::Tokenizer(format!(
        "{key}: expected {expected}, found an array of {}",
        found.elem_type_name()
    ))
}

fn check_len(key: &str, len: usize, n: usize) -> Result<()> {
    if len != n {
        return Err(Error::Tokenizer(format!(
            "{key} has {len} entries but {K_TOKENS} has {n}"
        )));
    }
    Ok(())
}

fn opt_bool(g: &GgufFile, key: &str) -> Result<Option<bool>> {
    match g.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(wrong_type(key, "bool", v)),
    }
}

/// An optional token id; negative values (and `u32::MAX`) mean "none".
fn opt_id(g: &GgufFile, key: &str, n_vocab: usize) -> Result<Option<u32>> {
    let Some(v) = g.get(key) else {
        return Ok(None);
    };
    let id = as_int(v).ok_or_else(|| wrong_type(key, "integer", v))?;
    if id < 0 || id == u32::MAX as i64 {
        return Ok(None);
    }
    if id as u64 >= n_vocab as u64 {
        return Err(Error::Tokenizer(format!(
            "{key} = {id} is outside the vocabulary ({n_vocab} tokens)"
        )));
    }
    Ok(Some(id as u32))
}

/// `<0xAB>`: a SentencePiece byte-fallback piece.
fn is_byte_piece(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 6
        && s.starts_with("<0x")
        && s.ends_with('>')
        && b[3].is_ascii_hexdigit()
        && b[4].is_ascii_hexdigit()
}

/// The pre-tokenizer (and normalizer, and whether BPE ignores merges for whole-word vocab hits)
/// for a byte-level BPE `tokenizer.ggml.pre` value.
fn byte_level_pipeline(
    pre: &str,
) -> Result<(PreTokenizerWrapper, Option<NormalizerWrapper>, bool)> {
    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| Error::Tokenizer(format!("pre-tokenizer regex for '{pre}': {e}")))?;
        Ok(PreTokenizerSequence::new(vec![
            split.into(),
            ByteLevel::new(false, false, false).into(),
        ])
        .into())
    };
    Ok(match pre {
        // Digits one by one, then the GPT-2 regex (what SmolLM2's own tokenizer.json does).
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (
                PreTokenizerSequence::new(vec![
                    Digits::new(true).into(),
                    ByteLevel::new(false, true, true).into(),
                ])
                .into(),
                None,
                false,
            )
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => (split(QWEN2_REGEX)?, Some(NFC.into()), false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => (split(LLAMA3_REGEX)?, None, true),
        // "gpt2", "default" and anything not known: the GPT-2 regex.
        _ => (ByteLevel::new(false, true, true).into(), None, false),
    })
}

/// Texts on which a tokenizer rebuilt from GGUF metadata must split as the original did:
/// digits, contractions, whitespace runs, newlines, accents (NFC), CJK, emoji and code.
const GGUF_PROBES: &[&str] = &[
    "Hello world! It's 2026, isn't it? 1234567 + 89 = 1234656.",
    "  two  spaces\n\n\tand a tab\r\nWindows line\n",
    "caf\u{e9} cafe\u{301} na\u{ef}ve \u{d1}and\u{fa} \u{4e2d}\u{6587}\u{5206}\u{8bcd} \u{1f600}\u{1f44d}\u{1f3fd}",
    "fn main() { let x: Vec<u32> = (0..10).map(|i| i * 2).collect(); }",
    "I'LL SEE YOU'RE THEY'VE we'd",
    "    indented\n        more\n",
];

/// The `tokenizer.ggml.pre` name whose pipeline ([`byte_level_pipeline`]) matches a
/// `tokenizer.json` pre-tokenizer and normalizer (as serde_json values), if one does.
fn byte_level_pre_name(
    pre: &serde_json::Value,
    normalizer: &serde_json::Value,
) -> Option<&'static str> {
    let ty = |v: &serde_json::Value| v.get("type").and_then(|t| t.as_str()).map(str::to_string);
    let parts: Vec<&serde_json::Value> = match ty(pre).as_deref() {
        Some("Sequence") => pre.get("pretokenizers")?.as_array()?.iter().collect(),
        _ => vec![pre],
    };
    let byte_level = |v: &serde_json::Value, regex: bool| {
        ty(v).as_deref() == Some("ByteLevel")
            && v.get("use_regex").and_then(|b| b.as_bool()) == Some(regex)
            && v.get("add_prefix_space").and_then(|b| b.as_bool()) == Some(false)
    };
    let nfc = ty(normalizer).as_deref() == Some("NFC");
    let name = match parts.as_slice() {
        [d, b]
            if ty(d).as_deref() == Some("Digits")
                && d.get("individual_digits").and_then(|b| b.as_bool()) == Some(true)
                && byte_level(b, true) =>
        {
            "smollm"
        }
        [s, b] if ty(s).as_deref() == Some("Split") && byte_level(b, false) => {
            match s.get("pattern")?.get("Regex")?.as_str()? {
                QWEN2_REGEX => "qwen2",
                LLAMA3_REGEX => "llama-bpe",
                _ => return None,
            }
        }
        [b] if byte_level(b, true) => "gpt2",
        _ => return None,
    };
    // The pipeline of each name has its normalizer (NFC for qwen2, none for the others).
    let wants_nfc = name == "qwen2";
    (normalizer.is_null() && !wants_nfc || nfc && wants_nfc).then_some(name)
}

/// Longest token [`merges_from_scores`] derives merges for.
const MAX_MERGED_TOKEN_BYTES: usize = 1024;

/// Merges for a SentencePiece BPE vocabulary: every split of a normal piece into two normal
/// pieces, ordered by the merged piece's score (highest first), then by the merged piece's id,
/// then by the ids of the two halves.
fn merges_from_scores(
    tokens: &[&str],
    scores: &[f32],
    mergeable: &[bool],
    vocab: &Vocab,
) -> Vec<(String, String)> {
    let part_id = |s: &str| -> Option<u32> {
        vocab
            .get(s)
            .copied()
            .filter(|&id| mergeable.get(id as usize).copied().unwrap_or(false))
    };
    let mut found: Vec<(f32, u32, u32, u32)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        // Splitting costs O(len^2); real vocabularies have no token anywhere near this long,
        // and a file that does is not allowed to stall loading.
        if !mergeable[id]
            || piece.len() > MAX_MERGED_TOKEN_BYTES
            || vocab.get(*piece) != Some(&(id as u32))
        {
            continue;
        }
        for (pos, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(pos);
            if let (Some(li), Some(ri)) = (part_id(l), part_id(r)) {
                found.push((scores[id], id as u32, li, ri));
            }
        }
    }
    found.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    found
        .into_iter()
        .map(|(_, _, l, r)| {
            (
                tokens[l as usize].to_string(),
                tokens[r as usize].to_string(),
            )
        })
        .collect()
}

/// Reads a JSON file if it exists.
fn read_json_opt(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::File {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::File {
            path: path.to_path_buf(),
            detail: format!("invalid JSON: {e}"),
        })
}

/// A special-token entry of `tokenizer_config.json`: a string or `{"content": ...}`.
fn config_token(config: Option<&serde_json::Value>, key: &str) -> Option<String> {
    let v = config?.get(key)?;
    v.as_str()
        .or_else(|| v.get("content").and_then(|c| c.as_str()))
        .map(str::to_string)
}

impl Tokenizer {
    /// Builds the tokenizer described by the `tokenizer.ggml.*` metadata of a GGUF file.
    pub fn from_gguf(g: &GgufFile) -> Result<Tokenizer> {
        let model = g.get_str(K_MODEL)?;
        if model != "gpt2" && model != "llama" {
            return Err(Error::Tokenizer(format!(
                "unsupported {K_MODEL} '{model}' (supported: 'gpt2' byte-level BPE, 'llama' SentencePiece BPE)"
            )));
        }
        let tokens = g.get_str_array(K_TOKENS)?;
        let n = tokens.len();
        if n == 0 {
            return Err(Error::Tokenizer(format!("{K_TOKENS} is empty")));
        }
        if n > u32::MAX as usize {
            return Err(Error::Tokenizer(format!("{K_TOKENS} has too many entries")));
        }
        let types = opt_int_array(g, K_TOKEN_TYPE, n)?.unwrap_or_else(|| vec![TYPE_NORMAL; n]);
        // Last entry wins for duplicate strings, as in llama.cpp and transformers.
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();

        let bos = opt_id(g, K_BOS, n)?;
        let eos = opt_id(g, K_EOS, n)?;
        let unk = opt_id(g, K_UNK, n)?;

        let mut inner;
        let default_add_bos;
        match model {
            "gpt2" => {
                let merges_raw = g.get_str_array(K_MERGES)?;
                let mut merges = Vec::with_capacity(merges_raw.len());
                for (i, m) in merges_raw.iter().enumerate() {
                    // The separator is the first space after the first character (a piece may
                    // itself be a space).
                    let first_len = m.chars().next().map_or(0, char::len_utf8);
                    let sep = m[first_len..].find(' ').map(|p| p + first_len);
                    match sep {
                        Some(p) if p + 1 < m.len() => {
                            merges.push((m[..p].to_string(), m[p + 1..].to_string()))
                        }
                        _ => {
                            return Err(Error::Tokenizer(format!(
                                "{K_MERGES}[{i}] = {m:?} is not two tokens separated by a space"
                            )))
                        }
                    }
                }
                let pre = match g.get(K_PRE) {
                    None => "default",
                    Some(_) => g.get_str(K_PRE)?,
                };
                let (pre_tokenizer, normalizer, ignore_merges) = byte_level_pipeline(pre)?;
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .ignore_merges(ignore_merges)
                    .build()
                    .map_err(|e| Error::Tokenizer(format!("{K_MERGES}: {e}")))?;
                inner = tokenizers::Tokenizer::new(bpe);
                inner.with_pre_tokenizer(Some(pre_tokenizer));
                inner.with_normalizer(normalizer);
                inner.with_decoder(Some(ByteLevel::default()));
                default_add_bos = false;
            }
            _ => {
                let scores_raw = g.get_array(K_SCORES)?;
                check_len(K_SCORES, scores_raw.len(), n)?;
                let scores: Vec<f32> = scores_raw
                    .to_f64s()
                    .ok_or_else(|| wrong_array_type(K_SCORES, "array of numbers", scores_raw))?
                    .into_iter()
                    .map(|x| x as f32)
                    .collect();
                let mergeable: Vec<bool> = tokens
                    .iter()
                    .zip(&types)
                    .map(|(t, &ty)| ty == TYPE_NORMAL && !t.is_empty() && !is_byte_piece(t))
                    .collect();
                let merges = merges_from_scores(&tokens, &scores, &mergeable, &vocab);
                let unk_token = unk
                    .map(|id| tokens[id as usize].to_string())
                    .or_else(|| vocab.contains_key("<unk>").then(|| "<unk>".to_string()));
                let mut builder = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .byte_fallback(true)
                    .fuse_unk(true);
                if let Some(u) = unk_token {
                    builder = builder.unk_token(u);
                }
                let bpe = builder.build().map_err(tok_err)?;
                let add_space_prefix = opt_bool(g, K_ADD_SPACE_PREFIX)?.unwrap_or(true);
                let replace: NormalizerWrapper = Replace::new(" ", "▁").map_err(tok_err)?.into();
                let normalizer: NormalizerWrapper = if add_space_prefix {
                    NormalizerSequence::new(vec![Prepend::new("▁".into()).into(), replace]).into()
                } else {
                    replace
                };
                let mut decoders: Vec<DecoderWrapper> = vec![
                    Replace::new("▁", " ").map_err(tok_err)?.into(),
                    ByteFallback::new().into(),
                    Fuse::new().into(),
                ];
                if add_space_prefix {
                    decoders.push(Strip::new(' ', 1, 0).into());
                }
                inner = tokenizers::Tokenizer::new(bpe);
                inner.with_normalizer(Some(normalizer));
                inner.with_decoder(Some(DecoderSequence::new(decoders)));
                default_add_bos = true;
            }
        }

        let mut added = Vec::new();
        for (id, (&tok, &ty)) in tokens.iter().zip(&types).enumerate() {
            let special = ty == TYPE_CONTROL || ty == TYPE_UNKNOWN;
            if (special || ty == TYPE_USER_DEFINED)
                && !tok.is_empty()
                && vocab_id(&inner, tok) == Some(id as u32)
            {
                added.push(AddedToken::from(tok, special).normalized(false));
            }
        }
        inner.add_special_tokens(
            &added
                .iter()
                .filter(|t| t.special)
                .cloned()
                .collect::<Vec<_>>(),
        );
        inner.add_tokens(&added.into_iter().filter(|t| !t.special).collect::<Vec<_>>());

        let mut eos_ids: Vec<u32> = Vec::new();
        let end_of_turn = END_OF_TURN_TOKENS.iter().filter_map(|name| {
            vocab_id(&inner, name).filter(|&id| types[id as usize] == TYPE_CONTROL)
        });
        let listed = [eos, opt_id(g, K_EOT, n)?, opt_id(g, K_EOM, n)?];
        for id in listed.into_iter().flatten().chain(end_of_turn) {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }

        let chat_template = match g.get(K_CHAT_TEMPLATE) {
            None => None,
            Some(_) => Some(g.get_str(K_CHAT_TEMPLATE)?.to_string()),
        };
        Ok(Tokenizer {
            inner,
            vocab_size: n,
            bos,
            eos_ids,
            add_bos: opt_bool(g, K_ADD_BOS)?.unwrap_or(default_add_bos) && bos.is_some(),
            add_eos: opt_bool(g, K_ADD_EOS)?.unwrap_or(false) && eos.is_some(),
            bos_token: bos.map(|id| tokens[id as usize].to_string()),
            eos_token: eos.map(|id| tokens[id as usize].to_string()),
            chat_template,
        })
    }

    /// Loads a Hugging Face `tokenizer.json`. Beside it, `tokenizer_config.json` (BOS/EOS
    /// tokens, `add_bos_token`, chat template), `chat_template.jinja` (preferred chat template)
    /// and `generation_config.json` (extra EOS ids) are used when present.
    pub fn from_json_file(path: &Path) -> Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::File {
            path: path.to_path_buf(),
            detail: format!("cannot load tokenizer: {e}"),
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let config = read_json_opt(&dir.join("tokenizer_config.json"))?;
        let gen_config = read_json_opt(&dir.join("generation_config.json"))?;

        let template_file = dir.join("chat_template.jinja");
        let chat_template = if template_file.is_file() {
            Some(
                std::fs::read_to_string(&template_file).map_err(|e| Error::File {
                    path: template_file.clone(),
                    detail: e.to_string(),
                })?,
            )
        } else {
            match config.as_ref().and_then(|c| c.get("chat_template")) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                // A list of named templates: take "default", else the first.
                Some(serde_json::Value::Array(list)) => {
                    let named = |want: Option<&str>| {
                        list.iter().find_map(|t| {
                            let name = t.get("name").and_then(|n| n.as_str());
                            if want.is_none() || name == want {
                                t.get("template").and_then(|s| s.as_str())
                            } else {
                                None
                            }
                        })
                    };
                    named(Some("default"))
                        .or_else(|| named(None))
                        .map(str::to_string)
                }
                _ => None,
            }
        };

        let vocab_size = inner
            .get_vocab(true)
            .values()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0);
        let bos_token = config_token(config.as_ref(), "bos_token");
        let eos_token = config_token(config.as_ref(), "eos_token");
        let bos = bos_token.as_deref().and_then(|t| inner.token_to_id(t));
        let special: HashMap<u32, bool> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .map(|(id, t)| (id, t.special))
            .collect();

        let mut eos_ids: Vec<u32> = Vec::new();
        let mut push = |id: u32| {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        };
        if let Some(id) = eos_token.as_deref().and_then(|t| inner.token_to_id(t)) {
            push(id);
        }
        match gen_config.as_ref().and_then(|c| c.get("eos_token_id")) {
            Some(serde_json::Value::Number(x)) => x
                .as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .into_iter()
                .for_each(&mut push),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
                .for_each(&mut push),
            _ => {}
        }
        for name in END_OF_TURN_TOKENS {
            if let Some(id) = inner.token_to_id(name) {
                if special.get(&id).copied().unwrap_or(false) {
                    push(id);
                }
            }
        }
        eos_ids.retain(|&id| (id as usize) < vocab_size);

        // transformers' slow-tokenizer classes add BOS themselves when `add_bos_token` is set;
        // add it here only if the post-processor of tokenizer.json does not already.
        let wants_bos = config
            .as_ref()
            .and_then(|c| c.get("add_bos_token"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let add_bos = match bos {
            Some(b) if wants_bos => {
                let probe = inner.encode_fast("a", true).map_err(tok_err)?;
                probe.get_ids().first() != Some(&b)
            }
            _ => false,
        };

        Ok(Tokenizer {
            inner,
            vocab_size,
            bos,
            eos_ids,
            add_bos,
            add_eos: false,
            bos_token,
            eos_token,
            chat_template,
        })
    }

    /// Writes `tokenizer.json`, `tokenizer_config.json` (special tokens, whether BOS is
    /// added, chat template) and `generation_config.json` (stop ids) into `dir`, as
    /// `save_pretrained` lays them out, so transformers and [`Tokenizer::from_json_file`] load
    /// the same tokenizer.
    pub fn write_hf(&self, dir: &Path) -> Result<()> {
        let json = self.inner.to_string(false).map_err(tok_err)?;
        crate::fetch::write_atomic(&dir.join("tokenizer.json"), json.as_bytes())?;
        let config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "add_bos_token": self.add_bos,
            "add_eos_token": self.add_eos,
            "chat_template": self.chat_template,
            "clean_up_tokenization_spaces": false,
        });
        let generation = serde_json::json!({
            "bos_token_id": self.bos,
            "eos_token_id": self.eos_ids,
        });
        for (name, v) in [
            ("tokenizer_config.json", config),
            ("generation_config.json", generation),
        ] {
            let text = serde_json::to_string_pretty(&v).expect("json");
            crate::fetch::write_atomic(&dir.join(name), text.as_bytes())?;
        }
        Ok(())
    }

    /// The `tokenizer.ggml.*` metadata (and chat template) from which [`Tokenizer::from_gguf`]
    /// builds this tokenizer again, for writing a GGUF file. Byte-level BPE tokenizers
    /// (GPT-2 style: SmolLM2, Qwen2, Llama 3) are supported; the pre-tokenizer is named by the
    /// `tokenizer.ggml.pre` value that selects the same regex and normalizer. Anything else
    /// is an error naming what differs, and so is any probe text the rebuilt tokenizer would
    /// split differently: a GGUF that silently tokenized otherwise would give wrong answers.
    pub fn gguf_metadata(&self) -> Result<Vec<(String, Value)>> {
        use crate::gguf::Array;
        let unsupported = |what: String| {
            Error::Tokenizer(format!(
                "this tokenizer cannot be written to GGUF: {what} (byte-level BPE as in \
                 SmolLM2, Qwen2 and Llama 3 is supported)"
            ))
        };
        let json = |v: serde_json::Result<serde_json::Value>| v.map_err(tok_err);
        let model = json(serde_json::to_value(self.inner.get_model()))?;
        if model.get("type").and_then(|t| t.as_str()) != Some("BPE") {
            return Err(unsupported(format!("model {}", model["type"])));
        }
        if model.get("byte_fallback").and_then(|b| b.as_bool()) == Some(true) {
            return Err(unsupported(
                "a SentencePiece-style BPE with byte fallback".into(),
            ));
        }
        let pre = json(serde_json::to_value(self.inner.get_pre_tokenizer()))?;
        let normalizer = json(serde_json::to_value(self.inner.get_normalizer()))?;
        let name = byte_level_pre_name(&pre, &normalizer).ok_or_else(|| {
            unsupported(format!("pre-tokenizer {pre} with normalizer {normalizer}"))
        })?;

        let mut tokens: Vec<String> = (0..self.vocab_size).map(|i| format!("[PAD{i}]")).collect();
        for (t, id) in self.inner.get_vocab(true) {
            if let Some(slot) = tokens.get_mut(id as usize) {
                *slot = t;
            }
        }
        let mut types = vec![TYPE_NORMAL as i32; self.vocab_size];
        for (id, t) in self.inner.get_added_tokens_decoder() {
            if let Some(slot) = types.get_mut(id as usize) {
                *slot = if t.special {
                    TYPE_CONTROL
                } else {
                    TYPE_USER_DEFINED
                } as i32;
            }
        }
        // Merges are "a b" strings in tokenizer.json's older format, [a, b] pairs in the newer.
        let merges = model
            .get("merges")
            .and_then(|m| m.as_array())
            .ok_or_else(|| unsupported("a BPE model without merges".into()))?
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Array(pair) => match pair.as_slice() {
                    [serde_json::Value::String(a), serde_json::Value::String(b)] => {
                        Some(format!("{a} {b}"))
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| unsupported("a merge that is not two tokens".into()))?;

        // BOS/EOS that tokenizer.json's post-processor adds become add_*_token flags.
        let with = self.encode("a", true)?;
        let without = self.encode("a", false)?;
        let add_bos = self.bos.is_some()
            && with.first() == self.bos.as_ref()
            && without.first() != self.bos.as_ref();
        let eos = self
            .eos_token
            .as_deref()
            .and_then(|t| self.inner.token_to_id(t));
        let add_eos =
            eos.is_some() && with.last() == eos.as_ref() && without.last() != eos.as_ref();

        let mut meta: Vec<(String, Value)> = vec![
            (K_MODEL.into(), Value::String("gpt2".into())),
            (K_PRE.into(), Value::String(name.into())),
            (K_TOKENS.into(), Value::Array(Array::String(tokens))),
            (K_TOKEN_TYPE.into(), Value::Array(Array::I32(types))),
            (K_MERGES.into(), Value::Array(Array::String(merges))),
            (K_ADD_BOS.into(), Value::Bool(add_bos)),
            (K_ADD_EOS.into(), Value::Bool(add_eos)),
        ];
        if let Some(b) = self.bos {
            meta.push((K_BOS.into(), Value::U32(b)));
        }
        // The stop ids: EOS first, then up to two more as end-of-turn / end-of-message.
        let mut stops: Vec<u32> = eos.into_iter().collect();
        stops.extend(self.eos_ids.iter().filter(|id| Some(**id) != eos));
        for (key, id) in [K_EOS, K_EOT, K_EOM].into_iter().zip(&stops) {
            meta.push((key.into(), Value::U32(*id)));
        }
        if let Some(t) = &self.chat_template {
            meta.push((K_CHAT_TEMPLATE.into(), Value::String(t.clone())));
        }

        // Rebuild from the metadata and compare on text that exercises the pre-tokenizer.
        let bytes = crate::gguf::writer::write(&meta, &[]);
        let rebuilt = Tokenizer::from_gguf(&GgufFile::from_bytes("tokenizer", bytes)?)?;
        let mut probes: Vec<String> = GGUF_PROBES.iter().map(|s| s.to_string()).collect();
        probes.extend(
            self.inner
                .get_added_tokens_decoder()
                .values()
                .map(|t| format!("x{}y {} 12", t.content, t.content)),
        );
        for text in &probes {
            for special in [false, true] {
                let (a, b) = (self.encode(text, special)?, rebuilt.encode(text, special)?);
                if a != b {
                    return Err(unsupported(format!(
                        "rebuilt from GGUF metadata it splits {text:?} into {b:?}, not {a:?}"
                    )));
                }
            }
        }
        Ok(meta)
    }

    /// Token ids of `text`. Special tokens written in the text (e.g. `<|im_start|>`) are single
    /// tokens. With `add_special`, BOS (and EOS) are added as the model asks
    /// (`tokenizer.ggml.add_bos_token`, or the `tokenizer.json` post-processor).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, add_special).map_err(tok_err)?;
        let body = enc.get_ids();
        let mut ids = Vec::with_capacity(body.len() + 2);
        if add_special && self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(body);
        if add_special && self.add_eos {
            ids.extend(self.eos_ids.first());
        }
        Ok(ids)
    }

    /// The text of `ids`; with `skip_special`, special (control) tokens are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(Error::Tokenizer(format!(
                "token id {bad} is outside the vocabulary ({} tokens)",
                self.vocab_size
            )));
        }
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// EOS first, then the end-of-turn tokens: generation stops on any of them.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether `id` ends generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    /// The vocabulary entry of `id` as stored (byte-level pieces use `Ġ` for a space,
    /// SentencePiece pieces `▁`); special tokens read as written, e.g. `<|im_end|>`.
    pub fn token_text(&self, id: u32) -> Option<String> {
        if id as usize >= self.vocab_size {
            return None;
        }
        self.inner.id_to_token(id)
    }

    /// The id of a vocabulary entry (the inverse of [`Tokenizer::token_text`]).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Replaces (or sets) the chat template, e.g. with one given by the user.
    pub fn set_chat_template(&mut self, template: Option<String>) {
        self.chat_template = template;
    }

    /// Renders `messages` with the model's chat template, as transformers'
    /// `apply_chat_template(..., tokenize=False)` does.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| Error::Template("the model has no chat template".into()))?;
        render_chat_template(
            template,
            messages,
            add_generation_prompt,
            self.bos_token.as_deref(),
            self.eos_token.as_deref(),
        )
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// The model's own id for a vocabulary string (added tokens included).
fn vocab_id(t: &tokenizers::Tokenizer, s: &str) -> Option<u32> {
    t.token_to_id(s)
}

// ------------------------------------------------------------------------------------------
// Chat templates

/// Renders a Hugging Face chat template.
pub fn render_chat_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> Result<String> {
    use minijinja::{Environment, ErrorKind};

    let mut env = Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
    env.add_filter("tojson", tojson);

    let tmpl = env
        .template_from_str(template)
        .map_err(|e| Error::Template(template_error(&e)))?;
    let ctx = minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    };
    // Templates come from model files, so they are untrusted input to a third-party engine:
    // fuzzing found minijinja overflowing on `N * messages` with a huge N. A panic in there
    // becomes a template error instead of taking the app down.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tmpl.render(ctx)))
        .map_err(|_| Error::Template("the template failed inside the template engine".into()))?
        .map_err(|e| Error::Template(template_error(&e)))
}

fn template_error(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

/// The widest `tojson(indent=...)` a template may ask for (a huge one would be a huge string).
const MAX_JSON_INDENT: usize = 16;
/// Template instructions one rendering may run: far above any real chat template, so a
/// template that loops without end gives an error instead of hanging the app.
const TEMPLATE_FUEL: u64 = 50_000_000;

/// `tojson` as transformers defines it: Python's `json.dumps(x, ensure_ascii=False)` with
/// optional `indent`, `separators` defaulting to `", "`/`": "` (`","` when indenting).
fn tojson(
    value: minijinja::Value,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<minijinja::Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    if indent.is_some_and(|n| n > MAX_JSON_INDENT) {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("tojson indent above {MAX_JSON_INDENT}"),
        ));
    }
    let json = serde_json::to_value(&value).map_err(|e| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
    })?;
    let mut out = String::new();
    py_json(&json, indent, sort_keys.unwrap_or(false), 0, &mut out);
    Ok(minijinja::Value::from_safe_string(out))
}

fn py_json(
    v: &serde_json::Value,
    indent: Option<usize>,
    sort: bool,
    depth: usize,
    out: &mut String,
) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                py_json(it, indent, sort, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            let mut entries: Vec<_> = map.iter().collect();
            if sort {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, it)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                out.push_str(": ");
                py_json(it, indent, sort, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        J::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            // Python prints floats with a fractional part: 1.0, not 1.
            if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 {
                out.push_str(&format!("{f:.1}"));
            } else {
                out.push_str(&n.to_string());
            }
        }
        other => out.push_str(&serde_json::to_string(other).unwrap_or_default()),
    }
}

/// `strftime_now(format)` from transformers: the current local time, formatted. The time here
/// is UTC; the common directives are supported.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(fmt, secs)
}

fn strftime(fmt: &str, unix_secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ];
    let days = unix_secs.div_euclid(86_400);
    let sod = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let (hour, minute, second) = (sod / 3600, sod / 60 % 60, sod % 60);
    let is_leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[month as usize - 1] + day + i64::from(is_leap && month > 2);

    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('I') => out.push_str(&format!("{:02}", (hour + 11) % 12 + 1)),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('B') => out.push_str(MONTHS[month as usize - 1]),
            Some('b') | Some('h') => out.push_str(&MONTHS[month as usize - 1][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('F') => out.push_str(&format!("{year}-{month:02}-{day:02}")),
            Some('T') => out.push_str(&format!("{hour:02}:{minute:02}:{second:02}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

// ------------------------------------------------------------------------------------------
// Streaming

/// Incremental detokenizer for streaming: [`push`](StreamDecoder::push) one id at a time and get
/// the text that became complete. Text is held back while it ends in an incomplete UTF-8
/// character (e.g. the first bytes of an emoji spread over several byte tokens), so no
/// replacement character appears mid-stream; the concatenation of all outputs plus
/// [`finish`](StreamDecoder::finish) equals `decode` of all the ids.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    skip_special: bool,
    /// Ids from the start of the context window.
    ids: Vec<u32>,
    /// `ids[..read]` have been emitted; they are kept as context so that decoders which look at
    /// neighbouring tokens (leading-space stripping) give the same text as a full decode.
    read: usize,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(t: &'a Tokenizer) -> Self {
        StreamDecoder {
            tok: t,
            skip_special: false,
            ids: Vec::new(),
            read: 0,
        }
    }

    /// Leave special tokens out of the text (default: keep them).
    pub fn skip_special(mut self, skip: bool) -> Self {
        self.skip_special = skip;
        self
    }

    /// Adds one id; returns the newly completed text (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.tok.decode(&self.ids, self.skip_special)?;
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        self.emit(text)
    }

    /// Returns whatever is still held back (an incomplete character comes out as U+FFFD) and
    /// resets the decoder.
    pub fn finish(&mut self) -> Result<String> {
        let out = if self.read < self.ids.len() {
            let text = self.tok.decode(&self.ids, self.skip_special)?;
            self.emit(text)?
        } else {
            String::new()
        };
        self.ids.clear();
        self.read = 0;
        Ok(out)
    }

    fn emit(&mut self, text: String) -> Result<String> {
        let prefix = self.tok.decode(&self.ids[..self.read], self.skip_special)?;
        let new = match text.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.to_string(),
            // Not expected with the decoders used; fall back to the longest common prefix.
            None => {
                let common = text
                    .char_indices()
                    .zip(prefix.chars())
                    .find(|((_, a), b)| a != b)
                    .map_or(prefix.len().min(text.len()), |((i, _), _)| i);
                text.get(common..).unwrap_or_default().to_string()
            }
        };
        if new.is_empty() {
            return Ok(new);
        }
        // Keep the just-emitted ids as the context window for the next ones.
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regexes_compile() {
        for pre in ["qwen2", "llama-bpe", "smollm", "gpt2", "whatever"] {
            byte_level_pipeline(pre).unwrap();
        }
    }

    #[test]
    fn strftime_known_date() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %a %A %b %B %j %y %I%p %%", t),
            "2024-02-29 13:05:09 Thu Thursday Feb February 060 24 01PM %"
        );
        assert_eq!(strftime("%d %b %Y", 0), "01 Jan 1970");
    }

    #[test]
    fn python_style_json() {
        let v: serde_json::Value = serde_json::json!({"a": [1, 2.0, "é"], "b": {}});
        let mut s = String::new();
        py_json(&v, None, false, 0, &mut s);
        assert_eq!(s, r#"{"a": [1, 2.0, "é"], "b": {}}"#);
        let mut s = String::new();
        py_json(&v, Some(2), false, 0, &mut s);
        assert_eq!(
            s,
            "{\n  \"a\": [\n    1,\n    2.0,\n    \"é\"\n  ],\n  \"b\": {}\n}"
        );
    }
}
