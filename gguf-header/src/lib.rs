//! A bounded reader of GGUF headers.
//!
//! Inference engines read a GGUF header by trusting it: a string or array
//! length from the file becomes an allocation, `general.alignment` becomes a
//! divisor, tensor shapes are multiplied and offsets added without checks. A
//! truncated, corrupt or hostile file then aborts the process (out of
//! memory), panics (division by zero, overflow) or reads past the end.
//!
//! [`read_header`] reads the same header first, with every length checked
//! against the bytes the file really has and every size computed with
//! checked arithmetic. When it returns `Ok`, an engine's own reader of the
//! same file allocates at most what the file holds, divides by a non-zero
//! power of two and finds every tensor inside the file. Nothing is read
//! past the header: tensor data is only bounds-checked.
//!
//! Stricter than the engines where the format says so (the magic bytes,
//! `general.alignment` a `u32` power of two, tensor offsets aligned, at most
//! four dimensions, names of at most 64 bytes, unique keys and tensor
//! names), and stricter than the format in one place: arrays of arrays are
//! refused, since real models have none and a reader that recurses into
//! them can be driven into a stack overflow.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read};

pub mod build;

/// How much a header may claim. The defaults hold every published model
/// (the largest vocabularies have about 260 000 entries per array).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one string value or key.
    pub max_string_bytes: u64,
    /// Elements in all metadata arrays together.
    pub max_array_elements: u64,
    /// Tensors in the file.
    pub max_tensors: u64,
    /// Bytes from the start of the file to the first tensor's data.
    pub max_header_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_string_bytes: 16 << 20,
            max_array_elements: 16 << 20,
            max_tensors: 1 << 20,
            max_header_bytes: 1 << 30,
        }
    }
}

/// The format's limit on a tensor's name, in bytes.
pub const MAX_TENSOR_NAME_BYTES: u64 = 64;
/// The format's limit on a tensor's dimensions.
pub const MAX_DIMS: u32 = 4;
/// Alignment of tensor data when the header does not set one.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Why a header is refused. Each message names the byte offset or the key
/// or tensor concerned, so an operator can tell a truncated download from
/// a foreign file.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("not a GGUF file (the first four bytes are not `GGUF`)")]
    NotGguf,
    #[error("GGUF version {0} is not supported (1, 2 and 3 are)")]
    UnsupportedVersion(u32),
    #[error("the header ends at byte {at} while reading {what} ({needed} more bytes needed)")]
    Truncated {
        at: u64,
        needed: u64,
        what: &'static str,
    },
    #[error("{what} at byte {at} claims {len} bytes; at most {max} are allowed")]
    TooLong {
        what: &'static str,
        at: u64,
        len: u64,
        max: u64,
    },
    #[error("metadata `{key}` has unknown value type {code}")]
    UnknownValueType { key: String, code: u32 },
    #[error("metadata `{key}` is an array of arrays, which is not supported")]
    NestedArray { key: String },
    #[error("metadata `{key}` holds the boolean byte {byte} (only 0 and 1 are valid)")]
    BadBool { key: String, byte: u8 },
    #[error("the metadata arrays hold more than {max} elements together")]
    TooManyArrayElements { max: u64 },
    #[error("metadata key `{0}` appears twice")]
    DuplicateKey(String),
    #[error("`general.alignment` must be a u32 power of two, found {0}")]
    BadAlignment(String),
    #[error("the file declares {count} tensors; at most {max} are allowed")]
    TooManyTensors { count: u64, max: u64 },
    #[error("tensor `{0}` appears twice")]
    DuplicateTensor(String),
    #[error("tensor `{tensor}` has {dims} dimensions; at most {MAX_DIMS} are allowed")]
    TooManyDims { tensor: String, dims: u32 },
    #[error("tensor `{tensor}` has type {code}, which the engine does not support")]
    UnknownTensorType { tensor: String, code: u32 },
    #[error("tensor `{tensor}`: its size overflows")]
    SizeOverflow { tensor: String },
    #[error(
        "tensor `{tensor}` has {elements} elements, not a multiple of its type's block of {block}"
    )]
    NotBlockMultiple {
        tensor: String,
        elements: u64,
        block: u64,
    },
    #[error("tensor `{tensor}` starts at data offset {offset}, not a multiple of the alignment {alignment}")]
    Misaligned {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error("tensor `{tensor}` ends at byte {end}, past the end of the file ({file_len} bytes): the file is truncated")]
    PastEnd {
        tensor: String,
        end: u64,
        file_len: u64,
    },
    #[error("cannot read the file: {0}")]
    Io(#[from] io::Error),
}

