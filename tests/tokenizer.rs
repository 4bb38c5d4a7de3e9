//! Tokenizer tests: the SmolLM2 GGUF against the reference ids from Hugging Face, the same
//! model's tokenizer.json, and small synthetic GGUF vocabularies.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use lamina::gguf::{Array, GgufFile, Value};
use lamina::tokenizer::{ChatMessage, StreamDecoder, Tokenizer};
use lamina::Error;

const FIXTURES: &str = "/work/shared/fixtures";

fn expected() -> &'static serde_json::Value {
    static E: OnceLock<serde_json::Value> = OnceLock::new();
    E.get_or_init(|| {
        let path = Path::new(FIXTURES).join("smollm2/expected.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    })
}

fn smollm_gguf() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let path = lamina::fetch::default_model().unwrap();
        let g = GgufFile::open(&path).unwrap();
        Tokenizer::from_gguf(&g).unwrap()
    })
}

fn smollm_json() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let path = Path::new(FIXTURES).join("smollm2-2layer-hf/checkpoint/tokenizer.json");
        Tokenizer::from_json_file(&path).unwrap()
    })
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn tokenization_cases() -> Vec<(String, Vec<u32>)> {
    expected()["tokenization"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["text"].as_str().unwrap().to_string(), ids_of(&c["ids"])))
        .collect()
}

fn chat_case() -> (Vec<ChatMessage>, String, Vec<u32>) {
    let c = &expected()["chat_template"];
    let messages: Vec<ChatMessage> = serde_json::from_value(c["messages"].clone()).unwrap();
    (
        messages,
        c["rendered"].as_str().unwrap().to_string(),
        ids_of(&c["ids"]),
    )
}

