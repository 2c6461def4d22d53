//! GGUF files (llama.cpp's format, versions 2 and 3): the header, the metadata, the tensor
//! table, the tensors' bytes and their dequantization to f32. The file format only: turning a
//! file into a decoder's weights is `load::gguf`'s work.
//!
//! Layout of a file: magic `GGUF`, version (u32), tensor count (u64), metadata count (u64);
//! the metadata (key, type, value; arrays nest); the tensor infos (name, dimensions in ggml
//! order — innermost first —, ggml type, offset); padding to `general.alignment` (32 when
//! absent); then the tensor data, each tensor at its offset from there.
//!
//! Supported storage types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K and Q6_K, decoded exactly as
//! ggml's reference `dequantize_row_*` functions do.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};

use crate::ModelError;

/// The four bytes every GGUF file starts with.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Tensor data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float32`.
    F32(f32),
    /// `float64`.
    F64(f64),
    /// `bool`.
    Bool(bool),
    /// A UTF-8 string (invalid sequences replaced).
    String(String),
    /// An array of values of one type.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements, if it is an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(values) => Some(values),
            _ => None,
        }
    }
}

/// A tensor storage type of ggml that this crate can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit floats.
    F32,
    /// IEEE half floats.
    F16,
    /// bfloat16.
    Bf16,
    /// Blocks of 32: one f16 scale, 32 signed bytes.
    Q8_0,
    /// Blocks of 32: one f16 scale, 32 4-bit values offset by 8.
    Q4_0,
    /// Blocks of 32: f16 scale and minimum, 32 4-bit values.
    Q4_1,
    /// Blocks of 32: one f16 scale, 32 5-bit values offset by 16 (4 low bits in nibbles, the
    /// fifth in a 32-bit mask).
    Q5_0,
    /// Blocks of 32: f16 scale and minimum, 32 5-bit values (as [`GgmlType::Q5_0`]'s).
    Q5_1,
    /// Super-blocks of 256: f16 scale and minimum, 8 sub-blocks with 6-bit scales and minimums,
    /// 4-bit values.
    Q4K,
    /// Super-blocks of 256: as [`GgmlType::Q4K`] with a fifth bit per value.
    Q5K,
    /// Super-blocks of 256: f16 scale, 16 sub-blocks with 8-bit scales, 6-bit values.
    Q6K,
}

impl GgmlType {
    /// The type for a ggml type id, or `None` when this crate cannot decode it.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::Bf16,
            _ => return None,
        })
    }

    /// Elements per block.
    pub fn block_elements(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::Bf16 => 1,
            Self::Q8_0 | Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 => 32,
            Self::Q4K | Self::Q5K | Self::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
            Self::Q8_0 => 34,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Bf16 => "BF16",
            Self::Q8_0 => "Q8_0",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        })
    }
}

/// The name of a ggml type id, for error messages about types this crate does not decode.
fn ggml_type_name(id: u32) -> &'static str {
    match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16..=23 | 29 => "an IQ type",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        30 => "BF16",
        _ => "unknown",
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the innermost (contiguous) one, so a PyTorch
    /// `[out, in]` matrix has `dims == [in, out]`.
    pub dims: Vec<usize>,
    /// Storage type.
    pub dtype: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// Bytes of data.
    pub fn bytes(&self) -> usize {
        self.elements() / self.dtype.block_elements() * self.dtype.block_bytes()
    }

    /// The shape in row-major (PyTorch) order: `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// An open GGUF file: parsed header and metadata, tensor data mapped from disk.
