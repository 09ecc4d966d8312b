//! A backend-agnostic tensor: datatype, shape and raw little-endian bytes.
//!
//! Both wire forms of the Open Inference Protocol end up here: the binary extension copies bytes
//! straight in, JSON numbers are encoded once. Backends convert to and from their own types.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use edgefleet_protocol::TensorDatatype;

/// The binary tensor extension's header: the length of the JSON part before the raw tensor
/// bytes in a request or response body.
pub const BINARY_HEADER: &str = "inference-header-content-length";

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

impl DataType {
    /// The CRD's name for this type; INT8 has none (self-tests cannot use it).
    fn crd_type(self) -> Option<TensorDatatype> {
        Some(match self {
            DataType::Fp32 => TensorDatatype::Fp32,
            DataType::Fp64 => TensorDatatype::Fp64,
            DataType::Int64 => TensorDatatype::Int64,
            DataType::Int32 => TensorDatatype::Int32,
            DataType::Uint8 => TensorDatatype::Uint8,
            DataType::Bool => TensorDatatype::Bool,
            DataType::Int8 => return None,
        })
    }

    /// Why `value` cannot be an element of this type: the rule admission applies to
    /// self-test values ([`TensorDatatype::check_value`]), so both always agree.
    pub fn check_f64(self, value: f64) -> Result<(), String> {
        match self.crd_type() {
            Some(dt) => dt.check_value(value),
            None if value.fract() != 0.0 || !value.is_finite() => {
                Err("INT8 takes whole numbers".into())
            }
            None if !(-128.0..=127.0).contains(&value) => {
                Err("out of the INT8 range (-128 to 127)".into())
            }
            None => Ok(()),
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
    #[error("element {index} is not a valid {dt}: {value} ({reason})")]
    Unrepresentable {
        index: usize,
        dt: DataType,
        value: f64,
        reason: String,
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

    /// Encodes numbers given as f64 (self-test values: YAML and JSON numbers) as `dt`. Whole
    /// values are exact integers (`101.0` is the token id 101); a value `dt` cannot hold
    /// exactly (1.5 as INT64, 300 as UINT8, 2 as BOOL) is an error naming the element.
    pub fn from_f64(
        dt: DataType,
        shape: Vec<usize>,
        values: &[f64],
    ) -> Result<Tensor, TensorError> {
        let expected = element_count(&shape).ok_or_else(|| TensorError::TooLarge(shape.clone()))?;
        if values.len() != expected {
            return Err(TensorError::ElementCount {
                shape,
                expected,
                found: values.len(),
            });
        }
        let mut out = Vec::with_capacity(expected.saturating_mul(dt.size()));
        for (index, &value) in values.iter().enumerate() {
            dt.check_f64(value)
                .map_err(|reason| TensorError::Unrepresentable {
                    index,
                    dt,
                    value,
                    reason,
                })?;
            // Checked above: every cast below is exact.
            match dt {
                DataType::Bool | DataType::Uint8 => out.push(value as u8),
                DataType::Int8 => out.extend_from_slice(&(value as i8).to_le_bytes()),
                DataType::Int32 => out.extend_from_slice(&(value as i32).to_le_bytes()),
                DataType::Int64 => out.extend_from_slice(&(value as i64).to_le_bytes()),
                DataType::Fp32 => out.extend_from_slice(&(value as f32).to_le_bytes()),
                DataType::Fp64 => out.extend_from_slice(&value.to_le_bytes()),
            }
        }
        Ok(Tensor {
            dt,
            shape,
            data: Bytes::from(out),
        })
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
    fn whole_f64_values_are_exact_integers() {
        let ids = Tensor::from_f64(DataType::Int64, vec![1, 3], &[101.0, 7592.0, 102.0])
            .expect("token ids");
        assert_eq!(ids.to_json(), json!([101, 7592, 102]));
        let big = Tensor::from_f64(
            DataType::Int64,
            vec![2],
            &[-9.0e18, 9_007_199_254_740_992.0],
        )
        .expect("large ids");
        assert_eq!(
            big.to_json(),
            json!([-9_000_000_000_000_000_000i64, 9_007_199_254_740_992i64])
        );
        let i32s =
            Tensor::from_f64(DataType::Int32, vec![2], &[-2_147_483_648.0, 7.0]).expect("i32");
        assert_eq!(i32s.to_json(), json!([-2_147_483_648i64, 7]));
        let bytes = Tensor::from_f64(DataType::Uint8, vec![2], &[0.0, 255.0]).expect("u8");
        assert_eq!(&bytes.data[..], &[0, 255]);
        let mask = Tensor::from_f64(DataType::Bool, vec![2], &[1.0, 0.0]).expect("bool");
        assert_eq!(mask.to_json(), json!([true, false]));
        let signed = Tensor::from_f64(DataType::Int8, vec![2], &[-128.0, 127.0]).expect("i8");
        assert_eq!(signed.to_json(), json!([-128, 127]));
        let floats = Tensor::from_f64(DataType::Fp32, vec![2], &[0.1, -2.5]).expect("f32");
        assert_eq!(floats.to_f64(), vec![f64::from(0.1f32), -2.5]);
    }

    #[test]
    fn f64_values_a_type_cannot_hold_are_refused_naming_the_element() {
        let cases = [
            (
                DataType::Int64,
                vec![101.0, 1.5],
                "element 1 is not a valid INT64: 1.5 (INT64 takes whole numbers)",
            ),
            (
                DataType::Int64,
                vec![9.3e18],
                "element 0 is not a valid INT64: 9300000000000000000 (out of the INT64 range",
            ),
            (
                DataType::Int32,
                vec![0.0, 0.0, 3e9],
                "element 2 is not a valid INT32: 3000000000 (out of the INT32 range",
            ),
            (
                DataType::Uint8,
                vec![256.0],
                "element 0 is not a valid UINT8: 256 (out of the UINT8 range (0 to 255))",
            ),
            (DataType::Uint8, vec![-1.0], "out of the UINT8 range"),
            (
                DataType::Bool,
                vec![2.0],
                "element 0 is not a valid BOOL: 2 (BOOL takes 0 or 1)",
            ),
            (DataType::Int8, vec![128.0], "out of the INT8 range"),
            (DataType::Int8, vec![0.5], "INT8 takes whole numbers"),
            (DataType::Fp32, vec![f64::NAN], "not a finite number"),
        ];
        for (dt, values, needle) in cases {
            let shape = vec![values.len()];
            let e = Tensor::from_f64(dt, shape, &values).expect_err("refused");
            assert!(e.to_string().contains(needle), "{dt} {values:?}: {e}");
        }
        let e = Tensor::from_f64(DataType::Int64, vec![3], &[1.0]).expect_err("count");
        assert!(matches!(
            e,
            TensorError::ElementCount {
                expected: 3,
                found: 1,
                ..
            }
        ));
    }

    /// The agent builds every self-test tensor that admission accepts, and refuses the rest.
    #[test]
    fn agent_and_admission_agree_on_self_test_values() {
        let probes = [
            0.0,
            1.0,
            -1.0,
            0.5,
            2.0,
            101.0,
            255.0,
            256.0,
            1e10,
            -1e10,
            2_147_483_647.0,
            2_147_483_648.0,
            9.2e18,
            9.3e18,
            -9.3e18,
            1e39,
            f64::NAN,
            f64::INFINITY,
        ];
        for dt in [
            TensorDatatype::Fp32,
            TensorDatatype::Fp64,
            TensorDatatype::Int64,
            TensorDatatype::Int32,
            TensorDatatype::Uint8,
            TensorDatatype::Bool,
        ] {
            for v in probes {
                let admitted = dt.check_value(v).is_ok();
                let built = Tensor::from_f64(dt.into(), vec![1], &[v]).is_ok();
                assert_eq!(admitted, built, "{v} as {}", dt.as_str());
            }
        }
    }

    #[test]
    fn non_finite_values_are_detected() {
        let t = Tensor::from_f32(vec![2], &[1.0, f32::NAN]).expect("valid");
        assert!(!t.all_finite());
        assert_eq!(t.to_json(), json!([1.0, null]));
    }
}
