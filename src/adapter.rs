//! LoRA adapters in the PEFT layout (`adapter_config.json` + `adapter_model.safetensors`),
//! applied unmerged at inference: for each targeted projection, `y += scale * B (A x)`.
//!
//! PEFT names tensors `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`
//! (`[r, in]`) and `...lora_B.weight` (`[out, r]`), optionally with the adapter name
//! (`lora_A.default.weight`). A GGUF Llama stores q/k rows permuted for adjacent-pair rotary
//! embedding; an adapter trained on the Hugging Face model gets the same permutation of its q/k
//! `B` rows so it applies to the same features.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::gpu::{Buffer, Gpu};
use crate::model::Config;

/// The seven projections LoRA can target, in PEFT's names.
pub const MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// PEFT's LoRA settings that matter at inference.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: u32,
    pub alpha: f32,
    /// Scale alpha / sqrt(r) instead of alpha / r.
    pub use_rslora: bool,
}

impl LoraConfig {
    pub fn scale(&self) -> f32 {
        if self.use_rslora {
            self.alpha / (self.r as f32).sqrt()
        } else {
            self.alpha / self.r as f32
        }
    }
}

/// Adapter tensors on the CPU: (layer, module index in [`MODULES`]) -> (A `[r, in]`, B `[out, r]`).
#[derive(Debug, Clone)]
pub struct LoraWeights {
    pub config: LoraConfig,
    pub tensors: BTreeMap<(u32, usize), (Vec<f32>, Vec<f32>)>,
}

fn file_err(path: &Path, detail: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

/// (layer, module, is_b) of a PEFT tensor name, or `None` for other tensors.
fn parse_name(name: &str) -> Option<(u32, usize, bool)> {
    let rest = name.split("layers.").nth(1)?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: u32 = layer.parse().ok()?;
    let module = MODULES
        .iter()
        .position(|m| rest.contains(&format!(".{m}.")))?;
    let is_b = if rest.contains(".lora_A.") {
        false
    } else if rest.contains(".lora_B.") {
        true
    } else {
        return None;
    };
    if !rest.ends_with("weight") {
        return None;
    }
    Some((layer, module, is_b))
}

impl LoraWeights {
    /// Reads a PEFT adapter folder.
    pub fn load(dir: &Path) -> Result<LoraWeights> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| file_err(&cfg_path, e))?;
        let j: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| file_err(&cfg_path, e))?;
        let r = j
            .get("r")
            .and_then(|v| v.as_u64())
            .filter(|&r| r > 0 && r <= 1024);
        let config = LoraConfig {
            r: r.ok_or_else(|| file_err(&cfg_path, "'r' is missing or not in 1..=1024"))? as u32,
            alpha: j
                .get("lora_alpha")
                .and_then(|v| v.as_f64())
                .ok_or_else(|| file_err(&cfg_path, "'lora_alpha' is missing"))?
                as f32,
            use_rslora: j
                .get("use_rslora")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        };
        if !config.alpha.is_finite() || !config.scale().is_finite() {
            return Err(file_err(
                &cfg_path,
                format!("'lora_alpha' {} gives no finite scale", config.alpha),
            ));
        }
        let st_path = dir.join("adapter_model.safetensors");
        let bytes = std::fs::read(&st_path).map_err(|e| file_err(&st_path, e))?;
        Self::from_safetensors(&bytes, config).map_err(|e| match e {
            Error::Invalid(d) => file_err(&st_path, d),
            e => e,
        })
    }

    /// Adapter tensors from a PEFT-named safetensors buffer (other tensors are ignored).
    pub fn from_safetensors(bytes: &[u8], config: LoraConfig) -> Result<LoraWeights> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut a_parts = BTreeMap::new();
        let mut b_parts = BTreeMap::new();
        for (name, view) in st.tensors() {
            let Some((layer, module, is_b)) = parse_name(&name) else {
                continue;
            };
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => bytemuck::pod_collect_to_vec(view.data()),
                Dtype::F16 => view
                    .data()
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                Dtype::BF16 => view
                    .data()
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                d => return Err(Error::Invalid(format!("tensor '{name}' has dtype {d:?}"))),
            };
            let shape = view.shape().to_vec();
            let r = config.r as usize;
            let ok = shape.len() == 2 && if is_b { shape[1] == r } else { shape[0] == r };
            if !ok {
                return Err(Error::Invalid(format!(
                    "tensor '{name}' has shape {shape:?}, which does not fit rank {r}"
                )));
            }
            let slot = if is_b { &mut b_parts } else { &mut a_parts };
            slot.insert((layer, module), (data, shape));
        }
        let mut tensors = BTreeMap::new();
        for (key, (a, _)) in a_parts {
            let (b, _) = b_parts.remove(&key).ok_or_else(|| {
                Error::Invalid(format!(
                    "layer {} {} has lora_A but no lora_B",
                    key.0, MODULES[key.1]
                ))
            })?;
            tensors.insert(key, (a, b));
        }
        if let Some(key) = b_parts.keys().next() {
            return Err(Error::Invalid(format!(
                "layer {} {} has lora_B but no lora_A",
                key.0, MODULES[key.1]
            )));
        }
        if tensors.is_empty() {
            return Err(Error::Invalid("no LoRA tensors found".into()));
        }
        Ok(LoraWeights { config, tensors })
    }
}

