//! GGUF reader (versions 2 and 3): header, metadata, tensor infos, memory-mapped data.
//!
//! Every count, length, offset and size read from the file is checked against the bytes that
//! are actually there before anything is allocated, so a truncated or hostile file gives a
//! [`GgufError`] that names the key or tensor, never a panic or a huge allocation.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::quant::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Arrays nested deeper than this are rejected (the format uses depth 1 in practice).
const MAX_ARRAY_DEPTH: u32 = 4;
const MAX_DIMS: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a GGUF file (magic {0:?})")]
    BadMagic([u8; 4]),
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),
    #[error("file truncated while reading {what} at byte {offset} (file is {len} bytes)")]
    Truncated { what: String, offset: u64, len: u64 },
    #[error("invalid {what}: {detail}")]
    Invalid { what: String, detail: String },
    #[error("tensor '{tensor}' has unknown ggml type id {type_id}")]
    UnknownType { tensor: String, type_id: u32 },
    #[error("metadata key '{key}' is missing")]
    MissingKey { key: String },
    #[error("metadata key '{key}' has type {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("tensor '{0}' is missing")]
    MissingTensor(String),
}

/// A metadata value, with every GGUF value type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }

    /// Any integer type that fits in u64 without loss.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// A metadata array, stored by element type so that it takes about the bytes it took in the
/// file (a `Vec<Value>` would take 32 bytes for each 1-byte element a file claims).
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Array {
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The GGUF value type id of the elements.
    pub fn elem_type_id(&self) -> u32 {
        match self {
            Array::U8(_) => 0,
            Array::I8(_) => 1,
            Array::U16(_) => 2,
            Array::I16(_) => 3,
            Array::U32(_) => 4,
            Array::I32(_) => 5,
            Array::F32(_) => 6,
            Array::Bool(_) => 7,
            Array::String(_) => 8,
            Array::Array(_) => 9,
            Array::U64(_) => 10,
            Array::I64(_) => 11,
            Array::F64(_) => 12,
        }
    }

    pub fn elem_type_name(&self) -> &'static str {
        TYPE_NAMES[self.elem_type_id() as usize]
    }

    /// Element `i` as a value (nested arrays are cloned).
    pub fn get(&self, i: usize) -> Option<Value> {
        Some(match self {
            Array::U8(v) => Value::U8(*v.get(i)?),
            Array::I8(v) => Value::I8(*v.get(i)?),
            Array::U16(v) => Value::U16(*v.get(i)?),
            Array::I16(v) => Value::I16(*v.get(i)?),
            Array::U32(v) => Value::U32(*v.get(i)?),
            Array::I32(v) => Value::I32(*v.get(i)?),
            Array::F32(v) => Value::F32(*v.get(i)?),
            Array::Bool(v) => Value::Bool(*v.get(i)?),
            Array::String(v) => Value::String(v.get(i)?.clone()),
            Array::Array(v) => Value::Array(v.get(i)?.clone()),
            Array::U64(v) => Value::U64(*v.get(i)?),
            Array::I64(v) => Value::I64(*v.get(i)?),
            Array::F64(v) => Value::F64(*v.get(i)?),
        })
    }

    /// Every element as an integer, if the elements are integers.
    pub fn to_i64s(&self) -> Option<Vec<i64>> {
        fn all<T: Copy>(v: &[T], f: impl Fn(T) -> Option<i64>) -> Option<Vec<i64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            Array::U8(v) => all(v, |x| Some(x as i64)),
            Array::I8(v) => all(v, |x| Some(x as i64)),
            Array::U16(v) => all(v, |x| Some(x as i64)),
            Array::I16(v) => all(v, |x| Some(x as i64)),
            Array::U32(v) => all(v, |x| Some(x as i64)),
            Array::I32(v) => all(v, |x| Some(x as i64)),
            Array::U64(v) => all(v, |x| i64::try_from(x).ok()),
            Array::I64(v) => Some(v.clone()),
            _ => None,
        }
    }

    /// Every element as a number, if the elements are numbers.
    pub fn to_f64s(&self) -> Option<Vec<f64>> {
        match self {
            Array::F32(v) => Some(v.iter().map(|&x| x as f64).collect()),
            Array::F64(v) => Some(v.clone()),
            _ => self
                .to_i64s()
                .map(|v| v.into_iter().map(|x| x as f64).collect()),
        }
    }
}

