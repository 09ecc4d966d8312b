//! Host tensors (little-endian bytes), the model's input specification, deterministic input
//! generation and the `.npy` / JSON input formats.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::{ModelProto, type_proto};

use crate::onnx;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ElemType {
    F32,
    F64,
    I64,
    I32,
    I8,
    U8,
    Bool,
}

impl ElemType {
    pub fn size(self) -> usize {
        match self {
            ElemType::F64 | ElemType::I64 => 8,
            ElemType::F32 | ElemType::I32 => 4,
            ElemType::I8 | ElemType::U8 | ElemType::Bool => 1,
        }
    }

    pub fn from_onnx(elem_type: i32) -> Option<ElemType> {
        Some(match DataType::try_from(elem_type).ok()? {
            DataType::Float => ElemType::F32,
            DataType::Double => ElemType::F64,
            DataType::Int64 => ElemType::I64,
            DataType::Int32 => ElemType::I32,
            DataType::Int8 => ElemType::I8,
            DataType::Uint8 => ElemType::U8,
            DataType::Bool => ElemType::Bool,
            _ => return None,
        })
    }

    fn npy_descr(self) -> &'static str {
        match self {
            ElemType::F32 => "<f4",
            ElemType::F64 => "<f8",
            ElemType::I64 => "<i8",
            ElemType::I32 => "<i4",
            ElemType::I8 => "|i1",
            ElemType::U8 => "|u1",
            ElemType::Bool => "|b1",
        }
    }

    fn from_npy_descr(descr: &str) -> Option<ElemType> {
        Some(match descr {
            "<f4" | "=f4" => ElemType::F32,
            "<f8" | "=f8" => ElemType::F64,
            "<i8" | "=i8" => ElemType::I64,
            "<i4" | "=i4" => ElemType::I32,
            "|i1" | "<i1" | "=i1" => ElemType::I8,
            "|u1" | "<u1" | "=u1" => ElemType::U8,
            "|b1" | "<b1" | "=b1" => ElemType::Bool,
            _ => return None,
        })
    }
}