pub struct GgufFile {
    path: PathBuf,
    map: memmap2::Mmap,
    /// Format version (2 or 3).
    pub version: u32,
    /// All metadata, by key.
    pub metadata: BTreeMap<String, MetaValue>,
    /// The tensor table, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of the data section and of each tensor.
    pub alignment: u64,
    /// Byte offset of the data section in the file.
    pub data_offset: usize,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

/// A bounds-checked little-endian reader over the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ModelError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(ModelError::format(
                self.path,
                format!(
                    "truncated GGUF file: {what} needs {n} bytes at offset {}, but the file \
                     has {} bytes (re-download or re-convert the file)",
                    self.pos,
                    self.bytes.len()
                ),
            ));
        };
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ModelError> {
        Ok(self.take(N, what)?.try_into().expect("length checked"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length or count, checked against what the file could possibly hold.
    fn count(&mut self, what: &str, min_item_bytes: usize) -> Result<usize, ModelError> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_item_bytes as u64) > left {
            return Err(ModelError::format(
                self.path,
                format!(
                    "truncated or corrupt GGUF file: {what} is {n} at offset {}, more than the \
                     {left} bytes left in the file could hold",
                    self.pos - 8
                ),
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, ModelError> {
        let len = self.count(what, 1)?;
        Ok(String::from_utf8_lossy(self.take(len, what)?).into_owned())
    }

    fn value(&mut self, kind: u32, key: &str, depth: usize) -> Result<MetaValue, ModelError> {
        let what = || format!("metadata value of {key:?}");
        Ok(match kind {
            0 => MetaValue::U8(self.array::<1>(&what())?[0]),
            1 => MetaValue::I8(self.array::<1>(&what())?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(&what())?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(&what())?)),
            4 => MetaValue::U32(self.u32(&what())?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(&what())?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(&what())?)),
            7 => MetaValue::Bool(self.array::<1>(&what())?[0] != 0),
            8 => MetaValue::String(self.string(&what())?),
            9 => {
                if depth > 8 {
                    return Err(ModelError::format(
                        self.path,
                        format!("corrupt GGUF metadata: arrays nested too deep in {key:?}"),
                    ));
                }
                let elem = self.u32(&what())?;
                let len = self.count(&format!("array length of {key:?}"), 1)?;
                let mut values = Vec::with_capacity(len);
                for _ in 0..len {
                    values.push(self.value(elem, key, depth + 1)?);
                }
                MetaValue::Array(values)
            }
            10 => MetaValue::U64(self.u64(&what())?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(&what())?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(&what())?)),
            other => {
                return Err(ModelError::format(
                    self.path,
                    format!(
                        "corrupt GGUF metadata: value type {other} of {key:?} at offset {} is \
                         not a GGUF type (0..=12)",
                        self.pos - 4
                    ),
                ));
            }
        })
    }
}

impl GgufFile {
    /// Opens and parses `path`; checks that every tensor's data lies inside the file.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: the file is only read, and a model file is not rewritten while it is loaded.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        Self::parse(path, map)
    }

    fn parse(path: &Path, map: memmap2::Mmap) -> Result<Self, ModelError> {
        let mut cur = Cursor {
            bytes: &map,
            pos: 0,
            path,
        };
        let magic = cur.array::<4>("the magic number")?;
        if &magic != MAGIC {
            return Err(ModelError::format(
                path,
                format!(
                    "not a GGUF file: it starts with {magic:02x?} instead of the magic \"GGUF\""
                ),
            ));
        }
        let version = cur.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::format(
                path,
                format!(
                    "GGUF version {version} is not supported (only 2 and 3; re-convert the \
                     model with a current llama.cpp)"
                ),
            ));
        }
        let tensor_count = cur.count("the tensor count", 24)?;
        let kv_count = cur.count("the metadata count", 12)?;

        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = cur.string("a metadata key")?;
            let kind = cur.u32(&format!("the type of {key:?}"))?;
            let value = cur.value(kind, &key, 0)?;
            metadata.insert(key, value);
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(ModelError::format(
                        path,
                        format!("general.alignment is {v:?}, not a positive power of two"),
                    ));
                }
            },
        };

        let mut tensors = Vec::with_capacity(tensor_count);
        for _ in 0..tensor_count {
            let name = cur.string("a tensor name")?;
            let n_dims = cur.u32(&format!("the rank of {name:?}"))?;
            if n_dims > 4 {
                return Err(ModelError::format(
                    path,
                    format!("corrupt GGUF tensor table: {name:?} has {n_dims} dimensions"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let dim = cur.u64(&format!("the dimensions of {name:?}"))?;
                dims.push(usize::try_from(dim).map_err(|_| {
                    ModelError::format(path, format!("tensor {name:?}: dimension {dim} too large"))
                })?);
            }
            let type_id = cur.u32(&format!("the type of {name:?}"))?;
            let dtype = GgmlType::from_id(type_id).ok_or_else(|| {
                ModelError::format(
                    path,
                    format!(
                        "tensor {name:?} has ggml type {type_id} ({}), which this loader cannot \
                         decode (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K); \
                         re-quantize the model to one of those",
                        ggml_type_name(type_id)
                    ),
                )
            })?;
            let offset = cur.u64(&format!("the offset of {name:?}"))?;
            dims.iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| {
                    ModelError::format(path, format!("tensor {name:?}: {dims:?} overflows"))
                })?;
            if dims.first().copied().unwrap_or(1) % dtype.block_elements() != 0 {
                return Err(ModelError::format(
                    path,
                    format!(
                        "tensor {name:?}: its rows of {} elements are not whole {dtype} blocks \
                         of {}",
                        dims.first().copied().unwrap_or(1),
                        dtype.block_elements()
                    ),
                ));
            }
            if offset % alignment != 0 {
                return Err(ModelError::format(
                    path,
                    format!(
                        "corrupt GGUF tensor table: {name:?} starts at offset {offset}, not a \
                         multiple of the alignment {alignment}"
                    ),
                ));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                dtype,
                offset: offset as usize,
            });
        }
        let data_offset = (cur.pos as u64).div_ceil(alignment) * alignment;
        let data_offset = data_offset as usize;
        for t in &tensors {
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.bytes()));
            if end.is_none_or(|end| end > map.len()) {
                return Err(ModelError::format(
                    path,
                    format!(
                        "truncated GGUF file: tensor {:?} ({}, {:?}) needs bytes up to {}, but \
                         the file has {} bytes (re-download or re-convert the file)",
                        t.name,
                        t.dtype,
                        t.shape(),
                        data_offset as u128 + t.offset as u128 + t.bytes() as u128,
                        map.len()
                    ),
                ));
            }
        }
        Ok(Self {
            path: path.to_owned(),
            map,
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// A metadata string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }

    /// A metadata unsigned integer.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(MetaValue::as_u64)
    }

    /// `general.architecture` (e.g. `llama`), the prefix of the model's own keys.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// The tensor table entry called `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let start = self.data_offset + info.offset;
        &self.map[start..start + info.bytes()]
    }

    /// The tensor `name` dequantized to f32, in row-major order, checked against `shape`
    /// (row-major, PyTorch order).
    pub fn tensor_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let info = self.checked_tensor(name, shape)?;
        Ok(dequantize(info.dtype, self.tensor_bytes(info)))
    }

    /// The table entry of tensor `name`, which must exist with `shape` (row-major, PyTorch
    /// order).
    pub fn checked_tensor(&self, name: &str, shape: &[usize]) -> Result<&TensorInfo, ModelError> {
        let info = self.tensor_info(name).ok_or_else(|| {
            ModelError::format(
                &self.path,
                format!("tensor {name:?} is missing; is this a Llama-family GGUF model?"),
            )
        })?;
        if info.shape() != shape {
            return Err(ModelError::format(
                &self.path,
                format!(
                    "tensor {name:?} has shape {:?}, but the metadata implies {shape:?}",
                    info.shape()
                ),
            ));
        }
        Ok(info)
    }
}

