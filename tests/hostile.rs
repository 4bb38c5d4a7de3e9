//! Hostile input through the command line: corrupt files of every kind the CLI reads. Each
//! must end in a non-zero exit with an `error:` line that says what is wrong, never a panic,
//! an abort or a signal.

use std::path::Path;
use std::process::Command;

use lamina::gguf::{writer, Array, Value};
use lamina::quant::{self, GgmlType};

mod common;
use common::temp_dir;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures");

/// Runs lamina and asserts a clean failure: non-zero exit (not a panic's 101, not a signal),
/// an `error:` line, no panic message. Returns stderr.
#[track_caller]
fn fails_cleanly(what: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(args)
        .output()
        .expect("run lamina");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code();
    assert!(
        code.is_some() && code != Some(0) && code != Some(101),
        "{what}: lamina {args:?} exited with {:?}\n{err}",
        out.status
    );
    assert!(err.contains("error: "), "{what}: no error line\n{err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{what}: panicked\n{err}"
    );
    err
}

fn s(x: &str) -> Value {
    Value::String(x.into())
}

/// A tiny but complete llama GGUF (1 layer, 64 wide, a 260-token byte-level vocabulary):
/// `tweak` may change its metadata and tensors to make it wrong in one way.
fn tiny_gguf(
    tweak: impl FnOnce(&mut Vec<(String, Value)>, &mut Vec<writer::TensorData>),
) -> Vec<u8> {
    let (d, ff, vocab) = (64u64, 128u64, 260u64);
    // GPT-2's byte-level alphabet: printable bytes stand for themselves, the others for
    // the code points from 256 on.
    let mut tokens: Vec<String> = vec![
        "<|endoftext|>".into(),
        "<|im_start|>".into(),
        "<|im_end|>".into(),
        "hi".into(),
    ];
    let mut next = 256u32;
    for b in 0..=255u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            next += 1;
            next - 1
        };
        tokens.push(char::from_u32(c).unwrap().to_string());
    }
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), s("llama")),
        ("general.name".into(), s("tiny")),
        ("llama.block_count".into(), Value::U32(1)),
        ("llama.embedding_length".into(), Value::U32(d as u32)),
        ("llama.attention.head_count".into(), Value::U32(4)),
        ("llama.attention.head_count_kv".into(), Value::U32(2)),
        ("llama.feed_forward_length".into(), Value::U32(ff as u32)),
        ("llama.context_length".into(), Value::U32(256)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("smollm")),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(Array::String(tokens)),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(Array::String(vec!["h i".into()])),
        ),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(0)),
    ];
    let t = |name: &str, dims: &[u64]| {
        let n: u64 = dims.iter().product();
        let x: Vec<f32> = (0..n).map(|i| ((i % 17) as f32 - 8.0) * 0.01).collect();
        writer::TensorData {
            name: name.into(),
            dims: dims.to_vec(),
            ty: if dims.len() == 1 {
                GgmlType::F32
            } else {
                GgmlType::Q8_0
            },
            bytes: quant::quantize(
                if dims.len() == 1 {
                    GgmlType::F32
                } else {
                    GgmlType::Q8_0
                },
                &x,
            ),
        }
    };
    let mut tensors = vec![
        t("token_embd.weight", &[d, vocab]),
        t("output_norm.weight", &[d]),
        t("blk.0.attn_norm.weight", &[d]),
        t("blk.0.attn_q.weight", &[d, d]),
        t("blk.0.attn_k.weight", &[d, d / 2]),
        t("blk.0.attn_v.weight", &[d, d / 2]),
        t("blk.0.attn_output.weight", &[d, d]),
        t("blk.0.ffn_norm.weight", &[d]),
        t("blk.0.ffn_gate.weight", &[d, ff]),
        t("blk.0.ffn_up.weight", &[d, ff]),
        t("blk.0.ffn_down.weight", &[ff, d]),
    ];
    tweak(&mut meta, &mut tensors);
    writer::write(&meta, &tensors)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