/// A metadata value type; the discriminant is its code in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    /// The type's code in the file.
    #[must_use]
    pub fn code(self) -> u32 {
        self as u32
    }

    fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => Self::U8,
            1 => Self::I8,
            2 => Self::U16,
            3 => Self::I16,
            4 => Self::U32,
            5 => Self::I32,
            6 => Self::F32,
            7 => Self::Bool,
            8 => Self::String,
            9 => Self::Array,
            10 => Self::U64,
            11 => Self::I64,
            12 => Self::F64,
            _ => return None,
        })
    }

    /// Encoded bytes of a fixed-size value; `None` for strings and arrays.
    fn fixed_size(self) -> Option<u64> {
        match self {
            Self::U8 | Self::I8 | Self::Bool => Some(1),
            Self::U16 | Self::I16 => Some(2),
            Self::U32 | Self::I32 | Self::F32 => Some(4),
            Self::U64 | Self::I64 | Self::F64 => Some(8),
            Self::String | Self::Array => None,
        }
    }
}

/// A metadata value. Arrays are checked element by element but only their
/// type and length are kept: nothing this crate's users need is in them.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array { element: ValueType, len: u64 },
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    #[must_use]
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

    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// A tensor type the engine can load: its GGML code, name, elements per
/// block and bytes per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorType {
    pub code: u32,
    pub name: &'static str,
    pub block_elements: u64,
    pub block_bytes: u64,
}

/// The GGML tensor types candle (and so mistralrs) reads.
pub const TENSOR_TYPES: [TensorType; 15] = [
    tt(0, "F32", 1, 4),
    tt(1, "F16", 1, 2),
    tt(2, "Q4_0", 32, 18),
    tt(3, "Q4_1", 32, 20),
    tt(6, "Q5_0", 32, 22),
    tt(7, "Q5_1", 32, 24),
    tt(8, "Q8_0", 32, 34),
    tt(9, "Q8_1", 32, 36),
    tt(10, "Q2_K", 256, 84),
    tt(11, "Q3_K", 256, 110),
    tt(12, "Q4_K", 256, 144),
    tt(13, "Q5_K", 256, 176),
    tt(14, "Q6_K", 256, 210),
    tt(15, "Q8_K", 256, 292),
    tt(30, "BF16", 1, 2),
];

const fn tt(code: u32, name: &'static str, block_elements: u64, block_bytes: u64) -> TensorType {
    TensorType {
        code,
        name,
        block_elements,
        block_bytes,
    }
}

impl TensorType {
    #[must_use]
    pub fn from_code(code: u32) -> Option<TensorType> {
        TENSOR_TYPES.iter().find(|t| t.code == code).copied()
    }
}

/// One tensor's description and where its data lies.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// As stored: the fastest-varying dimension first.
    pub dims: Vec<u64>,
    pub kind: TensorType,
    /// From the start of the tensor data section.
    pub offset: u64,
    /// Bytes of data.
    pub bytes: u64,
}

/// A checked header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Where tensor data starts, from the start of the file.
    pub data_offset: u64,
    /// One past the last byte any tensor uses.
    pub data_end: u64,
}

impl Header {
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }
}

/// Reads and checks the header of a GGUF file of `file_len` bytes from
/// `reader`, positioned at its start.
pub fn read_header<R: Read>(
    reader: R,
    file_len: u64,
    limits: &Limits,
) -> Result<Header, HeaderError> {
    let mut r = Cursor {
        inner: reader,
        pos: 0,
        len: file_len,
        wide: true,
    };
    if r.array::<4>("the magic")? != *b"GGUF" {
        return Err(HeaderError::NotGguf);
    }
    let version = r.u32("the version")?;
    match version {
        1 => r.wide = false,
        2 | 3 => {}
        v => return Err(HeaderError::UnsupportedVersion(v)),
    }
    let tensor_count = r.len_field("the tensor count")?;
    let kv_count = r.len_field("the metadata count")?;

    let mut metadata = BTreeMap::new();
    let mut array_elements = 0u64;
    for _ in 0..kv_count {
        let key = r.string(limits.max_string_bytes, "a metadata key")?;
        let code = r.u32("a metadata value type")?;
        let ty = ValueType::from_code(code).ok_or_else(|| HeaderError::UnknownValueType {
            key: key.clone(),
            code,
        })?;
        let value = r.value(ty, &key, limits, &mut array_elements)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(HeaderError::DuplicateKey(key));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(other) => return Err(HeaderError::BadAlignment(format!("{other:?}"))),
    };

    if tensor_count > limits.max_tensors {
        return Err(HeaderError::TooManyTensors {
            count: tensor_count,
            max: limits.max_tensors,
        });
    }
    let mut tensors = Vec::new();
    let mut names = HashSet::new();
    for _ in 0..tensor_count {
        let tensor = r.tensor_info()?;
        if !names.insert(tensor.name.clone()) {
            return Err(HeaderError::DuplicateTensor(tensor.name));
        }
        if tensor.offset % alignment != 0 {
            return Err(HeaderError::Misaligned {
                tensor: tensor.name,
                offset: tensor.offset,
                alignment,
            });
        }
        tensors.push(tensor);
    }

    // The position is at most `file_len`, and the alignment a power of two
    // of at most 2^31: this cannot overflow for any real length, but a
    // length near u64::MAX is still refused rather than wrapped.
    let data_offset = r
        .pos
        .checked_next_multiple_of(alignment)
        .ok_or(HeaderError::TooLong {
            what: "the header",
            at: 0,
            len: r.pos,
            max: limits.max_header_bytes,
        })?;
    if data_offset > file_len {
        // Even a file without tensors has its padding up to the alignment.
        return Err(HeaderError::Truncated {
            at: file_len,
            needed: data_offset - file_len,
            what: "the padding before the tensor data",
        });
    }
    if data_offset > limits.max_header_bytes {
        return Err(HeaderError::TooLong {
            what: "the header",
            at: 0,
            len: data_offset,
            max: limits.max_header_bytes,
        });
    }
    let data_end = data_end(&tensors, data_offset, file_len)?;
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
        data_end,
    })
}

