//! Quantized variants of a GGUF language model made by llama.cpp itself
//! (`llama_model_quantize`, the function behind `llama-quantize`), plus the few header fields
//! the compressor reports (quantization, shape).
//!
//! llama-cpp-2 wraps loading and inference but not quantization, so [`quantize`] calls
//! llama-cpp-sys-2 directly; that one call is the crate's only unsafe code.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use llama_cpp_2::gguf::GgufContext;
use llama_cpp_2::llama_backend::LlamaBackend;

/// A llama.cpp quantization this crate can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Quantization {
    Q8_0,
    Q4KM,
    Q4_0,
    Q2K,
}

impl Quantization {
    pub const ALL: [Quantization; 4] = [Self::Q8_0, Self::Q4KM, Self::Q4_0, Self::Q2K];

    /// llama.cpp's name: `Q8_0`, `Q4_K_M`, `Q4_0`, `Q2_K`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Q8_0 => "Q8_0",
            Self::Q4KM => "Q4_K_M",
            Self::Q4_0 => "Q4_0",
            Self::Q2K => "Q2_K",
        }
    }

    /// Parses llama.cpp's name, case-insensitively (`q4_k_m` and `q4-k-m` too).
    pub fn parse(s: &str) -> Result<Quantization, QuantizeError> {
        let wanted = s.trim().to_ascii_uppercase().replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|q| q.name() == wanted)
            .ok_or_else(|| QuantizeError::UnknownQuantization(s.to_string()))
    }

    /// The `llama_ftype` (also written as the output's `general.file_type`).
    pub fn ftype(self) -> u32 {
        match self {
            Self::Q8_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0,
            Self::Q4KM => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_K_M,
            Self::Q4_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_0,
            Self::Q2K => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q2_K,
        }
    }
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Quantization {
    type Err = QuantizeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// llama.cpp's name of a `general.file_type` (`llama_ftype`) value.
pub fn ftype_name(ftype: u32) -> Option<&'static str> {
    Some(match ftype {
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
        32 => "BF16",
        _ => return None,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error("unknown quantization {0:?}: Q8_0, Q4_K_M, Q4_0 or Q2_K")]
    UnknownQuantization(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a GGUF file (its header does not parse)")]
    NotGguf(PathBuf),
    #[error("{path}: {why}")]
    BadHeader { path: PathBuf, why: String },
    #[error("path {0} contains a NUL byte")]
    BadPath(PathBuf),
    #[error("initialising llama.cpp: {0}")]
    Backend(String),
    #[error(
        "llama.cpp could not quantize {input} to {quantization} (llama_model_quantize returned \
         {code}; its log, target llama-cpp-2 in tracing, says why)"
    )]
    Failed {
        input: PathBuf,
        quantization: Quantization,
        code: u32,
    },
}

/// llama.cpp's process-wide state, initialised once (a second `LlamaBackend::init` fails). Its
/// log goes to `tracing` (target `llama-cpp-2`), silent without a subscriber.
pub fn backend() -> Result<&'static LlamaBackend, QuantizeError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| QuantizeError::Backend(e.clone()))
}

/// What the compressor reports from a GGUF header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufHeader {
    pub architecture: String,
    /// `general.file_type` (a `llama_ftype`), when present.
    pub file_type: Option<u32>,
    pub layers: u64,
    pub embedding_length: u64,
    pub heads: u64,
    pub kv_heads: u64,
}

impl GgufHeader {
    /// llama.cpp's name of the file type (`Q4_1`), or `unknown`.
    pub fn quantization(&self) -> &'static str {
        self.file_type.and_then(ftype_name).unwrap_or("unknown")
    }
}

// GGUF value types (gguf.h). Reading a key with the wrong typed getter aborts inside llama.cpp,
// so every read checks the type first.
const GGUF_TYPE_UINT32: u32 = 4;
const GGUF_TYPE_INT32: u32 = 5;
const GGUF_TYPE_STRING: u32 = 8;
const GGUF_TYPE_UINT64: u32 = 10;

