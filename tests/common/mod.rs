//! Helpers shared by the integration tests (each test file is its own crate and uses some).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// A fresh, empty folder under the temp dir, unique to this test process.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lamina-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The `lamina` binary of this build, with these arguments, ready to run.
pub fn lamina_cmd<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new(env!("CARGO_BIN_EXE_lamina"));
    c.args(args);
    c
}

/// Runs `lamina` and asserts that it succeeded, showing its stderr if not.
#[track_caller]
pub fn lamina_ok<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    succeeds(&mut lamina_cmd(args))
}

/// Runs `c` and asserts that it succeeded, showing its stderr if not.
#[track_caller]
pub fn succeeds(c: &mut Command) -> Output {
    let out = c.output().expect("run lamina");
    assert!(
        out.status.success(),
        "{c:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// max |got - want| / max |want|.
pub fn rel_max_diff(want: &[f32], got: &[f32]) -> f32 {
    assert_eq!(want.len(), got.len());
    let m = want.iter().fold(0f32, |a, v| a.max(v.abs()));
    want.iter()
        .zip(got)
        .fold(0f32, |a, (x, y)| a.max((x - y).abs()))
        / m
}
