//! Explicit merge: LoRA adapters folded into the base weights, written as a new GGUF file
//! (`W' = W + sum_i weight_i * scale_i * B_i A_i`), for apps that want one file and no
//! adapter overhead at inference.
//!
//! The merged matrices are written as f16 by default: re-quantizing to the base's 4-bit type
//! would round away much of a small LoRA update (each weight moves by far less than a 4-bit
//! step), which is why QLoRA merges usually go to a wider type. `Same` keeps the base's type
//! for the smallest file and accepts that loss; untouched tensors are copied byte for byte.

use std::path::Path;

use crate::adapter::{b_to_model, module_dims, LoraWeights, MODULES};
use crate::error::{Error, Result};
use crate::gguf::{writer, GgufFile, Value};
use crate::model::Config;
use crate::quant::{self, GgmlType};

/// Storage type of the merged matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeType {
    /// The base tensor's own type (smallest file; the update is partly rounded away).
    Same,
    F16,
    Q8_0,
    F32,
}

impl std::str::FromStr for MergeType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "same" => Ok(MergeType::Same),
            "f16" => Ok(MergeType::F16),
            "q8_0" => Ok(MergeType::Q8_0),
            "f32" => Ok(MergeType::F32),
            _ => Err(Error::Invalid(format!(
                "merge type '{s}' (same, f16, q8_0 or f32)"
            ))),
        }
    }
}

/// GGUF tensor name of module `m` in layer `l`.
fn gguf_name(l: u32, m: usize) -> String {
    let base = match MODULES[m] {
        "q_proj" => "attn_q",
        "k_proj" => "attn_k",
        "v_proj" => "attn_v",
        "o_proj" => "attn_output",
        "gate_proj" => "ffn_gate",
        "up_proj" => "ffn_up",
        _ => "ffn_down",
    };
    format!("blk.{l}.{base}.weight")
}

/// Types `quant::quantize` can write.
fn can_write(ty: GgmlType) -> bool {
    ty.supported()
}

/// Merges `adapters` (each with its weight) into the GGUF model at `src` and writes the result
/// to `out` atomically. Returns how many tensors changed.
pub fn merge_into_gguf(
    src: &GgufFile,
    adapters: &[(LoraWeights, f32)],
    ty: MergeType,
    out: &Path,
) -> Result<usize> {
    let cfg = Config::from_gguf(src)?;
    for (w, _) in adapters {
        w.check_fits(&cfg)?;
    }
    let mut tensors = Vec::with_capacity(src.tensors.len());
    let mut changed = 0;
    for t in &src.tensors {
        let target = module_of(&cfg, &t.name)
            .filter(|key| adapters.iter().any(|(w, _)| w.tensors.contains_key(key)));
        let Some((l, m)) = target else {
            tensors.push(writer::TensorData {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty: t.ty,
                bytes: src.tensor_bytes(t).to_vec(),
            });
            continue;
        };
        let w = merged_values(&cfg, adapters, t, src.tensor_bytes(t), l, m)?;
        let out_ty = match ty {
            MergeType::Same if can_write(t.ty) => t.ty,
            MergeType::Same => {
                return Err(Error::Invalid(format!(
                    "cannot re-quantize '{}' to {:?}; merge to f16 or q8_0 instead",
                    t.name, t.ty
                )))
            }
            MergeType::F16 => GgmlType::F16,
            MergeType::Q8_0 => GgmlType::Q8_0,
            MergeType::F32 => GgmlType::F32,
        };
        if t.dims[0] % out_ty.block_size() as u64 != 0 {
            return Err(Error::Invalid(format!(
                "'{}' has rows of {} values, not a multiple of {:?}'s block of {}; merge to f16",
                t.name,
                t.dims[0],
                out_ty,
                out_ty.block_size()
            )));
        }
        tensors.push(writer::TensorData {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: out_ty,
            bytes: quant::quantize(out_ty, &w),
        });
        changed += 1;
    }
    // The writer aligns to its own default; a copied alignment key would contradict it.
    let metadata: Vec<(String, Value)> = src
        .metadata
        .iter()
        .filter(|(k, _)| k != "general.alignment")
        .cloned()
        .collect();
    let bytes = writer::write(&metadata, &tensors);
    crate::fetch::write_atomic(out, &bytes)?;
    Ok(changed)
}

/// What [`quantize_gguf`] wrote.
#[derive(Debug, Default)]
pub struct QuantizeReport {
    /// Weight matrices written in the asked type.
    pub quantized: usize,
    /// Matrices whose rows do not divide into the type's blocks, written in its fallback.
    pub fallback: usize,
    /// Tensors copied as they were (norms, biases: one-dimensional).
    pub copied: usize,
    pub bytes: u64,
}

