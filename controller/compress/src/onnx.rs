//! Reading and writing the ONNX protobuf (tract-onnx's prost-generated `pb` types), and the
//! tensor helpers the rewrites share.

use std::collections::BTreeMap;

use prost::Message;
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, attribute_proto,
};

use edgefleet_crds::Precision;

use crate::CompressError;

/// Decodes and sanity-checks an ONNX model. Refuses models whose tensors live in external
/// files: the rewritten model would silently point at data we never read.
pub fn decode(bytes: &[u8]) -> Result<ModelProto, CompressError> {
    let model = ModelProto::decode(bytes)
        .map_err(|e| CompressError::Malformed(format!("protobuf decoding failed: {e}")))?;
    // An arbitrary byte string can decode as an (almost empty) protobuf message; require what
    // every ONNX model has.
    if model.ir_version <= 0 {
        return Err(CompressError::Malformed(
            "no ir_version: not an ONNX ModelProto".into(),
        ));
    }
    let Some(graph) = model.graph.as_ref() else {
        return Err(CompressError::Malformed("the model has no graph".into()));
    };
    if graph.node.is_empty() || graph.output.is_empty() {
        return Err(CompressError::Malformed(
            "the graph has no nodes or no outputs".into(),
        ));
    }
    if model.opset_import.is_empty() && model.ir_version >= 3 {
        return Err(CompressError::Malformed("no opset_import".into()));
    }
    if let Some(name) = first_external_tensor(graph) {
        return Err(CompressError::ExternalData(name));
    }
    Ok(model)
}

pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// The default-domain opset the model imports (ONNX `ai.onnx`, spelled "" or "ai.onnx").
pub fn opset(model: &ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .max()
        .unwrap_or(1)
}

fn is_external(t: &TensorProto) -> bool {
    t.data_location == Some(DataLocation::External as i32) || !t.external_data.is_empty()
}

fn first_external_tensor(graph: &GraphProto) -> Option<String> {
    for t in &graph.initializer {
        if is_external(t) {
            let location = t
                .external_data
                .iter()
                .find(|e| e.key == "location")
                .map(|e| e.value.clone())
                .unwrap_or_default();
            return Some(format!("{:?} (stored in {:?})", t.name, location));
        }
    }
    for node in &graph.node {
        for attr in &node.attribute {
            if let Some(t) = &attr.t
                && is_external(t)
            {
                return Some(format!("{:?} (attribute of node {:?})", t.name, node.name));
            }
            for g in attr.g.iter().chain(attr.graphs.iter()) {
                if let Some(found) = first_external_tensor(g) {
                    return Some(found);
                }
            }
        }
    }
    None
}

/// The elements of a FLOAT tensor, whichever field holds them.
pub fn floats(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != DataType::Float as i32 {
        return None;
    }
    if !t.raw_data.is_empty() {
        if !t.raw_data.len().is_multiple_of(4) {
            return None;
        }
        return Some(
            t.raw_data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        );
    }
    Some(t.float_data.clone())
}

/// Elements of an INT8 tensor.
pub fn int8s(t: &TensorProto) -> Option<Vec<i8>> {
    if t.data_type != DataType::Int8 as i32 {
        return None;
    }
    if !t.raw_data.is_empty() {
        return Some(t.raw_data.iter().map(|b| *b as i8).collect());
    }
    Some(t.int32_data.iter().map(|v| *v as i8).collect())
}

/// Elements of a FLOAT16 tensor, as f32.
pub fn halfs(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != DataType::Float16 as i32 {
        return None;
    }
    if !t.raw_data.is_empty() {
        if !t.raw_data.len().is_multiple_of(2) {
            return None;
        }
        return Some(
            t.raw_data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        );
    }
    Some(
        t.int32_data
            .iter()
            .map(|v| half::f16::from_bits(*v as u16).to_f32())
            .collect(),
    )
}

pub fn volume(dims: &[i64]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, d| {
        usize::try_from(*d).ok().and_then(|d| acc.checked_mul(d))
    })
}

pub fn float_tensor(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

pub fn int8_tensor(name: &str, dims: &[i64], data: &[i8]) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: dims.to_vec(),
        data_type: DataType::Int8 as i32,
        raw_data: data.iter().map(|v| *v as u8).collect(),
        ..Default::default()
    }
}

