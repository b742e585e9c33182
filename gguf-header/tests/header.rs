//! Every way a header can lie gets a clear error, never a panic, and a
//! valid file reads back as written.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gguf_header::build::Gguf;
use gguf_header::{read_header, Header, HeaderError, Limits, TensorType, Value, ValueType};

fn kind(name: &str) -> TensorType {
    gguf_header::TENSOR_TYPES
        .iter()
        .copied()
        .find(|t| t.name == name)
        .unwrap()
}

fn read(bytes: &[u8]) -> Result<Header, HeaderError> {
    read_header(bytes, bytes.len() as u64, &Limits::default())
}

fn model(version: u32) -> Gguf {
    let mut g = Gguf::new()
        .meta("general.architecture", Value::String("llama".into()))
        .meta("llama.context_length", Value::U32(2048))
        .meta("general.file_type", Value::U32(3))
        .meta("a.u8", Value::U8(7))
        .meta("a.i8", Value::I8(-7))
        .meta("a.u16", Value::U16(700))
        .meta("a.i16", Value::I16(-700))
        .meta("a.i32", Value::I32(-70_000))
        .meta("a.u64", Value::U64(1 << 40))
        .meta("a.i64", Value::I64(-(1 << 40)))
        .meta("a.f32", Value::F32(0.5))
        .meta("a.f64", Value::F64(0.25))
        .meta("a.bool", Value::Bool(true))
        .meta(
            "tokenizer.ggml.tokens",
            Value::Array {
                element: ValueType::String,
                len: 5,
            },
        )
        .meta(
            "tokenizer.ggml.scores",
            Value::Array {
                element: ValueType::F32,
                len: 5,
            },
        )
        .tensor("token_embd.weight", &[64, 5], kind("Q4_1"))
        .tensor("output_norm.weight", &[64], kind("F32"))
        .tensor("blk.0.ffn_down.weight", &[256, 2], kind("Q6_K"));
    g.version = version;
    g
}

#[test]
fn a_valid_file_reads_back_as_written() {
    for version in [1, 2, 3] {
        let bytes = model(version).to_bytes();
        let h = read(&bytes).unwrap_or_else(|e| panic!("v{version}: {e}"));
        assert_eq!(h.version, version);
        assert_eq!(h.alignment, 32);
        assert_eq!(h.data_offset % 32, 0);
        assert_eq!(
            h.get("general.architecture").and_then(Value::as_str),
            Some("llama")
        );
        assert_eq!(
            h.get("llama.context_length").and_then(Value::as_u64),
            Some(2048)
        );
        assert_eq!(h.get("a.i64"), Some(&Value::I64(-(1 << 40))));
        assert_eq!(h.get("a.i8").and_then(Value::as_u64), None);
        assert_eq!(
            h.get("tokenizer.ggml.tokens"),
            Some(&Value::Array {
                element: ValueType::String,
                len: 5
            })
        );
        let sizes: Vec<(&str, u64, u64)> = h
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.offset, t.bytes))
            .collect();
        // Q4_1: 320 elements = 10 blocks of 20 bytes; F32: 64 × 4 bytes;
        // Q6_K: 512 elements = 2 blocks of 210 bytes. Offsets aligned to 32.
        assert_eq!(
            sizes,
            [
                ("token_embd.weight", 0, 200),
                ("output_norm.weight", 224, 256),
                ("blk.0.ffn_down.weight", 480, 420),
            ]
        );
        assert_eq!(h.data_end, h.data_offset + 480 + 420);
        assert!(h.data_end <= bytes.len() as u64);
    }
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = model(3).to_bytes();
    let full = read(&bytes).unwrap();
    for cut in 0..bytes.len() as u64 {
        let result = read(&bytes[..cut as usize]);
        if cut >= full.data_end {
            // Only the padding after the last tensor is gone.
            assert_eq!(result.as_ref().ok(), Some(&full), "cut at {cut}");
            continue;
        }
        let err = result.expect_err("a truncated file must be refused");
        if cut < full.data_offset - 31 {
            // Inside the header (which ends at most 31 bytes of padding
            // before the data): cut while reading a field.
            assert!(
                matches!(err, HeaderError::Truncated { .. }),
                "cut at {cut}: {err}"
            );
        } else if cut >= full.data_offset {
            assert!(
                matches!(err, HeaderError::PastEnd { .. }),
                "cut at {cut}: {err}"
            );
        }
    }
}