/// Decodes `bytes` of ggml type `dtype` (whole blocks) to f32.
///
/// # Panics
/// If `bytes` is not a whole number of blocks.
pub fn dequantize(dtype: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let block = dtype.block_bytes();
    assert!(
        bytes.len().is_multiple_of(block),
        "{} bytes are not whole {dtype} blocks",
        bytes.len()
    );
    let mut out = vec![0f32; bytes.len() / block * dtype.block_elements()];
    let f16_at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    let blocks = bytes
        .chunks_exact(block)
        .zip(out.chunks_exact_mut(dtype.block_elements()));
    match dtype {
        GgmlType::F32 => {
            for (b, y) in blocks {
                y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (b, y) in blocks {
                y[0] = f16_at(b, 0);
            }
        }
        GgmlType::Bf16 => {
            for (b, y) in blocks {
                y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::Q8_0 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                for (y, &q) in y.iter_mut().zip(&b[2..34]) {
                    *y = f32::from(q as i8) * d;
                }
            }
        }
        GgmlType::Q4_0 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                for (j, &q) in b[2..18].iter().enumerate() {
                    y[j] = (f32::from(q & 0xF) - 8.0) * d;
                    y[j + 16] = (f32::from(q >> 4) - 8.0) * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (b, y) in blocks {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for (j, &q) in b[4..20].iter().enumerate() {
                    y[j] = f32::from(q & 0xF) * d + m;
                    y[j + 16] = f32::from(q >> 4) * d + m;
                }
            }
        }
        GgmlType::Q5_0 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                for (j, q) in q5_values(b[2..6].try_into().unwrap(), &b[6..22]) {
                    y[j] = (f32::from(q) - 16.0) * d;
                }
            }
        }
        GgmlType::Q5_1 => {
            for (b, y) in blocks {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for (j, q) in q5_values(b[4..8].try_into().unwrap(), &b[8..24]) {
                    y[j] = f32::from(q) * d + m;
                }
            }
        }
        GgmlType::Q5K => {
            for (b, y) in blocks {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let (qh, qs) = (&b[16..48], &b[48..176]);
                // Four chunks of 64 values: low nibbles then high nibbles of 32 bytes, the fifth
                // bits taken from two bits of `qh` per chunk.
                for (chunk, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
                    let (sc1, m1) = scale_min_k4(2 * chunk, scales);
                    let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
                    let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
                    let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
                    for (l, &q) in q.iter().enumerate() {
                        let high = |bit: usize| ((qh[l] >> bit) & 1) << 4;
                        y[l] = d1 * f32::from((q & 0xF) | high(2 * chunk)) - m1;
                        y[l + 32] = d2 * f32::from((q >> 4) | high(2 * chunk + 1)) - m2;
                    }
                }
            }
        }
        GgmlType::Q4K => {
            for (b, y) in blocks {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let qs = &b[16..144];
                for (chunk, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
                    let (sc1, m1) = scale_min_k4(2 * chunk, scales);
                    let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
                    let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
                    let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
                    for (l, &q) in q.iter().enumerate() {
                        y[l] = d1 * f32::from(q & 0xF) - m1;
                        y[l + 32] = d2 * f32::from(q >> 4) - m2;
                    }
                }
            }
        }
        GgmlType::Q6K => {
            for (b, y) in blocks {
                let (quants, scales) = q6_k_block(b);
                for (e, (y, &q)) in y.iter_mut().zip(&quants).enumerate() {
                    *y = scales[e / 16] * f32::from(q);
                }
            }
        }
    }
    out
}

