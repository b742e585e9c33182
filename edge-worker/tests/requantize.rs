//! Re-quantizing the real model: `auto` keeps its Q4_1 (which has a SIMD
//! kernel), `q8_0` converts it within Q8_0's rounding, metadata survives,
//! and the result is cached.

#![allow(clippy::unwrap_used)]
use crate::common;

use std::fs::File;
use std::io::BufReader;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use edge_worker::requantize::{prepare, Requantize};

fn read(path: &std::path::Path) -> (Content, BufReader<File>) {
    let mut r = BufReader::new(File::open(path).unwrap());
    (Content::read(&mut r).unwrap(), r)
}

#[test]
fn auto_keeps_q4_1_and_q8_0_converts_it_within_rounding() {
    let src = common::model_path();
    let cache = tempfile::tempdir().unwrap();

    assert_eq!(prepare(&src, Requantize::Off, cache.path()).unwrap(), src);
    assert_eq!(prepare(&src, Requantize::Auto, cache.path()).unwrap(), src);

    let out = prepare(&src, Requantize::Q8_0, cache.path()).unwrap();
    assert_ne!(out, src);
    let (orig, mut orig_r) = read(&src);
    let (conv, mut conv_r) = read(&out);

    assert_eq!(orig.tensor_infos.len(), conv.tensor_infos.len());
    assert!(orig
        .tensor_infos
        .values()
        .any(|t| t.ggml_dtype == GgmlDType::Q4_1));
    assert!(conv
        .tensor_infos
        .values()
        .all(|t| t.ggml_dtype != GgmlDType::Q4_1));
    assert_eq!(
        conv.metadata["general.file_type"].to_u32().unwrap(),
        7,
        "file type says Q8_0"
    );
    for key in [
        "tokenizer.chat_template",
        "tokenizer.ggml.tokens",
        "llama.context_length",
    ] {
        assert!(conv.metadata.contains_key(key), "{key} lost");
    }

    // Every weight of one converted tensor lies within half a Q8_0 step of
    // the original (a step is the block's largest magnitude / 127), plus the
    // error of storing that step as f16 (relative 2^-11, times up to 127
    // steps: 0.062 of a step).
    let name = "blk.0.attn_q.weight";
    assert_eq!(orig.tensor_infos[name].ggml_dtype, GgmlDType::Q4_1);
    let a = orig.tensor(&mut orig_r, name, &Device::Cpu).unwrap();
    let b = conv.tensor(&mut conv_r, name, &Device::Cpu).unwrap();
    let a: Vec<f32> = a
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = b
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (block_a, block_b) in a.chunks(32).zip(b.chunks(32)) {
        let step = block_a.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        for (x, y) in block_a.iter().zip(block_b) {
            assert!(
                (x - y).abs() <= step * 0.563 + 1e-6,
                "{x} vs {y} (step {step})"
            );
        }
    }

    // A second start reuses the cached file instead of converting again.
    let modified = std::fs::metadata(&out).unwrap().modified().unwrap();
    assert_eq!(prepare(&src, Requantize::Q8_0, cache.path()).unwrap(), out);
    assert_eq!(
        std::fs::metadata(&out).unwrap().modified().unwrap(),
        modified
    );
}
