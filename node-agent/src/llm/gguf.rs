//! Reading a GGUF file's header (no weights) to know what a model will need before loading
//! it: the architecture and the dimensions the memory estimate takes.

use std::path::Path;

use llama_cpp_2::gguf::GgufContext;

use edgefleet_protocol::llm::GgufShape;

// GGUF value types (gguf.h); reading a key with the wrong getter aborts inside llama.cpp, so
// every read checks the type first.
const GGUF_TYPE_UINT32: u32 = 4;
const GGUF_TYPE_INT32: u32 = 5;
const GGUF_TYPE_STRING: u32 = 8;
const GGUF_TYPE_UINT64: u32 = 10;

/// The header of `path`, or why it is not a usable GGUF language model.
pub fn read_shape(path: &Path) -> Result<GgufShape, String> {
    let weights_bytes = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .len();
    let gguf = GgufContext::from_file(path)
        .ok_or_else(|| "not a GGUF file (the header does not parse)".to_string())?;
    let architecture = string(&gguf, "general.architecture")
        .ok_or_else(|| "the GGUF header has no general.architecture".to_string())?;
    let key = |name: &str| format!("{architecture}.{name}");
    let required = |name: &str| {
        integer(&gguf, &key(name))
            .filter(|v| *v > 0)
            .ok_or_else(|| format!("the GGUF header has no positive {}", key(name)))
    };
    let layers = required("block_count")?;
    let embedding_length = required("embedding_length")?;
    let heads = required("attention.head_count")?;
    let kv_heads = integer(&gguf, &key("attention.head_count_kv")).unwrap_or(heads);
    Ok(GgufShape {
        weights_bytes,
        layers,
        embedding_length,
        heads,
        kv_heads,
        vocab_size: integer(&gguf, &key("vocab_size")).unwrap_or(0),
        trained_context: integer(&gguf, &key("context_length")).unwrap_or(0),
        architecture,
    })
}

fn index(gguf: &GgufContext, key: &str) -> Option<(i64, u32)> {
    let at = gguf.find_key(key);
    // `gguf_type` is a plain C enum (u32) in the bindings.
    (at >= 0).then(|| (at, gguf.kv_type(at)))
}

fn string(gguf: &GgufContext, key: &str) -> Option<String> {
    match index(gguf, key)? {
        (at, GGUF_TYPE_STRING) => gguf.val_str(at).map(str::to_string),
        _ => None,
    }
}

fn integer(gguf: &GgufContext, key: &str) -> Option<u64> {
    match index(gguf, key)? {
        (at, GGUF_TYPE_UINT32) => Some(u64::from(gguf.val_u32(at))),
        (at, GGUF_TYPE_INT32) => u64::try_from(gguf.val_i32(at)).ok(),
        (at, GGUF_TYPE_UINT64) => Some(gguf.val_u64(at)),
        _ => None,
    }
}
