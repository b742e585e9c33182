//! Checks a GGUF file before the engine sees it. mistralrs assumes a
//! well-formed file; a missing, truncated or foreign file must instead give
//! the operator one clear line and a non-zero exit. Reading the header also
//! yields the facts the load report publishes (name, quantization, context).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use gguf_header::{read_header, Header, HeaderError, Limits, Value};

/// What the worker learns from a GGUF header.
#[derive(Debug, Clone)]
pub struct GgufInfo {
    pub path: PathBuf,
    pub name: String,
    pub architecture: String,
    pub quantization: String,
    pub context_length: usize,
    /// The bytes one token's keys and values take in the engine's cache
    /// (F32 on the CPU); `None` when the header does not say enough.
    pub kv_bytes_per_token: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("model file {0} does not exist")]
    Missing(PathBuf),
    #[error("model file {path} cannot be read: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not a GGUF file, or one whose header is truncated, corrupt or
    /// claims more than the file holds (see `gguf_header`).
    #[error("model file {path} is not a usable GGUF file: {source}")]
    Invalid { path: PathBuf, source: HeaderError },
    #[error("model file {path} lacks the `{key}` metadata entry")]
    MissingMetadata { path: PathBuf, key: String },
}

/// Reads the header with every length, size and offset checked against
/// the file (`gguf_header`), so the engine's own, trusting reader of the
/// same file cannot be made to over-allocate, divide by zero or read past
/// the end.
pub fn inspect(path: &Path) -> Result<GgufInfo, GgufError> {
    if !path.exists() {
        return Err(GgufError::Missing(path.to_path_buf()));
    }
    let unreadable = |source| GgufError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(unreadable)?;
    let len = file.metadata().map_err(unreadable)?.len();
    let header = read_header(BufReader::new(file), len, &Limits::default()).map_err(|source| {
        GgufError::Invalid {
            path: path.to_path_buf(),
            source,
        }
    })?;

    let missing = |key: &str| GgufError::MissingMetadata {
        path: path.to_path_buf(),
        key: key.to_string(),
    };
    let architecture = header
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| missing("general.architecture"))?
        .to_string();
    let ctx_key = format!("{architecture}.context_length");
    let context_length = header
        .get(&ctx_key)
        .and_then(Value::as_u64)
        .ok_or_else(|| missing(&ctx_key))?;
    let name = header
        .get("general.name")
        .and_then(Value::as_str)
        .map_or_else(
            || {
                path.file_stem()
                    .map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned())
            },
            str::to_string,
        );
    let quantization = header
        .get("general.file_type")
        .and_then(Value::as_u64)
        .and_then(file_type_name)
        .map_or_else(|| dominant_type(&header), str::to_string);

    let kv_bytes_per_token = kv_bytes_per_token(&header, &architecture);
    Ok(GgufInfo {
        path: path.to_path_buf(),
        name,
        architecture,
        quantization,
        context_length: usize::try_from(context_length).unwrap_or(usize::MAX),
        kv_bytes_per_token,
    })
}

/// Layers × KV heads × (key + value width) × 4 bytes, from the header's
/// `{arch}.*` keys as llama.cpp names them. A head's width defaults to the
/// embedding width over the heads, and the KV heads to the heads (no
/// grouped-query attention). `None` when a key is missing or per layer.
fn kv_bytes_per_token(header: &Header, arch: &str) -> Option<u64> {
    let get = |key: &str| header.get(&format!("{arch}.{key}")).and_then(Value::as_u64);
    let layers = get("block_count")?;
    let heads = get("attention.head_count").filter(|&h| h > 0)?;
    let kv_heads = get("attention.head_count_kv").unwrap_or(heads);
    let width = get("embedding_length")? / heads;
    let key = get("attention.key_length").unwrap_or(width);
    let value = get("attention.value_length").unwrap_or(width);
    layers
        .checked_mul(kv_heads)?
        .checked_mul(key.checked_add(value)?)?
        .checked_mul(4)
}

/// The default model id of a local file: its name up to the first dot
/// (`SmolLM2-135M-Instruct.Q4_1.gguf` → `smollm2-135m-instruct`). File names
/// say which model it is; `general.name` is often a training-run label.
pub fn model_id_from_path(path: &Path) -> String {
    let name = path
        .file_name()
        .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
    model_id_from_name(name.split('.').next().unwrap_or_default())
}

/// A model id from a free-form name: lower case, spaces as dashes.
pub fn model_id_from_name(name: &str) -> String {
    name.trim()
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join("-")
}

/// llama.cpp's `general.file_type` codes for the common quantizations.
fn file_type_name(code: u64) -> Option<&'static str> {
    Some(match code {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        _ => return None,
    })
}

/// The tensor type most tensors have, when the file does not say.
fn dominant_type(header: &Header) -> String {
    let mut counts = std::collections::HashMap::new();
    for t in &header.tensors {
        *counts.entry(t.kind.name).or_insert(0usize) += 1;
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)))
        .map_or_else(|| "unknown".to_string(), |(k, _)| k.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn missing_file_is_reported() {
        let err = inspect(Path::new("/nonexistent/model.gguf")).unwrap_err();
        assert!(matches!(err, GgufError::Missing(_)), "{err}");
    }

    #[test]
    fn foreign_file_is_not_gguf() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"this is plainly not a model file").unwrap();
        let err = inspect(f.path()).unwrap_err();
        assert!(
            matches!(
                &err,
                GgufError::Invalid {
                    source: HeaderError::NotGguf,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn empty_file_is_not_gguf() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(matches!(
            inspect(f.path()),
            Err(GgufError::Invalid {
                source: HeaderError::Truncated { .. },
                ..
            })
        ));
    }

    #[test]
    fn model_ids_are_lower_case_and_dashed() {
        assert_eq!(
            model_id_from_name("SmolLM2 135M Instruct"),
            "smollm2-135m-instruct"
        );
        assert_eq!(model_id_from_name("  Llama  "), "llama");
        assert_eq!(
            model_id_from_path(Path::new("/m/SmolLM2-135M-Instruct.Q4_1.gguf")),
            "smollm2-135m-instruct"
        );
    }
}