/// A tensor as plain little-endian bytes, independent of any runtime.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub elem: ElemType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl HostTensor {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn from_f64s(elem: ElemType, shape: Vec<usize>, values: &[f64]) -> HostTensor {
        let data = values
            .iter()
            .flat_map(|v| match elem {
                ElemType::F32 => (*v as f32).to_le_bytes().to_vec(),
                ElemType::F64 => v.to_le_bytes().to_vec(),
                ElemType::I64 => (*v as i64).to_le_bytes().to_vec(),
                ElemType::I32 => (*v as i32).to_le_bytes().to_vec(),
                ElemType::I8 => vec![(*v as i8) as u8],
                ElemType::U8 => vec![*v as u8],
                ElemType::Bool => vec![u8::from(*v != 0.0)],
            })
            .collect();
        HostTensor { elem, shape, data }
    }

    /// The values as f64, whatever the element type.
    pub fn to_f64s(&self) -> Vec<f64> {
        let n = self.elem.size();
        self.data
            .chunks_exact(n)
            .map(|c| match self.elem {
                ElemType::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
                ElemType::F64 => {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                }
                ElemType::I64 => {
                    i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64
                }
                ElemType::I32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
                ElemType::I8 => c[0] as i8 as f64,
                ElemType::U8 | ElemType::Bool => c[0] as f64,
            })
            .collect()
    }

    /// `.npy` (format 1.0) bytes.
    pub fn to_npy(&self) -> Vec<u8> {
        let shape = match self.shape.len() {
            0 => "()".to_string(),
            1 => format!("({},)", self.shape[0]),
            _ => format!(
                "({})",
                self.shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut header = format!(
            "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
            self.elem.npy_descr()
        );
        // magic (6) + version (2) + header length (2) + header, padded to 64 with a newline.
        let unpadded = 10 + header.len() + 1;
        header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(&self.data);
        out
    }

    pub fn from_npy(bytes: &[u8]) -> anyhow::Result<HostTensor> {
        ensure!(
            bytes.len() >= 10 && &bytes[..6] == b"\x93NUMPY",
            "not a .npy file (bad magic)"
        );
        let (header_len, start) = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 => {
                ensure!(bytes.len() >= 12, "truncated .npy header");
                (
                    u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                    12,
                )
            }
            v => bail!(".npy format version {v} is not supported"),
        };
        let header = bytes
            .get(start..start + header_len)
            .context("truncated .npy header")?;
        let header = std::str::from_utf8(header).context(".npy header is not text")?;
        let field = |key: &str| -> anyhow::Result<&str> {
            let at = header
                .find(&format!("'{key}'"))
                .with_context(|| format!(".npy header has no {key:?}: {header}"))?;
            let rest = &header[at + key.len() + 2..];
            let rest = rest.trim_start().trim_start_matches(':').trim_start();
            Ok(rest)
        };
        let descr = field("descr")?;
        let descr = descr
            .trim_start_matches('\'')
            .split('\'')
            .next()
            .unwrap_or_default();
        let elem = ElemType::from_npy_descr(descr)
            .with_context(|| format!(".npy dtype {descr:?} is not supported"))?;
        ensure!(
            field("fortran_order")?.starts_with("False"),
            "Fortran-ordered .npy arrays are not supported"
        );
        let shape_text = field("shape")?;
        let shape_text = shape_text
            .strip_prefix('(')
            .and_then(|s| s.split(')').next())
            .context("bad .npy shape")?;
        let shape = shape_text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<usize>().context("bad .npy shape"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let data = bytes[start + header_len..].to_vec();
        let expected = shape.iter().product::<usize>() * elem.size();
        ensure!(
            data.len() == expected,
            ".npy data is {} bytes, shape {shape:?} needs {expected}",
            data.len()
        );
        Ok(HostTensor { elem, shape, data })
    }

    /// Converts to `elem` (user-provided data in another numeric type).
    pub fn cast(&self, elem: ElemType) -> HostTensor {
        if elem == self.elem {
            return self.clone();
        }
        HostTensor::from_f64s(elem, self.shape.clone(), &self.to_f64s())
    }
}

/// One set of model inputs, in the model's input order.
pub type Sample = Vec<(String, HostTensor)>;

/// A model input as the ONNX graph declares it; `None` dims are symbolic or unknown.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InputSpec {
    pub name: String,
    pub elem: ElemType,
    pub dims: Vec<Option<usize>>,
    /// The shape used for measurements.
    pub shape: Vec<usize>,
    /// For integer inputs: generated values are in `[0, bound)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub int_bound: Option<i64>,
}

/// How symbolic dimensions are fixed for measurement.
#[derive(Clone, Debug)]
pub struct ShapeOptions {
    /// Explicit shapes per input name.
    pub shapes: BTreeMap<String, Vec<usize>>,
    /// For a symbolic dimension other than the leading (batch) one, which is 1.
    pub default_dim: usize,
}

impl Default for ShapeOptions {
    fn default() -> Self {
        ShapeOptions {
            shapes: BTreeMap::new(),
            default_dim: 64,
        }
    }
}

