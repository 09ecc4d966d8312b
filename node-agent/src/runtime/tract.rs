//! The default backend: tract, pure Rust, optimized once at load and shared by all requests.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use bytes::Bytes;
use edgefleet_protocol::Runtime;
use tract_onnx::prelude::{
    DatumType, Framework, InferenceFact, InferenceModelExt, IntoRunnable, IntoTValue, TDim, TVec,
    ToDim, TypedModel, TypedRunnableModel, TypedSimpleState,
};
use tract_onnx::tract_hir::infer::{Factoid, InferenceOp};

use super::{Backend, IoSpec, Model, ShapeHints};
use crate::tensor::{DataType, Tensor};

pub struct TractBackend;

/// Threads one inference uses inside an operator: tract's matrix products and element-wise
/// kernels split their work over a rayon pool of this many threads (1: the calling thread
/// alone). Process-wide, like ONNX Runtime's per-session setting it mirrors.
pub fn set_intra_op_threads(threads: usize) {
    use tract_linalg::multithread::{Executor, set_default_executor};
    let executor = if threads > 1 {
        match rayon::ThreadPoolBuilder::new()
            .thread_name(|n| format!("tract-intra-op-{n}"))
            .num_threads(threads)
            .build()
        {
            Ok(pool) => Executor::MultiThread(Arc::new(pool)),
            Err(e) => {
                tracing::warn!(threads, error = %e, "cannot start tract's intra-op threads; inference runs on one thread");
                Executor::SingleThread
            }
        }
    } else {
        Executor::SingleThread
    };
    set_default_executor(executor);
}

pub struct TractModel {
    plan: Arc<TypedRunnableModel>,
    /// Run states of finished inferences, reused: `plan.run` would build every operator's
    /// state and scratch space again on each call. One per concurrent inference at most.
    idle_states: Mutex<Vec<TypedSimpleState>>,
    inputs: Vec<IoSpec>,
    outputs: Vec<IoSpec>,
}

impl Backend for TractBackend {
    fn runtime(&self) -> Runtime {
        Runtime::Tract
    }

    fn load(&self, path: &Path, hints: &ShapeHints) -> anyhow::Result<Arc<dyn Model>> {
        Ok(Arc::new(TractModel::load(path, hints)?))
    }
}

impl TractModel {
    /// Loads an ONNX file, fixing each input's shape from `hints` (the self-test shapes) or,
    /// failing that, setting an unknown leading (batch) dimension to 1 and leaving others
    /// symbolic, then optimizes once.
    pub fn load(path: &Path, hints: &ShapeHints) -> anyhow::Result<TractModel> {
        let mut model = tract_onnx::onnx()
            .with_ignore_output_shapes(true)
            .with_ignore_value_info(true)
            .model_for_path(path)
            .with_context(|| format!("parsing ONNX model {}", path.display()))?;
        dedupe_node_names(&mut model.nodes);
        for ix in 0..model.inputs.len() {
            let name = model.node(model.inputs[ix].node).name.clone();
            let fact = model.input_fact(ix)?.clone();
            let dt = fact.datum_type.concretize().unwrap_or(DatumType::F32);
            let shape: TVec<TDim> = match hints.get(&name) {
                Some(hint) => hint.iter().map(|d| d.to_dim()).collect(),
                None => {
                    if fact.shape.is_open() {
                        bail!("input {name:?} has an unknown rank; give its shape in the selfTest");
                    }
                    fact.shape
                        .dims()
                        .enumerate()
                        .map(|(axis, d)| match d.concretize() {
                            Some(d) if d.as_i64().is_some() => d,
                            _ if axis == 0 => 1.to_dim(),
                            _ => model.symbols.new_with_prefix("d").to_dim(),
                        })
                        .collect()
                }
            };
            model.set_input_fact(ix, InferenceFact::dt_shape(dt, shape))?;
        }
        let typed = model
            .into_optimized()
            .context("optimizing the model with tract")?;
        let inputs = io_specs(&typed, typed.input_outlets()?, true)?;
        let outputs = io_specs(&typed, typed.output_outlets()?, false)?;
        let plan = typed.into_runnable().context("building the tract plan")?;
        Ok(TractModel {
            plan,
            idle_states: Mutex::new(Vec::new()),
            inputs,
            outputs,
        })
    }
}

