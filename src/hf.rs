//! Hugging Face checkpoints: a folder with `config.json`, `*.safetensors` and `tokenizer.json`,
//! as `save_pretrained` writes it. Tensors are served under their GGUF names so the same
//! loader builds the model; F16 and F32 stay as they are, BF16 widens to F32 (exactly).
//!
//! Hugging Face keeps q/k in its own head layout, where rotary pairs are (i, i + d/2); GGUF files
//! from llama.cpp's converter store them permuted for adjacent pairs. Rather than permute rows,
//! a checkpoint's model simply rotates (i, i + d/2) pairs (`rope_neox`), which is exact.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::model::{Config, SourceTensor, TensorSource};
use crate::quant::GgmlType;

pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: Config,
    /// `_name_or_path` from config.json when it names a hub model (not a local folder).
    name_or_path: Option<String>,
    tie_embeddings: bool,
    maps: Vec<(PathBuf, Mmap, usize)>,
    index: HashMap<String, Entry>,
}

/// Where a tensor is: file index, dtype, shape, byte range in the file's data section.
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    range: (usize, usize),
}

fn file_err(path: &Path, detail: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

impl Checkpoint {
    /// Whether `path` looks like a checkpoint folder.
    pub fn is_checkpoint(path: &Path) -> bool {
        path.is_dir() && path.join("config.json").is_file()
    }

    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| file_err(&config_path, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| file_err(&config_path, e))?;
        let (config, tie_embeddings) =
            config_from_json(&json).map_err(|e| file_err(&config_path, e))?;
        let name_or_path = json
            .get("_name_or_path")
            .and_then(|v| v.as_str())
            .filter(|n| !n.is_empty() && !Path::new(n).is_absolute() && !n.starts_with('.'))
            .map(str::to_string);

        // A sharded checkpoint names its shards and which tensor is in which in
        // model.safetensors.index.json; without one, every .safetensors file is read.
        let index_path = dir.join("model.safetensors.index.json");
        let weight_map = if index_path.is_file() {
            Some(read_weight_map(&index_path)?)
        } else {
            None
        };
        let mut files: Vec<PathBuf> = match &weight_map {
            Some(map) => {
                let mut shards: Vec<PathBuf> = map.values().map(|f| dir.join(f)).collect();
                shards.sort();
                shards.dedup();
                if let Some(missing) = shards.iter().find(|p| !p.is_file()) {
                    return Err(file_err(
                        &index_path,
                        format!("names the shard {}, which is missing", missing.display()),
                    ));
                }
                shards
            }
            None => std::fs::read_dir(dir)
                .map_err(|e| file_err(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect(),
        };
        files.sort();
        if files.is_empty() {
            return Err(file_err(dir, "no .safetensors file"));
        }
        let mut maps = Vec::new();
        let mut index = HashMap::new();
        for (i, path) in files.into_iter().enumerate() {
            let f = File::open(&path).map_err(|e| file_err(&path, e))?;
            // SAFETY: read-only map of a file expected not to change while open.
            let map = unsafe { Mmap::map(&f) }.map_err(|e| file_err(&path, e))?;
            // Validates the header (offsets within the file, sizes matching shapes).
            let (header, meta) =
                SafeTensors::read_metadata(&map).map_err(|e| file_err(&path, e))?;
            SafeTensors::deserialize(&map).map_err(|e| file_err(&path, e))?;
            for (name, info) in meta.tensors() {
                let entry = Entry {
                    file: i,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: info.data_offsets,
                };
                if index.insert(name.clone(), entry).is_some() {
                    return Err(file_err(
                        &path,
                        format!("tensor '{name}' is also in another safetensors file"),
                    ));
                }
            }
            maps.push((path, map, 8 + header));
        }
        if let Some(map) = &weight_map {
            for (name, shard) in map {
                let found = index.get(name).map(|e| &maps[e.file].0);
                if found != Some(&dir.join(shard)) {
                    return Err(file_err(
                        &index_path,
                        format!("puts tensor '{name}' in {shard}, which does not hold it"),
                    ));
                }
            }
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config,
            name_or_path,
            tie_embeddings,
            maps,
            index,
        })
    }

    /// The hub model this checkpoint names as its origin, if any.
    pub fn name_or_path(&self) -> Option<String> {
        self.name_or_path.clone()
    }

    /// The Hugging Face name of a GGUF tensor name, or `None` where a checkpoint has no
    /// counterpart (e.g. a tied output head, `rope_freqs`).
    fn hf_name(&self, name: &str) -> Option<String> {
        if name == "output.weight" && self.tie_embeddings {
            return None;
        }
        hf_tensor_name(name)
    }
}

/// The Hugging Face name of a GGUF tensor name, or `None` where a checkpoint has no
/// counterpart (`rope_freqs`).
pub fn hf_tensor_name(name: &str) -> Option<String> {
    {
        let fixed = match name {
            "token_embd.weight" => Some("model.embed_tokens.weight"),
            "output_norm.weight" => Some("model.norm.weight"),
            "output.weight" => Some("lm_head.weight"),
            _ => None,
        };
        if let Some(f) = fixed {
            return Some(f.into());
        }
        let rest = name.strip_prefix("blk.")?;
        let (layer, part) = rest.split_once('.')?;
        let (module, suffix) = part.rsplit_once('.')?;
        let hf = match module {
            "attn_norm" => "input_layernorm",
            "attn_q" => "self_attn.q_proj",
            "attn_k" => "self_attn.k_proj",
            "attn_v" => "self_attn.v_proj",
            "attn_output" => "self_attn.o_proj",
            "ffn_norm" => "post_attention_layernorm",
            "ffn_gate" => "mlp.gate_proj",
            "ffn_up" => "mlp.up_proj",
            "ffn_down" => "mlp.down_proj",
            _ => return None,
        };
        Some(format!("model.layers.{layer}.{hf}.{suffix}"))
    }
}

impl TensorSource for Checkpoint {
    fn get(&self, name: &str) -> Result<Option<SourceTensor<'_>>> {
        let Some(hf) = self.hf_name(name) else {
            return Ok(None);
        };
        let Some(entry) = self.index.get(&hf) else {
            return Ok(None);
        };
        let (path, map, data_start) = &self.maps[entry.file];
        let (start, end) = entry.range;
        let bytes = &map[data_start + start..data_start + end];
        let (ty, bytes) = match entry.dtype {
            Dtype::F32 => (GgmlType::F32, Cow::Borrowed(bytes)),
            Dtype::F16 => (GgmlType::F16, Cow::Borrowed(bytes)),
            Dtype::BF16 => {
                let wide: Vec<u8> = bytes
                    .chunks_exact(2)
                    .flat_map(|b| {
                        half::bf16::from_le_bytes([b[0], b[1]])
                            .to_f32()
                            .to_le_bytes()
                    })
                    .collect();
                (GgmlType::F32, Cow::Owned(wide))
            }
            other => {
                return Err(file_err(
                    path,
                    format!("tensor '{hf}' has dtype {other:?} (F32, F16, BF16 supported)"),
                ))
            }
        };
        // Hugging Face shapes are [out, in]; ggml dims are innermost first.
        let dims = entry.shape.iter().rev().map(|&d| d as u64).collect();
        Ok(Some(SourceTensor { ty, dims, bytes }))
    }
}

