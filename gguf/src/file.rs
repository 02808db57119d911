//! The GGUF container (versions 2 and 3, little-endian), as llama.cpp's `docs/gguf.md` lays it
//! out:
//!
//! ```text
//! "GGUF" | version u32 | tensor count u64 | metadata count u64
//! metadata:  key (u64 length + UTF-8) | value type u32 | value
//! tensors:   name | dimensions u32 | each dimension u64 (innermost first) | type u32 | offset u64
//! padding to `general.alignment` (32 by default), then the tensor data; offsets are from there
//! ```
//!
//! Values are u8, i8, u16, i16, u32, i32, u64, i64, f32, f64, bool, strings and arrays of any of
//! them (arrays of arrays included). Every read checks the bounds of the file, so a truncated or
//! corrupt file is an error that says what was being read and at which byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::quants::TensorType;
use crate::{GgufError, Result};

/// The alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// u8.
    U8(u8),
    /// i8.
    I8(i8),
    /// u16.
    U16(u16),
    /// i16.
    I16(i16),
    /// u32.
    U32(u32),
    /// i32.
    I32(i32),
    /// u64.
    U64(u64),
    /// i64.
    I64(i64),
    /// f32.
    F32(f32),
    /// f64.
    F64(f64),
    /// bool.
    Bool(bool),
    /// A string.
    String(String),
    /// An array (of one type).
    Array(Vec<Value>),
}

impl Value {
    /// An integer of any width, if it is one (and fits).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A number of any type as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The bool, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The elements, if it is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The value as JSON (for `twin models inspect` and config files).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Value::U8(v) => json!(v),
            Value::I8(v) => json!(v),
            Value::U16(v) => json!(v),
            Value::I16(v) => json!(v),
            Value::U32(v) => json!(v),
            Value::I32(v) => json!(v),
            Value::U64(v) => json!(v),
            Value::I64(v) => json!(v),
            Value::F32(v) => json!(v),
            Value::F64(v) => json!(v),
            Value::Bool(v) => json!(v),
            Value::String(v) => json!(v),
            Value::Array(v) => serde_json::Value::Array(v.iter().map(Value::to_json).collect()),
        }
    }
}

/// One tensor's description.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Its name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Its dimensions as GGUF lists them: innermost (contiguous) first.
    pub dims: Vec<u64>,
    /// How it is stored.
    pub kind: TensorType,
    /// The raw type number, for types we do not know.
    pub kind_id: u32,
    /// Where its data starts, from the start of the file.
    pub start: u64,
    /// Its data's length in bytes (0 when the type is unknown).
    pub bytes: u64,
}

impl TensorInfo {
    /// Its elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Its shape in PyTorch's order (outermost first), as a checkpoint stores it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|d| *d as usize).collect()
    }
}

