//! Writes the fuzzing seeds: small valid GGUF files of every version, value
//! type and tensor type. `cargo run -p gguf-header --example seeds -- DIR`

use gguf_header::build::Gguf;
use gguf_header::{Value, ValueType, TENSOR_TYPES};

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| ".".into());
    std::fs::create_dir_all(&dir)?;
    for version in [1, 2, 3] {
        let mut g = Gguf::new()
            .meta("general.architecture", Value::String("llama".into()))
            .meta("llama.context_length", Value::U32(2048))
            .meta("general.alignment", Value::U32(32))
            .meta("b", Value::Bool(true))
            .meta("i", Value::I64(-1))
            .meta("f", Value::F64(0.5))
            .meta(
                "t",
                Value::Array {
                    element: ValueType::String,
                    len: 3,
                },
            )
            .meta(
                "s",
                Value::Array {
                    element: ValueType::U16,
                    len: 3,
                },
            );
        g.version = version;
        for (i, t) in TENSOR_TYPES.iter().enumerate() {
            g = g.tensor(&format!("w{i}"), &[t.block_elements, 2], *t);
        }
        std::fs::write(format!("{dir}/v{version}"), g.to_bytes())?;
    }
    Ok(())
}
