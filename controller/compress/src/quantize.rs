//! The two weight rewrites: int8 weight-only quantization (int8 initializer + scale + zero point
//! feeding `DequantizeLinear`) and fp16 weight storage (fp16 initializer feeding `Cast` to
//! float). Both keep every activation in fp32: the model's inputs, outputs and operators are
//! unchanged, only where large constant tensors come from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::{GraphProto, NodeProto, TensorProto};

use crate::CompressError;
use crate::onnx::{self, Namer};

/// Tensors with fewer elements than this are left in fp32 by default (biases, norms, small
/// tables): they weigh nothing and some runtimes want them constant.
pub const DEFAULT_MIN_ELEMENTS: usize = 1024;

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub min_elements: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            min_elements: DEFAULT_MIN_ELEMENTS,
        }
    }
}

/// What a rewrite did, for the report.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RewriteSummary {
    /// Tensors rewritten.
    pub tensors: usize,
    /// Elements in those tensors.
    pub elements: usize,
    /// Float elements left in fp32 (small tensors, biases, non-weights for int8).
    pub kept_fp32_elements: usize,
    /// `per-channel` (opset >= 13: `DequantizeLinear` with `axis`) or `per-tensor`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub granularity: Option<String>,
    /// Constant nodes turned into initializers first (exporters such as paddle2onnx and spox
    /// store weights that way).
    pub constants_lifted: usize,
    pub notes: Vec<String>,
}

/// How a weight tensor is consumed, which decides the quantization axis (output channels).
fn weight_axis(
    rank: usize,
    consumers: Option<&Vec<(String, usize, NodeProto)>>,
) -> Option<(usize, &'static str)> {
    for (op, slot, node) in consumers?.iter() {
        let axis = match (op.as_str(), *slot) {
            // W: [M, C/group, k...]; per output channel.
            ("Conv", 1) if rank >= 3 => Some((0, "Conv")),
            // W: [C, M/group, k...]; axis 1 holds the output channels.
            ("ConvTranspose", 1) if rank >= 3 => Some((1, "ConvTranspose")),
            // B: [..., K, N]; N output columns.
            ("MatMul", 1) if rank >= 2 => Some((rank - 1, "MatMul")),
            // B: [K, N], or [N, K] with transB.
            ("Gemm", 1) if rank == 2 => {
                if onnx::get_attr_int(node, "transB").unwrap_or(0) != 0 {
                    Some((0, "Gemm"))
                } else {
                    Some((1, "Gemm"))
                }
            }
            // Embedding table [V, D]: one scale per row (per vocabulary entry).
            ("Gather", 0) if rank >= 2 => Some((0, "Gather")),
            _ => None,
        };
        if axis.is_some() {
            return axis;
        }
    }
    // A large matrix only sliced, reshaped or transposed before use (e.g. LSTM gate weights
    // [4H, in] sliced per gate): one scale per row, PyTorch's [out, in] layout.
    let consumers = consumers?;
    let data_movement = |op: &str| {
        matches!(
            op,
            "Slice" | "Split" | "Transpose" | "Reshape" | "Identity" | "Squeeze" | "Unsqueeze"
        )
    };
    (rank >= 2
        && !consumers.is_empty()
        && consumers
            .iter()
            .all(|(op, slot, _)| *slot == 0 && data_movement(op)))
    .then_some((0, "data movement"))
}