/// Writes the GGUF model at `src` with every weight matrix re-quantized to `ty` (from the
/// values the source type holds: quantizing an already quantized file compounds the rounding,
/// so start from F16/F32 or Q8_0 for the best result), atomically. One-dimensional tensors
/// (norms, biases) stay as they are; a matrix whose rows are not a multiple of `ty`'s block
/// gets [`GgmlType::fallback`]. Tokenizer, chat template and all other metadata are kept.
pub fn quantize_gguf(src: &GgufFile, ty: GgmlType, out: &Path) -> Result<QuantizeReport> {
    if !ty.supported() {
        return Err(Error::Invalid(format!("cannot quantize to {ty:?}")));
    }
    Config::from_gguf(src)?;
    let mut report = QuantizeReport::default();
    let mut tensors = Vec::with_capacity(src.tensors.len());
    for t in &src.tensors {
        let bytes = src.tensor_bytes(t);
        if t.dims.len() < 2 {
            report.copied += 1;
            tensors.push(writer::TensorData {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty: t.ty,
                bytes: bytes.to_vec(),
            });
            continue;
        }
        if (t.dims[0] as usize).is_multiple_of(ty.block_size()) {
            report.quantized += 1;
        } else {
            report.fallback += 1;
        }
        let out_ty = ty.for_rows_of(t.dims[0] as usize).unwrap_or(GgmlType::F16);
        tensors.push(writer::TensorData {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: out_ty,
            bytes: if out_ty == t.ty {
                bytes.to_vec()
            } else {
                quant::quantize(out_ty, &dequantize(t, bytes)?)
            },
        });
    }
    let metadata: Vec<(String, Value)> = src
        .metadata
        .iter()
        .filter(|(k, _)| k != "general.alignment" && k != "general.file_type")
        .cloned()
        .collect();
    let bytes = writer::write(&metadata, &tensors);
    report.bytes = bytes.len() as u64;
    crate::fetch::write_atomic(out, &bytes)?;
    Ok(report)
}

/// GGUF names of a model's tensors, in llama.cpp's order, and whether each must exist.
fn gguf_tensor_names(cfg: &Config) -> Vec<(String, bool)> {
    let mut names = vec![("token_embd.weight".to_string(), true)];
    for l in 0..cfg.n_layer {
        for (part, required) in [
            ("attn_norm.weight", true),
            ("attn_q.weight", true),
            ("attn_q.bias", false),
            ("attn_k.weight", true),
            ("attn_k.bias", false),
            ("attn_v.weight", true),
            ("attn_v.bias", false),
            ("attn_output.weight", true),
            ("ffn_norm.weight", true),
            ("ffn_gate.weight", true),
            ("ffn_up.weight", true),
            ("ffn_down.weight", true),
        ] {
            names.push((format!("blk.{l}.{part}"), required));
        }
    }
    names.push(("output_norm.weight".into(), true));
    names.push(("output.weight".into(), false)); // absent when tied to the embeddings
    names
}