impl LoraWeights {
    /// One adapter equal to the weighted sum of `adapters`: ranks are stacked (A rows, B
    /// columns) and each one's scale and weight folded into its B, so the result, at scale 1,
    /// adds exactly `sum_i w_i s_i B_i A_i x`. A single adapter of weight 1 comes back as it is.
    pub fn combine(adapters: &[(LoraWeights, f32)]) -> Result<LoraWeights> {
        match adapters {
            [] => return Err(Error::Invalid("no adapters to combine".into())),
            [(w, weight)] if *weight == 1.0 => return Ok(w.clone()),
            _ => {}
        }
        let r: u32 = adapters.iter().map(|(w, _)| w.config.r).sum();
        let mut keys: Vec<(u32, usize)> = adapters
            .iter()
            .flat_map(|(w, _)| w.tensors.keys().copied())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let mut tensors = BTreeMap::new();
        for key in keys {
            // Input and output widths from whichever adapter has this module.
            let (n_in, n_out) = adapters
                .iter()
                .find_map(|(w, _)| {
                    let (a, b) = w.tensors.get(&key)?;
                    let ri = w.config.r as usize;
                    Some((a.len() / ri, b.len() / ri))
                })
                .unwrap_or((0, 0));
            let (mut a_all, mut b_all) = (Vec::new(), vec![0f32; n_out * r as usize]);
            let mut col = 0usize;
            for (w, weight) in adapters {
                let ri = w.config.r as usize;
                let k = weight * w.config.scale();
                match w.tensors.get(&key) {
                    Some((a, b)) => {
                        if a.len() != ri * n_in || b.len() != n_out * ri {
                            return Err(Error::Invalid(format!(
                                "adapters disagree on the shape of layer {} {}",
                                key.0, MODULES[key.1]
                            )));
                        }
                        a_all.extend_from_slice(a);
                        for o in 0..n_out {
                            for j in 0..ri {
                                b_all[o * r as usize + col + j] = k * b[o * ri + j];
                            }
                        }
                    }
                    None => a_all.extend(std::iter::repeat_n(0.0, ri * n_in)),
                }
                col += ri;
            }
            tensors.insert(key, (a_all, b_all));
        }
        Ok(LoraWeights {
            config: LoraConfig {
                r,
                alpha: r as f32,
                use_rslora: false,
            },
            tensors,
        })
    }
}

impl LoraWeights {
    /// Checks that every tensor fits `cfg`: the layer exists, A is `[r, in]` and B `[out, r]`.
    /// Uploading, merging and resuming all call this before touching a value.
    pub fn check_fits(&self, cfg: &Config) -> Result<()> {
        let r = self.config.r as u64;
        for (&(layer, m), (a, b)) in &self.tensors {
            let (n_in, n_out) = module_dims(cfg, m);
            if layer >= cfg.n_layer
                || a.len() as u64 != r * n_in as u64
                || b.len() as u64 != n_out as u64 * r
            {
                return Err(Error::Model(format!(
                    "the adapter does not fit the model: layer {layer} {} has A {} and B {} values, \
                     the model needs [{r}, {n_in}] and [{n_out}, {r}] ({} layers)",
                    MODULES[m],
                    a.len(),
                    b.len(),
                    cfg.n_layer
                )));
            }
        }
        Ok(())
    }
}