fn open(path: &Path) -> Result<GgufContext, QuantizeError> {
    std::fs::metadata(path).map_err(|source| QuantizeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    GgufContext::from_file(path).ok_or_else(|| QuantizeError::NotGguf(path.to_path_buf()))
}

fn gguf_string(gguf: &GgufContext, key: &str) -> Option<String> {
    let at = gguf.find_key(key);
    (at >= 0 && gguf.kv_type(at) == GGUF_TYPE_STRING)
        .then(|| gguf.val_str(at).map(str::to_string))
        .flatten()
}

fn gguf_integer(gguf: &GgufContext, key: &str) -> Option<u64> {
    let at = gguf.find_key(key);
    if at < 0 {
        return None;
    }
    match gguf.kv_type(at) {
        GGUF_TYPE_UINT32 => Some(u64::from(gguf.val_u32(at))),
        GGUF_TYPE_INT32 => u64::try_from(gguf.val_i32(at)).ok(),
        GGUF_TYPE_UINT64 => Some(gguf.val_u64(at)),
        _ => None,
    }
}

/// Reads the header of `path` (no weights).
pub fn read_header(path: &Path) -> Result<GgufHeader, QuantizeError> {
    let gguf = open(path)?;
    let bad = |why: String| QuantizeError::BadHeader {
        path: path.to_path_buf(),
        why,
    };
    let architecture = gguf_string(&gguf, "general.architecture")
        .ok_or_else(|| bad("the header has no general.architecture".into()))?;
    let key = |name: &str| format!("{architecture}.{name}");
    let required = |name: &str| {
        gguf_integer(&gguf, &key(name))
            .filter(|v| *v > 0)
            .ok_or_else(|| bad(format!("the header has no positive {}", key(name))))
    };
    let layers = required("block_count")?;
    let embedding_length = required("embedding_length")?;
    let heads = required("attention.head_count")?;
    let kv_heads = gguf_integer(&gguf, &key("attention.head_count_kv")).unwrap_or(heads);
    let file_type = gguf_integer(&gguf, "general.file_type").and_then(|t| u32::try_from(t).ok());
    Ok(GgufHeader {
        architecture,
        file_type,
        layers,
        embedding_length,
        heads,
        kv_heads,
    })
}

/// Quantizes the GGUF model `input` to `q` with llama.cpp's `llama_model_quantize`, writing
/// `output` (replaced if present). Already-quantized inputs are requantized. The result is
/// written to a temporary file next to `output` and renamed: a failure leaves no output.
pub fn quantize(
    input: &Path,
    output: &Path,
    q: Quantization,
    threads: u32,
) -> Result<(), QuantizeError> {
    read_header(input)?;
    backend()?;
    let mut tmp_name = output.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = output.with_file_name(tmp_name);
    let c_path = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| QuantizeError::BadPath(p.into()))
    };
    let (c_in, c_tmp) = (c_path(input)?, c_path(&tmp)?);
    let threads = i32::try_from(threads.max(1)).unwrap_or(i32::MAX);
    let code = llama_quantize(&c_in, &c_tmp, q.ftype(), threads);
    if code != 0 {
        let _ = std::fs::remove_file(&tmp);
        return Err(QuantizeError::Failed {
            input: input.to_path_buf(),
            quantization: q,
            code,
        });
    }
    std::fs::rename(&tmp, output).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        QuantizeError::Io {
            path: output.to_path_buf(),
            source,
        }
    })
}

/// The FFI call: llama.cpp's default parameters with the type, threads and requantization
/// (our inputs are often already quantized) set.
#[allow(unsafe_code)]
fn llama_quantize(input: &CString, output: &CString, ftype: u32, threads: i32) -> u32 {
    // SAFETY: `llama_model_quantize_default_params` returns a plain struct by value whose
    // pointer fields (imatrix, overrides, prune list) are null, which llama.cpp reads as "none".
    // `input` and `output` are NUL-terminated strings that outlive the call, and `params` is a
    // valid struct on our stack for its duration; llama.cpp keeps none of these pointers.
    // llama.cpp catches its own C++ exceptions inside `llama_model_quantize` and returns 1.
    unsafe {
        let mut params = llama_cpp_sys_2::llama_model_quantize_default_params();
        params.nthread = threads;
        params.ftype = ftype;
        params.allow_requantize = true;
        llama_cpp_sys_2::llama_model_quantize(input.as_ptr(), output.as_ptr(), &params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_ftypes() {
        for q in Quantization::ALL {
            assert_eq!(Quantization::parse(q.name()).expect("parse"), q);
            assert_eq!(ftype_name(q.ftype()), Some(q.name()));
        }
        assert_eq!(
            Quantization::parse("q4-k-m").expect("lower"),
            Quantization::Q4KM
        );
        assert!(matches!(
            Quantization::parse("Q3_K"),
            Err(QuantizeError::UnknownQuantization(_))
        ));
        assert_eq!(ftype_name(3), Some("Q4_1"));
    }
}
