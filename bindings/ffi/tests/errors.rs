//! The error each bad input becomes at the FFI boundary, through the same calls the
//! generated bindings make (the language tests cover the common cases; these cover the rest).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use lamina::adapter::{LoraConfig, LoraWeights};
use lamina_ffi::*;

fn engine() -> &'static Arc<Engine> {
    static E: OnceLock<Arc<Engine>> = OnceLock::new();
    E.get_or_init(|| {
        let path = lamina::fetch::default_model().unwrap();
        Engine::new(Some(path.display().to_string()), EngineOptions::default()).unwrap()
    })
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("lamina-ffi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_corrupt_model_is_invalid_model_and_a_missing_one_not_found() {
    let d = temp_dir("model");
    let bad = d.join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x03\0\0\0 truncated").unwrap();
    let e = Engine::new(Some(bad.display().to_string()), EngineOptions::default()).err();
    assert!(
        matches!(&e, Some(LaminaError::InvalidModel(m)) if m.contains("truncated")),
        "{e:?}"
    );
    let e = Engine::new(
        Some(d.join("none.gguf").display().to_string()),
        EngineOptions::default(),
    )
    .err();
    assert!(matches!(e, Some(LaminaError::ModelNotFound(_))), "{e:?}");
    let tiny = EngineOptions {
        context_length: 0,
        ..Default::default()
    };
    let model = lamina::fetch::default_model().unwrap();
    let e = Engine::new(Some(model.display().to_string()), tiny).err();
    assert!(matches!(e, Some(LaminaError::InvalidArgument(_))), "{e:?}");
}

#[test]
fn an_adapter_for_another_model_is_adapter_mismatch() {
    let d = temp_dir("adapter");
    // q_proj of layer 0 with the inputs of a 1024-wide model (SmolLM2-135M is 576 wide).
    let r = 4usize;
    let mut tensors = BTreeMap::new();
    tensors.insert(
        (0u32, 0usize),
        (vec![0.01f32; r * 1024], vec![0.0f32; 1024 * r]),
    );
    let w = LoraWeights {
        config: LoraConfig {
            r: r as u32,
            alpha: 8.0,
            use_rslora: false,
        },
        tensors,
    };
    w.save(&d, 0.0, None).unwrap();
    let e = engine()
        .load_adapter(d.display().to_string(), "other".into())
        .err();
    assert!(
        matches!(&e, Some(LaminaError::AdapterMismatch(m)) if m.contains("does not fit")),
        "{e:?}"
    );
    let e = engine()
        .load_adapter(d.join("none").display().to_string(), "x".into())
        .err();
    assert!(matches!(e, Some(LaminaError::Io(_))), "{e:?}");
    let file = d.join("adapter_model.safetensors");
    let e = engine()
        .load_adapter(file.display().to_string(), "x".into())
        .err();
    assert!(
        matches!(&e, Some(LaminaError::Io(m)) if m.contains("not a folder")),
        "{e:?}"
    );
    std::fs::write(d.join("adapter_model.safetensors"), b"garbage").unwrap();
    let e = engine()
        .load_adapter(d.display().to_string(), "x".into())
        .err();
    assert!(matches!(e, Some(LaminaError::InvalidData(_))), "{e:?}");
}

#[test]
fn bad_arguments_are_invalid_argument() {
    let e = engine()
        .set_adapters(vec![AdapterWeight {
            name: "never-loaded".into(),
            scale: 1.0,
        }])
        .err();
    assert!(
        matches!(&e, Some(LaminaError::InvalidArgument(m)) if m.contains("never-loaded")),
        "{e:?}"
    );
    let data = TrainingData::Examples {
        examples: vec![TrainingExample::PromptCompletion {
            prompt: "a".into(),
            completion: " b".into(),
        }],
        template: None,
    };
    let config = TrainConfig {
        batch_size: 0,
        ..Default::default()
    };
    let e = engine().fine_tune(data, config, None).err();
    assert!(matches!(e, Some(LaminaError::InvalidArgument(_))), "{e:?}");
    let params = GenerateParams {
        top_p: 2.0,
        ..Default::default()
    };
    let e = engine().generate("Hi".into(), params, None).err();
    assert!(matches!(e, Some(LaminaError::InvalidArgument(_))), "{e:?}");
    let e = engine()
        .classify("x".into(), vec!["only".into()], "{text}".into())
        .err();
    assert!(matches!(e, Some(LaminaError::InvalidArgument(_))), "{e:?}");
    let missing = TrainingData::File {
        path: "/no/such/data.jsonl".into(),
        template: None,
    };
    let e = engine()
        .fine_tune(missing, TrainConfig::default(), None)
        .err();
    assert!(matches!(e, Some(LaminaError::Io(_))), "{e:?}");
    let e = engine()
        .save_adapter(temp_dir("save").display().to_string())
        .err();
    assert!(matches!(e, Some(LaminaError::InvalidArgument(_))), "{e:?}");
    // cancel() with nothing running does nothing, and the next call is not cancelled.
    engine().cancel();
    let g = engine()
        .generate(
            "Hi".into(),
            GenerateParams {
                max_tokens: 2,
                temperature: 0.0,
                ..Default::default()
            },
            None,
        )
        .unwrap();
    assert!(g.tokens_generated > 0);
}

#[test]
fn quantize_names_a_type_or_is_invalid_argument() {
    let checkpoint = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/smollm2-2layer-hf/checkpoint"
    );
    let with = |q: Option<&str>| {
        Engine::new(
            Some(checkpoint.to_string()),
            EngineOptions {
                quantize: q.map(String::from),
                ..Default::default()
            },
        )
    };
    let e = with(Some("q9_9")).err();
    assert!(
        matches!(&e, Some(LaminaError::InvalidArgument(m)) if m.contains("q9_9") && m.contains("q4_k")),
        "{e:?}"
    );
    // The f16 checkpoint as it is, then quantized to 4.5 bits a weight while loading.
    let plain = with(None).unwrap();
    let quantized = with(Some("q4_0")).unwrap();
    let (a, b) = (
        plain.device_info().bytes_in_use,
        quantized.device_info().bytes_in_use,
    );
    assert!(b * 2 < a, "q4_0 holds {b} bytes, the f16 checkpoint {a}");
    let g = quantized
        .generate(
            "The capital of France is".into(),
            GenerateParams {
                max_tokens: 4,
                temperature: 0.0,
                ..Default::default()
            },
            None,
        )
        .unwrap();
    assert_eq!(g.tokens_generated, 4);
}
