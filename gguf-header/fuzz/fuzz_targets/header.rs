#![no_main]

// Any bytes: the reader returns, without panicking, and what it accepts
// lies inside the input.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gguf_header::fuzzing::header(data));