/// Writes a Hugging Face checkpoint (F32/F16/BF16 safetensors) as a GGUF file with every
/// weight matrix quantized to `ty` (or its [`GgmlType::fallback`]), atomically, one tensor
/// at a time. The GGUF follows llama.cpp's converter: its architecture keys, tensor names,
/// q/k rows in the adjacent-pair rotary order for Llama-family models, norms and biases in
/// F32, and the tokenizer and chat template as `tokenizer.*` metadata
/// ([`Tokenizer::gguf_metadata`]).
pub fn quantize_checkpoint(
    ck: &crate::hf::Checkpoint,
    tokenizer: &crate::tokenizer::Tokenizer,
    ty: GgmlType,
    out: &Path,
) -> Result<QuantizeReport> {
    use crate::model::TensorSource;
    if !ty.supported() {
        return Err(Error::Invalid(format!("cannot quantize to {ty:?}")));
    }
    let cfg = &ck.config;
    let arch = cfg.arch.as_str();
    let k = |s: &str| format!("{arch}.{s}");
    let name = ck.name_or_path().unwrap_or_else(|| {
        ck.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(name)),
        (k("context_length"), Value::U32(cfg.ctx_train)),
        (k("embedding_length"), Value::U32(cfg.n_embd)),
        (k("block_count"), Value::U32(cfg.n_layer)),
        (k("feed_forward_length"), Value::U32(cfg.n_ff)),
        (k("attention.head_count"), Value::U32(cfg.n_head)),
        (k("attention.head_count_kv"), Value::U32(cfg.n_kv_head)),
        (k("attention.key_length"), Value::U32(cfg.head_dim)),
        (k("attention.value_length"), Value::U32(cfg.head_dim)),
        (k("rope.dimension_count"), Value::U32(cfg.head_dim)),
        (k("rope.freq_base"), Value::F32(cfg.rope_theta)),
        (
            k("attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_eps),
        ),
        (k("vocab_size"), Value::U32(cfg.vocab)),
    ];
    if cfg.rope_linear != 1.0 {
        metadata.push((k("rope.scaling.type"), Value::String("linear".into())));
        metadata.push((k("rope.scaling.factor"), Value::F32(cfg.rope_linear)));
    }
    metadata.extend(tokenizer.gguf_metadata()?);
    // Llama-family GGUFs rotate adjacent pairs, so their q/k rows are permuted per head
    // (the checkpoint's model rotates (i, i + d/2) pairs instead; qwen2 GGUFs keep HF's order).
    let gguf_rope_neox = arch == "qwen2";

    let mut report = QuantizeReport::default();
    let mut tensors = Vec::new();
    for (gname, required) in gguf_tensor_names(cfg) {
        let Some(t) = ck.get(&gname)? else {
            if required {
                return Err(Error::Model(format!(
                    "{}: the checkpoint has no '{}'",
                    ck.dir.display(),
                    crate::hf::hf_tensor_name(&gname).unwrap_or(gname)
                )));
            }
            continue;
        };
        let mut values = quant::dequantize(t.ty, &t.bytes).map_err(|e| Error::TensorType {
            tensor: gname.clone(),
            source: e,
        })?;
        let heads = match gname.rsplit('.').nth(1) {
            Some("attn_q") => Some(cfg.n_head),
            Some("attn_k") => Some(cfg.n_kv_head),
            _ => None,
        };
        if let (Some(heads), false) = (heads, gguf_rope_neox) {
            let cols = if t.dims.len() == 2 {
                t.dims[0] as usize
            } else {
                1
            };
            values = crate::adapter::permute_rows_for_gguf(&values, heads, cfg.head_dim, cols)?;
        }
        let (out_ty, bytes) = if t.dims.len() < 2 {
            report.copied += 1;
            (GgmlType::F32, quant::quantize(GgmlType::F32, &values))
        } else {
            let out_ty = ty.for_rows_of(t.dims[0] as usize).unwrap_or(GgmlType::F16);
            if out_ty == ty {
                report.quantized += 1;
            } else {
                report.fallback += 1;
            }
            (out_ty, quant::quantize(out_ty, &values))
        };
        tensors.push(writer::TensorData {
            name: gname,
            dims: t.dims.clone(),
            ty: out_ty,
            bytes,
        });
    }
    let bytes = writer::write(&metadata, &tensors);
    report.bytes = bytes.len() as u64;
    crate::fetch::write_atomic(out, &bytes)?;
    Ok(report)
}

/// Tensor `t` (its `bytes`) as f32 values.
fn dequantize(t: &crate::gguf::TensorInfo, bytes: &[u8]) -> Result<Vec<f32>> {
    quant::dequantize(t.ty, bytes).map_err(|e| Error::TensorType {
        tensor: t.name.clone(),
        source: e,
    })
}

/// The (layer, module) a GGUF tensor name is the weight of, if it is one of the seven
/// LoRA-targetable projections.
fn module_of(cfg: &Config, name: &str) -> Option<(u32, usize)> {
    (0..cfg.n_layer)
        .flat_map(|l| (0..7).map(move |m| (l, m)))
        .find(|&(l, m)| gguf_name(l, m) == name)
}

/// Tensor `t` (module `m` of layer `l`) with `adapters` folded in, as f32 in the GGUF row order.
fn merged_values(
    cfg: &Config,
    adapters: &[(LoraWeights, f32)],
    t: &crate::gguf::TensorInfo,
    bytes: &[u8],
    l: u32,
    m: usize,
) -> Result<Vec<f32>> {
    let (n_in, n_out) = module_dims(cfg, m);
    let mut w = dequantize(t, bytes)?;
    if t.dims.len() != 2 || w.len() != (n_in as usize) * (n_out as usize) {
        return Err(Error::Model(format!(
            "tensor '{}' has shape {:?}, the model's config says [{n_in}, {n_out}]",
            t.name, t.dims
        )));
    }
    for (ad, weight) in adapters {
        let Some((a, b)) = ad.tensors.get(&(l, m)) else {
            continue;
        };
        let r = ad.config.r as usize;
        // GGUF Llama q/k rows are in adjacent-pair rotary order (see adapter.rs).
        let b = b_to_model(cfg, m, b, r)?;
        let s = ad.config.scale() * weight;
        let k = n_in as usize;
        for o in 0..n_out as usize {
            let row = &mut w[o * k..(o + 1) * k];
            for j in 0..r {
                let c = s * b[o * r + j];
                if c != 0.0 {
                    for (x, &av) in row.iter_mut().zip(&a[j * k..(j + 1) * k]) {
                        *x += c * av;
                    }
                }
            }
        }
    }
    Ok(w)
}

/// Writes base + adapters as a Hugging Face checkpoint folder (`config.json`,
/// `model.safetensors` in F16 or F32, the tokenizer files) that transformers and
/// [`crate::hf::Checkpoint`] load: every tensor dequantized, the adapters folded in, q/k rows
/// back in Hugging Face's order. Each file is written atomically. Returns how many tensors
/// changed.
pub fn merge_into_hf(
    src: &GgufFile,
    tokenizer: &crate::tokenizer::Tokenizer,
    adapters: &[(LoraWeights, f32)],
    ty: MergeType,
    out: &Path,
) -> Result<usize> {
    use safetensors::tensor::{Dtype, TensorView};
    let dtype = match ty {
        MergeType::F16 => Dtype::F16,
        MergeType::F32 => Dtype::F32,
        _ => {
            return Err(Error::Invalid(
                "a Hugging Face checkpoint is written in f16 or f32 (--type f16|f32)".into(),
            ))
        }
    };
    let cfg = Config::from_gguf(src)?;
    for (w, _) in adapters {
        w.check_fits(&cfg)?;
    }
    if src.tensor("rope_freqs.weight").is_some() {
        return Err(Error::Invalid(
            "this model's rope frequency factors (Llama 3 scaling) have no Hugging Face export here"
                .into(),
        ));
    }
    let io = |e: std::io::Error| Error::File {
        path: out.to_path_buf(),
        detail: e.to_string(),
    };
    std::fs::create_dir_all(out).map_err(io)?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut changed = 0;
    for t in &src.tensors {
        let Some(hf) = crate::hf::hf_tensor_name(&t.name) else {
            return Err(Error::Model(format!(
                "tensor '{}' has no Hugging Face name",
                t.name
            )));
        };
        let target = module_of(&cfg, &t.name);
        let bytes = src.tensor_bytes(t);
        let mut values = match target {
            Some((l, m))
                if adapters
                    .iter()
                    .any(|(w, _)| w.tensors.contains_key(&(l, m))) =>
            {
                changed += 1;
                merged_values(&cfg, adapters, t, bytes, l, m)?
            }
            _ => dequantize(t, bytes)?,
        };
        // Llama-layout GGUF files keep q/k rows (and biases) in adjacent-pair rotary order.
        let heads = match t.name.rsplit('.').nth(1) {
            Some("attn_q") if !cfg.rope_neox => Some(cfg.n_head),
            Some("attn_k") if !cfg.rope_neox => Some(cfg.n_kv_head),
            _ => None,
        };
        if let Some(heads) = heads {
            let cols = if t.dims.len() == 2 {
                t.dims[0] as usize
            } else {
                1
            };
            values = crate::adapter::permute_rows_from_gguf(&values, heads, cfg.head_dim, cols)?;
        }
        let data: Vec<u8> = match dtype {
            Dtype::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        // ggml dims are innermost first; Hugging Face shapes are [out, in].
        let shape = t.dims.iter().rev().map(|&d| d as usize).collect();
        tensors.push((hf, shape, data));
    }
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(dtype, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Invalid(format!("{name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let st = safetensors::tensor::serialize(views, None)
        .map_err(|e| Error::Invalid(format!("safetensors: {e}")))?;
    crate::fetch::write_atomic(&out.join("model.safetensors"), &st)?;

    let tied = src.tensor("output.weight").is_none();
    let arch = match cfg.arch.as_str() {
        "qwen2" => ("qwen2", "Qwen2ForCausalLM"),
        "mistral" => ("mistral", "MistralForCausalLM"),
        _ => ("llama", "LlamaForCausalLM"),
    };
    let mut config = serde_json::json!({
        "architectures": [arch.1],
        "model_type": arch.0,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.n_ff,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab,
        "max_position_embeddings": cfg.ctx_train,
        "rms_norm_eps": cfg.rms_eps,
        "rope_theta": cfg.rope_theta,
        "hidden_act": "silu",
        "tie_word_embeddings": tied,
        "torch_dtype": if dtype == Dtype::F16 { "float16" } else { "float32" },
        "bos_token_id": tokenizer.bos_id(),
        "eos_token_id": tokenizer.eos_ids().first(),
    });
    if arch.0 == "llama" && src.tensor("blk.0.attn_q.bias").is_some() {
        // Llama checkpoints with q/k/v biases say so (Qwen2's always have them).
        config["attention_bias"] = serde_json::json!(true);
    }
    if cfg.rope_linear != 1.0 {
        config["rope_scaling"] = serde_json::json!({"type": "linear", "factor": cfg.rope_linear});
    }
    let text = serde_json::to_string_pretty(&config).expect("json");
    tokenizer.write_hf(out)?;
    // config.json last: a folder with it is a checkpoint, so it appears only once complete.
    crate::fetch::write_atomic(&out.join("config.json"), text.as_bytes())?;
    Ok(changed)
}
