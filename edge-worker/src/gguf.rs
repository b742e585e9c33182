//! Checks a GGUF file before the engine sees it. mistralrs assumes a
//! well-formed file; a missing, truncated or foreign file must instead give
//! the operator one clear line and a non-zero exit. Reading the header also
//! yields the facts the load report publishes (name, quantization, context).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;

/// What the worker learns from a GGUF header.
#[derive(Debug, Clone)]
pub struct GgufInfo {
    pub path: PathBuf,
    pub name: String,
    pub architecture: String,
    pub quantization: String,
    pub context_length: usize,
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
    #[error("model file {0} is not a GGUF file (bad magic or unreadable header)")]
    NotGguf(PathBuf),
    #[error("model file {path} is truncated: {actual} bytes, the tensors need {needed}")]
    Truncated {
        path: PathBuf,
        actual: u64,
        needed: u64,
    },
    #[error("model file {path} lacks the `{key}` metadata entry")]
    MissingMetadata { path: PathBuf, key: String },
}

/// Parses the header and checks that every tensor's data lies inside the file.
pub fn inspect(path: &Path) -> Result<GgufInfo, GgufError> {
    if !path.exists() {
        return Err(GgufError::Missing(path.to_path_buf()));
    }
    let unreadable = |source| GgufError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(unreadable)?;
    let actual = file.metadata().map_err(unreadable)?.len();
    let content = Content::read(&mut BufReader::new(file))
        .map_err(|_| GgufError::NotGguf(path.to_path_buf()))?;

    let needed = content
        .tensor_infos
        .values()
        .map(|t| {
            let dtype = t.ggml_dtype;
            let bytes = t.shape.elem_count() / dtype.block_size() * dtype.type_size();
            t.offset + bytes as u64
        })
        .max()
        .unwrap_or(0)
        + content.tensor_data_offset;
    if needed > actual {
        return Err(GgufError::Truncated {
            path: path.to_path_buf(),
            actual,
            needed,
        });
    }

    let meta_str = |key: &str| -> Option<String> {
        content
            .metadata
            .get(key)
            .and_then(|v| v.to_string().ok().cloned())
    };
    let missing = |key: &str| GgufError::MissingMetadata {
        path: path.to_path_buf(),
        key: key.to_string(),
    };
    let architecture =
        meta_str("general.architecture").ok_or_else(|| missing("general.architecture"))?;
    let ctx_key = format!("{architecture}.context_length");
    let context_length = content
        .metadata
        .get(&ctx_key)
        .and_then(|v| v.to_u64().ok())
        .ok_or_else(|| missing(&ctx_key))?;
    let name = meta_str("general.name").unwrap_or_else(|| {
        path.file_stem()
            .map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned())
    });
    let quantization = content
        .metadata
        .get("general.file_type")
        .and_then(|v| v.to_u32().ok())
        .and_then(file_type_name)
        .map_or_else(|| dominant_dtype(&content), str::to_string);

    Ok(GgufInfo {
        path: path.to_path_buf(),
        name,
        architecture,
        quantization,
        context_length: usize::try_from(context_length).unwrap_or(usize::MAX),
    })
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
fn file_type_name(code: u32) -> Option<&'static str> {
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

fn dominant_dtype(content: &Content) -> String {
    let mut counts = std::collections::HashMap::new();
    for t in content.tensor_infos.values() {
        *counts
            .entry(format!("{:?}", t.ggml_dtype))
            .or_insert(0usize) += 1;
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
        .map_or_else(|| "unknown".to_string(), |(k, _)| k)
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
        assert!(matches!(err, GgufError::NotGguf(_)), "{err}");
    }

    #[test]
    fn empty_file_is_not_gguf() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(matches!(inspect(f.path()), Err(GgufError::NotGguf(_))));
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