/// PEFT's tensor name for module `m` of `layer` (without the adapter name).
pub fn peft_name(layer: u32, m: usize, is_b: bool) -> String {
    let part = if m < 4 { "self_attn" } else { "mlp" };
    let ab = if is_b { "B" } else { "A" };
    format!(
        "base_model.model.model.layers.{layer}.{part}.{}.lora_{ab}.weight",
        MODULES[m]
    )
}

/// Serializes `(name, shape, values)` f32 tensors as safetensors bytes.
pub fn safetensors_f32(tensors: &[(String, Vec<usize>, &[f32])]) -> Result<Vec<u8>> {
    use safetensors::tensor::TensorView;
    let mut views = BTreeMap::new();
    for (name, shape, data) in tensors {
        let view = TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data))
            .map_err(|e| Error::Invalid(format!("tensor '{name}': {e}")))?;
        views.insert(name.clone(), view);
    }
    safetensors::serialize(&views, None).map_err(|e| Error::Invalid(e.to_string()))
}

impl LoraWeights {
    /// Writes a PEFT adapter folder: `adapter_model.safetensors` (f32, PEFT names) and
    /// `adapter_config.json`, each written atomically, so PEFT's `PeftModel.from_pretrained`
    /// loads it on the Hugging Face model and [`LoraWeights::load`] reads it back exactly.
    pub fn save(&self, dir: &Path, dropout: f32, base_model: Option<&str>) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        let r = self.config.r as usize;
        let mut tensors = Vec::new();
        let mut targets = std::collections::BTreeSet::new();
        let mut layers = std::collections::BTreeSet::new();
        for (&(layer, m), (a, b)) in &self.tensors {
            targets.insert(m);
            layers.insert(layer);
            tensors.push((peft_name(layer, m, false), vec![r, a.len() / r], &a[..]));
            tensors.push((peft_name(layer, m, true), vec![b.len() / r, r], &b[..]));
        }
        let bytes = safetensors_f32(&tensors)?;
        crate::fetch::write_atomic(&dir.join("adapter_model.safetensors"), &bytes)?;
        let all_from_zero = layers.iter().copied().eq(0..layers.len() as u32);
        let layers_to_transform =
            (!all_from_zero).then(|| layers.iter().copied().collect::<Vec<_>>());
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.config.r,
            "lora_alpha": self.config.alpha,
            "lora_dropout": dropout,
            "use_rslora": self.config.use_rslora,
            "target_modules": targets.iter().map(|&m| MODULES[m]).collect::<Vec<_>>(),
            "bias": "none",
            "fan_in_fan_out": false,
            "init_lora_weights": true,
            "inference_mode": true,
            "modules_to_save": null,
            // Every layer from 0 up: null, PEFT's "all"; otherwise the layers that have one.
            "layers_to_transform": layers_to_transform,
            "layers_pattern": layers_to_transform.as_ref().map(|_| "layers"),
            "use_dora": false,
        });
        let text =
            serde_json::to_string_pretty(&config).map_err(|e| Error::Invalid(e.to_string()))?;
        crate::fetch::write_atomic(&dir.join("adapter_config.json"), text.as_bytes())
    }
}

/// (input, output) features of a module.
pub fn module_dims(cfg: &Config, module: usize) -> (u32, u32) {
    match MODULES[module] {
        "q_proj" => (cfg.n_embd, cfg.q_dim()),
        "k_proj" | "v_proj" => (cfg.n_embd, cfg.kv_dim()),
        "o_proj" => (cfg.q_dim(), cfg.n_embd),
        "gate_proj" | "up_proj" => (cfg.n_embd, cfg.n_ff),
        _ => (cfg.n_ff, cfg.n_embd),
    }
}

/// Hugging Face q/k row order to the GGUF one (adjacent rotary pairs): within each head, row
/// `e * d/2 + i` moves to `2i + e`.
pub fn permute_rows_for_gguf(
    b: &[f32],
    n_head: u32,
    head_dim: u32,
    cols: usize,
) -> Result<Vec<f32>> {
    permute_head_rows(b, n_head, head_dim, cols, true)
}

