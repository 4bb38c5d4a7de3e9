//! Hugging Face checkpoint folders: config.json, a safetensors file and (sometimes) a shard
//! index, opened and every tensor the model asks for read.
#![no_main]
mod common;
use lamina::model::TensorSource;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = common::parts(data, 3);
    let json = String::from_utf8_lossy(p[0]);
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&json) {
        let _ = lamina::hf::config_from_json(&v);
    }
    let dir = common::scratch().join("ckpt");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), p[0]).unwrap();
    std::fs::write(dir.join("model.safetensors"), p[1]).unwrap();
    if !p[2].is_empty() {
        std::fs::write(dir.join("model.safetensors.index.json"), p[2]).unwrap();
    }
    let Ok(ckpt) = lamina::hf::Checkpoint::open(&dir) else {
        return;
    };
    let n_layer = ckpt.config.n_layer.min(4);
    let mut names = vec![
        "token_embd.weight".to_string(),
        "output_norm.weight".into(),
        "output.weight".into(),
    ];
    for l in 0..n_layer {
        for t in [
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ] {
            names.push(format!("blk.{l}.{t}.weight"));
        }
        names.push(format!("blk.{l}.attn_q.bias"));
    }
    for n in names {
        let _ = ckpt.get(&n);
    }
});
