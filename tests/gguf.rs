//! The GGUF reader on the real model and on small, truncated, corrupt and hostile files:
//! every bad file is a typed error naming what is wrong, never a panic or a huge allocation.

use lamina::gguf::{writer, Array, GgufError, GgufFile, Value};
use lamina::quant::{self, GgmlType};

fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lamina-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn small_file() -> Vec<u8> {
    let w: Vec<f32> = (0..64 * 2).map(|i| i as f32 / 10.0).collect();
    writer::write(
        &[
            ("general.architecture".into(), Value::String("llama".into())),
            ("test.u8".into(), Value::U8(7)),
            ("test.i16".into(), Value::I16(-3)),
            ("test.f64".into(), Value::F64(0.25)),
            ("test.bool".into(), Value::Bool(true)),
            ("test.arr".into(), Value::Array(Array::U32(vec![1, 2]))),
            ("test.i64".into(), Value::I64(-9)),
        ],
        &[writer::TensorData {
            name: "w".into(),
            dims: vec![64, 2],
            ty: GgmlType::Q8_0,
            bytes: quant::quantize(GgmlType::Q8_0, &w),
        }],
    )
}

#[test]
fn reads_every_value_type_and_tensor_data() {
    let p = temp_file("ok.gguf", &small_file());
    let g = GgufFile::open(&p).unwrap();
    assert_eq!(g.get("test.u8"), Some(&Value::U8(7)));
    assert_eq!(g.get("test.i16"), Some(&Value::I16(-3)));
    assert_eq!(g.get_f64("test.f64").unwrap(), 0.25);
    assert_eq!(g.get("test.bool"), Some(&Value::Bool(true)));
    assert_eq!(g.get_array("test.arr").unwrap().len(), 2);
    assert_eq!(g.get("test.i64"), Some(&Value::I64(-9)));
    assert!(matches!(
        g.get_u64("test.i64"),
        Err(GgufError::WrongType { .. })
    ));
    assert!(matches!(
        g.get_str("nope"),
        Err(GgufError::MissingKey { .. })
    ));
    let t = g.require_tensor("w").unwrap();
    assert_eq!(t.rows_cols(), (2, 64));
    let v = quant::dequantize(t.ty, g.tensor_bytes(t)).unwrap();
    assert!((v[11] - 1.1).abs() < 0.01);
}

#[test]
fn reads_version_2_files() {
    // v2 and v3 share the layout (v3 only added the big-endian marker, unused here).
    let mut v = small_file();
    v[4] = 2;
    let g = GgufFile::open(temp_file("v2.gguf", &v)).unwrap();
    assert_eq!(g.version, 2);
    assert_eq!(g.get("test.u8"), Some(&Value::U8(7)));
    assert_eq!(g.require_tensor("w").unwrap().rows_cols(), (2, 64));
}

#[test]
fn every_truncation_is_a_typed_error() {
    let bytes = small_file();
    let full = GgufFile::open(temp_file("full.gguf", &bytes)).unwrap();
    let t = &full.tensors[0];
    let data_end = (t.offset + t.n_bytes) as usize; // past it is only alignment padding
                                                    // Cut the file at many points: each must fail cleanly.
    for cut in (0..data_end).step_by(7).chain([data_end - 1]) {
        let p = temp_file("cut.gguf", &bytes[..cut]);
        match GgufFile::open(&p) {
            // A count that cannot fit what is left is reported as invalid, not truncated.
            Err(GgufError::Truncated { .. })
            | Err(GgufError::BadMagic(_))
            | Err(GgufError::Invalid { .. }) => {}
            Err(e) => panic!("cut at {cut}: unexpected error {e}"),
            Ok(_) => panic!("cut at {cut}: opened a truncated file"),
        }
    }
}

#[test]
fn hostile_counts_types_and_offsets_are_rejected() {
    let good = small_file();
    let p = temp_file("magic.gguf", b"GGML\x03\0\0\0");
    assert!(matches!(GgufFile::open(&p), Err(GgufError::BadMagic(_))));

    let mut v = good.clone();
    v[4] = 9;
    let p = temp_file("version.gguf", &v);
    assert!(matches!(
        GgufFile::open(&p),
        Err(GgufError::UnsupportedVersion(9))
    ));

    // A tensor count of 2^60 must not allocate.
    let mut v = good.clone();
    v[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let p = temp_file("count.gguf", &v);
    assert!(matches!(GgufFile::open(&p), Err(GgufError::Invalid { .. })));

    // A string length of 2^62 in the first key.
    let mut v = good.clone();
    v[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let p = temp_file("strlen.gguf", &v);
    assert!(matches!(
        GgufFile::open(&p),
        Err(GgufError::Truncated { .. })
    ));

    // Unknown tensor type id, and a data offset past the end: both name the tensor.
    let name = b"\x01\0\0\0\0\0\0\0w"; // the tensor name "w" with its u64 length
    let pos = good.windows(9).position(|w| w == name).unwrap() + 9;
    let type_at = pos + 4 + 16;
    let mut v = good.clone();
    v[type_at..type_at + 4].copy_from_slice(&99u32.to_le_bytes());
    let p = temp_file("type.gguf", &v);
    match GgufFile::open(&p) {
        Err(GgufError::UnknownType { tensor, type_id }) => {
            assert_eq!((tensor.as_str(), type_id), ("w", 99))
        }
        other => panic!("{other:?}"),
    }
    let mut v = good.clone();
    v[type_at + 4..type_at + 12].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let p = temp_file("offset.gguf", &v);
    let e = GgufFile::open(&p).unwrap_err().to_string();
    assert!(e.contains("'w'"), "{e}");
}

#[test]
fn reads_the_real_model() {
    let g = GgufFile::open(lamina::fetch::default_model().unwrap()).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.tensors.len(), 272);
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    let cfg = lamina::model::Config::from_gguf(&g).unwrap();
    assert_eq!(
        (
            cfg.n_layer,
            cfg.n_embd,
            cfg.n_head,
            cfg.n_kv_head,
            cfg.vocab
        ),
        (30, 576, 9, 3, 49152)
    );
    // Tensor types: Q4_1 matrices, Q8_0 embedding, F32 norms; all dequantize.
    for t in &g.tensors {
        assert!(t.ty.supported(), "{} {:?}", t.name, t.ty);
    }
    let e = g.require_tensor("token_embd.weight").unwrap();
    assert_eq!(e.ty, GgmlType::Q8_0);
}