/// Bytes of a v3 file by hand, for headers the builder would not write.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn v3(tensors: u64, kvs: u64) -> Raw {
        Raw(Vec::new()).b(b"GGUF").u32(3).u64(tensors).u64(kvs)
    }
    fn b(mut self, b: &[u8]) -> Raw {
        self.0.extend(b);
        self
    }
    fn u32(self, v: u32) -> Raw {
        self.b(&v.to_le_bytes())
    }
    fn u64(self, v: u64) -> Raw {
        self.b(&v.to_le_bytes())
    }
    fn s(self, s: &str) -> Raw {
        self.u64(s.len() as u64).b(s.as_bytes())
    }
    /// A tensor description: name, dims, type code, offset.
    fn t(self, name: &str, dims: &[u64], code: u32, offset: u64) -> Raw {
        let mut r = self.s(name).u32(dims.len() as u32);
        for d in dims {
            r = r.u64(*d);
        }
        r.u32(code).u64(offset)
    }
    fn pad(mut self, n: usize) -> Raw {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}

#[allow(clippy::needless_pass_by_value)] // reads as `err(Raw::v3(..)...)`
fn err(raw: Raw) -> HeaderError {
    read(&raw.0).expect_err("must be refused")
}

#[test]
fn foreign_files_and_versions() {
    assert!(matches!(
        err(Raw::default().b(b"GGML\x03\0\0\0")),
        HeaderError::NotGguf
    ));
    assert!(matches!(
        err(Raw::default().b(b"FUGG\x03\0\0\0")),
        HeaderError::NotGguf
    ));
    assert!(matches!(
        err(Raw::default().b(b"GGUF").u32(4)),
        HeaderError::UnsupportedVersion(4)
    ));
    // A big-endian file: version 3 reads as 0x03000000.
    assert!(matches!(
        err(Raw::default().b(b"GGUF").b(&3u32.to_be_bytes())),
        HeaderError::UnsupportedVersion(0x0300_0000)
    ));
    assert!(matches!(
        err(Raw::default().b(b"GG")),
        HeaderError::Truncated { .. }
    ));
}