/// The inverse of [`permute_rows_for_gguf`]: GGUF's q/k row order back to Hugging Face's.
pub fn permute_rows_from_gguf(
    b: &[f32],
    n_head: u32,
    head_dim: u32,
    cols: usize,
) -> Result<Vec<f32>> {
    permute_head_rows(b, n_head, head_dim, cols, false)
}

/// Heads whose rows a Llama-layout GGUF stores in adjacent-pair rotary order for module `m`
/// (q and k), or `None` where B's rows are in the same order in both layouts.
fn permuted_heads(cfg: &Config, m: usize) -> Option<u32> {
    match (cfg.rope_neox, MODULES[m]) {
        (false, "q_proj") => Some(cfg.n_head),
        (false, "k_proj") => Some(cfg.n_kv_head),
        _ => None,
    }
}

/// Module `m`'s B (`[out, r]`, PEFT's row order) in the model's row order.
pub fn b_to_model(cfg: &Config, m: usize, b: &[f32], r: usize) -> Result<Vec<f32>> {
    match permuted_heads(cfg, m) {
        Some(heads) => permute_rows_for_gguf(b, heads, cfg.head_dim, r),
        None => Ok(b.to_vec()),
    }
}

/// The inverse of [`b_to_model`]: a B read from the model back in PEFT's row order.
pub fn b_to_peft(cfg: &Config, m: usize, b: Vec<f32>, r: usize) -> Result<Vec<f32>> {
    match permuted_heads(cfg, m) {
        Some(heads) => permute_rows_from_gguf(&b, heads, cfg.head_dim, r),
        None => Ok(b),
    }
}

fn permute_head_rows(
    b: &[f32],
    n_head: u32,
    head_dim: u32,
    cols: usize,
    to_gguf: bool,
) -> Result<Vec<f32>> {
    let (hd, half) = (head_dim as usize, head_dim as usize / 2);
    let rows = n_head as usize * hd;
    if b.len() != rows * cols {
        return Err(Error::Model(format!(
            "a q/k LoRA B of {} values does not fit [{rows}, {cols}] ({n_head} heads of {hd})",
            b.len()
        )));
    }
    let mut out = vec![0f32; b.len()];
    for h in 0..n_head as usize {
        for e in 0..2 {
            for i in 0..half {
                let hf = h * hd + e * half + i;
                let gguf = h * hd + 2 * i + e;
                let (src, dst) = if to_gguf { (hf, gguf) } else { (gguf, hf) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&b[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

/// One module's adapter on the GPU.
pub struct LoraModule {
    pub a: Buffer,
    pub b: Buffer,
}

/// An adapter uploaded for a model: `layers[l][m]` for module `m` of [`MODULES`].
pub struct GpuAdapter {
    pub r: u32,
    pub scale: f32,
    pub layers: Vec<[Option<LoraModule>; 7]>,
}

impl GpuAdapter {
    /// Checks every tensor against the model's shapes and uploads it.
    pub fn upload(gpu: &Gpu, w: &LoraWeights, cfg: &Config) -> Result<GpuAdapter> {
        let r = w.config.r;
        w.check_fits(cfg)?;
        let mut layers: Vec<[Option<LoraModule>; 7]> =
            (0..cfg.n_layer).map(|_| Default::default()).collect();
        for (&(layer, m), (a, b)) in &w.tensors {
            let b = b_to_model(cfg, m, b, r as usize)?;
            layers[layer as usize][m] = Some(LoraModule {
                a: gpu.storage_init("lora_A", bytemuck::cast_slice(a))?,
                b: gpu.storage_init("lora_B", bytemuck::cast_slice(&b))?,
            });
        }
        Ok(GpuAdapter {
            r,
            scale: w.config.scale(),
            layers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_k_row_permutations_are_inverse() {
        let (heads, hd, cols) = (3u32, 8u32, 2usize);
        let b: Vec<f32> = (0..(heads * hd) as usize * cols)
            .map(|i| i as f32)
            .collect();
        let g = permute_rows_for_gguf(&b, heads, hd, cols).unwrap();
        assert_ne!(g, b);
        // Row 1 (first half, i = 1) of head 0 goes to adjacent-pair slot 2.
        assert_eq!(&g[2 * cols..3 * cols], &b[cols..2 * cols]);
        assert_eq!(permute_rows_from_gguf(&g, heads, hd, cols).unwrap(), b);
        assert!(permute_rows_for_gguf(&b[1..], heads, hd, cols).is_err());
    }
}