/// Symmetric int8 quantization: one scale per slice along `axis` (or one for the whole tensor
/// when `axis` is `None`), zero point 0, values in [-127, 127].
pub fn quantize_symmetric(
    data: &[f32],
    dims: &[usize],
    axis: Option<usize>,
) -> (Vec<i8>, Vec<f32>) {
    let (channels, inner) = match axis {
        Some(axis) => (dims[axis], dims[axis + 1..].iter().product::<usize>()),
        None => (1, data.len()),
    };
    let channel_of = |i: usize| {
        if channels == 1 {
            0
        } else {
            (i / inner) % channels
        }
    };
    let mut max = vec![0f32; channels];
    for (i, v) in data.iter().enumerate() {
        let c = channel_of(i);
        if v.is_finite() {
            max[c] = max[c].max(v.abs());
        }
    }
    let scales: Vec<f32> = max
        .iter()
        .map(|m| if *m > 0.0 { m / 127.0 } else { 1.0 })
        .collect();
    let q = data
        .iter()
        .enumerate()
        .map(|(i, v)| (v / scales[channel_of(i)]).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (q, scales)
}

/// Moves float `Constant` nodes with at least `min_elements` elements into initializers, so
/// that both rewrites see weights however the exporter stored them. Semantics are unchanged.
pub(crate) fn lift_constants(
    graph: &mut GraphProto,
    min_elements: usize,
    ir_version: i64,
) -> usize {
    if ir_version < 4 {
        // IR < 4 wants every initializer listed as a graph input too; leave such models alone.
        return 0;
    }
    let outputs: std::collections::HashSet<String> =
        graph.output.iter().map(|o| o.name.clone()).collect();
    let mut lifted = 0;
    let mut kept = Vec::with_capacity(graph.node.len());
    for node in std::mem::take(&mut graph.node) {
        let tensor = (node.op_type == "Constant"
            && (node.domain.is_empty() || node.domain == "ai.onnx")
            && node.output.len() == 1
            && !outputs.contains(&node.output[0]))
        .then(|| node.attribute.iter().find(|a| a.name == "value"))
        .flatten()
        .and_then(|a| a.t.clone())
        .filter(|t| {
            t.data_type == DataType::Float as i32
                && onnx::volume(&t.dims).is_some_and(|n| n >= min_elements)
        });
        match tensor {
            Some(mut t) => {
                t.name = node.output[0].clone();
                graph.initializer.push(t);
                lifted += 1;
            }
            None => kept.push(node),
        }
    }
    graph.node = kept;
    lifted
}

/// Removes `name` from the graph inputs (older exporters list initializers there, as
/// overridable inputs); the rewritten value is produced by a node and cannot also be an input.
fn drop_from_inputs(graph: &mut GraphProto, name: &str) {
    graph.input.retain(|i| i.name != name);
}

/// int8 weight-only quantization of `model_bytes`: see the crate documentation.
pub fn quantize_int8(
    model_bytes: &[u8],
    options: Options,
) -> Result<(Vec<u8>, RewriteSummary), CompressError> {
    let mut model = onnx::decode(model_bytes)?;
    let opset = onnx::opset(&model);
    if opset < 10 {
        return Err(CompressError::Unsupported(format!(
            "int8 needs DequantizeLinear (opset >= 10); the model imports opset {opset} and is \
             not upgraded here"
        )));
    }
    let per_channel = opset >= 13;
    let mut summary = RewriteSummary {
        granularity: Some(
            if per_channel {
                "per-channel"
            } else {
                "per-tensor"
            }
            .into(),
        ),
        ..Default::default()
    };
    if !per_channel {
        summary.notes.push(format!(
            "opset {opset} < 13: DequantizeLinear has no axis, so one scale per tensor \
             (the opset is not bumped)"
        ));
    }
    let mut namer = Namer::new(&model);
    let ir_version = model.ir_version;
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| CompressError::Malformed("no graph".into()))?;
    int8_graph(
        graph,
        options,
        per_channel,
        ir_version,
        &mut namer,
        &mut summary,
    )?;
    if summary.tensors == 0 {
        summary
            .notes
            .push("no Conv/MatMul/Gemm/Gather weight large enough to quantize".into());
    }
    Ok((onnx::encode(&model), summary))
}

fn int8_graph(
    graph: &mut GraphProto,
    options: Options,
    per_channel: bool,
    ir_version: i64,
    namer: &mut Namer,
    summary: &mut RewriteSummary,
) -> Result<(), CompressError> {
    onnx::for_each_subgraph(graph, &mut |g| {
        int8_graph(g, options, per_channel, ir_version, namer, summary)
    })?;
    summary.constants_lifted += lift_constants(graph, options.min_elements, ir_version);
    let consumers = onnx::consumers(graph);
    let mut initializers = Vec::with_capacity(graph.initializer.len());
    let mut dequantize = Vec::new();
    for init in std::mem::take(&mut graph.initializer) {
        let Some(values) = onnx::floats(&init) else {
            initializers.push(init);
            continue;
        };
        let dims: Option<Vec<usize>> = init.dims.iter().map(|d| usize::try_from(*d).ok()).collect();
        let axis = dims
            .as_ref()
            .and_then(|dims| weight_axis(dims.len(), consumers.get(&init.name)));
        let (Some(dims), Some((axis, _op))) = (dims, axis) else {
            summary.kept_fp32_elements += values.len();
            initializers.push(init);
            continue;
        };
        if values.len() < options.min_elements || values.len() != dims.iter().product::<usize>() {
            summary.kept_fp32_elements += values.len();
            initializers.push(init);
            continue;
        }
        let (q, scales) = quantize_symmetric(&values, &dims, per_channel.then_some(axis));
        let q_name = namer.fresh(&format!("{}_quantized", init.name));
        let scale_name = namer.fresh(&format!("{}_scale", init.name));
        let zp_name = namer.fresh(&format!("{}_zero_point", init.name));
        let zeros = vec![0i8; scales.len()];
        let (scale, zp) = if per_channel {
            let n = scales.len() as i64;
            (
                onnx::float_tensor(&scale_name, &[n], &scales),
                onnx::int8_tensor(&zp_name, &[n], &zeros),
            )
        } else {
            (
                onnx::float_tensor(&scale_name, &[], &scales),
                onnx::int8_tensor(&zp_name, &[], &zeros),
            )
        };
        initializers.push(onnx::int8_tensor(&q_name, &init.dims, &q));
        initializers.push(scale);
        initializers.push(zp);
        let mut node = NodeProto {
            name: namer.fresh(&format!("{}_DequantizeLinear", init.name)),
            op_type: "DequantizeLinear".into(),
            input: vec![q_name, scale_name, zp_name],
            output: vec![init.name.clone()],
            ..Default::default()
        };
        if per_channel {
            node.attribute.push(onnx::attr_int("axis", axis as i64));
        }
        drop_from_inputs(graph, &init.name);
        dequantize.push(node);
        summary.tensors += 1;
        summary.elements += values.len();
    }
    graph.initializer = initializers;
    // Producers must precede consumers: the dequantizing nodes go first.
    dequantize.append(&mut graph.node);
    graph.node = dequantize;
    Ok(())
}

