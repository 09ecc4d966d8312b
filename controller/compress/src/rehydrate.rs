//! The agent-side inverse: turn constant `DequantizeLinear` (int8/uint8 initializer, scale,
//! zero point) and constant `Cast`(fp16 initializer → float) back into fp32 initializers.
//!
//! tract 0.23 does not fold these (its constant folding refuses nodes whose output is larger
//! than their input), so a quantized model dequantizes every weight on every inference; an
//! agent with memory to spare should rehydrate at install time: the download stays small, the
//! runtime model is the fp32 graph with the quantized values.

use std::collections::{HashMap, HashSet};

use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::{GraphProto, TensorProto};

use crate::CompressError;
use crate::onnx;

/// Rewrites constant `DequantizeLinear` and fp16→fp32 `Cast` nodes into fp32 initializers.
/// Everything else is left as it is; a model with nothing to rehydrate comes back re-encoded.
pub fn rehydrate(model_bytes: &[u8]) -> Result<Vec<u8>, CompressError> {
    Ok(rehydrate_counted(model_bytes)?.0)
}

/// [`rehydrate`], also returning how many nodes were folded.
pub fn rehydrate_counted(model_bytes: &[u8]) -> Result<(Vec<u8>, usize), CompressError> {
    let mut model = onnx::decode(model_bytes)?;
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| CompressError::Malformed("no graph".into()))?;
    let folded = rehydrate_graph(graph)?;
    Ok((onnx::encode(&model), folded))
}

fn rehydrate_graph(graph: &mut GraphProto) -> Result<usize, CompressError> {
    let mut folded = 0;
    onnx::for_each_subgraph(graph, &mut |g| {
        folded += rehydrate_graph(g)?;
        Ok(())
    })?;
    let overridable: HashSet<String> = graph.input.iter().map(|i| i.name.clone()).collect();
    let inits: HashMap<String, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .filter(|(_, t)| !overridable.contains(&t.name))
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    let konst = |name: &str| inits.get(name).map(|i| &graph.initializer[*i]);
    let mut new_inits = Vec::new();
    let mut kept_nodes = Vec::with_capacity(graph.node.len());
    for node in std::mem::take(&mut graph.node) {
        let standard = node.domain.is_empty() || node.domain == "ai.onnx";
        let value = match node.op_type.as_str() {
            "DequantizeLinear" if standard && node.output.len() == 1 => dequantize(&node, &konst)?,
            "Cast" if standard && node.output.len() == 1 && node.input.len() == 1 => {
                match (konst(&node.input[0]), onnx::get_attr_int(&node, "to")) {
                    (Some(t), Some(to)) if to == DataType::Float as i64 => {
                        onnx::halfs(t).map(|v| (t.dims.clone(), v))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        match value {
            Some((dims, values)) => {
                new_inits.push(onnx::float_tensor(&node.output[0], &dims, &values));
                folded += 1;
            }
            None => kept_nodes.push(node),
        }
    }
    graph.node = kept_nodes;
    graph.initializer.extend(new_inits);
    // Drop the int8/fp16 storage nothing reads any more.
    let used: HashSet<String> = onnx::consumers(graph).into_keys().collect();
    let outputs: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    graph.initializer.retain(|t| {
        used.contains(&t.name) || outputs.contains(&t.name) || overridable.contains(&t.name)
    });
    Ok(folded)
}

type Dequantized = Option<(Vec<i64>, Vec<f32>)>;

fn dequantize<'a>(
    node: &tract_onnx::pb::NodeProto,
    konst: &dyn Fn(&str) -> Option<&'a TensorProto>,
) -> Result<Dequantized, CompressError> {
    let (Some(x), Some(scale)) = (
        node.input.first().and_then(|n| konst(n)),
        node.input.get(1).and_then(|n| konst(n)),
    ) else {
        return Ok(None);
    };
    let zero_point = match node.input.get(2).filter(|n| !n.is_empty()) {
        Some(name) => match konst(name) {
            Some(t) => Some(t),
            None => return Ok(None),
        },
        None => None,
    };
    let values: Vec<f32> = if let Some(v) = onnx::int8s(x) {
        v.iter().map(|v| *v as f32).collect()
    } else if x.data_type == DataType::Uint8 as i32 {
        if x.raw_data.is_empty() {
            x.int32_data.iter().map(|v| *v as f32).collect()
        } else {
            x.raw_data.iter().map(|v| *v as f32).collect()
        }
    } else {
        return Ok(None);
    };
    let Some(scales) = onnx::floats(scale) else {
        return Ok(None);
    };
    let zero_points: Vec<f32> = match zero_point {
        None => vec![0.0],
        Some(t) if t.data_type == DataType::Uint8 as i32 => {
            if t.raw_data.is_empty() {
                t.int32_data.iter().map(|v| *v as f32).collect()
            } else {
                t.raw_data.iter().map(|v| *v as f32).collect()
            }
        }
        Some(t) => match onnx::int8s(t) {
            Some(v) => v.iter().map(|v| *v as f32).collect(),
            None => return Ok(None),
        },
    };
    let dims = x.dims.clone();
    let rank = dims.len() as i64;
    let per_axis = scales.len() > 1;
    let (channels, inner) = if per_axis {
        if onnx::get_attr_int(node, "block_size").unwrap_or(0) != 0 {
            return Ok(None);
        }
        let axis = onnx::get_attr_int(node, "axis").unwrap_or(1);
        let axis = if axis < 0 { axis + rank } else { axis };
        let Some(axis) = usize::try_from(axis).ok().filter(|a| *a < dims.len()) else {
            return Err(CompressError::Malformed(format!(
                "DequantizeLinear {:?}: axis out of range",
                node.name
            )));
        };
        let channels = usize::try_from(dims[axis]).unwrap_or(0);
        if channels != scales.len() {
            return Err(CompressError::Malformed(format!(
                "DequantizeLinear {:?}: {} scales for {channels} channels",
                node.name,
                scales.len()
            )));
        }
        let inner = onnx::volume(&dims[axis + 1..]).unwrap_or(1);
        (channels, inner)
    } else {
        (1, values.len().max(1))
    };
    let out = values
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let c = if channels == 1 {
                0
            } else {
                (i / inner) % channels
            };
            let zp = zero_points
                .get(c)
                .or(zero_points.first())
                .copied()
                .unwrap_or(0.0);
            let s = scales.get(c).or(scales.first()).copied().unwrap_or(1.0);
            (q - zp) * s
        })
        .collect();
    Ok(Some((dims, out)))
}