const TYPE_NAMES: [&str; 13] = [
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
];

/// One tensor's description. `dims[0]` is the innermost (contiguous) dimension, as in ggml.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute byte offset of the tensor data in the file.
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Rows and row length for a 2-D matrix (`[cols, rows]` in ggml order); 1-D is one row.
    pub fn rows_cols(&self) -> (u64, u64) {
        let cols = self.dims.first().copied().unwrap_or(1);
        (self.n_elements() / cols.max(1), cols)
    }
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_offset: u64,
    meta_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
    map: FileBytes,
}

/// The file's bytes: memory-mapped from disk, or held in memory (tests, fuzzing, files that
/// arrive over an app's own channels).
enum FileBytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(v) => v,
        }
    }
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        let remaining = (self.buf.len() - self.pos) as u64;
        if n > remaining {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                len: self.buf.len() as u64,
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }
    fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8, GgufError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &dyn Fn() -> String) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| GgufError::Invalid {
            what: what(),
            detail: format!("string is not UTF-8: {e}"),
        })
    }

    fn value(
        &mut self,
        ty: u32,
        what: &dyn Fn() -> String,
        depth: u32,
    ) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U8(self.u8(what)?),
            1 => Value::I8(self.u8(what)? as i8),
            2 => Value::U16(self.u16(what)?),
            3 => Value::I16(self.u16(what)? as i16),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(self.u32(what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(what)?)),
            7 => match self.u8(what)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(GgufError::Invalid {
                        what: what(),
                        detail: format!("bool byte {b}"),
                    })
                }
            },
            8 => Value::String(self.string(what)?),
            9 => Value::Array(self.array(what, depth)?),
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            t => {
                return Err(GgufError::Invalid {
                    what: what(),
                    detail: format!("unknown value type {t}"),
                })
            }
        })
    }
}