/// fp16 weight storage: every float initializer (and float Constant) of at least
/// `min_elements` elements is stored as FLOAT16 and cast back to FLOAT by a `Cast` node.
pub fn convert_fp16(
    model_bytes: &[u8],
    options: Options,
) -> Result<(Vec<u8>, RewriteSummary), CompressError> {
    let mut model = onnx::decode(model_bytes)?;
    let opset = onnx::opset(&model);
    if opset < 6 {
        return Err(CompressError::Unsupported(format!(
            "fp16 needs Cast with an integer `to` (opset >= 6); the model imports opset {opset}"
        )));
    }
    let mut namer = Namer::new(&model);
    let ir_version = model.ir_version;
    let mut summary = RewriteSummary::default();
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| CompressError::Malformed("no graph".into()))?;
    fp16_graph(graph, options, ir_version, &mut namer, &mut summary)?;
    if summary.tensors == 0 {
        summary
            .notes
            .push("no float tensor large enough to store in fp16".into());
    }
    Ok((onnx::encode(&model), summary))
}

fn fp16_graph(
    graph: &mut GraphProto,
    options: Options,
    ir_version: i64,
    namer: &mut Namer,
    summary: &mut RewriteSummary,
) -> Result<(), CompressError> {
    onnx::for_each_subgraph(graph, &mut |g| {
        fp16_graph(g, options, ir_version, namer, summary)
    })?;
    summary.constants_lifted += lift_constants(graph, options.min_elements, ir_version);
    let mut initializers: Vec<TensorProto> = Vec::with_capacity(graph.initializer.len());
    let mut casts = Vec::new();
    let mut overflow = BTreeMap::new();
    for init in std::mem::take(&mut graph.initializer) {
        let Some(values) = onnx::floats(&init) else {
            initializers.push(init);
            continue;
        };
        if values.len() < options.min_elements {
            summary.kept_fp32_elements += values.len();
            initializers.push(init);
            continue;
        }
        let out_of_range = values
            .iter()
            .filter(|v| v.is_finite() && v.abs() > f32::from(half::f16::MAX))
            .count();
        if out_of_range > 0 {
            // Would turn into infinities: keep that tensor in fp32.
            overflow.insert(init.name.clone(), out_of_range);
            summary.kept_fp32_elements += values.len();
            initializers.push(init);
            continue;
        }
        let h_name = namer.fresh(&format!("{}_fp16", init.name));
        initializers.push(onnx::f16_tensor(&h_name, &init.dims, &values));
        casts.push(NodeProto {
            name: namer.fresh(&format!("{}_Cast", init.name)),
            op_type: "Cast".into(),
            input: vec![h_name],
            output: vec![init.name.clone()],
            attribute: vec![onnx::attr_int("to", DataType::Float as i64)],
            ..Default::default()
        });
        drop_from_inputs(graph, &init.name);
        summary.tensors += 1;
        summary.elements += values.len();
    }
    for (name, n) in overflow {
        summary.notes.push(format!(
            "{name:?} kept in fp32: {n} values exceed the fp16 range"
        ));
    }
    graph.initializer = initializers;
    casts.append(&mut graph.node);
    graph.node = casts;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_per_channel_round_trips_within_half_a_step() {
        // [2 channels, 3 elements]; channel 1 is all zeros.
        let data = [1.0, -0.5, 0.25, 0.0, 0.0, 0.0];
        let (q, s) = quantize_symmetric(&data, &[2, 3], Some(0));
        assert_eq!(s.len(), 2);
        assert_eq!(q[0], 127);
        assert_eq!(s[1], 1.0);
        for (i, v) in data.iter().enumerate() {
            let back = q[i] as f32 * s[i / 3];
            assert!((back - v).abs() <= s[i / 3] / 2.0 + 1e-7);
        }
    }

    #[test]
    fn per_axis_last_dimension() {
        // MatMul B [K=2, N=2]: scales per column.
        let data = [1.0, 10.0, -2.0, 5.0];
        let (_, s) = quantize_symmetric(&data, &[2, 2], Some(1));
        assert_eq!(s, vec![2.0 / 127.0, 10.0 / 127.0]);
    }
}