/// One past the last byte any tensor uses; every tensor must end inside
/// the file.
fn data_end(tensors: &[TensorInfo], data_offset: u64, file_len: u64) -> Result<u64, HeaderError> {
    let mut data_end = data_offset;
    for t in tensors {
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|start| start.checked_add(t.bytes))
            .ok_or_else(|| HeaderError::SizeOverflow {
                tensor: t.name.clone(),
            })?;
        if end > file_len {
            return Err(HeaderError::PastEnd {
                tensor: t.name.clone(),
                end,
                file_len,
            });
        }
        data_end = data_end.max(end);
    }
    Ok(data_end)
}

/// A reader that knows how many bytes the file has left, so no length from
/// the file is trusted before it is compared with them.
struct Cursor<R> {
    inner: R,
    pos: u64,
    len: u64,
    /// Version 2 and later: lengths and counts are 64-bit.
    wide: bool,
}

impl<R: Read> Cursor<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Fails unless `n` more bytes exist.
    fn need(&self, n: u64, what: &'static str) -> Result<(), HeaderError> {
        if n > self.remaining() {
            return Err(HeaderError::Truncated {
                at: self.pos,
                needed: n - self.remaining(),
                what,
            });
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], HeaderError> {
        self.need(N as u64, what)?;
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf)?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, HeaderError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, HeaderError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A length or count: 32-bit in version 1, 64-bit after.
    fn len_field(&mut self, what: &'static str) -> Result<u64, HeaderError> {
        if self.wide {
            self.u64(what)
        } else {
            self.u32(what).map(u64::from)
        }
    }

    /// Reads `n` bytes, already known to exist, into a buffer of exactly
    /// that size.
    fn bytes(&mut self, n: u64, what: &'static str) -> Result<Vec<u8>, HeaderError> {
        self.need(n, what)?;
        let mut buf = Vec::new();
        (&mut self.inner).take(n).read_to_end(&mut buf)?;
        if buf.len() as u64 != n {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        self.pos += n;
        Ok(buf)
    }

    /// Skips `n` bytes, already known to exist, without keeping them.
    fn skip(&mut self, n: u64, what: &'static str) -> Result<(), HeaderError> {
        self.need(n, what)?;
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        if copied != n {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        self.pos += n;
        Ok(())
    }

    /// The length of a string, checked against `max` and the file.
    fn string_len(&mut self, max: u64, what: &'static str) -> Result<u64, HeaderError> {
        let at = self.pos;
        let len = self.len_field(what)?;
        if len > max {
            return Err(HeaderError::TooLong { what, at, len, max });
        }
        self.need(len, what)?;
        Ok(len)
    }

    /// A string as engines decode it: invalid UTF-8 replaced, trailing NUL
    /// bytes (which some writers add) removed.
    fn string(&mut self, max: u64, what: &'static str) -> Result<String, HeaderError> {
        let len = self.string_len(max, what)?;
        let mut raw = self.bytes(len, what)?;
        while raw.last() == Some(&0) {
            raw.pop();
        }
        Ok(String::from_utf8_lossy(&raw).into_owned())
    }

    fn value(
        &mut self,
        ty: ValueType,
        key: &str,
        limits: &Limits,
        array_elements: &mut u64,
    ) -> Result<Value, HeaderError> {
        const WHAT: &str = "a metadata value";
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.array(WHAT)?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(WHAT)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(WHAT)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(WHAT)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(WHAT)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(WHAT)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(WHAT)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(WHAT)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(WHAT)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(WHAT)?)),
            ValueType::Bool => match self.array::<1>(WHAT)? {
                [0] => Value::Bool(false),
                [1] => Value::Bool(true),
                [byte] => {
                    return Err(HeaderError::BadBool {
                        key: key.to_owned(),
                        byte,
                    })
                }
            },
            ValueType::String => Value::String(self.string(limits.max_string_bytes, WHAT)?),
            ValueType::Array => self.array_value(key, limits, array_elements)?,
        })
    }

    /// Checks every element of an array and keeps its type and length.
    fn array_value(
        &mut self,
        key: &str,
        limits: &Limits,
        array_elements: &mut u64,
    ) -> Result<Value, HeaderError> {
        const WHAT: &str = "a metadata array";
        let code = self.u32(WHAT)?;
        let element = ValueType::from_code(code).ok_or_else(|| HeaderError::UnknownValueType {
            key: key.to_owned(),
            code,
        })?;
        if element == ValueType::Array {
            return Err(HeaderError::NestedArray {
                key: key.to_owned(),
            });
        }
        let len = self.len_field(WHAT)?;
        *array_elements = array_elements.saturating_add(len);
        if *array_elements > limits.max_array_elements {
            return Err(HeaderError::TooManyArrayElements {
                max: limits.max_array_elements,
            });
        }
        match (element, element.fixed_size()) {
            (ValueType::Bool, _) => {
                self.need(len, WHAT)?;
                let mut left = len;
                while left > 0 {
                    let chunk = left.min(64 << 10);
                    if let Some(&byte) = self.bytes(chunk, WHAT)?.iter().find(|b| **b > 1) {
                        return Err(HeaderError::BadBool {
                            key: key.to_owned(),
                            byte,
                        });
                    }
                    left -= chunk;
                }
            }
            (_, Some(size)) => {
                let total = len.saturating_mul(size);
                self.skip(total, WHAT)?;
            }
            (_, None) => {
                // Strings: each has at least its length field.
                let min = if self.wide { 8 } else { 4 };
                self.need(len.saturating_mul(min), WHAT)?;
                for _ in 0..len {
                    let n = self.string_len(limits.max_string_bytes, "a string in an array")?;
                    self.skip(n, "a string in an array")?;
                }
            }
        }
        Ok(Value::Array { element, len })
    }

    fn tensor_info(&mut self) -> Result<TensorInfo, HeaderError> {
        const WHAT: &str = "a tensor description";
        let name = self.string(MAX_TENSOR_NAME_BYTES, "a tensor name")?;
        let dims = self.u32(WHAT)?;
        if dims > MAX_DIMS {
            return Err(HeaderError::TooManyDims { tensor: name, dims });
        }
        let mut shape = Vec::with_capacity(dims as usize);
        for _ in 0..dims {
            shape.push(self.len_field(WHAT)?);
        }
        let code = self.u32(WHAT)?;
        let kind = TensorType::from_code(code).ok_or_else(|| HeaderError::UnknownTensorType {
            tensor: name.clone(),
            code,
        })?;
        let offset = self.u64(WHAT)?;
        let overflow = || HeaderError::SizeOverflow {
            tensor: name.clone(),
        };
        // Engines multiply the dimensions in a signed 64-bit or pointer-sized
        // integer: keep the element count below 2^63.
        let elements = shape
            .iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(*d))
            .filter(|n| i64::try_from(*n).is_ok())
            .ok_or_else(overflow)?;
        if elements % kind.block_elements != 0 {
            return Err(HeaderError::NotBlockMultiple {
                tensor: name,
                elements,
                block: kind.block_elements,
            });
        }
        let bytes = (elements / kind.block_elements)
            .checked_mul(kind.block_bytes)
            .ok_or_else(overflow)?;
        Ok(TensorInfo {
            name,
            dims: shape,
            kind,
            offset,
            bytes,
        })
    }
}

/// The entry point of the fuzz target (`fuzz/`), here so the corpus replay
/// in tests runs exactly what the fuzzer ran.
pub mod fuzzing {
    use super::{read_header, Limits};

    /// Reads `data` as a whole file; whatever it accepts must lie inside.
    pub fn header(data: &[u8]) {
        let len = data.len() as u64;
        if let Ok(h) = read_header(data, len, &Limits::default()) {
            assert!(h.data_offset <= h.data_end && h.data_end <= len);
            assert!(h.alignment.is_power_of_two());
            for t in &h.tensors {
                assert!(h.data_offset + t.offset + t.bytes <= len);
                assert_eq!(t.offset % h.alignment, 0);
            }
        }
    }
}