/// The 256 signed six-bit values of a Q6_K block in element order, and its 16 scales: element
/// `e` is `scales[e / 16] · quants[e]`. Each scale is the block's f16 scale times a sub-block's
/// signed byte, exact in f32, so one rounding of the product gives ggml's value.
pub fn q6_k_block(b: &[u8]) -> ([i8; 256], [f32; 16]) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16::from_le_bytes([b[208], b[209]]).to_f32();
    let mut quants = [0i8; 256];
    // Each half of 128 elements: its low four bits in 64 bytes of `ql` (elements `l` and
    // `l + 32` in the low nibbles, `l + 64` and `l + 96` in the high), two high bits each
    // in 32 bytes of `qh`.
    for half in 0..2 {
        let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
        let quants = &mut quants[128 * half..];
        for l in 0..32 {
            let six = |low: u8, shift: u32| (low | (((qh[l] >> shift) & 3) << 4)) as i8 - 32;
            quants[l] = six(ql[l] & 0xF, 0);
            quants[l + 32] = six(ql[l + 32] & 0xF, 2);
            quants[l + 64] = six(ql[l] >> 4, 4);
            quants[l + 96] = six(ql[l + 32] >> 4, 6);
        }
    }
    (quants, std::array::from_fn(|i| d * f32::from(sc[i] as i8)))
}

/// The 32 unsigned 5-bit values of a Q5_0 or Q5_1 block, with their positions: value `j` has
/// its low four bits in the low nibble of `qs[j]` (`j < 16`) or the high nibble of `qs[j - 16]`,
/// and its fifth bit in bit `j` of the little-endian mask `qh`.
pub fn q5_values(qh: [u8; 4], qs: &[u8]) -> impl Iterator<Item = (usize, u8)> + '_ {
    let qh = u32::from_le_bytes(qh);
    let high = move |j: usize| (((qh >> j) & 1) << 4) as u8;
    qs.iter()
        .enumerate()
        .flat_map(move |(j, &q)| [(j, (q & 0xF) | high(j)), (j + 16, (q >> 4) | high(j + 16))])
}

/// The 6-bit scale and minimum of sub-block `j` of a Q4_K super-block (ggml's
/// `get_scale_min_k4`).
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_block() {
        let mut block = vec![0u8; 18];
        block[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        block[2] = 0x9F; // low nibble 15, high nibble 9
        let y = dequantize(GgmlType::Q4_0, &block);
        assert_eq!(y[0], 3.5);
        assert_eq!(y[16], 0.5);
        assert_eq!(y[1], -4.0);
    }
}