/// The bytes of a file: memory-mapped, or owned (tests, small files).
enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A GGUF file, read: its metadata and tensor descriptions, and its bytes for the data.
pub struct GgufFile {
    path: PathBuf,
    bytes: Bytes,
    /// The format version (2 or 3).
    pub version: u32,
    /// The metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// The tensors, in the file's order.
    pub tensors: Vec<TensorInfo>,
    /// The alignment of tensor data.
    pub alignment: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Open and read `path` through a memory map: the tensor data is paged in only when a tensor
    /// is dequantized.
    #[allow(unsafe_code)]
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to this value. What memmap2 cannot promise is
        // that no other process truncates or rewrites the file while it is mapped; a model file
        // being imported is not written to, and every read below is bounds-checked against the
        // length the map had when it was made.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, Bytes::Mapped(map))
    }

    /// Read a GGUF file held in memory (`path` only names it in errors).
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(path, Bytes::Owned(bytes))
    }

    fn parse(path: &Path, bytes: Bytes) -> Result<Self> {
        let mut reader = Reader {
            path,
            bytes: &bytes,
            at: 0,
        };
        let magic = reader.take(4, "the magic number")?.to_vec();
        if magic != b"GGUF" {
            return Err(reader.error(
                0,
                format!("not a GGUF file: it starts with {magic:02x?}, not \"GGUF\""),
            ));
        }
        let version = reader.u32("the version")?;
        if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            return Err(reader.error(
                4,
                "a big-endian GGUF file: twin reads little-endian ones".into(),
            ));
        }
        if !(2..=3).contains(&version) {
            return Err(reader.error(
                4,
                format!("GGUF version {version}: twin reads versions 2 and 3"),
            ));
        }
        let tensor_count = reader.u64("the tensor count")?;
        let kv_count = reader.u64("the metadata count")?;
        let mut metadata = BTreeMap::new();
        for i in 0..kv_count {
            let at = reader.at;
            let key = reader.string(&format!("the key of metadata entry {i}"))?;
            let value_type = reader.u32(&format!("the type of `{key}`"))?;
            let value = reader.value(value_type, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(reader.error(at as u64, format!("metadata key `{key}` appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(reader.error(
                        0,
                        format!("`general.alignment` is {v:?}: it must be a power of two"),
                    ))
                }
            },
        };
        let mut described = Vec::new();
        for i in 0..tensor_count {
            let at = reader.at as u64;
            let name = reader.string(&format!("the name of tensor {i}"))?;
            let n_dims = reader.u32(&format!("the dimension count of `{name}`"))?;
            if n_dims > 8 {
                return Err(reader.error(at, format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let mut dims = Vec::new();
            for d in 0..n_dims {
                dims.push(reader.u64(&format!("dimension {d} of `{name}`"))?);
            }
            let kind_id = reader.u32(&format!("the type of `{name}`"))?;
            let offset = reader.u64(&format!("the data offset of `{name}`"))?;
            described.push((at, name, dims, kind_id, offset));
        }
        let data_start = (reader.at as u64).div_ceil(alignment) * alignment;
        let len = bytes.len() as u64;
        let mut tensors = Vec::with_capacity(described.len());
        let mut names = std::collections::HashSet::new();
        for (at, name, dims, kind_id, offset) in described {
            if !names.insert(name.clone()) {
                return Err(reader.error(at, format!("tensor `{name}` appears twice")));
            }
            if offset % alignment != 0 {
                return Err(reader.error(
                    at,
                    format!("tensor `{name}` starts at data offset {offset}, not a multiple of the alignment {alignment}"),
                ));
            }
            let kind = TensorType::from_id(kind_id);
            let elements = dims.iter().try_fold(1u64, |n, d| n.checked_mul(*d));
            let bytes_len = match (kind, elements) {
                (_, None) => {
                    return Err(reader.error(
                        at,
                        format!("tensor `{name}` has dimensions {dims:?}, too many elements"),
                    ))
                }
                (TensorType::Unknown(_), _) => 0,
                (kind, Some(n)) => {
                    let (block, size) = kind.block();
                    if dims.first().is_some_and(|d| d % block != 0) {
                        return Err(reader.error(
                            at,
                            format!("tensor `{name}` has rows of {} elements, not a multiple of {kind}'s block of {block}", dims[0]),
                        ));
                    }
                    n / block * size
                }
            };
            let start = data_start.saturating_add(offset);
            if start.saturating_add(bytes_len) > len {
                return Err(reader.error(
                    at,
                    format!(
                        "tensor `{name}` ({bytes_len} bytes at byte {start}) ends past the end of the file ({len} bytes): the file is truncated"
                    ),
                ));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                kind,
                kind_id,
                start,
                bytes: bytes_len,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
            version,
            metadata,
            tensors,
            alignment,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A tensor's description.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's raw bytes.
    pub fn raw(&self, tensor: &TensorInfo) -> &[u8] {
        &self.bytes[tensor.start as usize..(tensor.start + tensor.bytes) as usize]
    }

    /// A tensor dequantized to f32, in the file's element order (row-major, PyTorch's shape is
    /// [`TensorInfo::shape`]).
    pub fn dequantize(&self, tensor: &TensorInfo) -> Result<Vec<f32>> {
        crate::quants::dequantize(tensor.kind, self.raw(tensor)).ok_or_else(|| {
            GgufError::UnsupportedType {
                path: self.path.clone(),
                tensor: tensor.name.clone(),
                kind: tensor.kind.to_string(),
            }
        })
    }
}

/// A cursor over the file's bytes that names what it was reading when they run out.
struct Reader<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn error(&self, offset: u64, reason: String) -> GgufError {
        GgufError::Format {
            path: self.path.to_path_buf(),
            offset,
            reason,
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&[u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len());
        match end {
            Some(end) => {
                let slice = &self.bytes[self.at..end];
                self.at = end;
                Ok(slice)
            }
            None => Err(self.error(
                self.at as u64,
                format!(
                    "the file ends ({} bytes) while reading {what} ({n} bytes): it is truncated or not GGUF",
                    self.bytes.len()
                ),
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.at as u64;
        let len = self.u64(what)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|n| *n <= self.bytes.len())
            .ok_or_else(|| {
                self.error(
                    at,
                    format!("{what} claims {len} bytes, more than the file has"),
                )
            })?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.error(at, format!("{what} is not UTF-8")))
    }

    fn value(&mut self, value_type: u32, key: &str, depth: usize) -> Result<Value> {
        let at = self.at as u64;
        let what = format!("the value of `{key}`");
        Ok(match value_type {
            0 => Value::U8(self.array::<1>(&what)?[0]),
            1 => Value::I8(i8::from_le_bytes(self.array(&what)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(self.u32(&what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => match self.array::<1>(&what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.error(at, format!("`{key}` is a bool of value {b}"))),
            },
            8 => Value::String(self.string(&what)?),
            9 => {
                if depth > 4 {
                    return Err(self.error(at, format!("`{key}` nests arrays too deep")));
                }
                let element_type = self.u32(&format!("the element type of `{key}`"))?;
                let count = self.u64(&format!("the length of `{key}`"))?;
                // Each element takes at least one byte: a count beyond the file is corrupt.
                if count > self.bytes.len() as u64 {
                    return Err(self.error(
                        at,
                        format!("`{key}` claims {count} elements, more than the file has bytes"),
                    ));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(element_type, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            other => {
                return Err(self.error(
                    at,
                    format!("`{key}` has value type {other}, which GGUF does not define"),
                ))
            }
        })
    }
}
