//! ONNX Runtime backend (cargo feature `onnxruntime`, on by default): `libonnxruntime` is
//! loaded at run time (`ort`'s load-dynamic), from `--onnxruntime-lib`
//! (`EDGEFLEET_AGENT_ONNXRUNTIME_LIB`), `ORT_DYLIB_PATH`, or the library search path. The
//! runtime is announced only if the library loads, so a device without it runs tract.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use bytes::Bytes;
use edgefleet_protocol::Runtime;
use ort::session::Session;
use ort::value::{DynValue, TensorElementType, ValueType};

use super::{Backend, IoSpec, Model, ShapeHints};
use crate::tensor::{DataType, Tensor};

pub struct OrtBackend {
    env: ort::environment::Environment,
    intra_op_threads: usize,
}

impl OrtBackend {
    /// The library configured, else named by `ORT_DYLIB_PATH`, else found on the search
    /// path; `None` (logged) when it cannot be loaded.
    pub fn try_new(configured: Option<&Path>, intra_op_threads: usize) -> Option<OrtBackend> {
        let lib = configured
            .map(|p| p.display().to_string())
            .or_else(|| std::env::var("ORT_DYLIB_PATH").ok())
            .unwrap_or_else(|| "libonnxruntime.so".into());
        match OrtBackend::from_library(&lib) {
            Ok(backend) => Some(backend.with_intra_op_threads(intra_op_threads)),
            Err(e) => {
                tracing::info!(%lib, error = %e, "onnxruntime is not available");
                None
            }
        }
    }

    /// Loads `libonnxruntime` from `lib` (a path or a name on the library search path).
    pub fn from_library(lib: &str) -> anyhow::Result<OrtBackend> {
        let env = ort::init_from(lib)?
            .with_name("edgefleet-agent")
            .build()
            .map_err(|e| anyhow::anyhow!("onnxruntime environment: {e}"))?;
        Ok(OrtBackend {
            env,
            intra_op_threads: 1,
        })
    }

    /// Threads one session uses inside an operator (ONNX Runtime's intra-op pool).
    pub fn with_intra_op_threads(mut self, threads: usize) -> OrtBackend {
        self.intra_op_threads = threads.max(1);
        self
    }
}

pub struct OrtModel {
    session: Mutex<Session>,
    inputs: Vec<IoSpec>,
    outputs: Vec<IoSpec>,
}

fn spec(outlet: &ort::value::Outlet) -> anyhow::Result<IoSpec> {
    let ValueType::Tensor { ty, shape, .. } = outlet.dtype() else {
        bail!("{:?} is not a tensor", outlet.name());
    };
    Ok(IoSpec {
        name: outlet.name().to_string(),
        dt: from_element(*ty).with_context(|| format!("{:?} has type {ty:?}", outlet.name()))?,
        shape: shape.iter().map(|d| if *d < 0 { -1 } else { *d }).collect(),
    })
}

fn from_element(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        _ => return None,
    })
}

impl Backend for OrtBackend {
    fn runtime(&self) -> Runtime {
        Runtime::Onnxruntime
    }

    fn load(&self, path: &Path, _hints: &ShapeHints) -> anyhow::Result<Arc<dyn Model>> {
        let options = |e: ort::Error<_>| anyhow::anyhow!("onnxruntime session options: {e}");
        let session = Session::builder(&self.env)?
            .with_intra_threads(self.intra_op_threads)
            .map_err(options)?
            // Operators run one after another (sequential execution): no inter-op pool.
            .with_inter_threads(1)
            .map_err(options)?
            // Fold constant DequantizeLinear (weight-only int8) into fp32 weights at load, as
            // `edgefleet compress` measures it; left on, ONNX Runtime keeps the pairs for QDQ
            // fusion and dequantizes every weight per run (1.6-5x slower, BENCHMARKS.md).
            // Activation-quantized variants use integer operators, which this does not touch.
            .with_config_entry("session.disable_quant_qdq", "1")
            .map_err(options)?
            .commit_from_file(path)
            .with_context(|| format!("onnxruntime loading {}", path.display()))?;
        let inputs = session
            .inputs()
            .iter()
            .map(spec)
            .collect::<anyhow::Result<_>>()?;
        let outputs = session
            .outputs()
            .iter()
            .map(spec)
            .collect::<anyhow::Result<_>>()?;
        Ok(Arc::new(OrtModel {
            session: Mutex::new(session),
            inputs,
            outputs,
        }))
    }
}

