//! Replays the fuzz corpora (`fuzz/corpus/<target>`) and any crash the
//! fuzzer saved (`fuzz/artifacts/<target>`) through the same entry points
//! the fuzz targets call, so every input the fuzzer kept or that once
//! failed is checked on every test run, without libFuzzer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        files.extend(entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
    }
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no corpus for {target}");
    for file in files {
        let data = std::fs::read(&file).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} fails", file.display());
    }
}

#[test]
fn request_corpus() {
    replay("request", gateway::fuzzing::request);
}

#[test]
fn sse_corpus() {
    replay("sse", gateway::fuzzing::sse);
}

#[test]
fn detectors_corpus() {
    replay("detectors", gateway::fuzzing::detectors);
}