#[test]
fn lengths_are_checked_before_anything_is_allocated() {
    // A key claiming u64::MAX bytes, then one claiming a little more than
    // the file has.
    assert!(matches!(
        err(Raw::v3(0, 1).u64(u64::MAX)),
        HeaderError::TooLong { len: u64::MAX, .. }
    ));
    assert!(matches!(
        err(Raw::v3(0, 1).u64(1000).b(b"short")),
        HeaderError::Truncated { needed: 995, .. }
    ));
    // A string value, and a string inside an array, past the limit.
    let tiny = Limits {
        max_string_bytes: 8,
        ..Limits::default()
    };
    let raw = Raw::v3(0, 1).s("k").u32(8).s("123456789").0;
    assert!(matches!(
        read_header(&raw[..], raw.len() as u64, &tiny),
        Err(HeaderError::TooLong { len: 9, max: 8, .. })
    ));
    let raw = Raw::v3(0, 1).s("k").u32(9).u32(8).u64(1).s("123456789").0;
    assert!(matches!(
        read_header(&raw[..], raw.len() as u64, &tiny),
        Err(HeaderError::TooLong { len: 9, .. })
    ));
    // Arrays: a count beyond the limit, beyond the file, and with a
    // multiplication that would overflow.
    assert!(matches!(
        err(Raw::v3(0, 1).s("k").u32(9).u32(0).u64(u64::MAX)),
        HeaderError::TooManyArrayElements { .. }
    ));
    assert!(matches!(
        err(Raw::v3(0, 1).s("k").u32(9).u32(10).u64(1000).pad(16)),
        HeaderError::Truncated { .. }
    ));
    let small = Limits {
        max_array_elements: u64::MAX,
        ..Limits::default()
    };
    let raw = Raw::v3(0, 1)
        .s("k")
        .u32(9)
        .u32(10)
        .u64(u64::MAX / 4)
        .pad(64)
        .0;
    assert!(matches!(
        read_header(&raw[..], raw.len() as u64, &small),
        Err(HeaderError::Truncated { .. })
    ));
    let raw = Raw::v3(0, 1)
        .s("k")
        .u32(9)
        .u32(8)
        .u64(u64::MAX / 4)
        .pad(64)
        .0;
    assert!(matches!(
        read_header(&raw[..], raw.len() as u64, &small),
        Err(HeaderError::Truncated { .. })
    ));
    // The array elements of all arrays count together.
    let two = Limits {
        max_array_elements: 5,
        ..Limits::default()
    };
    let raw = Raw::v3(0, 2)
        .s("a")
        .u32(9)
        .u32(0)
        .u64(3)
        .pad(3)
        .s("b")
        .u32(9)
        .u32(0)
        .u64(3)
        .pad(3)
        .0;
    assert!(matches!(
        read_header(&raw[..], raw.len() as u64, &two),
        Err(HeaderError::TooManyArrayElements { max: 5 })
    ));
    // Counts of tensors beyond the limit.
    assert!(matches!(
        err(Raw::v3(u64::MAX, 0)),
        HeaderError::TooManyTensors { .. }
    ));
}

#[test]
fn values_must_be_what_the_format_allows() {
    assert!(matches!(
        err(Raw::v3(0, 1).s("k").u32(13).pad(8)),
        HeaderError::UnknownValueType { code: 13, .. }
    ));
    assert!(matches!(
        err(Raw::v3(0, 1)
            .s("k")
            .u32(9)
            .u32(9)
            .u64(1)
            .u32(0)
            .u64(1)
            .pad(1)),
        HeaderError::NestedArray { .. }
    ));
    assert!(matches!(
        err(Raw::v3(0, 1).s("k").u32(7).b(&[2])),
        HeaderError::BadBool { byte: 2, .. }
    ));
    assert!(matches!(
        err(Raw::v3(0, 1).s("k").u32(9).u32(7).u64(3).b(&[0, 1, 9])),
        HeaderError::BadBool { byte: 9, .. }
    ));
    assert!(matches!(
        err(Raw::v3(0, 2).s("k").u32(0).b(&[1]).s("k").u32(0).b(&[2])),
        HeaderError::DuplicateKey(k) if k == "k"
    ));
    // Trailing NUL bytes are not part of a key (as engines read them).
    assert!(matches!(
        err(Raw::v3(0, 2).s("k").u32(0).b(&[1]).s("k\0").u32(0).b(&[2])),
        HeaderError::DuplicateKey(_)
    ));
}

#[test]
fn alignment_must_be_a_u32_power_of_two() {
    for (code, value) in [(4u32, 0u64), (4, 3), (4, 48), (10, 64), (5, 32)] {
        let mut raw = Raw::v3(0, 1).s("general.alignment").u32(code);
        raw = if code == 10 {
            raw.u64(value)
        } else {
            raw.u32(value as u32)
        };
        assert!(
            matches!(err(raw), HeaderError::BadAlignment(_)),
            "type {code} value {value}"
        );
    }
    let ok = Raw::v3(0, 1).s("general.alignment").u32(4).u32(64).pad(16);
    let h = read(&ok.0).unwrap();
    assert_eq!((h.alignment, h.data_offset), (64, 64));
}

