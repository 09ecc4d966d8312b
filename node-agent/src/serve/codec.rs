//! The Open Inference Protocol's bodies: the request (JSON, or a JSON header followed by
//! binary tensors), its input tensors decoded against the model's inputs, and the response
//! rendered back in the request's encoding.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::ApiError;
use crate::offload::Marker;
use crate::registry::Served;
use crate::runtime::IoSpec;
use crate::tensor::{BINARY_HEADER, DataType, Tensor};

#[derive(Deserialize)]
pub(super) struct InferRequest {
    #[serde(default)]
    pub(super) id: Option<Value>,
    #[serde(default)]
    pub(super) parameters: Map<String, Value>,
    pub(super) inputs: Vec<InputTensor>,
    #[serde(default)]
    pub(super) outputs: Vec<RequestedOutput>,
}

#[derive(Deserialize)]
pub(super) struct InputTensor {
    pub(super) name: String,
    pub(super) shape: Vec<i64>,
    pub(super) datatype: String,
    #[serde(default)]
    pub(super) parameters: Map<String, Value>,
    #[serde(default)]
    pub(super) data: Option<Value>,
}

#[derive(Deserialize)]
pub(super) struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// The protocol's response for `outputs`; `marker` says where the answer came from.
pub(super) fn render(
    request: &InferRequest,
    served: &Served,
    outputs: &[Tensor],
    used_binary: bool,
    marker: Option<Marker>,
) -> Result<Response, ApiError> {
    let default_binary = request
        .parameters
        .get("binary_data_output")
        .and_then(Value::as_bool)
        .unwrap_or(used_binary);
    let specs = served.model.outputs();
    let selected: Vec<(usize, bool)> = if request.outputs.is_empty() {
        (0..specs.len()).map(|i| (i, default_binary)).collect()
    } else {
        request
            .outputs
            .iter()
            .map(|o| {
                let index = specs
                    .iter()
                    .position(|spec| spec.name == o.name)
                    .ok_or_else(|| ApiError::bad(format!("unknown output {:?}", o.name)))?;
                let binary = o
                    .parameters
                    .get("binary_data")
                    .and_then(Value::as_bool)
                    .unwrap_or(default_binary);
                Ok((index, binary))
            })
            .collect::<Result<_, ApiError>>()?
    };
    let a = &served.assignment;
    let mut out_json = Vec::with_capacity(selected.len());
    let mut blobs: Vec<Bytes> = Vec::new();
    for (index, binary) in selected {
        let (Some(spec), Some(tensor)) = (specs.get(index), outputs.get(index)) else {
            return Err(ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the model returned fewer outputs than it declares".into(),
            ));
        };
        let mut o = json!({
            "name": spec.name,
            "datatype": tensor.dt.as_str(),
            "shape": tensor.shape,
        });
        if binary {
            o["parameters"] = json!({ "binary_data_size": tensor.data.len() });
            blobs.push(tensor.data.clone());
        } else {
            o["data"] = tensor.to_json();
        }
        out_json.push(o);
    }
    let mut response = json!({
        "model_name": a.model.name,
        "model_version": a.model.version,
        "outputs": out_json,
    });
    if let Some(id) = &request.id {
        response["id"] = id.clone();
    }
    if let Some(marker) = marker {
        marker.annotate(&mut response);
    }
    let mut response = assemble(&response, &blobs)?;
    if let Some(marker) = marker {
        marker.set_header(response.headers_mut());
    }
    Ok(response)
}

/// A JSON body, or with binary tensors the JSON header followed by the blobs.
pub(super) fn assemble(header: &Value, blobs: &[Bytes]) -> Result<Response, ApiError> {
    let header_bytes = serde_json::to_vec(header)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if blobs.is_empty() {
        return Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            header_bytes,
        )
            .into_response());
    }
    let header_len = header_bytes.len();
    let mut body = Vec::with_capacity(header_len + blobs.iter().map(Bytes::len).sum::<usize>());
    body.extend_from_slice(&header_bytes);
    for blob in blobs {
        body.extend_from_slice(blob);
    }
    let mut response = Response::new(Body::from(body));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(BINARY_HEADER, HeaderValue::from(header_len));
    Ok(response)
}

