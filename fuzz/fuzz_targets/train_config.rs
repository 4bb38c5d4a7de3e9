//! The training TOML: parsed, validated, and its learning-rate schedule evaluated.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = lamina::finetune::TrainConfig::from_toml(text) else {
        return;
    };
    if cfg.validate().is_ok() {
        let total = cfg.max_steps.max(1);
        for step in [1, total / 2 + 1, total] {
            assert!(cfg.lr_at(step, total).is_finite());
        }
    }
});