#[test]
fn tensors_must_fit_the_file() {
    let one = |dims: &[u64], code: u32, offset: u64, data: usize| {
        let raw = Raw::v3(1, 0).t("w", dims, code, offset);
        let header = raw.0.len();
        let raw = raw.pad(header.next_multiple_of(32) - header + data);
        read(&raw.0)
    };
    assert_eq!(one(&[32, 2], 2, 0, 36).unwrap().tensors[0].bytes, 36);
    assert!(matches!(
        one(&[32, 2], 2, 0, 35),
        Err(HeaderError::PastEnd { .. })
    ));
    assert!(matches!(
        one(&[1, 1, 1, 1, 1], 0, 0, 4),
        Err(HeaderError::TooManyDims { dims: 5, .. })
    ));
    assert!(matches!(
        one(&[u64::MAX, 2], 0, 0, 0),
        Err(HeaderError::SizeOverflow { .. })
    ));
    assert!(matches!(
        one(&[1 << 32, 1 << 31], 0, 0, 0),
        Err(HeaderError::SizeOverflow { .. })
    ));
    assert!(matches!(
        one(&[1 << 62], 0, 0, 0),
        Err(HeaderError::SizeOverflow { .. })
    ));
    assert!(matches!(
        one(&[33], 2, 0, 64),
        Err(HeaderError::NotBlockMultiple {
            elements: 33,
            block: 32,
            ..
        })
    ));
    assert!(matches!(
        one(&[1], 0, 1, 64),
        Err(HeaderError::Misaligned { offset: 1, .. })
    ));
    assert!(matches!(
        one(&[1], 0, u64::MAX - 31, 64),
        Err(HeaderError::SizeOverflow { .. })
    ));
    assert!(matches!(
        one(&[1], 0, 1 << 40, 64),
        Err(HeaderError::PastEnd { .. })
    ));
    for code in [4, 5, 16, 29, 31, u32::MAX] {
        assert!(
            matches!(
                one(&[1], code, 0, 64),
                Err(HeaderError::UnknownTensorType { .. })
            ),
            "type {code}"
        );
    }
    // Zero elements: no data needed.
    assert_eq!(one(&[0, 4], 0, 0, 0).unwrap().tensors[0].bytes, 0);
    // Names: at most 64 bytes, and unique.
    let long = "x".repeat(65);
    assert!(matches!(
        err(Raw::v3(1, 0).t(&long, &[1], 0, 0).pad(64)),
        HeaderError::TooLong { len: 65, .. }
    ));
    assert!(matches!(
        err(Raw::v3(2, 0)
            .t("w", &[1], 0, 0)
            .t("w", &[1], 0, 32)
            .pad(128)),
        HeaderError::DuplicateTensor(_)
    ));
}

#[test]
fn a_file_without_tensors_still_has_its_padding() {
    // Found by the fuzzer: a 24-byte header whose padding to 32 is cut.
    assert!(matches!(
        err(Raw::v3(0, 0)),
        HeaderError::Truncated {
            at: 24,
            needed: 8,
            ..
        }
    ));
    let h = read(&Raw::v3(0, 0).pad(8).0).unwrap();
    assert_eq!((h.data_offset, h.data_end), (32, 32));
}

#[test]
fn the_header_size_is_bounded() {
    let bytes = model(3).to_bytes();
    let limits = Limits {
        max_header_bytes: 64,
        ..Limits::default()
    };
    assert!(matches!(
        read_header(&bytes[..], bytes.len() as u64, &limits),
        Err(HeaderError::TooLong {
            what: "the header",
            ..
        })
    ));
}

#[test]
fn a_file_shorter_than_its_stated_length_is_an_io_error() {
    // The reader has fewer bytes than the length the caller gave: the file
    // changed while it was read.
    let bytes = model(3).to_bytes();
    let err = read_header(&bytes[..100], bytes.len() as u64, &Limits::default()).unwrap_err();
    assert!(matches!(err, HeaderError::Io(_)), "{err}");
}