/// Writes a GGUF with only metadata to a fresh temp file.
fn temp_gguf(metadata: &[(&str, Value)]) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let meta: Vec<(String, Value)> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let bytes = lamina::gguf::writer::write(&meta, &[]);
    let path = std::env::temp_dir().join(format!(
        "lamina-tokenizer-test-{}-{}.gguf",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn tokenizer_from_meta(metadata: &[(&str, Value)]) -> lamina::Result<Tokenizer> {
    let path = temp_gguf(metadata);
    let g = GgufFile::open(&path).unwrap();
    let t = Tokenizer::from_gguf(&g);
    drop(g);
    let _ = std::fs::remove_file(&path);
    t
}

fn strs(items: &[&str]) -> Value {
    Value::Array(Array::String(items.iter().map(|s| s.to_string()).collect()))
}

fn s(x: &str) -> Value {
    Value::String(x.into())
}

// ---------------------------------------------------------------------------------------------
// SmolLM2 GGUF against the Hugging Face reference

#[test]
fn gguf_encode_matches_reference_ids() {
    let t = smollm_gguf();
    for (text, ids) in tokenization_cases() {
        assert_eq!(t.encode(&text, true).unwrap(), ids, "encode {text:?}");
        assert_eq!(t.encode(&text, false).unwrap(), ids, "encode {text:?}");
    }
}

#[test]
fn gguf_decode_round_trips() {
    let t = smollm_gguf();
    for (text, ids) in tokenization_cases() {
        assert_eq!(t.decode(&ids, false).unwrap(), text);
    }
    // Special tokens are left out on request.
    let ids = t.encode("<|im_start|>system\nHi<|im_end|>", false).unwrap();
    assert_eq!(t.decode(&ids, true).unwrap(), "system\nHi");
    assert!(t.decode(&[49152], false).is_err());
}

#[test]
fn gguf_special_tokens_and_metadata() {
    let t = smollm_gguf();
    assert_eq!(t.vocab_size(), 49152);
    assert_eq!(t.bos_id(), Some(1));
    // <|im_end|> is the EOS; <|endoftext|> is a control token that ends a turn too.
    assert_eq!(t.eos_ids(), &[2, 0]);
    assert_eq!(t.token_text(1).as_deref(), Some("<|im_start|>"));
    assert_eq!(t.token_text(2).as_deref(), Some("<|im_end|>"));
    assert_eq!(t.token_text(216).as_deref(), Some("Ġ"));
    assert_eq!(t.token_text(49152), None);
    assert_eq!(t.encode("<|im_end|>", false).unwrap(), vec![2]);
    assert_eq!(t.encode("", true).unwrap(), Vec::<u32>::new());
    assert!(t.chat_template().unwrap().contains("<|im_start|>"));
}

#[test]
fn gguf_chat_template_matches_reference() {
    let t = smollm_gguf();
    let (messages, rendered, ids) = chat_case();
    let out = t.apply_chat_template(&messages, true).unwrap();
    assert_eq!(out, rendered);
    assert_eq!(t.encode(&out, true).unwrap(), ids);

    // Without the generation prompt, and with a system message of its own.
    let out = t.apply_chat_template(&messages, false).unwrap();
    assert_eq!(
        out,
        rendered.strip_suffix("<|im_start|>assistant\n").unwrap()
    );
    let msgs = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "Hello!"),
    ];
    assert_eq!(
        t.apply_chat_template(&msgs, false).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello!<|im_end|>\n"
    );
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json of the same model

const EXTRA_TEXTS: &[&str] = &[
    "",
    " ",
    "\n\n\n",
    "a\tb\r\nc",
    "    indented    code\n\tand tabs\t\t",
    "Ünïcödé — “quotes” and ‘apostrophes’, naïve café, Straße, Ελληνικά, русский, 日本語のテキスト, 한국어",
    "👨‍👩‍👧‍👦 family, 🇫🇷 flag, e\u{301} combining, \u{200b}zero width",
    "1234567890 3.14159 -42 1e10 0x1F 100,000.00 x2 v1.2.3-rc4",
    "fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n    println!(\"{x:?}\");\n}\n",
    "def f(a, b):\n\treturn a ** b  # it's, we'll, I'd, they're\n",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><|im_start|><|im_end|><filename>x.py<file_sep>",
    "not special: <|im_start |> <im_start> |im_end|",
    "MiXeD CaSe DON'T SHOUT'S",
    "trailing spaces   ",
    "www.example.com/path?q=1&r=2#frag user@example.org",
];

#[test]
fn json_matches_gguf() {
    let (g, j) = (smollm_gguf(), smollm_json());
    let (_, rendered, _) = chat_case();
    let mut texts: Vec<String> = tokenization_cases().into_iter().map(|c| c.0).collect();
    texts.extend(EXTRA_TEXTS.iter().map(|s| s.to_string()));
    texts.push(rendered);
    for text in &texts {
        let ids = g.encode(text, true).unwrap();
        assert_eq!(j.encode(text, true).unwrap(), ids, "encode {text:?}");
        assert_eq!(j.encode(text, false).unwrap(), ids, "encode {text:?}");
        assert_eq!(g.decode(&ids, false).unwrap(), *text, "gguf decode");
        assert_eq!(j.decode(&ids, false).unwrap(), *text, "json decode");
    }
    for (text, ids) in tokenization_cases() {
        assert_eq!(j.encode(&text, true).unwrap(), ids);
    }
}

/// Non-ASCII numerals are where the two differ: the GGUF pipeline for `pre = "smollm"` isolates
/// every `\p{N}` character first (as SmolLM2's original tokenizer.json and llama.cpp do), while
/// the fixture's tokenizer.json (transformers' conversion of the GGUF) is plain byte-level, which
/// keeps a space and the numeral together. ASCII digits agree because the vocabulary has no
/// multi-character token containing one.
#[test]
fn json_and_gguf_differ_only_on_unicode_numerals() {
    let (g, j) = (smollm_gguf(), smollm_json());
    let text = "a ½ b";
    let gi = g.encode(text, false).unwrap();
    let ji = j.encode(text, false).unwrap();
    let pieces = |t: &Tokenizer, ids: &[u32]| -> Vec<String> {
        ids.iter().map(|&i| t.token_text(i).unwrap()).collect()
    };
    assert_eq!(pieces(g, &gi), ["a", "Ġ", "Â½", "Ġb"]);
    assert_eq!(pieces(j, &ji), ["a", "ĠÂ", "½", "Ġb"]);
    assert_eq!(g.decode(&gi, false).unwrap(), text);
    assert_eq!(j.decode(&ji, false).unwrap(), text);
}

#[test]
fn json_metadata_and_chat_template() {
    let j = smollm_json();
    assert_eq!(j.vocab_size(), 49152);
    assert_eq!(j.bos_id(), Some(1));
    assert_eq!(j.eos_ids()[0], 2);
    assert!(j.eos_ids().contains(&0));
    assert_eq!(j.token_text(2).as_deref(), Some("<|im_end|>"));
    let (messages, rendered, ids) = chat_case();
    let out = j.apply_chat_template(&messages, true).unwrap();
    assert_eq!(out, rendered);
    assert_eq!(j.encode(&out, true).unwrap(), ids);
}

#[test]
fn json_missing_file_is_a_file_error() {
    let err = Tokenizer::from_json_file(Path::new("/nonexistent/tokenizer.json")).unwrap_err();
    assert!(matches!(err, Error::File { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Streaming

fn stream_all(t: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut d = StreamDecoder::new(t);
    let mut chunks: Vec<String> = ids.iter().map(|&id| d.push(id).unwrap()).collect();
    chunks.push(d.finish().unwrap());
    chunks
}

#[test]
fn stream_decoder_holds_back_partial_characters() {
    let t = smollm_gguf();
    let (text, ids) = tokenization_cases()
        .into_iter()
        .find(|(text, _)| text.contains('🎉'))
        .unwrap();
    let chunks = stream_all(t, &ids);
    for c in &chunks {
        assert!(
            !c.contains('\u{FFFD}'),
            "replacement character in {chunks:?}"
        );
    }
    assert_eq!(chunks.concat(), t.decode(&ids, false).unwrap());
    assert_eq!(chunks.concat(), text);
    // The emoji spans several byte tokens: some pushes give nothing.
    assert!(chunks.iter().any(|c| c.is_empty()));
    assert!(chunks.iter().any(|c| c.contains('🎉')));

    for text in EXTRA_TEXTS {
        let ids = t.encode(text, false).unwrap();
        let chunks = stream_all(t, &ids);
        assert_eq!(chunks.concat(), *text);
        assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')), "{chunks:?}");
    }
}

#[test]
fn stream_decoder_finish_flushes_incomplete_text() {
    let t = smollm_gguf();
    let ids = t.encode("ok 🎉", false).unwrap();
    let mut d = StreamDecoder::new(t);
    let mut out = String::new();
    for &id in &ids[..ids.len() - 1] {
        out.push_str(&d.push(id).unwrap());
    }
    assert_eq!(out, "ok");
    let rest = d.finish().unwrap();
    assert!(rest.ends_with('\u{FFFD}'), "{rest:?}");
    // After finish the decoder starts afresh.
    assert_eq!(d.push(ids[0]).unwrap(), "ok");
}

// ---------------------------------------------------------------------------------------------
// Chat template engine

fn tiny_template_tokenizer(template: &str) -> Tokenizer {
    let mut t = tokenizer_from_meta(&byte_level_meta("gpt2")).unwrap();
    t.set_chat_template(Some(template.to_string()));
    t
}

#[test]
fn template_python_methods_and_whitespace_control() {
    let t = tiny_template_tokenizer(
        "{% for m in messages %}\n  {% if m.role.startswith('us') %}\n[{{ m.content.strip() | upper }}]\n  {% else %}\n({{ m['content'].replace('a', 'b') }})\n  {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}>{% endif %}\n",
    );
    let msgs = [
        ChatMessage::new("user", "  hi  "),
        ChatMessage::new("assistant", "banana"),
    ];
    assert_eq!(
        t.apply_chat_template(&msgs, true).unwrap(),
        "[HI]\n(bbnbnb)\n>"
    );
    assert_eq!(
        t.apply_chat_template(&msgs, false).unwrap(),
        "[HI]\n(bbnbnb)\n"
    );
}

#[test]
fn template_tojson_is_python_style() {
    let t = tiny_template_tokenizer("{{ messages[0] | tojson }}|{{ messages | length }}");
    let out = t
        .apply_chat_template(&[ChatMessage::new("user", "<é>")], false)
        .unwrap();
    assert_eq!(out, r#"{"content": "<é>", "role": "user"}|1"#);
}

#[test]
fn template_errors() {
    let t = tiny_template_tokenizer(
        "{% if messages[0].role != 'system' %}{{ raise_exception('first message must be system') }}{% endif %}",
    );
    let err = t
        .apply_chat_template(&[ChatMessage::new("user", "x")], false)
        .unwrap_err();
    match err {
        Error::Template(msg) => assert!(msg.contains("first message must be system"), "{msg}"),
        other => panic!("expected a template error, got {other}"),
    }

    let t = tiny_template_tokenizer("{% for %}");
    assert!(matches!(
        t.apply_chat_template(&[], false),
        Err(Error::Template(_))
    ));

    let mut t = tiny_template_tokenizer("");
    t.set_chat_template(None);
    assert!(matches!(
        t.apply_chat_template(&[], false),
        Err(Error::Template(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Synthetic GGUF vocabularies

/// GPT-2's byte -> printable character mapping.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| {
        (b'!' as u32..=b'~' as u32).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut n = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                n += 1;
                char::from_u32(255 + n).unwrap()
            }
        })
        .collect()
}

/// A byte-level vocabulary: control tokens, the 256 byte characters and a few merges.
fn byte_level_meta(pre: &str) -> Vec<(&'static str, Value)> {
    let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_end|>".into()];
    let mut types = vec![3, 3];
    for c in byte_chars() {
        tokens.push(c.to_string());
        types.push(1);
    }
    let merges = [
        "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "1 2",
    ];
    for m in merges {
        tokens.push(m.replace(' ', ""));
        types.push(1);
    }
    tokens.push("<tool>".into());
    types.push(4);
    vec![
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s(pre)),
        ("tokenizer.ggml.tokens", Value::Array(Array::String(tokens))),
        ("tokenizer.ggml.token_type", Value::Array(Array::I32(types))),
        ("tokenizer.ggml.merges", strs(&merges)),
        ("tokenizer.ggml.eos_token_id", Value::U32(1)),
    ]
}

#[test]
fn synthetic_byte_level_pre_tokenizers() {
    for pre in ["gpt2", "qwen2", "llama-bpe", "smollm", "something-new"] {
        let t = tokenizer_from_meta(&byte_level_meta(pre)).unwrap();
        assert_eq!(t.vocab_size(), 2 + 256 + 8 + 1);
        assert_eq!(t.bos_id(), None);
        assert_eq!(t.eos_ids(), &[1, 0], "{pre}");
        let hello = t.token_id("hello").unwrap();
        let wor = t.token_id("Ġwor").unwrap();
        let (l, d) = (t.token_id("l").unwrap(), t.token_id("d").unwrap());
        assert_eq!(
            t.encode("hello world", true).unwrap(),
            vec![hello, wor, l, d]
        );
        // Control and user-defined tokens are matched whole; only control ones are special.
        let tool = t.token_id("<tool>").unwrap();
        assert_eq!(
            t.encode("<tool>hello<|im_end|>", false).unwrap(),
            vec![tool, hello, 1]
        );
        assert_eq!(t.decode(&[tool, hello, 1], true).unwrap(), "<tool>hello");
        for text in [
            "hello world",
            "a  b\n\n c",
            "12 123 1234",
            "déjà 🎉",
            "It's 'll",
        ] {
            let ids = t.encode(text, false).unwrap();
            assert_eq!(t.decode(&ids, false).unwrap(), text, "{pre}");
        }
        // How digits are grouped depends on the pre-tokenizer; the merge "1 2" shows it.
        let ids = t.encode("123", false).unwrap();
        let one_two = t.token_id("12").unwrap();
        let three = t.token_id("3").unwrap();
        let expected = match pre {
            "qwen2" | "smollm" => vec![t.token_id("1").unwrap(), t.token_id("2").unwrap(), three],
            _ => vec![one_two, three],
        };
        assert_eq!(ids, expected, "{pre}");
    }
}

#[test]
fn qwen2_pre_tokenizer_splits_like_the_regex() {
    let t = tokenizer_from_meta(&byte_level_meta("qwen2")).unwrap();
    // "hello" is one word after the regex split, " world" another, and "\n\n" with the following
    // spaces separate: check via token boundaries (no merge crosses a pre-token).
    let ids = t.encode("hello\n world", false).unwrap();
    let texts: Vec<String> = ids.iter().map(|&i| t.token_text(i).unwrap()).collect();
    assert_eq!(texts, ["hello", "Ċ", "Ġwor", "l", "d"]);
}

/// A tiny SentencePiece vocabulary: <unk>, <s>, </s>, the 256 byte pieces, then pieces with
/// scores (a higher score merges first).
fn spm_meta(add_space_prefix: Option<bool>) -> Vec<(&'static str, Value)> {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0f32, 0.0, 0.0];
    for b in 0..256 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    let pieces: &[(&str, f32)] = &[
        ("▁", -1.0),
        ("h", -2.0),
        ("e", -2.0),
        ("l", -2.0),
        ("o", -2.0),
        ("w", -2.0),
        ("r", -2.0),
        ("d", -2.0),
        ("a", -2.0),
        ("b", -2.0),
        ("ll", -3.0),
        ("▁h", -4.0),
        ("▁w", -4.0),
        ("or", -5.0),
        ("el", -5.5),
        ("he", -6.0),
        ("▁he", -7.0),
        ("llo", -8.0),
        ("▁hello", -9.0),
        ("ld", -9.5),
        ("▁wor", -10.0),
        ("▁world", -11.0),
        ("ab", -20.0),
    ];
    for (p, sc) in pieces {
        tokens.push(p.to_string());
        types.push(1);
        scores.push(*sc);
    }
    let mut meta = vec![
        ("tokenizer.ggml.model", s("llama")),
        (
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(tokens)),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(types)),
        ),
        (
            "tokenizer.ggml.scores",
            Value::Array(Array::F32(scores)),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        (
            "tokenizer.chat_template",
            s("{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}"),
        ),
    ];
    if let Some(b) = add_space_prefix {
        meta.push(("tokenizer.ggml.add_space_prefix", Value::Bool(b)));
    }
    meta
}

#[test]
fn synthetic_sentencepiece() {
    let t = tokenizer_from_meta(&spm_meta(None)).unwrap();
    let id = |p: &str| t.token_id(p).unwrap();
    assert_eq!(t.bos_id(), Some(1));
    assert_eq!(t.eos_ids(), &[2]);
    // BOS is added by default for SentencePiece models; a space prefix too.
    assert_eq!(
        t.encode("hello world", true).unwrap(),
        vec![1, id("▁hello"), id("▁world")]
    );
    assert_eq!(
        t.encode("hello world", false).unwrap(),
        vec![id("▁hello"), id("▁world")]
    );
    // "ab" merges (its score is low, but no other merge competes).
    assert_eq!(t.encode("ab", false).unwrap(), vec![id("▁"), id("ab")]);
    // Characters outside the vocabulary fall back to bytes; newlines too.
    let ids = t.encode("hé\n", false).unwrap();
    assert_eq!(
        ids,
        vec![id("▁h"), id("<0xC3>"), id("<0xA9>"), id("<0x0A>")]
    );
    for text in [
        "hello world",
        "hé\n",
        "  two  spaces",
        "wörld 🎉 end",
        "a",
        "",
    ] {
        let ids = t.encode(text, true).unwrap();
        assert_eq!(t.decode(&ids, true).unwrap(), text);
        let ids = t.encode(text, false).unwrap();
        assert_eq!(t.decode(&ids, false).unwrap(), text);
        // Streaming gives the same text (the leading space is stripped once).
        assert_eq!(stream_all(&t, &ids).concat(), text);
    }
    // Control tokens in the text are single tokens.
    assert_eq!(
        t.encode("<s>hello</s>", false).unwrap(),
        vec![1, id("▁hello"), 2]
    );
    assert_eq!(
        t.apply_chat_template(&[ChatMessage::new("user", "hi")], false)
            .unwrap(),
        "<s>[user] hi</s>"
    );
}

#[test]
fn synthetic_sentencepiece_without_space_prefix() {
    let t = tokenizer_from_meta(&spm_meta(Some(false))).unwrap();
    let id = |p: &str| t.token_id(p).unwrap();
    assert_eq!(
        t.encode("hello world", false).unwrap(),
        vec![id("he"), id("llo"), id("▁world")]
    );
    let ids = t.encode(" hello", false).unwrap();
    assert_eq!(ids, vec![id("▁hello")]);
    assert_eq!(t.decode(&ids, false).unwrap(), " hello");
}

#[test]
fn add_bos_flag_is_honoured() {
    let mut meta = byte_level_meta("gpt2");
    meta.push(("tokenizer.ggml.bos_token_id", Value::U32(0)));
    let t = tokenizer_from_meta(&meta).unwrap();
    assert_eq!(
        t.encode("hello", true).unwrap(),
        vec![t.token_id("hello").unwrap()]
    );
    meta.push(("tokenizer.ggml.add_bos_token", Value::Bool(true)));
    let t = tokenizer_from_meta(&meta).unwrap();
    assert_eq!(
        t.encode("hello", true).unwrap(),
        vec![0, t.token_id("hello").unwrap()]
    );
    assert_eq!(
        t.encode("hello", false).unwrap(),
        vec![t.token_id("hello").unwrap()]
    );
}

// ---------------------------------------------------------------------------------------------
// Errors

fn err_text(meta: &[(&str, Value)]) -> (Error, String) {
    let e = tokenizer_from_meta(meta).unwrap_err();
    let msg = e.to_string();
    (e, msg)
}

#[test]
fn unknown_tokenizer_model() {
    let (e, msg) = err_text(&[
        ("tokenizer.ggml.model", s("bert")),
        ("tokenizer.ggml.tokens", strs(&["a"])),
    ]);
    assert!(matches!(e, Error::Tokenizer(_)), "{msg}");
    assert!(msg.contains("bert"), "{msg}");
}

#[test]
fn missing_or_ill_typed_keys() {
    let (e, msg) = err_text(&[("tokenizer.ggml.model", s("gpt2"))]);
    assert!(matches!(e, Error::Gguf(_)), "{msg}");
    assert!(msg.contains("tokenizer.ggml.tokens"), "{msg}");

    let (e, msg) = err_text(&[]);
    assert!(matches!(e, Error::Gguf(_)), "{msg}");
    assert!(msg.contains("tokenizer.ggml.model"), "{msg}");

    let (_, msg) = err_text(&[
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.tokens", Value::U32(3)),
    ]);
    assert!(msg.contains("tokenizer.ggml.tokens"), "{msg}");

    let (_, msg) = err_text(&[
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.tokens", strs(&["a", "b"])),
    ]);
    assert!(msg.contains("tokenizer.ggml.merges"), "{msg}");

    let (_, msg) = err_text(&[
        ("tokenizer.ggml.model", s("llama")),
        ("tokenizer.ggml.tokens", strs(&["a", "b"])),
    ]);
    assert!(msg.contains("tokenizer.ggml.scores"), "{msg}");

    let mut meta = byte_level_meta("gpt2");
    meta.push(("tokenizer.ggml.bos_token_id", s("one")));
    let (_, msg) = err_text(&meta);
    assert!(msg.contains("tokenizer.ggml.bos_token_id"), "{msg}");

    let mut meta = byte_level_meta("gpt2");
    meta.push(("tokenizer.ggml.bos_token_id", Value::U32(100_000)));
    let (_, msg) = err_text(&meta);
    assert!(msg.contains("tokenizer.ggml.bos_token_id"), "{msg}");

    let mut meta = byte_level_meta("gpt2");
    meta.retain(|(k, _)| *k != "tokenizer.ggml.token_type");
    meta.push((
        "tokenizer.ggml.token_type",
        Value::Array(Array::I32(vec![1])),
    ));
    let (_, msg) = err_text(&meta);
    assert!(msg.contains("tokenizer.ggml.token_type"), "{msg}");

    let mut meta = byte_level_meta("gpt2");
    meta.retain(|(k, _)| *k != "tokenizer.ggml.merges");
    meta.push(("tokenizer.ggml.merges", strs(&["h zz"])));
    let (_, msg) = err_text(&meta);
    assert!(msg.contains("tokenizer.ggml.merges"), "{msg}");
}

/// Found by the chat_template fuzz target: minijinja overflowed on `N * messages` with a huge N
/// (a panic where overflow checks are on). It must end as a template error or text, never a
/// panic, whatever the build.
#[test]
fn a_template_repeating_messages_a_huge_number_of_times_is_an_error() {
    let crash = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz/crashes/chat_template/minijinja-repeat-overflow"
    ))
    .unwrap();
    // The fuzz input: a mode byte, then the template up to the byte 0xFF.
    let body = &crash[1..];
    let end = body.iter().position(|&b| b == 0xFF).unwrap_or(body.len());
    let template = String::from_utf8_lossy(&body[..end]).into_owned();
    let messages = [
        lamina::tokenizer::ChatMessage::new("system", "Be brief."),
        lamina::tokenizer::ChatMessage::new("user", "x"),
    ];
    for t in [
        template.as_str(),
        "{% for m in 1126706813402099066 * messages %}{{ m.content }}{% endfor %}",
    ] {
        let r =
            lamina::tokenizer::render_chat_template(t, &messages, true, Some("<s>"), Some("</s>"));
        if let Ok(text) = r {
            assert!(text.len() < 1 << 30);
        }
    }
}

/// GGUF metadata written from a tokenizer (`lamina quantize` of a checkpoint folder) builds
/// the same tokenizer again; a kind that cannot be written is a clear error, not a file that
/// tokenizes differently.
#[test]
fn gguf_metadata_rebuilds_the_tokenizer_or_says_why_not() {
    let t = smollm_gguf();
    let meta = t.gguf_metadata().unwrap();
    let pairs: Vec<(&str, Value)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let back = tokenizer_from_meta(&pairs).unwrap();
    let (chat, rendered, ids) = chat_case();
    assert_eq!(back.apply_chat_template(&chat, true).unwrap(), rendered);
    assert_eq!(back.encode(&rendered, true).unwrap(), ids);
    for (text, ids) in tokenization_cases() {
        assert_eq!(back.encode(&text, true).unwrap(), ids, "{text:?}");
    }
    assert_eq!(back.eos_ids(), t.eos_ids());
    let spm = tokenizer_from_meta(&spm_meta(None)).unwrap();
    let err = spm.gguf_metadata().unwrap_err().to_string();
    assert!(err.contains("SentencePiece"), "{err}");
}