pub fn f16_tensor(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: dims.to_vec(),
        data_type: DataType::Float16 as i32,
        raw_data: data
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        ..Default::default()
    }
}

pub fn attr_int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

pub fn get_attr_int(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// Every value name a graph's nodes (and those of nested subgraphs, which may read values of the
/// enclosing scope) consume, with the nodes that consume them: `(op_type, input slot, node)`.
pub fn consumers(graph: &GraphProto) -> BTreeMap<String, Vec<(String, usize, NodeProto)>> {
    let mut map: BTreeMap<String, Vec<(String, usize, NodeProto)>> = BTreeMap::new();
    fn walk(g: &GraphProto, map: &mut BTreeMap<String, Vec<(String, usize, NodeProto)>>) {
        for node in &g.node {
            for (slot, input) in node.input.iter().enumerate() {
                if input.is_empty() {
                    continue;
                }
                map.entry(input.clone()).or_default().push((
                    node.op_type.clone(),
                    slot,
                    NodeProto {
                        attribute: node
                            .attribute
                            .iter()
                            .filter(|a| a.g.is_none() && a.graphs.is_empty())
                            .cloned()
                            .collect(),
                        ..NodeProto::default()
                    },
                ));
            }
            for attr in &node.attribute {
                for sub in attr.g.iter().chain(attr.graphs.iter()) {
                    walk(sub, map);
                }
            }
        }
    }
    walk(graph, &mut map);
    map
}

/// Applies `f` to every subgraph (If/Loop/Scan bodies) of `graph`'s nodes, recursively.
pub fn for_each_subgraph(
    graph: &mut GraphProto,
    f: &mut dyn FnMut(&mut GraphProto) -> Result<(), CompressError>,
) -> Result<(), CompressError> {
    for node in &mut graph.node {
        for attr in &mut node.attribute {
            if let Some(g) = attr.g.as_mut() {
                f(g)?;
            }
            for g in &mut attr.graphs {
                f(g)?;
            }
        }
    }
    Ok(())
}

/// A name not yet used by any value, initializer or node of the model.
pub struct Namer {
    used: std::collections::HashSet<String>,
}

impl Namer {
    pub fn new(model: &ModelProto) -> Namer {
        let mut used = std::collections::HashSet::new();
        fn walk(g: &GraphProto, used: &mut std::collections::HashSet<String>) {
            used.extend(g.initializer.iter().map(|t| t.name.clone()));
            used.extend(g.input.iter().map(|v| v.name.clone()));
            used.extend(g.output.iter().map(|v| v.name.clone()));
            for n in &g.node {
                used.insert(n.name.clone());
                used.extend(n.input.iter().cloned());
                used.extend(n.output.iter().cloned());
                for a in &n.attribute {
                    for sub in a.g.iter().chain(a.graphs.iter()) {
                        walk(sub, used);
                    }
                }
            }
        }
        if let Some(g) = &model.graph {
            walk(g, &mut used);
        }
        Namer { used }
    }

    pub fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut i = 1;
        while self.used.contains(&name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.used.insert(name.clone());
        name
    }
}

/// The precision a model's graph suggests: quantized operators → int8 (int4 when its
/// quantized weights are 4-bit), fp16 initializers → fp16, else fp32.
pub fn detect_precision(model: &ModelProto) -> Precision {
    let Some(graph) = model.graph.as_ref() else {
        return Precision::Fp32;
    };
    const QUANT_OPS: [&str; 8] = [
        "DequantizeLinear",
        "QuantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QLinearConv",
        "QLinearMatMul",
        "MatMulNBits",
    ];
    let quantized = graph
        .node
        .iter()
        .any(|n| QUANT_OPS.contains(&n.op_type.as_str()));
    let int4 = graph
        .initializer
        .iter()
        .any(|t| t.data_type == DataType::Int4 as i32 || t.data_type == DataType::Uint4 as i32)
        || graph
            .node
            .iter()
            .any(|n| n.op_type == "MatMulNBits" && get_attr_int(n, "bits").unwrap_or(4) == 4);
    let fp16 = graph
        .initializer
        .iter()
        .any(|t| t.data_type == DataType::Float16 as i32);
    match (quantized, int4, fp16) {
        (true, true, _) => Precision::Int4,
        (true, false, true) => Precision::Mixed,
        (true, false, false) => Precision::Int8,
        (false, _, true) => Precision::Fp16,
        _ => Precision::Fp32,
    }
}
