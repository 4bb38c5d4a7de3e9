//! PEFT adapter folders (adapter_config.json + adapter_model.safetensors), checked against a
//! model's shapes and put into the model's row order, as uploading and merging do.
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let p = common::parts(rest, 2);
    let dir = common::scratch().join("adapter");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("adapter_config.json"), p[0]).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), p[1]).unwrap();
    let Ok(w) = lamina::adapter::LoraWeights::load(&dir) else {
        return;
    };
    let cfg = common::small_config(sel & 1 == 1);
    if w.check_fits(&cfg).is_err() {
        return;
    }
    let r = w.config.r as usize;
    for (&(_, m), (_, b)) in &w.tensors {
        let into = lamina::adapter::b_to_model(&cfg, m, b, r).expect("a fitting B permutes");
        let back = lamina::adapter::b_to_peft(&cfg, m, into, r).expect("and back");
        assert_eq!(back.len(), b.len());
    }
});
