//! A Hugging Face checkpoint folder (config.json, f16 safetensors in Hugging Face's q/k head
//! layout, tokenizer.json) loads to the same model transformers runs: logits compared with
//! ../shared/fixtures/smollm2-2layer-hf.

use std::collections::HashMap;
use std::path::Path;

use lamina::engine::{Engine, EngineOptions};
use lamina::model::ModelOptions;
use lamina::quant::GgmlType;
use safetensors::SafeTensors;

mod common;
use common::rel_max_diff;

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/fixtures/smollm2-2layer-hf"
);

#[test]
fn checkpoint_logits_match_transformers() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/expected.json")).unwrap())
            .unwrap();
    let data = std::fs::read(format!("{DIR}/logits.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&data).unwrap();
    let ids: Vec<u32> =
        bytemuck::pod_collect_to_vec::<u8, i64>(st.tensor("input_ids").unwrap().data())
            .into_iter()
            .map(|v| v as u32)
            .collect();
    let want: Vec<f32> = bytemuck::pod_collect_to_vec(st.tensor("logits").unwrap().data());

    let dir = std::path::Path::new(DIR).join("checkpoint");
    let opts = EngineOptions {
        model: ModelOptions {
            context: 128,
            batch: 32,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut e = Engine::load(Some(&dir), opts).unwrap();
    assert_eq!(e.model().cfg.n_layer, 2);
    assert!(
        e.model().cfg.rope_neox,
        "Hugging Face q/k layout rotates (i, i + d/2) pairs"
    );
    let prompt = expected["prompt"].as_str().unwrap();
    assert_eq!(e.tokenizer().encode(prompt, true).unwrap(), ids);

    let got = e.model_mut().forward_all(&ids).unwrap();
    assert_eq!(got.len(), want.len());
    let max_logit = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_diff = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("max |diff| {max_diff:.2e}, max |logit| {max_logit:.2}");
    assert!(max_diff / max_logit < 1e-3, "rel {}", max_diff / max_logit);
}

#[test]
fn a_broken_checkpoint_is_a_clear_error() {
    let dir = common::temp_dir("hf");
    std::fs::write(dir.join("config.json"), r#"{"model_type": "gpt_neox"}"#).unwrap();
    let err = Engine::load(Some(&dir), EngineOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("gpt_neox"),
        "{err}"
    );
    let cfg = std::fs::read_to_string(format!("{DIR}/checkpoint/config.json")).unwrap();
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    std::fs::write(
        dir.join("model.safetensors"),
        b"\x10\0\0\0\0\0\0\0{not json}",
    )
    .unwrap();
    let err = Engine::load(Some(&dir), EngineOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

/// The fixture's token ids and transformers' logits.
fn reference() -> (Vec<u32>, Vec<f32>) {
    let data = std::fs::read(format!("{DIR}/logits.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&data).unwrap();
    let ids = bytemuck::pod_collect_to_vec::<u8, i64>(st.tensor("input_ids").unwrap().data())
        .into_iter()
        .map(|v| v as u32)
        .collect();
    (
        ids,
        bytemuck::pod_collect_to_vec(st.tensor("logits").unwrap().data()),
    )
}

fn load(dir: &Path, quantize: Option<GgmlType>) -> lamina::Result<Engine> {
    let opts = EngineOptions {
        model: ModelOptions {
            context: 128,
            batch: 32,
            quantize,
            ..Default::default()
        },
        ..Default::default()
    };
    Engine::load(Some(dir), opts)
}

/// The fixture's checkpoint split into two shards with a model.safetensors.index.json, as
/// `save_pretrained` writes a large model.
#[test]
fn a_sharded_checkpoint_loads_like_the_whole_one() {
    let src = Path::new(DIR).join("checkpoint");
    let dir = common::temp_dir("hf-shards");
    for f in std::fs::read_dir(&src).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_none_or(|x| x != "safetensors") {
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
    }
    let data = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&data).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut weight_map = HashMap::new();
    let half = names.len() / 2;
    for (i, part) in [&names[..half], &names[half..]].into_iter().enumerate() {
        let shard = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        safetensors::tensor::serialize_to_file(views, None, &dir.join(&shard)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), shard.clone());
        }
    }
    let index = |map: &HashMap<String, String>| {
        serde_json::json!({"metadata": {"total_size": data.len()}, "weight_map": map}).to_string()
    };
    let index_path = dir.join("model.safetensors.index.json");
    std::fs::write(&index_path, index(&weight_map)).unwrap();

    let (ids, want) = reference();
    let whole = load(&src, None)
        .unwrap()
        .model_mut()
        .forward_all(&ids)
        .unwrap();
    let sharded = load(&dir, None)
        .unwrap()
        .model_mut()
        .forward_all(&ids)
        .unwrap();
    assert_eq!(sharded, whole, "the same tensors give the same logits");
    assert!(rel_max_diff(&want, &sharded) < 1e-3);

    // An index that puts a tensor in the wrong shard, or names a missing one, is an error
    // that names the index.
    let mut wrong = weight_map.clone();
    let moved = names[0].clone();
    wrong.insert(moved.clone(), "model-00002-of-00002.safetensors".into());
    std::fs::write(&index_path, index(&wrong)).unwrap();
    let err = load(&dir, None).err().unwrap().to_string();
    assert!(err.contains("index.json") && err.contains(&moved), "{err}");
    let mut missing = weight_map.clone();
    missing.insert(moved, "model-00003-of-00003.safetensors".into());
    std::fs::write(&index_path, index(&missing)).unwrap();
    let err = load(&dir, None).err().unwrap().to_string();
    assert!(err.contains("index.json") && err.contains("00003"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--quantize` on a float checkpoint: every weight matrix on the GPU is that type (or its
/// fallback where rows are not a multiple of 256), and the logits stay near transformers'.
#[test]
fn quantize_at_load_makes_the_matrices_that_type() {
    let src = Path::new(DIR).join("checkpoint");
    let (ids, want) = reference();
    for (ty, bound) in [
        (GgmlType::Q8_0, 0.01),
        (GgmlType::Q6_K, 0.02),
        (GgmlType::Q4_K, 0.09),
    ] {
        let mut e = load(&src, Some(ty)).unwrap();
        let w = e.model().weights.clone();
        let mut types: Vec<GgmlType> = vec![w.tok_embd.ty];
        for l in &w.layers {
            for lin in [&l.qkv, &l.o, &l.gate_up, &l.down] {
                types.extend(lin.parts.iter().map(|(m, _)| m.ty));
            }
        }
        for t in &types {
            assert!(*t == ty || *t == ty.fallback(), "{ty:?}: a {t:?} matrix");
        }
        let got = e.model_mut().forward_all(&ids).unwrap();
        let d = rel_max_diff(&want, &got);
        eprintln!("{ty:?}: logits max |diff| / max |logit| {d:.4}");
        assert!(d < bound, "{ty:?}: {d}");
    }
}

/// `lamina quantize` from a checkpoint folder writes a GGUF in llama.cpp's layout (Llama q/k
/// rows in adjacent-pair rotary order, `tokenizer.ggml.*` metadata) that loads to the same
/// model: F32 gives the checkpoint's logits, every other type exactly what quantizing at load
/// to it gives, and its tokenizer splits text, renders the chat template and stops as tokenizer.json does.
#[test]
fn quantize_a_checkpoint_folder_to_a_gguf_file() {
    use lamina::gguf::GgufFile;
    use lamina::tokenizer::{ChatMessage, Tokenizer};
    let src = Path::new(DIR).join("checkpoint");
    let dir = common::temp_dir("hf-quantize");
    let (ids, want) = reference();
    let from_checkpoint = load(&src, None)
        .unwrap()
        .model_mut()
        .forward_all(&ids)
        .unwrap();
    let hf = Tokenizer::from_json_file(&src.join("tokenizer.json")).unwrap();
    for ty in lamina::quant::SUPPORTED_TYPES.map(|t| format!("{t:?}").to_lowercase()) {
        let ty = ty.as_str();
        let out = dir.join(format!("{ty}.gguf"));
        common::succeeds(
            common::lamina_cmd(["quantize", "--type", ty])
                .arg(&src)
                .arg(&out),
        );
        let g = GgufFile::open(&out).unwrap();
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        // This tokenizer.json pre-tokenizes with plain GPT-2 byte-level (its vocabulary has
        // no multi-digit tokens, so it splits digits as llama.cpp's "smollm" does).
        assert_eq!(g.get_str("tokenizer.ggml.pre").unwrap(), "gpt2");
        let mut e = load(&out, None).unwrap();
        assert!(
            !e.model().cfg.rope_neox,
            "a llama GGUF rotates adjacent pairs"
        );
        let got = e.model_mut().forward_all(&ids).unwrap();
        if ty == "f32" {
            let d = rel_max_diff(&from_checkpoint, &got);
            eprintln!("F32 GGUF vs the checkpoint: {d:.2e}");
            assert!(d < 1e-5, "{d}");
            assert!(rel_max_diff(&want, &got) < 1e-3);
        } else {
            // The same quantizer on the same values: the same model as quantizing at load.
            let at_load = load(&src, Some(ty.parse().unwrap()))
                .unwrap()
                .model_mut()
                .forward_all(&ids)
                .unwrap();
            let d = rel_max_diff(&at_load, &got);
            eprintln!("{ty} GGUF vs {ty} at load: {d:.2e}");
            assert!(d < 1e-5, "{ty}: {d}");
        }
        if ty != "q8_0" {
            continue; // the tokenizer metadata is the same in every file
        }
        let t = e.tokenizer();
        for text in [
            "Numbers 3.14159 and 2,718,281; emoji \u{1f680}, Gr\u{fc}\u{df}e, \u{65e5}\u{672c}\u{8a9e}.",
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n  tabs\tand\n\nblank lines<|im_end|>",
            "def f(x):\n    return x**2  # squared",
        ] {
            for special in [false, true] {
                let a = t.encode(text, special).unwrap();
                assert_eq!(a, hf.encode(text, special).unwrap(), "{text:?}");
                assert_eq!(t.decode(&a, false).unwrap(), hf.decode(&a, false).unwrap());
            }
        }
        let chat = [
            ChatMessage::new("system", "You are terse."),
            ChatMessage::new("user", "Name a prime."),
        ];
        assert_eq!(
            t.apply_chat_template(&chat, true).unwrap(),
            hf.apply_chat_template(&chat, true).unwrap()
        );
        assert_eq!(t.eos_ids(), hf.eos_ids());
        assert_eq!(t.bos_id(), hf.bos_id());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