fn generate(model: &str) -> Vec<String> {
    [
        "generate",
        "--model",
        model,
        "--prompt",
        "hi",
        "--max-tokens",
        "2",
        "--temperature",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[track_caller]
fn gen_fails(what: &str, model: &str) -> String {
    let args = generate(model);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails_cleanly(what, &args)
}

#[test]
fn the_tiny_model_itself_runs() {
    // The corrupt variants below are wrong in one way each; the original must work.
    let dir = temp_dir("tiny");
    let model = write(&dir, "tiny.gguf", &tiny_gguf(|_, _| {}));
    common::lamina_ok(generate(&model));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corrupt_gguf_files_give_errors() {
    let dir = temp_dir("gguf");
    let good = tiny_gguf(|_, _| {});
    // Truncated at many points: header, metadata, tensor infos, data.
    let mut cuts: Vec<usize> = (0..good.len()).step_by(good.len() / 40).collect();
    cuts.extend([0, 3, 4, 8, 23, good.len() - 1]);
    for cut in cuts {
        let m = write(&dir, "cut.gguf", &good[..cut]);
        gen_fails(&format!("truncated at {cut}"), &m);
        fails_cleanly(
            &format!("tokenize, truncated at {cut}"),
            &["tokenize", "--model", &m, "hi"],
        );
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        (
            "garbage",
            (0..5000u32)
                .map(|i| (i.wrapping_mul(2654435761u32) >> 13) as u8)
                .collect(),
        ),
        ("bad magic", [b"GGUX".as_slice(), &good[4..]].concat()),
        ("version 9", {
            let mut b = good.clone();
            b[4] = 9;
            b
        }),
        ("huge tensor count", {
            let mut b = good.clone();
            b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }),
        ("huge metadata count", {
            let mut b = good.clone();
            b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
            b
        }),
        ("huge string length", {
            let mut b = good.clone();
            b[24..32].copy_from_slice(&(1u64 << 50).to_le_bytes());
            b
        }),
        (
            "huge dimensions",
            tiny_gguf(|_, t| t[3].dims = vec![1 << 40, 1 << 30]),
        ),
        (
            "dimension overflow",
            tiny_gguf(|_, t| t[3].dims = vec![1 << 32, 1 << 32, 1 << 32]),
        ),
        ("wrong shape", tiny_gguf(|_, t| t[8].dims = vec![32, 256])),
        (
            "wrong tensor type",
            tiny_gguf(|_, t| t[4].ty = GgmlType::Q4_K),
        ),
        (
            "missing tensor",
            tiny_gguf(|_, t| {
                t.remove(9);
            }),
        ),
        (
            "huge head count",
            tiny_gguf(|m, _| m[4].1 = Value::U32(1 << 30)),
        ),
        ("zero kv heads", tiny_gguf(|m, _| m[5].1 = Value::U32(0))),
        (
            "metadata of the wrong type",
            tiny_gguf(|m, _| m[3].1 = s("sixty-four")),
        ),
        (
            "nan epsilon",
            tiny_gguf(|m, _| m[8].1 = Value::F32(f32::NAN)),
        ),
        (
            "unknown architecture",
            tiny_gguf(|m, _| m[0].1 = s("mamba")),
        ),
        (
            "yarn rope scaling",
            tiny_gguf(|m, _| m.push(("llama.rope.scaling.type".into(), s("yarn")))),
        ),
        (
            "token types of the wrong length",
            tiny_gguf(|m, _| {
                m.push((
                    "tokenizer.ggml.token_type".into(),
                    Value::Array(Array::I32(vec![1; 3])),
                ))
            }),
        ),
        (
            "u8 array claiming the whole file",
            tiny_gguf(|m, _| m.push(("x.bytes".into(), Value::Array(Array::U8(vec![1; 100]))))),
        ),
    ];
    for (what, bytes) in cases {
        let bytes = if what == "u8 array claiming the whole file" {
            // Claim 2^40 one-byte elements: the count is checked against what is left.
            let mut b = bytes;
            let key = b"x.bytes";
            let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 8;
            b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
            b
        } else {
            bytes
        };
        let m = write(&dir, "bad.gguf", &bytes);
        let err = gen_fails(what, &m);
        eprintln!("{what}: {}", err.lines().last().unwrap_or(""));
    }
    // Invalid UTF-8 in a metadata string.
    let mut b = tiny_gguf(|_, _| {});
    let at = b.windows(4).position(|w| w == b"tiny").unwrap();
    b[at] = 0xFF;
    gen_fails("invalid UTF-8 key value", &write(&dir, "utf8.gguf", &b));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_real_model_cut_short_gives_errors() {
    let model = lamina::fetch::default_model().unwrap();
    let bytes = std::fs::read(&model).unwrap();
    let dir = temp_dir("real");
    // In the vocabulary, in the tensor infos, and in the data (the last cuts need the GPU).
    for cut in [
        100,
        4096,
        1 << 20,
        2_500_000,
        bytes.len() / 2,
        bytes.len() - 1,
    ] {
        let m = write(&dir, "cut.gguf", &bytes[..cut]);
        let err = gen_fails(&format!("real model cut at {cut}"), &m);
        assert!(
            err.contains("truncated") || err.contains("cannot fit"),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corrupt_checkpoint_folders_give_errors() {
    let src = format!("{FIXTURES}/smollm2-2layer-hf/checkpoint");
    let dir = temp_dir("hf");
    let config = std::fs::read_to_string(format!("{src}/config.json")).unwrap();
    let st = std::fs::read(format!("{src}/model.safetensors")).unwrap();
    let setup = |config: &str, st: &[u8]| -> String {
        let d = dir.join("ckpt");
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for f in [
            "tokenizer.json",
            "tokenizer_config.json",
            "chat_template.jinja",
            "generation_config.json",
        ] {
            std::fs::copy(format!("{src}/{f}"), d.join(f)).unwrap();
        }
        std::fs::write(d.join("config.json"), config).unwrap();
        std::fs::write(d.join("model.safetensors"), st).unwrap();
        d.to_str().unwrap().to_string()
    };
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        ("config not JSON", "{ not json".into(), st.clone()),
        (
            "config wrong types",
            config.replace("\"hidden_size\": 576", "\"hidden_size\": \"big\""),
            st.clone(),
        ),
        (
            "config huge layers",
            config.replace(
                "\"num_hidden_layers\": 2",
                "\"num_hidden_layers\": 4000000000",
            ),
            st.clone(),
        ),
        (
            "config disagrees with tensors",
            config.replace("\"intermediate_size\": 1536", "\"intermediate_size\": 1024"),
            st.clone(),
        ),
        (
            "unsupported rope",
            config.replace("\"rope_type\": \"default\"", "\"rope_type\": \"yarn\""),
            st.clone(),
        ),
        (
            "safetensors truncated",
            config.clone(),
            st[..st.len() / 3].to_vec(),
        ),
        ("safetensors header cut", config.clone(), st[..100].to_vec()),
        ("safetensors garbage", config.clone(), vec![0xAB; 4096]),
        ("safetensors empty", config.clone(), vec![]),
    ];
    for (what, c, t) in cases {
        let d = setup(&c, &t);
        gen_fails(what, &d);
    }
    // Invalid UTF-8 in config.json.
    let d = setup(&config, &st);
    std::fs::write(Path::new(&d).join("config.json"), b"{\"a\": \"\xff\xfe\"}").unwrap();
    gen_fails("config invalid UTF-8", &d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corrupt_adapters_and_adapters_that_do_not_fit_give_errors() {
    let model = format!("{FIXTURES}/smollm2-2layer-hf/checkpoint");
    let dir = temp_dir("adapter");
    let lora = std::fs::read(format!("{FIXTURES}/smollm2/lora.safetensors")).unwrap();
    let good_cfg = r#"{"peft_type": "LORA", "r": 8, "lora_alpha": 16}"#;
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        // The fixture adapter has 30 layers; this model has 2.
        ("adapter for another model", good_cfg, lora.clone()),
        (
            "rank disagrees with tensors",
            r#"{"r": 4, "lora_alpha": 16}"#,
            lora.clone(),
        ),
        ("config not JSON", "nope", lora.clone()),
        ("alpha missing", r#"{"r": 8}"#, lora.clone()),
        (
            "alpha infinite",
            r#"{"r": 8, "lora_alpha": 1e39}"#,
            lora.clone(),
        ),
        (
            "tensors truncated",
            good_cfg,
            lora[..lora.len() / 2].to_vec(),
        ),
        (
            "tensors garbage",
            good_cfg,
            b"\x10\0\0\0\0\0\0\0{garbage}".to_vec(),
        ),
    ];
    for (what, cfg, st) in cases {
        let a = dir.join("a");
        let _ = std::fs::remove_dir_all(&a);
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(a.join("adapter_config.json"), cfg).unwrap();
        std::fs::write(a.join("adapter_model.safetensors"), st).unwrap();
        let mut args = generate(&model);
        args.extend(["--adapter".into(), a.to_str().unwrap().into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_cleanly(what, &args);
    }
    let mut args = generate(&model);
    args.extend([
        "--adapter".into(),
        dir.join("missing").to_str().unwrap().into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails_cleanly("adapter folder missing", &args);
    // NaN weight.
    let mut args = generate(&model);
    let a = dir.join("nan");
    std::fs::create_dir_all(&a).unwrap();
    args.extend(["--adapter".into(), format!("{}:NaN", a.display())]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails_cleanly("adapter weight NaN", &args);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corrupt_training_inputs_give_errors() {
    let model = format!("{FIXTURES}/smollm2-2layer-hf/checkpoint");
    let dir = temp_dir("train");
    let out = dir.join("out");
    let train = |what: &str, data: &[u8], ext: &str, extra: &[&str]| {
        let p = write(&dir, &format!("data.{ext}"), data);
        let mut args = vec![
            "train",
            "--model",
            &model,
            "--data",
            &p,
            "--out",
            out.to_str().unwrap(),
            "--max-steps",
            "1",
        ];
        args.extend_from_slice(extra);
        fails_cleanly(what, &args)
    };
    let err = train(
        "a malformed row",
        b"{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": 3}\n",
        "jsonl",
        &[],
    );
    assert!(err.contains("line 2"), "{err}");
    train(
        "binary garbage",
        &[0u8, 159, 146, 150, 0xFF, 0xFE, 1, 2, 3],
        "jsonl",
        &[],
    );
    let err = train(
        "invalid UTF-8",
        b"{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"\xC3\x28\"}\n",
        "jsonl",
        &[],
    );
    assert!(err.contains("UTF-8"), "{err}");
    train(
        "messages of the wrong shape",
        b"{\"messages\": [{\"role\": 5}]}\n",
        "jsonl",
        &[],
    );
    train(
        "JSON array cut short",
        b"[{\"prompt\": \"a\", \"completion\": ",
        "json",
        &[],
    );
    train("CSV without the columns", b"a,b\n1,2\n", "csv", &[]);
    train(
        "CSV with an open quote",
        b"text,label\n\"never closed,great\n",
        "csv",
        &[],
    );
    train("empty file", b"", "jsonl", &[]);
    let good =
        b"{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"c\", \"completion\": \"d\"}\n";
    for (what, toml) in [
        ("config not TOML", "lr = = 3"),
        ("config unknown key", "learning_rate = 1e-3"),
        ("config wrong type", "batch_size = \"four\""),
        ("config NaN lr", "lr = nan"),
        ("config huge batch", "batch_size = 4000000000"),
        ("config bad fraction", "validation_fraction = 1.5"),
        ("config bad targets", "[lora]\ntargets = [\"attn\"]"),
    ] {
        let cfg = write(&dir, "train.toml", toml.as_bytes());
        train(what, good, "jsonl", &["--config", &cfg]);
    }
    // A checkpoint folder whose files are corrupt.
    let ck = out.join("checkpoint");
    std::fs::create_dir_all(&ck).unwrap();
    for (what, state) in [
        ("trainer state not JSON", "{".to_string()),
        (
            "trainer state of another run",
            r#"{"optimizer_steps": 1, "step": 1}"#.to_string(),
        ),
    ] {
        std::fs::write(ck.join("trainer_state.json"), state).unwrap();
        train(what, good, "jsonl", &["--resume"]);
    }
    // lamina grad with a batch file that is not one.
    let a = dir.join("adapter");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::write(
        a.join("adapter_config.json"),
        r#"{"r": 8, "lora_alpha": 16}"#,
    )
    .unwrap();
    std::fs::copy(
        format!("{FIXTURES}/smollm2/lora.safetensors"),
        a.join("adapter_model.safetensors"),
    )
    .unwrap();
    let batch = write(&dir, "batch.safetensors", b"not safetensors");
    fails_cleanly(
        "grad batch garbage",
        &[
            "grad",
            "--adapter",
            a.to_str().unwrap(),
            "--batch",
            &batch,
            "--out",
            dir.join("g").to_str().unwrap(),
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_batch_that_does_not_fit_the_device_is_a_typed_error() {
    let model = format!("{FIXTURES}/smollm2-2layer-hf/checkpoint");
    let dir = temp_dir("fit");
    let rows: String = (0..8)
        .map(|_| {
            format!(
                "{{\"prompt\": \"{}\", \"completion\": \" yes\"}}\n",
                "word ".repeat(3000)
            )
        })
        .collect();
    let data = write(&dir, "long.jsonl", rows.as_bytes());
    let out = dir.join("out");
    let err = fails_cleanly(
        "a batch larger than the device",
        &[
            "train",
            "--model",
            &model,
            "--data",
            &data,
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .chain(&[
            "--batch-size",
            "4096",
            "--max-len",
            "8192",
            "--max-steps",
            "1",
        ])
        .copied()
        .collect::<Vec<_>>(),
    );
    assert!(
        err.contains("out of memory") && err.contains("bytes"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resuming_a_checkpoint_of_another_model_is_an_error() {
    // Same data and config, another model shape: the config check passes, the shapes do not.
    let small = format!("{FIXTURES}/smollm2-2layer-hf/checkpoint");
    let dir = temp_dir("resume-other");
    let data = write(
        &dir,
        "d.jsonl",
        b"{\"prompt\": \"a b c\", \"completion\": \" d\"}\n{\"prompt\": \"e f\", \"completion\": \" g\"}\n",
    );
    let cfg = write(
        &dir,
        "t.toml",
        b"max_steps = 1\nbatch_size = 1\nvalidation_fraction = 0.0\n[lora]\nr = 4\n",
    );
    let out = dir.join("out");
    let o = out.to_str().unwrap();
    common::lamina_ok([
        "train", "--model", &small, "--data", &data, "--config", &cfg, "--out", o,
    ]);
    let big = lamina::fetch::default_model().unwrap();
    let err = fails_cleanly(
        "resume with another model",
        &[
            "train",
            "--model",
            big.to_str().unwrap(),
            "--data",
            &data,
            "--config",
            &cfg,
            "--out",
            o,
            "--resume",
        ],
    );
    assert!(err.contains("another model"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
