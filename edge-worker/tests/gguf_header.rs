//! The checked GGUF header reader (`gguf-header`) against the engine's own
//! reader (candle's `gguf_file::Content`): on every file the checked reader
//! accepts — the real model, one file per tensor type, and the fuzz
//! corpus — the engine's reader succeeds too and agrees on where every
//! tensor's data lies and how large it is. That is what makes the checked
//! reader a guard: the engine never sees a header it would mis-size.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use gguf_header::build::Gguf;
use gguf_header::{read_header, Header, Limits, Value, TENSOR_TYPES};

/// Both readers on `bytes`; panics where they disagree. `None` when the
/// checked reader refuses the file.
fn compare(bytes: &[u8], what: &str) -> Option<Header> {
    let ours = read_header(bytes, bytes.len() as u64, &Limits::default()).ok()?;
    let theirs = Content::read(&mut Cursor::new(bytes)).unwrap_or_else(|e| {
        panic!("{what}: accepted by the checked reader, refused by candle: {e}")
    });
    assert_eq!(theirs.tensor_data_offset, ours.data_offset, "{what}");
    assert_eq!(theirs.tensor_infos.len(), ours.tensors.len(), "{what}");
    for t in &ours.tensors {
        let c = &theirs.tensor_infos[&t.name];
        assert_eq!(c.offset, t.offset, "{what}: {}", t.name);
        let dtype = c.ggml_dtype;
        assert_eq!(
            dtype.block_size() as u64,
            t.kind.block_elements,
            "{what}: {}",
            t.kind.name
        );
        assert_eq!(
            dtype.type_size() as u64,
            t.kind.block_bytes,
            "{what}: {}",
            t.kind.name
        );
        let candle_bytes = c.shape.elem_count() / dtype.block_size() * dtype.type_size();
        assert_eq!(candle_bytes as u64, t.bytes, "{what}: {}", t.name);
        let mut dims: Vec<u64> = c.shape.dims().iter().map(|d| *d as u64).collect();
        dims.reverse();
        assert_eq!(dims, t.dims, "{what}: {}", t.name);
    }
    Some(ours)
}

#[test]
fn the_real_model_reads_the_same() {
    let bytes = std::fs::read(common::model_path()).unwrap();
    let h = compare(&bytes, "real model").expect("the real model is accepted");
    assert_eq!(
        h.get("general.architecture").and_then(Value::as_str),
        Some("llama")
    );
    assert!(h.tensors.len() > 100, "{}", h.tensors.len());
}

#[test]
fn every_tensor_type_is_sized_as_candle_sizes_it() {
    for t in TENSOR_TYPES {
        let bytes = Gguf::new()
            .tensor("a", &[t.block_elements * 3, 2], t)
            .tensor("b", &[t.block_elements], t)
            .to_bytes();
        compare(&bytes, t.name).unwrap_or_else(|| panic!("{} refused", t.name));
    }
}

#[test]
fn the_fuzz_corpus_is_accepted_only_where_candle_agrees() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gguf-header/fuzz/corpus/header");
    let mut accepted = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        accepted += usize::from(compare(&bytes, &path.display().to_string()).is_some());
    }
    assert!(accepted >= 3, "{accepted}");
}
