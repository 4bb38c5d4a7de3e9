//! Every shader variant that runs here, exactly as it is compiled at run time (after the
//! preprocessor and the override constants), is validated by naga and translated to MSL
//! (Metal: iOS, macOS), HLSL (DX12) and SPIR-V, so a shader that only Vulkan would take fails
//! here and not on a user's phone. The variants are the ones the device really compiled:
//! the real model's inference (greedy and sampled, f32 and f16 KV cache) and a fine-tuning
//! step, plus the matmuls of every weight type and token count, on all three kernel paths
//! (device-class, GPU-class with subgroups, no f16 and no subgroups).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use lamina::dataset::{Dataset, Example};
use lamina::engine::{Engine, EngineOptions};
use lamina::finetune::{RunOptions, TrainConfig};
use lamina::generate::{GenerateParams, SamplingParams};
use lamina::gpu::{Gpu, GpuOptions};
use lamina::kernels::{self, MatmulShape, QMatrix};
use lamina::model::ModelOptions;
use lamina::quant::{self, GgmlType};
use lamina::shaders::{self, Variant};
use naga::back::{hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};

const PATHS: [GpuOptions; 3] = [
    GpuOptions {
        allow_f16: true,
        allow_subgroups: true,
        allow_cpu_kernels: true,
    },
    GpuOptions {
        allow_f16: true,
        allow_subgroups: true,
        allow_cpu_kernels: false,
    },
    GpuOptions {
        allow_f16: false,
        allow_subgroups: false,
        allow_cpu_kernels: false,
    },
];

const TYPES: [GgmlType; 12] = lamina::quant::SUPPORTED_TYPES;

/// The matmul variants of every weight type, for decode, prefill blocks and a ragged count,
/// forward and transposed (only building the dispatch compiles the pipeline).
fn compile_matmuls(gpu: &Arc<Gpu>) {
    let (n, k) = (64usize, 512usize);
    for ty in TYPES {
        let w: Vec<f32> = (0..n * k).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
        let m =
            QMatrix::upload(gpu, "w", ty, n as u32, k as u32, &quant::quantize(ty, &w)).unwrap();
        for t in [1u32, 4, 13, 128] {
            let x = gpu.storage("x", u64::from(t) * k as u64 * 4).unwrap();
            let y = gpu.storage("y", u64::from(t) * n as u64 * 4).unwrap();
            for (swiglu_input, accumulate) in [(false, false), (false, true)] {
                kernels::matmul(
                    gpu,
                    &m,
                    None,
                    &x,
                    &y,
                    MatmulShape {
                        t,
                        x_stride: k as u32,
                        x_row0: 0,
                        y_stride: n as u32,
                        y_col: 0,
                        swiglu_input,
                        accumulate,
                    },
                )
                .unwrap();
            }
            kernels::matmul_t(gpu, &m, &y, &x, t, n as u32, 0, k as u32, false).unwrap();
            kernels::matmul_t(gpu, &m, &y, &x, t, n as u32, 0, k as u32, true).unwrap();
        }
    }
}