impl Reader<'_> {
    /// An array: element type, count, elements. Storage is reserved only after the count is
    /// checked against the bytes left, and each element type is stored at its own width, so a
    /// file can never make the reader hold more than a few times its own size.
    fn array(&mut self, what: &dyn Fn() -> String, depth: u32) -> Result<Array, GgufError> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(GgufError::Invalid {
                what: what(),
                detail: "arrays nested too deeply".into(),
            });
        }
        let elem_ty = self.u32(what)?;
        let n = self.u64(what)?;
        // The fewest bytes one element takes in the file.
        let min_size = match elem_ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            t => {
                return Err(GgufError::Invalid {
                    what: what(),
                    detail: format!("unknown array element type {t}"),
                })
            }
        };
        if n.saturating_mul(min_size) > self.remaining() {
            return Err(GgufError::Truncated {
                what: format!("{} (array of {n} elements)", what()),
                offset: self.pos as u64,
                len: self.buf.len() as u64,
            });
        }
        let n = n as usize;
        fn fill<T>(
            n: usize,
            mut one: impl FnMut() -> Result<T, GgufError>,
        ) -> Result<Vec<T>, GgufError> {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(one()?);
            }
            Ok(v)
        }
        Ok(match elem_ty {
            0 => Array::U8(self.take(n as u64, what)?.to_vec()),
            1 => Array::I8(
                self.take(n as u64, what)?
                    .iter()
                    .map(|&b| b as i8)
                    .collect(),
            ),
            2 => Array::U16(fill(n, || self.u16(what))?),
            3 => Array::I16(fill(n, || self.u16(what).map(|x| x as i16))?),
            4 => Array::U32(fill(n, || self.u32(what))?),
            5 => Array::I32(fill(n, || self.u32(what).map(|x| x as i32))?),
            6 => Array::F32(fill(n, || self.u32(what).map(f32::from_bits))?),
            7 => Array::Bool(fill(n, || match self.u8(what)? {
                0 => Ok(false),
                1 => Ok(true),
                b => Err(GgufError::Invalid {
                    what: what(),
                    detail: format!("bool byte {b}"),
                }),
            })?),
            8 => Array::String(fill(n, || self.string(what))?),
            // Each nested array carries its own element type and count.
            9 => Array::Array(fill(n, || self.array(what, depth + 1))?),
            10 => Array::U64(fill(n, || self.u64(what))?),
            11 => Array::I64(fill(n, || self.u64(what).map(|x| x as i64))?),
            _ => Array::F64(fill(n, || self.u64(what).map(f64::from_bits))?),
        })
    }
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| GgufError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only; the file is expected not to change while it is open
        // (the same contract as every mmap-based model loader).
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, FileBytes::Mapped(map))
    }

    /// Reads a GGUF file held in memory; `name` stands for its path in messages.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::parse(name.into(), FileBytes::Owned(bytes))
    }

    fn parse(path: PathBuf, map: FileBytes) -> Result<Self, GgufError> {
        let buf: &[u8] = &map;
        let mut r = Reader { buf, pos: 0 };
        let magic: [u8; 4] = r.take(4, &|| "magic".into())?.try_into().unwrap();
        if &magic != MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = r.u32(&|| "version".into())?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = r.u64(&|| "tensor count".into())?;
        let n_kv = r.u64(&|| "metadata count".into())?;
        // A key/value pair takes at least 12 bytes, a tensor info at least 24.
        if n_kv.saturating_mul(12) > r.remaining() || n_tensors.saturating_mul(24) > r.remaining() {
            return Err(GgufError::Invalid {
                what: "header".into(),
                detail: format!(
                    "{n_kv} metadata entries and {n_tensors} tensors cannot fit in {} bytes",
                    buf.len()
                ),
            });
        }

        // Counts were checked against the bytes left; reserve modestly anyway, the vectors grow
        // as entries actually parse.
        let mut metadata = Vec::with_capacity((n_kv as usize).min(1 << 12));
        let mut meta_index = HashMap::new();
        for i in 0..n_kv {
            let key = r.string(&|| format!("metadata key #{i}"))?;
            let what = || format!("metadata '{key}'");
            let ty = r.u32(&what)?;
            let value = r.value(ty, &what, 0)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::Invalid {
                    what: what(),
                    detail: "duplicate key".into(),
                });
            }
            metadata.push((key, value));
        }

        let alignment = match meta_index.get("general.alignment") {
            Some(&i) => {
                let a = metadata[i].1.as_u64().unwrap_or(0);
                if a == 0 || !a.is_power_of_two() || a > 1 << 20 {
                    return Err(GgufError::Invalid {
                        what: "metadata 'general.alignment'".into(),
                        detail: format!("{:?} is not a power of two", metadata[i].1),
                    });
                }
                a
            }
            None => DEFAULT_ALIGNMENT,
        };

        let mut infos = Vec::with_capacity((n_tensors as usize).min(1 << 12));
        for i in 0..n_tensors {
            let name = r.string(&|| format!("tensor info #{i}"))?;
            let what = || format!("tensor '{name}'");
            let n_dims = r.u32(&what)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Invalid {
                    what: what(),
                    detail: format!("{n_dims} dimensions (1 to {MAX_DIMS} supported)"),
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&what)?);
            }
            let type_id = r.u32(&what)?;
            let rel_offset = r.u64(&what)?;
            let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownType {
                tensor: name.clone(),
                type_id,
            })?;
            infos.push((name, dims, ty, rel_offset));
        }

        let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
        let file_len = buf.len() as u64;
        let mut tensors = Vec::with_capacity(infos.len());
        let mut tensor_index = HashMap::new();
        for (name, dims, ty, rel_offset) in infos {
            let invalid = |detail: String| GgufError::Invalid {
                what: format!("tensor '{name}'"),
                detail,
            };
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| invalid(format!("dimensions {dims:?} overflow")))?;
            if dims.contains(&0) {
                return Err(invalid(format!("zero dimension in {dims:?}")));
            }
            let block = ty.block_size() as u64;
            if dims[0] % block != 0 {
                return Err(invalid(format!(
                    "row length {} is not a multiple of the {ty:?} block size {block}",
                    dims[0]
                )));
            }
            let n_bytes = (n_elements / block)
                .checked_mul(ty.block_bytes() as u64)
                .ok_or_else(|| invalid("byte size overflows".into()))?;
            if rel_offset % alignment != 0 {
                return Err(invalid(format!(
                    "data offset {rel_offset} is not aligned to {alignment}"
                )));
            }
            let offset = data_offset
                .checked_add(rel_offset)
                .ok_or_else(|| invalid("data offset overflows".into()))?;
            let end = offset
                .checked_add(n_bytes)
                .ok_or_else(|| invalid("data end overflows".into()))?;
            if end > file_len {
                return Err(GgufError::Truncated {
                    what: format!("data of tensor '{name}' ({n_bytes} bytes at {offset})"),
                    offset,
                    len: file_len,
                });
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(invalid("duplicate tensor name".into()));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                n_bytes,
            });
        }

        Ok(GgufFile {
            path,
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            meta_index,
            tensor_index,
            map,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey { key: key.into() })
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or(GgufError::WrongType {
            key: key.into(),
            expected: "string",
            found: v.type_name(),
        })
    }

    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_u64().ok_or(GgufError::WrongType {
            key: key.into(),
            expected: "unsigned integer",
            found: v.type_name(),
        })
    }

    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.require(key)?;
        v.as_f64().ok_or(GgufError::WrongType {
            key: key.into(),
            expected: "number",
            found: v.type_name(),
        })
    }

    pub fn get_array(&self, key: &str) -> Result<&Array, GgufError> {
        match self.require(key)? {
            Value::Array(a) => Ok(a),
            v => Err(GgufError::WrongType {
                key: key.into(),
                expected: "array",
                found: v.type_name(),
            }),
        }
    }

    /// A string array, e.g. `tokenizer.ggml.tokens`.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        match self.get_array(key)? {
            Array::String(v) => Ok(v.iter().map(String::as_str).collect()),
            a => Err(GgufError::WrongType {
                key: key.into(),
                expected: "array of strings",
                found: a.elem_type_name(),
            }),
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    pub fn require_tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensor(name)
            .ok_or_else(|| GgufError::MissingTensor(name.into()))
    }

    /// The raw bytes of a tensor (bounds were checked at open).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.map[t.offset as usize..(t.offset + t.n_bytes) as usize]
    }

    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }
}

