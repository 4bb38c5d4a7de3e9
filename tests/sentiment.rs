//! The sentiment example, short (issue #8): fine-tuning on a few hundred of the bundled reviews
//! lifts held-out accuracy clearly above the base model's zero-shot answer and above the
//! majority class. Runs the example binary that `cargo test` builds, on the real default model,
//! with a held-out subset drawn evenly from both labels (majority baseline 50%), because the
//! base model answers "positive" for most reviews and a short run must show that it learned
//! the other label. Takes several minutes on the software Vulkan device.

use std::path::PathBuf;
use std::process::Command;

mod common;
use common::{succeeds, temp_dir};

/// `target/<profile>/examples/sentiment`, built by `cargo test` beside this test binary
/// (`target/<profile>/deps/`).
fn example() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = profile
        .join("examples")
        .join(format!("sentiment{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples; run the tests through cargo",
        path.display()
    );
    path
}

/// The value of `key=` on the example's output lines.
fn field(stdout: &str, key: &str) -> f64 {
    let tag = format!("{key}=");
    stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&tag))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {tag} in the example's output:\n{stdout}"))
}

#[test]
fn a_short_run_of_the_sentiment_example_lifts_held_out_accuracy() {
    let dir = temp_dir("sentiment");
    let adapter = dir.join("adapter");
    let out = succeeds(
        Command::new(example())
            .args([
                "--train",
                "320",
                "--max-len",
                "64",
                "--test",
                "120",
                "--balanced-test",
                // The configuration this test was measured with (the example's default trains
                // every layer on far more rows).
                "--last-layers",
                "8",
                "--lr",
                "2e-3",
                "--out",
            ])
            .arg(&adapter),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let zero_shot = field(&stdout, "zero_shot");
    let majority = field(&stdout, "majority");
    let tuned = field(&stdout, "accuracy");
    eprintln!("zero-shot {zero_shot:.4}, majority {majority:.4}, tuned {tuned:.4}");
    assert!((majority - 0.5).abs() < 1e-9, "a balanced held-out subset");
    // Measured on Mesa 25.0.7: zero-shot 0.675, tuned 0.725 (negative recall 0.37 -> 0.48).
    assert!(
        tuned > zero_shot + 0.04,
        "tuning did not lift accuracy clearly above zero-shot ({zero_shot:.4} -> {tuned:.4})"
    );
    assert!(
        tuned >= majority + 0.15,
        "tuned accuracy {tuned:.4} is not clearly above the majority class {majority:.4}"
    );
    // The saved adapter is in the PEFT layout and classifies offline.
    assert!(adapter.join("adapter_config.json").exists());
    assert!(adapter.join("adapter_model.safetensors").exists());
    let cls = succeeds(
        Command::new(example())
            .args([
                "--classify",
                "Stale, tasteless, and the bag arrived torn.",
                "--out",
            ])
            .arg(&adapter),
    );
    let first = String::from_utf8_lossy(&cls.stdout);
    let label = first.lines().next().unwrap_or_default().trim().to_string();
    assert_eq!(label, "other", "--classify printed:\n{first}");
    let _ = std::fs::remove_dir_all(&dir);
}
