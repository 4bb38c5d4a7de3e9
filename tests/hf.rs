//! A Hugging Face checkpoint folder (config.json, f16 safetensors in Hugging Face's q/k head
//! layout, tokenizer.json) loads to the same model transformers runs: logits compared with
//! ../shared/fixtures/smollm2-2layer-hf.

use lamina::engine::{Engine, EngineOptions};
use lamina::model::ModelOptions;
use safetensors::SafeTensors;

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
    let dir = std::env::temp_dir().join(format!("lamina-hf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
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