/// Generation and a fine-tuning step of the real model on one kernel path.
fn run_model(path: &Path, gpu: GpuOptions, kv_f16: bool) -> Vec<Variant> {
    let mut engine = Engine::load(
        Some(path),
        EngineOptions {
            gpu,
            model: ModelOptions {
                kv_f16,
                ..Default::default()
            },
        },
    )
    .unwrap();
    let greedy = GenerateParams {
        max_tokens: 3,
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    engine
        .generate("The capital of France is", &greedy, &mut |_| true)
        .unwrap();
    let sampled = GenerateParams {
        max_tokens: 3,
        sampling: SamplingParams {
            temperature: 0.7,
            top_k: 40,
            repeat_penalty: 1.1,
            seed: 7,
            ..Default::default()
        },
        ..Default::default()
    };
    engine
        .generate("Once upon a time", &sampled, &mut |_| true)
        .unwrap();
    let full_vocab = GenerateParams {
        max_tokens: 2,
        sampling: SamplingParams {
            temperature: 0.7,
            top_k: 0,
            seed: 7,
            ..Default::default()
        },
        ..Default::default()
    };
    engine
        .generate("Once upon a time", &full_vocab, &mut |_| true)
        .unwrap();
    engine
        .classify(
            "Lovely.",
            &["good".to_string(), "bad".to_string()],
            "{text} It was",
        )
        .unwrap();

    // Sequences of 16 tokens (the CPU-class attention backward takes multiples of 8) and of
    // 13 (the general one), with LoRA dropout on.
    let ids = engine
        .tokenizer()
        .encode(
            &"The quick brown fox jumps over the lazy dog. ".repeat(4),
            false,
        )
        .unwrap();
    for len in [16usize, 13] {
        let input_ids = ids[..len].to_vec();
        let mut labels: Vec<i64> = input_ids.iter().map(|&t| i64::from(t)).collect();
        labels[0] = lamina::dataset::IGNORE_INDEX;
        let data = Dataset {
            examples: vec![Example { input_ids, labels }; 2],
            ..Default::default()
        };
        let mut config = TrainConfig {
            max_steps: 1,
            batch_size: 2,
            validation_fraction: 0.0,
            checkpoint_every: 0,
            ..Default::default()
        };
        config.lora.dropout = 0.1;
        engine
            .fine_tune(&data, &config, &RunOptions::default(), &mut |_| {})
            .unwrap();
    }
    engine.gpu().compiled_variants()
}

/// What the WGSL of `v` becomes on each other backend; the first failure says which.
fn translate(v: &Variant) -> Result<(), String> {
    let source = shaders::variant_source(v.kernel, &v.flags, &v.constants)?;
    let module = naga::front::wgsl::parse_str(&source).map_err(|e| e.emit_to_string(&source))?;
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(&module)
        .map_err(|e| format!("naga validation: {}", e.emit_to_string(&source)))?;
    // Overrides left in the source take their defaults, as at run time.
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        Some((naga::ShaderStage::Compute, "main")),
        &naga::back::PipelineConstants::default(),
    )
    .map_err(|e| format!("overrides: {e}"))?;

    let msl_options = msl::Options {
        // Metal 2.4 (iOS 15, macOS 12): simdgroup functions and half.
        lang_version: (2, 4),
        fake_missing_bindings: true,
        ..Default::default()
    };
    msl::write_string(
        &module,
        &info,
        &msl_options,
        &msl::PipelineOptions::default(),
    )
    .map_err(|e| format!("MSL: {e:?}"))?;

    let hlsl_options = hlsl::Options {
        // Shader model 6.2: wave intrinsics (6.0) and 16-bit types (6.2), as wgpu's DX12 asks.
        shader_model: hlsl::ShaderModel::V6_2,
        fake_missing_bindings: true,
        ..Default::default()
    };
    let mut hlsl_out = String::new();
    hlsl::Writer::new(
        &mut hlsl_out,
        &hlsl_options,
        &hlsl::PipelineOptions::default(),
    )
    .write(&module, &info, None)
    .map_err(|e| format!("HLSL: {e:?}"))?;

    let spv_options = spv::Options {
        lang_version: (1, 3),
        ..Default::default()
    };
    spv::write_vec(&module, &info, &spv_options, None).map_err(|e| format!("SPIR-V: {e:?}"))?;
    Ok(())
}

#[test]
fn every_compiled_shader_variant_translates_to_msl_hlsl_and_spirv() {
    let model = lamina::fetch::default_model().unwrap();
    let mut variants: Vec<Variant> = Vec::new();
    for (i, opts) in PATHS.into_iter().enumerate() {
        let gpu = Gpu::new(opts).expect("a GPU adapter (install mesa-vulkan-drivers)");
        compile_matmuls(&gpu);
        variants.extend(gpu.compiled_variants());
        variants.extend(run_model(&model, opts, i == 0));
    }
    variants.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    variants.dedup();

    let kernels: BTreeSet<&str> = variants.iter().map(|v| v.kernel).collect();
    eprintln!(
        "{} variants of {} kernels: {kernels:?}",
        variants.len(),
        kernels.len()
    );
    // Every kernel with an entry point runs in this workload, so a new one cannot escape.
    let missing: Vec<&&str> = shaders::KERNELS
        .iter()
        .filter(|k| !kernels.contains(**k))
        .collect();
    assert!(
        missing.is_empty(),
        "kernels never compiled here: {missing:?}"
    );
    let both_flag_sets = |k: &str| {
        let f: BTreeSet<(bool, bool)> = variants
            .iter()
            .filter(|v| v.kernel == k)
            .map(|v| (v.flags.subgroups, v.flags.f16))
            .collect();
        f.contains(&(false, false)) && f.len() >= 2
    };
    assert!(both_flag_sets("matmul") && both_flag_sets("attention"));

    let failures: Vec<String> = variants
        .iter()
        .filter_map(|v| translate(v).err().map(|e| format!("{v:?}: {e}")))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} variants fail:\n{}",
        failures.len(),
        variants.len(),
        failures.join("\n")
    );
}