/// Decodes little-endian elements of `N` bytes into a fresh vector (one pass, no per-element
/// allocation: inputs of vision models are hundreds of thousands of elements).
fn decode<T, const N: usize>(data: &[u8], from_le: impl Fn([u8; N]) -> T) -> Vec<T> {
    let mut out = Vec::with_capacity(data.len() / N);
    out.extend(data.chunks_exact(N).map(|c| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        from_le(a)
    }));
    out
}

fn to_value(t: Tensor) -> anyhow::Result<DynValue> {
    let shape: Vec<i64> = t.shape.iter().map(|d| *d as i64).collect();
    let d = &t.data;
    Ok(match t.dt {
        DataType::Fp32 => {
            ort::value::Tensor::from_array((shape, decode(d, f32::from_le_bytes)))?.into_dyn()
        }
        DataType::Fp64 => {
            ort::value::Tensor::from_array((shape, decode(d, f64::from_le_bytes)))?.into_dyn()
        }
        DataType::Int64 => {
            ort::value::Tensor::from_array((shape, decode(d, i64::from_le_bytes)))?.into_dyn()
        }
        DataType::Int32 => {
            ort::value::Tensor::from_array((shape, decode(d, i32::from_le_bytes)))?.into_dyn()
        }
        DataType::Uint8 => ort::value::Tensor::from_array((shape, d.to_vec()))?.into_dyn(),
        DataType::Int8 => {
            ort::value::Tensor::from_array((shape, decode(d, i8::from_le_bytes)))?.into_dyn()
        }
        DataType::Bool => {
            let v: Vec<bool> = d.iter().map(|b| *b != 0).collect();
            ort::value::Tensor::from_array((shape, v))?.into_dyn()
        }
    })
}

fn from_value(value: &DynValue, dt: DataType) -> anyhow::Result<Tensor> {
    fn bytes<T: ort::value::PrimitiveTensorElementType + Copy, const N: usize>(
        value: &DynValue,
        encode: impl Fn(T) -> [u8; N],
    ) -> anyhow::Result<(Vec<usize>, Bytes)> {
        let (shape, data) = value.try_extract_tensor::<T>()?;
        let shape = shape.iter().map(|d| *d as usize).collect();
        let mut out = Vec::with_capacity(data.len() * N);
        for v in data {
            out.extend_from_slice(&encode(*v));
        }
        Ok((shape, Bytes::from(out)))
    }
    let (shape, data) = match dt {
        DataType::Fp32 => bytes(value, f32::to_le_bytes)?,
        DataType::Fp64 => bytes(value, f64::to_le_bytes)?,
        DataType::Int64 => bytes(value, i64::to_le_bytes)?,
        DataType::Int32 => bytes(value, i32::to_le_bytes)?,
        DataType::Uint8 => bytes(value, |v: u8| [v])?,
        DataType::Int8 => bytes(value, i8::to_le_bytes)?,
        DataType::Bool => bytes(value, |v: bool| [u8::from(v)])?,
    };
    Ok(Tensor { dt, shape, data })
}

impl Model for OrtModel {
    fn inputs(&self) -> &[IoSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[IoSpec] {
        &self.outputs
    }

    fn run(&self, inputs: Vec<Tensor>) -> anyhow::Result<Vec<Tensor>> {
        let named: Vec<(String, DynValue)> = self
            .inputs
            .iter()
            .zip(inputs)
            .map(|(spec, t)| Ok((spec.name.clone(), to_value(t)?)))
            .collect::<anyhow::Result<_>>()?;
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session.run(named)?;
        self.outputs
            .iter()
            .enumerate()
            .map(|(i, spec)| from_value(&outputs[i], spec.dt))
            .collect()
    }
}