/// `weight_map` (tensor name -> shard file name) of a `model.safetensors.index.json`.
fn read_weight_map(path: &Path) -> Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| file_err(path, e))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| file_err(path, "no \"weight_map\" object"))?;
    map.iter()
        .map(|(name, shard)| {
            let shard = shard
                .as_str()
                .filter(|f| !f.contains('/') && !f.contains('\\') && f.ends_with(".safetensors"))
                .ok_or_else(|| {
                    file_err(
                        path,
                        format!("tensor '{name}': {shard} is not a shard file name"),
                    )
                })?;
            Ok((name.clone(), shard.to_string()))
        })
        .collect()
}

/// The model config (and whether embeddings are tied) from a Hugging Face `config.json`.
pub fn config_from_json(j: &serde_json::Value) -> std::result::Result<(Config, bool), String> {
    let u = |k: &str| -> std::result::Result<u32, String> {
        j.get(k)
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| format!("'{k}' is missing or not a small unsigned integer"))
    };
    let arch = j
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or("'model_type' is missing")?;
    if !matches!(arch, "llama" | "mistral" | "qwen2") {
        return Err(format!(
            "model_type '{arch}' is not supported (llama, mistral, qwen2)"
        ));
    }
    if let Some(act) = j.get("hidden_act").and_then(|v| v.as_str()) {
        if act != "silu" {
            return Err(format!("hidden_act '{act}' is not supported (silu)"));
        }
    }
    // transformers 5 keeps rope settings in `rope_parameters`, earlier versions at the top.
    let rope = j.get("rope_parameters").or_else(|| j.get("rope_scaling"));
    let mut rope_linear = 1.0f32;
    if let Some(kind) = rope
        .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
        .and_then(|v| v.as_str())
    {
        match kind {
            "default" => {}
            "linear" => {
                rope_linear = rope
                    .and_then(|r| r.get("factor"))
                    .and_then(|v| v.as_f64())
                    .ok_or("linear rope scaling without a numeric 'factor'")?
                    as f32
            }
            _ => {
                return Err(format!(
                    "rope type '{kind}' is not supported (default, linear)"
                ))
            }
        }
    }
    let rope_theta = j
        .get("rope_theta")
        .or_else(|| rope.and_then(|r| r.get("rope_theta")))
        .and_then(|v| v.as_f64())
        .unwrap_or(10000.0) as f32;
    let n_embd = u("hidden_size")?;
    let n_head = u("num_attention_heads")?;
    let cfg = Config {
        arch: arch.into(),
        n_layer: u("num_hidden_layers")?,
        n_embd,
        n_head,
        n_kv_head: u("num_key_value_heads").unwrap_or(n_head),
        head_dim: u("head_dim").unwrap_or(n_embd / n_head.max(1)),
        n_ff: u("intermediate_size")?,
        vocab: u("vocab_size")?,
        rope_theta,
        rms_eps: j
            .get("rms_norm_eps")
            .and_then(|v| v.as_f64())
            .ok_or("'rms_norm_eps' is missing")? as f32,
        ctx_train: u("max_position_embeddings").unwrap_or(2048),
        rope_neox: true,
        rope_linear,
    };
    cfg.validate().map_err(|e| e.to_string())?;
    let tie = j
        .get("tie_word_embeddings")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    Ok((cfg, tie))
}