/// Splits a body into its JSON header and the binary tensor bytes that follow it.
pub(super) fn split_binary(headers: &HeaderMap, body: Bytes) -> Result<(Bytes, Bytes), ApiError> {
    let Some(value) = headers.get(BINARY_HEADER) else {
        return Ok((body, Bytes::new()));
    };
    let len: usize = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| ApiError::bad(format!("{BINARY_HEADER} is not a number")))?;
    if len > body.len() {
        return Err(ApiError::bad(format!(
            "{BINARY_HEADER} is {len} but the body has {} bytes",
            body.len()
        )));
    }
    let binary = body.slice(len..);
    Ok((body.slice(..len), binary))
}

pub(super) fn decode_inputs(
    specs: &[IoSpec],
    given: &[InputTensor],
    binary: Bytes,
) -> Result<Vec<Tensor>, ApiError> {
    let mut slots: Vec<Option<Tensor>> = vec![None; specs.len()];
    let mut cursor = 0usize;
    for input in given {
        let index = specs
            .iter()
            .position(|s| s.name == input.name)
            .ok_or_else(|| {
                let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                ApiError::bad(format!(
                    "unknown input {:?}; the model takes {names:?}",
                    input.name
                ))
            })?;
        let spec = &specs[index];
        let dt = DataType::parse(&input.datatype).ok_or_else(|| {
            ApiError::bad(format!(
                "input {:?}: unsupported datatype {:?}",
                input.name, input.datatype
            ))
        })?;
        if dt != spec.dt {
            return Err(ApiError::bad(format!(
                "input {:?} must be {}, got {dt}",
                input.name, spec.dt
            )));
        }
        let shape: Vec<usize> = input
            .shape
            .iter()
            .map(|d| usize::try_from(*d))
            .collect::<Result<_, _>>()
            .map_err(|_| ApiError::bad(format!("input {:?}: negative dimension", input.name)))?;
        if !spec.accepts_shape(&shape) {
            return Err(ApiError::bad(format!(
                "input {:?} has shape {shape:?}, the model expects {:?}",
                input.name, spec.shape
            )));
        }
        let tensor = match input.parameters.get("binary_data_size") {
            Some(size) => {
                let size = size
                    .as_u64()
                    .and_then(|s| usize::try_from(s).ok())
                    .ok_or_else(|| ApiError::bad("binary_data_size must be a byte count"))?;
                let end = cursor
                    .checked_add(size)
                    .filter(|end| *end <= binary.len())
                    .ok_or_else(|| {
                        ApiError::bad(format!(
                            "input {:?}: binary_data_size {size} overruns the {} binary bytes",
                            input.name,
                            binary.len()
                        ))
                    })?;
                let bytes = binary.slice(cursor..end);
                cursor = end;
                Tensor::from_bytes(dt, shape, bytes)
            }
            None => {
                let data = input.data.as_ref().ok_or_else(|| {
                    ApiError::bad(format!(
                        "input {:?} has neither data nor binary_data_size",
                        input.name
                    ))
                })?;
                Tensor::from_json(dt, shape, data)
            }
        }
        .map_err(|e| ApiError::bad(format!("input {:?}: {e}", input.name)))?;
        if slots[index].replace(tensor).is_some() {
            return Err(ApiError::bad(format!("input {:?} given twice", input.name)));
        }
    }
    if cursor != binary.len() {
        return Err(ApiError::bad(format!(
            "{} binary bytes are not claimed by any input",
            binary.len() - cursor
        )));
    }
    slots
        .into_iter()
        .zip(specs)
        .map(|(slot, spec)| {
            slot.ok_or_else(|| ApiError::bad(format!("missing input {:?}", spec.name)))
        })
        .collect()
}
