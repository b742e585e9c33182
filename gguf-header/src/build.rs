//! Writes small, valid GGUF files: test models and fuzzing seeds.

use crate::{TensorType, Value, ValueType, DEFAULT_ALIGNMENT};

/// A GGUF file to write: metadata, then tensors whose data is zeros.
#[derive(Debug, Clone)]
pub struct Gguf {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    /// Name, dimensions (fastest-varying first) and type.
    pub tensors: Vec<(String, Vec<u64>, TensorType)>,
}

impl Gguf {
    /// Version 3, no metadata, no tensors.
    #[must_use]
    pub fn new() -> Self {
        Self {
            version: 3,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    #[must_use]
    pub fn meta(mut self, key: &str, value: Value) -> Self {
        self.metadata.push((key.to_owned(), value));
        self
    }

    #[must_use]
    pub fn tensor(mut self, name: &str, dims: &[u64], kind: TensorType) -> Self {
        self.tensors.push((name.to_owned(), dims.to_vec(), kind));
        self
    }

    /// The file's bytes. Arrays are written with `len` zero (or empty
    /// string) elements; tensor data is zeros, each tensor aligned.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let alignment = self
            .metadata
            .iter()
            .find_map(|(k, v)| match v {
                Value::U32(a) if k == "general.alignment" && *a > 0 => Some(u64::from(*a)),
                _ => None,
            })
            .unwrap_or(DEFAULT_ALIGNMENT);
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        self.len(&mut out, self.tensors.len() as u64);
        self.len(&mut out, self.metadata.len() as u64);
        for (key, value) in &self.metadata {
            self.string(&mut out, key);
            out.extend(type_code(value).to_le_bytes());
            self.value(&mut out, value);
        }
        let mut offset = 0u64;
        let mut sizes = Vec::new();
        for (name, dims, kind) in &self.tensors {
            self.string(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                self.len(&mut out, *d);
            }
            out.extend(kind.code.to_le_bytes());
            out.extend(offset.to_le_bytes());
            let elements: u64 = dims.iter().product();
            let bytes = elements / kind.block_elements * kind.block_bytes;
            sizes.push(bytes);
            offset = (offset + bytes).next_multiple_of(alignment);
        }
        let data_start = (out.len() as u64).next_multiple_of(alignment);
        out.resize(
            usize::try_from(data_start + offset).unwrap_or(usize::MAX),
            0,
        );
        out
    }

    fn len(&self, out: &mut Vec<u8>, n: u64) {
        if self.version == 1 {
            out.extend((n as u32).to_le_bytes());
        } else {
            out.extend(n.to_le_bytes());
        }
    }

    fn string(&self, out: &mut Vec<u8>, s: &str) {
        self.len(out, s.len() as u64);
        out.extend(s.as_bytes());
    }

    fn value(&self, out: &mut Vec<u8>, value: &Value) {
        match value {
            Value::U8(v) => out.push(*v),
            Value::I8(v) => out.extend(v.to_le_bytes()),
            Value::U16(v) => out.extend(v.to_le_bytes()),
            Value::I16(v) => out.extend(v.to_le_bytes()),
            Value::U32(v) => out.extend(v.to_le_bytes()),
            Value::I32(v) => out.extend(v.to_le_bytes()),
            Value::U64(v) => out.extend(v.to_le_bytes()),
            Value::I64(v) => out.extend(v.to_le_bytes()),
            Value::F32(v) => out.extend(v.to_le_bytes()),
            Value::F64(v) => out.extend(v.to_le_bytes()),
            Value::Bool(v) => out.push(u8::from(*v)),
            Value::String(s) => self.string(out, s),
            Value::Array { element, len } => {
                out.extend(element.code().to_le_bytes());
                self.len(out, *len);
                for _ in 0..*len {
                    match element.fixed_size() {
                        Some(size) => out.extend(std::iter::repeat_n(0u8, size as usize)),
                        None => self.len(out, 0),
                    }
                }
            }
        }
    }
}

impl Default for Gguf {
    fn default() -> Self {
        Self::new()
    }
}

fn type_code(value: &Value) -> u32 {
    match value {
        Value::U8(_) => ValueType::U8,
        Value::I8(_) => ValueType::I8,
        Value::U16(_) => ValueType::U16,
        Value::I16(_) => ValueType::I16,
        Value::U32(_) => ValueType::U32,
        Value::I32(_) => ValueType::I32,
        Value::U64(_) => ValueType::U64,
        Value::I64(_) => ValueType::I64,
        Value::F32(_) => ValueType::F32,
        Value::F64(_) => ValueType::F64,
        Value::Bool(_) => ValueType::Bool,
        Value::String(_) => ValueType::String,
        Value::Array { .. } => ValueType::Array,
    }
    .code()
}
