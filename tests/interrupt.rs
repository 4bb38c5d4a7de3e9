//! Interrupted training loses nothing: `lamina train` killed with SIGKILL at several points
//! (checkpointing every step) and resumed ends with an adapter bit-identical to an
//! uninterrupted run's, and every checkpoint left behind is readable. Ctrl-C (SIGINT)
//! cancels, leaves a complete checkpoint and exits with 130.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;
use common::temp_dir;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures");
const STEPS: u32 = 6;

/// Data and config shared by every run (a resumed run must use the same ones).
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dir.join("data.jsonl");
    let rows: String = [
        ("Tasty and fresh.", "positive"),
        ("Stale, arrived broken.", "negative"),
        ("My dog loves these.", "positive"),
        ("Never again, awful.", "negative"),
        ("Great value for money.", "positive"),
        ("Tasted like cardboard.", "negative"),
    ]
    .iter()
    .map(|(t, l)| {
        format!("{{\"prompt\": \"Review: {t}\\nSentiment:\", \"completion\": \" {l}\"}}\n")
    })
    .collect();
    std::fs::write(&data, rows).unwrap();
    let cfg = dir.join("train.toml");
    std::fs::write(
        &cfg,
        format!(
            "lr = 1e-3\nbatch_size = 2\nepochs = 4\nmax_steps = {STEPS}\nvalidation_fraction = 0.0\n\
             checkpoint_every = 1\nseed = 7\n[lora]\nr = 4\ndropout = 0.1\n"
        ),
    )
    .unwrap();
    (data, cfg)
}

fn train(data: &Path, cfg: &Path, out: &Path, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lamina"));
    c.args([
        "train",
        "--model",
        &format!("{FIXTURES}/smollm2-2layer-hf/checkpoint"),
    ])
    .args([
        "--data",
        data.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ])
    .args(["--out", out.to_str().unwrap(), "--log"]);
    if resume {
        c.arg("--resume");
    }
    c
}

/// Spawns `cmd` and waits for its stderr line "step N/..." (or its end); returns the child
/// (still running unless it ended) and the lines read.
fn run_until_step(mut cmd: Command, step: u32) -> (Child, Vec<String>) {
    let mut child = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let mut lines = Vec::new();
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 0 {
        let done = line.starts_with(&format!("step {step}/"));
        lines.push(std::mem::take(&mut line));
        if done {
            break;
        }
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    (child, lines)
}

/// The state of the checkpoints left in `out`: `None` when there is none yet, else whether
/// one (the final folder, or the previous one kept during a save) reads back completely.
fn checkpoint_state(out: &Path) -> Option<bool> {
    let found: Vec<PathBuf> = ["checkpoint", "checkpoint.old"]
        .iter()
        .map(|n| out.join(n))
        .filter(|d| d.exists())
        .collect();
    if found.is_empty() {
        return None;
    }
    Some(found.iter().any(|d| {
        let state = std::fs::read_to_string(d.join("trainer_state.json"));
        let ok_state = state
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some();
        let ok_tensors = ["adapter_model.safetensors", "optimizer.safetensors"]
            .iter()
            .all(|f| {
                std::fs::read(d.join(f))
                    .ok()
                    .is_some_and(|b| safetensors::SafeTensors::deserialize(&b).is_ok())
            });
        ok_state && ok_tensors
    }))
}

fn uninterrupted(dir: &Path, data: &Path, cfg: &Path) -> Vec<u8> {
    let out = dir.join("whole");
    let st = train(data, cfg, &out, false).output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    std::fs::read(out.join("adapter_model.safetensors")).unwrap()
}

#[test]
fn sigkill_at_several_points_then_resume_is_bit_identical() {
    let dir = temp_dir("sigkill");
    let (data, cfg) = setup(&dir);
    let want = uninterrupted(&dir, &data, &cfg);
    let out = dir.join("killed");
    // (step whose line was seen, delay before the kill): right at a step, and inside the
    // checkpoint write that follows it.
    let kills = [(1, 0), (2, 40), (3, 5), (5, 120)];
    let mut resumed_at = Vec::new();
    for (i, &(step, delay_ms)) in kills.iter().enumerate() {
        let (mut child, lines) = run_until_step(train(&data, &cfg, &out, i > 0), step);
        if let Some(l) = lines.iter().find(|l| l.contains("resuming at step")) {
            resumed_at.push(l.clone());
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "the run ended before it was killed at step {step}"
        );
        // The step's line comes before its checkpoint is written, so a kill right at the
        // first step may leave none yet; from then on one always reads back.
        let state = checkpoint_state(&out);
        assert_ne!(
            state,
            Some(false),
            "an unreadable checkpoint after a kill at step {step} (+{delay_ms} ms)"
        );
        assert!(
            step == 1 || state == Some(true),
            "no checkpoint after a kill at step {step}"
        );
    }
    let fin = train(&data, &cfg, &out, true).output().unwrap();
    let err = String::from_utf8_lossy(&fin.stderr);
    assert!(fin.status.success(), "{err}");
    assert!(err.contains("resuming at step"), "{err}");
    assert!(resumed_at.len() >= 2, "later runs resumed: {resumed_at:?}");
    let got = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    assert!(
        got == want,
        "the resumed adapter differs from the uninterrupted one"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ctrl_c_cancels_with_a_checkpoint_and_exit_130() {
    let dir = temp_dir("sigint");
    let (data, cfg) = setup(&dir);
    let want = uninterrupted(&dir, &data, &cfg);
    let out = dir.join("interrupted");
    let (mut child, _) = run_until_step(train(&data, &cfg, &out, false), 2);
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert_eq!(checkpoint_state(&out), Some(true));
    assert!(
        !out.join("adapter_model.safetensors").exists(),
        "a cancelled run must not leave a final adapter"
    );
    let fin = train(&data, &cfg, &out, true).output().unwrap();
    assert!(
        fin.status.success(),
        "{}",
        String::from_utf8_lossy(&fin.stderr)
    );
    let got = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    assert!(
        got == want,
        "the resumed adapter differs from the uninterrupted one"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