/// The model's real inputs (graph inputs that are not initializers), with measurement shapes.
pub fn input_specs(model: &ModelProto, options: &ShapeOptions) -> anyhow::Result<Vec<InputSpec>> {
    let graph = model.graph.as_ref().context("the model has no graph")?;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut specs = Vec::new();
    for input in &graph.input {
        if initializers.contains(input.name.as_str()) {
            continue;
        }
        let Some(type_proto::Value::TensorType(tt)) =
            input.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            bail!("input {:?} is not a tensor", input.name);
        };
        let elem = ElemType::from_onnx(tt.elem_type).with_context(|| {
            format!(
                "input {:?} has element type {} which is not supported for measurement",
                input.name, tt.elem_type
            )
        })?;
        let dims: Vec<Option<usize>> =
            tt.shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match d.value {
                            Some(
                                tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(v),
                            ) if v > 0 => usize::try_from(v).ok(),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
        let shape = match options.shapes.get(&input.name) {
            Some(shape) => {
                ensure!(
                    tt.shape.is_none() || shape.len() == dims.len(),
                    "--shape {}: rank {} but the model declares rank {}",
                    input.name,
                    shape.len(),
                    dims.len()
                );
                shape.clone()
            }
            None => dims
                .iter()
                .enumerate()
                .map(|(axis, d)| d.unwrap_or(if axis == 0 { 1 } else { options.default_dim }))
                .collect(),
        };
        // Indices into a constant table (token ids): stay inside it.
        let int_bound = match elem {
            ElemType::F32 | ElemType::F64 => None,
            ElemType::Bool => Some(1),
            _ if input.name.to_lowercase().contains("mask") => Some(2),
            _ => Some(gather_bound(graph, &input.name).unwrap_or(2)),
        };
        specs.push(InputSpec {
            name: input.name.clone(),
            elem,
            dims,
            shape,
            int_bound,
        });
    }
    ensure!(!specs.is_empty(), "the model has no inputs to feed");
    Ok(specs)
}

/// The smallest table size along the gathered axis, over the `Gather` nodes that index a
/// constant table with `input` directly.
fn gather_bound(graph: &tract_onnx::pb::GraphProto, input: &str) -> Option<i64> {
    let tables: BTreeMap<&str, &Vec<i64>> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), &t.dims))
        .chain(
            graph
                .node
                .iter()
                .filter(|n| n.op_type == "Constant")
                .filter_map(|n| {
                    let t = n.attribute.iter().find(|a| a.name == "value")?.t.as_ref()?;
                    Some((n.output.first()?.as_str(), &t.dims))
                }),
        )
        .collect();
    let mut bound: Option<i64> = None;
    for node in &graph.node {
        if node.op_type != "Gather" || node.input.len() < 2 || node.input[1] != input {
            continue;
        }
        let axis = onnx::get_attr_int(node, "axis").unwrap_or(0);
        if let Some(dims) = tables.get(node.input[0].as_str())
            && let Some(d) = usize::try_from(if axis < 0 {
                axis + dims.len() as i64
            } else {
                axis
            })
            .ok()
            .and_then(|a| dims.get(a))
        {
            bound = Some(bound.map_or(*d, |b| b.min(*d)));
        }
    }
    bound
}

/// splitmix64: small, deterministic, good enough for test inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `n` deterministic samples. Float inputs are smooth signals (a sum of two sinusoids of random
/// frequency and phase over the flat index, amplitude ~1) plus 10% noise: closer to images and
/// audio than white noise, so classifiers do not all collapse to one class. Integer inputs are
/// uniform in `[0, int_bound)`, except `*mask*` inputs which are all ones.
pub fn generate(specs: &[InputSpec], n: usize, seed: u64) -> Vec<Sample> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            specs
                .iter()
                .map(|spec| {
                    let len: usize = spec.shape.iter().product();
                    let values: Vec<f64> = match spec.elem {
                        ElemType::F32 | ElemType::F64 => {
                            let (a1, a2) = (
                                (10f64).powf(-3.0 + 3.0 * rng.unit()),
                                (10f64).powf(-3.0 + 3.0 * rng.unit()),
                            );
                            let (b1, b2) = (6.3 * rng.unit(), 6.3 * rng.unit());
                            (0..len)
                                .map(|i| {
                                    let i = i as f64;
                                    0.6 * (a1 * i + b1).sin()
                                        + 0.4 * (a2 * i + b2).sin()
                                        + 0.1 * (2.0 * rng.unit() - 1.0)
                                })
                                .collect()
                        }
                        _ if spec.name.to_lowercase().contains("mask") => vec![1.0; len],
                        _ => {
                            let bound = spec.int_bound.unwrap_or(2).max(1) as f64;
                            (0..len)
                                .map(|_| (rng.unit() * bound).floor().min(bound - 1.0))
                                .collect()
                        }
                    };
                    (
                        spec.name.clone(),
                        HostTensor::from_f64s(spec.elem, spec.shape.clone(), &values),
                    )
                })
                .collect()
        })
        .collect()
}

