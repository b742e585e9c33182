//! Re-quantizes a GGUF file's weights into a type candle has SIMD kernels
//! for, once, before mistralrs loads it.
//!
//! candle (mistralrs's tensor library, patched in `vendor/candle-core`) has
//! AVX/NEON dot products for Q4_0, Q4_1 (AVX2, our patch), Q8_0 and the
//! K-quants, but only scalar code for Q5_0 and Q5_1, which decode several
//! times slower. `auto` converts those to Q8_0: same block size (32), and
//! close to lossless, since Q8_0's 255 levels per block represent any
//! 5-bit block to within 1/254 of the block's largest weight. The explicit
//! targets also convert Q4_1 (whose NEON path is still scalar). The
//! converted file is cached, so the cost (about a second for a 135M model)
//! is paid once per model file.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

/// What to do with weights that lack fast kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Requantize {
    /// Convert tensors without a SIMD kernel here (Q5_0, Q5_1; Q4_1 where
    /// AVX2 is missing) to Q8_0; leave the rest.
    Auto,
    /// Load the file as it is.
    Off,
    /// Convert every Q4_1, Q5_0 and Q5_1 tensor to Q8_0.
    #[value(name = "q8_0")]
    Q8_0,
    /// Convert every Q4_1, Q5_0 and Q5_1 tensor to Q4_0 (smaller, lossier).
    #[value(name = "q4_0")]
    Q4_0,
}

#[derive(Debug, thiserror::Error)]
pub enum RequantError {
    #[error("cannot re-quantize {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot re-quantize {path}: {message}")]
    Tensor { path: PathBuf, message: String },
}

/// Types whose dot products candle computes without SIMD on this target.
fn is_slow(dtype: GgmlDType) -> bool {
    match dtype {
        GgmlDType::Q5_0 | GgmlDType::Q5_1 => true,
        GgmlDType::Q4_1 => !cfg!(target_feature = "avx2"),
        _ => false,
    }
}

/// Types an explicit target (`q8_0`, `q4_0`) converts.
fn is_legacy(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1)
}

/// Returns the file mistralrs should load: `src` itself when nothing needs
/// converting, else a cached converted copy in `cache_dir`.
pub fn prepare(src: &Path, mode: Requantize, cache_dir: &Path) -> Result<PathBuf, RequantError> {
    let (target, converts): (_, fn(GgmlDType) -> bool) = match mode {
        Requantize::Off => return Ok(src.to_path_buf()),
        Requantize::Auto => (GgmlDType::Q8_0, is_slow),
        Requantize::Q8_0 => (GgmlDType::Q8_0, is_legacy),
        Requantize::Q4_0 => (GgmlDType::Q4_0, is_legacy),
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RequantError::Io { path, source }
    };
    let tensor_err = |e: candle_core::Error| RequantError::Tensor {
        path: src.to_path_buf(),
        message: e.to_string(),
    };

    let mut reader = BufReader::new(File::open(src).map_err(io(src))?);
    let content = Content::read(&mut reader).map_err(tensor_err)?;
    if !content
        .tensor_infos
        .values()
        .any(|t| converts(t.ggml_dtype))
    {
        return Ok(src.to_path_buf());
    }

    let stem = src
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let len = std::fs::metadata(src).map_err(io(src))?.len();
    // The source's size in the name invalidates the cache when the file
    // under the same name changes.
    let out = cache_dir.join(format!("{stem}.{len}.{target:?}.gguf"));
    if out.exists() {
        return Ok(out);
    }
    std::fs::create_dir_all(cache_dir).map_err(io(cache_dir))?;

    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(&str, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let q = content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(tensor_err)?;
        let q = if converts(q.dtype()) {
            let dense = q.dequantize(&Device::Cpu).map_err(tensor_err)?;
            QTensor::quantize(&dense, target).map_err(tensor_err)?
        } else {
            q
        };
        tensors.push((name.as_str(), q));
    }

    let file_type = Value::U32(match target {
        GgmlDType::Q4_0 => 2,
        _ => 7,
    });
    let metadata: Vec<(&str, &Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| {
            if k == "general.file_type" {
                (k.as_str(), &file_type)
            } else {
                (k.as_str(), v)
            }
        })
        .collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();

    // Write under a temporary name and rename, so a crash never leaves a
    // half-written file that a later start would trust.
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut w = BufWriter::new(File::create(&tmp).map_err(io(&tmp))?);
        gguf_file::write(&mut w, &metadata, &tensor_refs).map_err(tensor_err)?;
        std::io::Write::flush(&mut w).map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &out).map_err(io(&out))?;
    Ok(out)
}
