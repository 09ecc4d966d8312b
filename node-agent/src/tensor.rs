//! A backend-agnostic tensor: datatype, shape and raw little-endian bytes.
//!
//! Both wire forms of the Open Inference Protocol end up here: the binary extension copies bytes
//! straight in, JSON numbers are encoded once. Backends convert to and from their own types.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use edgefleet_crds::TensorDatatype;

/// Element types, spelled as the Open Inference Protocol spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DataType {
    Bool,
    Uint8,
    Int8,
    Int32,
    Int64,
    Fp32,
    Fp64,
}

impl DataType {
    pub fn size(self) -> usize {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Int32 | DataType::Fp32 => 4,
            DataType::Int64 | DataType::Fp64 => 8,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Int8 => "INT8",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
        }
    }

    pub fn parse(s: &str) -> Option<DataType> {
        Some(match s {
            "BOOL" => DataType::Bool,
            "UINT8" => DataType::Uint8,
            "INT8" => DataType::Int8,
            "INT32" => DataType::Int32,
            "INT64" => DataType::Int64,
            "FP32" => DataType::Fp32,
            "FP64" => DataType::Fp64,
            _ => return None,
        })
    }
}

impl From<TensorDatatype> for DataType {
    fn from(dt: TensorDatatype) -> Self {
        match dt {
            TensorDatatype::Fp32 => DataType::Fp32,
            TensorDatatype::Fp64 => DataType::Fp64,
            TensorDatatype::Int64 => DataType::Int64,
            TensorDatatype::Int32 => DataType::Int32,
            TensorDatatype::Uint8 => DataType::Uint8,
            TensorDatatype::Bool => DataType::Bool,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorError {
    #[error("shape {shape:?} holds {expected} elements but {found} were given")]
    ElementCount {
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },
    #[error("shape {shape:?} of {dt} needs {expected} bytes but {found} were given")]
    ByteCount {
        shape: Vec<usize>,
        dt: DataType,
        expected: usize,
        found: usize,
    },
    #[error("element {index} is not a valid {dt}: {value}")]
    BadElement {
        index: usize,
        dt: DataType,
        value: String,
    },
    #[error("shape {0:?} is too large")]
    TooLarge(Vec<usize>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dt: DataType,
    pub shape: Vec<usize>,
    /// Little-endian, row-major, `element_count(shape) * dt.size()` bytes.
    pub data: Bytes,
}

pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, d| acc.checked_mul(*d))
}

impl Tensor {
    pub fn from_bytes(dt: DataType, shape: Vec<usize>, data: Bytes) -> Result<Tensor, TensorError> {
        let expected = element_count(&shape)
            .and_then(|n| n.checked_mul(dt.size()))
            .ok_or_else(|| TensorError::TooLarge(shape.clone()))?;
        if expected != data.len() {
            return Err(TensorError::ByteCount {
                shape,
                dt,
                expected,
                found: data.len(),
            });
        }
        Ok(Tensor { dt, shape, data })
    }

    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Result<Tensor, TensorError> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::from_bytes(DataType::Fp32, shape, Bytes::from(bytes))
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.dt.size()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Encodes JSON numbers (or booleans) as `dt`. Accepts the flat list the protocol specifies
    /// and, as Triton does, nested lists in row-major order.
    pub fn from_json(dt: DataType, shape: Vec<usize>, data: &Value) -> Result<Tensor, TensorError> {
        let expected = element_count(&shape).ok_or_else(|| TensorError::TooLarge(shape.clone()))?;
        let mut out = Vec::with_capacity(expected.saturating_mul(dt.size()).min(64 << 20));
        let mut index = 0usize;
        encode_json(dt, data, &mut out, &mut index)?;
        if index != expected {
            return Err(TensorError::ElementCount {
                shape,
                expected,
                found: index,
            });
        }
        Ok(Tensor {
            dt,
            shape,
            data: Bytes::from(out),
        })
    }

    /// The elements as a flat JSON array.
    pub fn to_json(&self) -> Value {
        let d = &self.data;
        let values: Vec<Value> = match self.dt {
            DataType::Bool => d.iter().map(|b| Value::Bool(*b != 0)).collect(),
            DataType::Uint8 => d.iter().map(|b| Value::from(*b)).collect(),
            DataType::Int8 => d.iter().map(|b| Value::from(*b as i8)).collect(),
            DataType::Int32 => chunks::<4>(d)
                .map(|c| i32::from_le_bytes(c).into())
                .collect(),
            DataType::Int64 => chunks::<8>(d)
                .map(|c| i64::from_le_bytes(c).into())
                .collect(),
            DataType::Fp32 => chunks::<4>(d)
                .map(|c| float_json(f64::from(f32::from_le_bytes(c))))
                .collect(),
            DataType::Fp64 => chunks::<8>(d)
                .map(|c| float_json(f64::from_le_bytes(c)))
                .collect(),
        };
        Value::Array(values)
    }

    /// Elements widened to f64 (for finiteness checks and tests).
    pub fn to_f64(&self) -> Vec<f64> {
        let d = &self.data;
        match self.dt {
            DataType::Bool | DataType::Uint8 => d.iter().map(|b| f64::from(*b)).collect(),
            DataType::Int8 => d.iter().map(|b| f64::from(*b as i8)).collect(),
            DataType::Int32 => chunks::<4>(d)
                .map(|c| f64::from(i32::from_le_bytes(c)))
                .collect(),
            DataType::Int64 => chunks::<8>(d)
                .map(|c| i64::from_le_bytes(c) as f64)
                .collect(),
            DataType::Fp32 => chunks::<4>(d)
                .map(|c| f64::from(f32::from_le_bytes(c)))
                .collect(),
            DataType::Fp64 => chunks::<8>(d).map(f64::from_le_bytes).collect(),
        }
    }

    pub fn all_finite(&self) -> bool {
        match self.dt {
            DataType::Fp32 | DataType::Fp64 => self.to_f64().iter().all(|v| v.is_finite()),
            _ => true,
        }
    }
}

fn chunks<const N: usize>(data: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    data.chunks_exact(N).map(|c| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        a
    })
}

/// NaN and infinities have no JSON number; they travel as `null` (as serde_json does).
fn float_json(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

fn encode_json(
    dt: DataType,
    value: &Value,
    out: &mut Vec<u8>,
    index: &mut usize,
) -> Result<(), TensorError> {
    if let Value::Array(items) = value {
        for item in items {
            encode_json(dt, item, out, index)?;
        }
        return Ok(());
    }
    let bad = || TensorError::BadElement {
        index: *index,
        dt,
        value: value.to_string().chars().take(40).collect(),
    };
    match dt {
        DataType::Bool => {
            let b = match value {
                Value::Bool(b) => *b,
                Value::Number(n) if n.as_u64() == Some(0) => false,
                Value::Number(n) if n.as_u64() == Some(1) => true,
                _ => return Err(bad()),
            };
            out.push(u8::from(b));
        }
        DataType::Uint8 => {
            let v = value
                .as_u64()
                .and_then(|v| u8::try_from(v).ok())
                .ok_or_else(bad)?;
            out.push(v);
        }
        DataType::Int8 => {
            let v = value
                .as_i64()
                .and_then(|v| i8::try_from(v).ok())
                .ok_or_else(bad)?;
            out.extend_from_slice(&v.to_le_bytes());
        }
        DataType::Int32 => {
            let v = value
                .as_i64()
                .and_then(|v| i32::try_from(v).ok())
                .ok_or_else(bad)?;
            out.extend_from_slice(&v.to_le_bytes());
        }
        DataType::Int64 => {
            let v = value.as_i64().ok_or_else(bad)?;
            out.extend_from_slice(&v.to_le_bytes());
        }
        DataType::Fp32 => {
            let v = value.as_f64().ok_or_else(bad)?;
            out.extend_from_slice(&(v as f32).to_le_bytes());
        }
        DataType::Fp64 => {
            let v = value.as_f64().ok_or_else(bad)?;
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    *index += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trip_flat_and_nested() {
        let t = Tensor::from_json(DataType::Fp32, vec![2, 2], &json!([[1.0, 2.5], [3, -4]]))
            .expect("valid");
        assert_eq!(t.data.len(), 16);
        assert_eq!(t.to_json(), json!([1.0, 2.5, 3.0, -4.0]));
        let i = Tensor::from_json(DataType::Int64, vec![3], &json!([1, -2, 3])).expect("valid");
        assert_eq!(i.to_f64(), vec![1.0, -2.0, 3.0]);
    }

    #[test]
    fn wrong_counts_and_elements_are_typed_errors() {
        let e = Tensor::from_json(DataType::Fp32, vec![3], &json!([1.0])).unwrap_err();
        assert!(matches!(
            e,
            TensorError::ElementCount {
                expected: 3,
                found: 1,
                ..
            }
        ));
        let e = Tensor::from_json(DataType::Uint8, vec![1], &json!([300])).unwrap_err();
        assert!(matches!(e, TensorError::BadElement { .. }));
        let e =
            Tensor::from_bytes(DataType::Fp32, vec![2], Bytes::from_static(&[0; 7])).unwrap_err();
        assert!(matches!(
            e,
            TensorError::ByteCount {
                expected: 8,
                found: 7,
                ..
            }
        ));
        assert!(Tensor::from_json(DataType::Fp32, vec![usize::MAX, 4], &json!([])).is_err());
    }

    #[test]
    fn non_finite_values_are_detected() {
        let t = Tensor::from_f32(vec![2], &[1.0, f32::NAN]).expect("valid");
        assert!(!t.all_finite());
        assert_eq!(t.to_json(), json!([1.0, null]));
    }
}