/// Writes a GGUF v3 file; used by tests to build small and deliberately broken files.
pub mod writer {
    use super::{Array, Value};
    use crate::quant::GgmlType;

    pub struct TensorData {
        pub name: String,
        pub dims: Vec<u64>,
        pub ty: GgmlType,
        pub bytes: Vec<u8>,
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    fn type_id(v: &Value) -> u32 {
        match v {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn put_value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend(x.to_le_bytes()),
            Value::I16(x) => out.extend(x.to_le_bytes()),
            Value::U32(x) => out.extend(x.to_le_bytes()),
            Value::I32(x) => out.extend(x.to_le_bytes()),
            Value::F32(x) => out.extend(x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::String(s) => put_str(out, s),
            Value::Array(items) => put_array(out, items),
            Value::U64(x) => out.extend(x.to_le_bytes()),
            Value::I64(x) => out.extend(x.to_le_bytes()),
            Value::F64(x) => out.extend(x.to_le_bytes()),
        }
    }

    fn put_array(out: &mut Vec<u8>, a: &Array) {
        out.extend(a.elem_type_id().to_le_bytes());
        out.extend((a.len() as u64).to_le_bytes());
        for i in 0..a.len() {
            match a {
                Array::Array(v) => put_array(out, &v[i]),
                _ => put_value(out, &a.get(i).expect("index below len")),
            }
        }
    }

    pub fn write(metadata: &[(String, Value)], tensors: &[TensorData]) -> Vec<u8> {
        const ALIGN: usize = 32;
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_str(&mut out, k);
            out.extend(type_id(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0usize;
        for t in tensors {
            put_str(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ty.id().to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset += t.bytes.len().div_ceil(ALIGN) * ALIGN;
        }
        out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
        for t in tensors {
            out.extend(&t.bytes);
            out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
        }
        out
    }
}
