//! Replays the fuzz corpus (`fuzz/corpus/header`) and any crash the fuzzer
//! saved (`fuzz/artifacts/header`) through the fuzz target's entry point,
//! so every input the fuzzer kept or that once failed is checked on every
//! test run, without libFuzzer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use gguf_header::{read_header, Limits};

fn inputs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join("header")) else {
            continue;
        };
        files.extend(entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
    }
    files.sort();
    files
}

#[test]
fn header_corpus() {
    let files = inputs();
    let mut accepted = 0;
    for file in &files {
        let data = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(|| gguf_header::fuzzing::header(&data));
        assert!(outcome.is_ok(), "{} fails", file.display());
        accepted +=
            usize::from(read_header(&data[..], data.len() as u64, &Limits::default()).is_ok());
    }
    // The seeds (one valid file per version) are in it, so the corpus
    // reaches past the magic bytes.
    assert!(
        accepted >= 3,
        "{accepted} of {} inputs accepted",
        files.len()
    );
}