/// One input of a JSON sample: `{"shape": [...], "data": [...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonTensor {
    shape: Vec<usize>,
    data: Vec<f64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonInputs {
    Wrapped {
        samples: Vec<BTreeMap<String, JsonTensor>>,
    },
    Bare(Vec<BTreeMap<String, JsonTensor>>),
}

/// Reads user-provided inputs, at most `limit` samples:
/// - `.npy`: for a single-input model; an array of the input's rank is one sample, one of rank
///   + 1 is a batch of samples along its first axis.
/// - `.json`: `{"samples": [{"INPUT": {"shape": [..], "data": [..]}, ...}, ...]}` (or the bare
///   list), every input of the model in every sample.
///
/// Values are converted to each input's element type.
pub fn load_inputs(path: &Path, specs: &[InputSpec], limit: usize) -> anyhow::Result<Vec<Sample>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let is_npy = bytes.starts_with(b"\x93NUMPY");
    let samples = if is_npy {
        ensure!(
            specs.len() == 1,
            "a .npy input file only fits a single-input model; this one has {} inputs ({}): use JSON",
            specs.len(),
            specs
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let spec = &specs[0];
        let t =
            HostTensor::from_npy(&bytes).with_context(|| format!("reading {}", path.display()))?;
        let t = t.cast(spec.elem);
        if t.shape.len() == spec.dims.len() + 1 && !spec.dims.is_empty() {
            let per = t.shape[1..].iter().product::<usize>() * t.elem.size();
            (0..t.shape[0])
                .map(|i| {
                    vec![(
                        spec.name.clone(),
                        HostTensor {
                            elem: t.elem,
                            shape: t.shape[1..].to_vec(),
                            data: t.data[i * per..(i + 1) * per].to_vec(),
                        },
                    )]
                })
                .collect()
        } else {
            vec![vec![(spec.name.clone(), t)]]
        }
    } else {
        let parsed: JsonInputs = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is neither .npy nor the JSON input format",
                path.display()
            )
        })?;
        let list = match parsed {
            JsonInputs::Wrapped { samples } => samples,
            JsonInputs::Bare(samples) => samples,
        };
        list.into_iter()
            .enumerate()
            .map(|(i, mut sample)| {
                specs
                    .iter()
                    .map(|spec| {
                        let t = sample
                            .remove(&spec.name)
                            .with_context(|| format!("sample {i} has no input {:?}", spec.name))?;
                        ensure!(
                            t.shape.iter().product::<usize>() == t.data.len(),
                            "sample {i} input {:?}: shape {:?} but {} values",
                            spec.name,
                            t.shape,
                            t.data.len()
                        );
                        Ok((
                            spec.name.clone(),
                            HostTensor::from_f64s(spec.elem, t.shape, &t.data),
                        ))
                    })
                    .collect::<anyhow::Result<Sample>>()
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    ensure!(!samples.is_empty(), "{} holds no samples", path.display());
    Ok(samples.into_iter().take(limit.max(1)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip() {
        let t = HostTensor::from_f64s(ElemType::F32, vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let bytes = t.to_npy();
        assert_eq!(bytes.len() % 64, 24); // header padded to 64, 24 data bytes
        let back = HostTensor::from_npy(&bytes).expect("parse");
        assert_eq!(back, t);
        let scalar = HostTensor::from_f64s(ElemType::I64, vec![], &[7.0]);
        assert_eq!(
            HostTensor::from_npy(&scalar.to_npy()).expect("parse"),
            scalar
        );
        assert!(HostTensor::from_npy(b"not numpy").is_err());
    }

    #[test]
    fn generation_is_deterministic() {
        let spec = InputSpec {
            name: "x".into(),
            elem: ElemType::F32,
            dims: vec![Some(1), Some(8)],
            shape: vec![1, 8],
            int_bound: None,
        };
        let a = generate(std::slice::from_ref(&spec), 3, 7);
        let b = generate(std::slice::from_ref(&spec), 3, 7);
        assert_eq!(a, b);
        assert_ne!(a[0], a[1]);
    }
}