/// Some exporters (and tract's inlining of ONNX functions) leave several nodes with one name,
/// which tract's graph checks refuse; suffix the repeats with their node id.
fn dedupe_node_names(nodes: &mut [tract_onnx::prelude::Node<InferenceFact, Box<dyn InferenceOp>>]) {
    let mut seen = std::collections::HashSet::new();
    for node in nodes {
        if !seen.insert(node.name.clone()) {
            node.name = format!("{}.{}", node.name, node.id);
            seen.insert(node.name.clone());
        }
    }
}

fn io_specs(
    model: &TypedModel,
    outlets: &[tract_onnx::prelude::OutletId],
    inputs: bool,
) -> anyhow::Result<Vec<IoSpec>> {
    outlets
        .iter()
        .map(|outlet| {
            let fact = model.outlet_fact(*outlet)?;
            let node_name = &model.node(outlet.node).name;
            let name = if inputs {
                node_name.clone()
            } else {
                model.outlet_label(*outlet).unwrap_or(node_name).to_string()
            };
            let dt = from_datum(fact.datum_type)
                .with_context(|| format!("{name:?} has unsupported type {:?}", fact.datum_type))?;
            let shape = fact
                .shape
                .dims()
                .iter()
                .map(|d| d.as_i64().unwrap_or(-1))
                .collect();
            Ok(IoSpec { name, dt, shape })
        })
        .collect()
}

fn from_datum(dt: DatumType) -> Option<DataType> {
    Some(match dt {
        DatumType::Bool => DataType::Bool,
        DatumType::U8 => DataType::Uint8,
        DatumType::I8 => DataType::Int8,
        DatumType::I32 => DataType::Int32,
        DatumType::I64 => DataType::Int64,
        DatumType::F32 => DataType::Fp32,
        DatumType::F64 => DataType::Fp64,
        _ => return None,
    })
}

fn to_datum(dt: DataType) -> DatumType {
    match dt {
        DataType::Bool => DatumType::Bool,
        DataType::Uint8 => DatumType::U8,
        DataType::Int8 => DatumType::I8,
        DataType::Int32 => DatumType::I32,
        DataType::Int64 => DatumType::I64,
        DataType::Fp32 => DatumType::F32,
        DataType::Fp64 => DatumType::F64,
    }
}

/// Tensors travel little-endian; tract holds native-endian data.
const _: () = assert!(
    cfg!(target_endian = "little"),
    "big-endian targets need byte swapping"
);

impl Model for TractModel {
    fn inputs(&self) -> &[IoSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[IoSpec] {
        &self.outputs
    }

    fn run(&self, inputs: Vec<Tensor>) -> anyhow::Result<Vec<Tensor>> {
        let mut values = TVec::with_capacity(inputs.len());
        for input in inputs {
            let mut t = tract_onnx::prelude::Tensor::zero_dt(to_datum(input.dt), &input.shape)?;
            t.as_bytes_mut().copy_from_slice(&input.data);
            values.push(t.into_tvalue());
        }
        let idle = self.idle_states.lock().ok().and_then(|mut idle| idle.pop());
        let mut state = match idle {
            Some(state) => state,
            None => self.plan.spawn()?,
        };
        let outputs = state.run(values)?;
        // A failed run's state is dropped with the error above, never reused.
        if let Ok(mut idle) = self.idle_states.lock() {
            idle.push(state);
        }
        outputs
            .iter()
            .map(|v| {
                let t: &tract_onnx::prelude::Tensor = v;
                let dt = from_datum(t.datum_type())
                    .with_context(|| format!("output type {:?} is unsupported", t.datum_type()))?;
                Ok(Tensor {
                    dt,
                    shape: t.shape().to_vec(),
                    data: Bytes::copy_from_slice(t.as_bytes()),
                })
            })
            .collect()
    }
}
