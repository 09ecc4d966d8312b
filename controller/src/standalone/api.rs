//! The standalone REST API: the same `ModelDeployment` YAML as the CRD, admitted with the
//! generated schema + serde + semantic checks (`edgefleet_crds::manifest`), stored in SQL.
//! Every route needs `Authorization: Bearer <token>`; a write wakes the reconcile loop.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use edgefleet_core::DeviceFacts;
use edgefleet_core::variant::{Choice, choose_variant};
use edgefleet_crds::{ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus};
use edgefleet_protocol::wire::ModelPhase;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::page::history::LatencyHistory;
use crate::clock::{now_ms, rfc3339};
use crate::inventory::Inventory;
use crate::store::{Store, StoredDeployment};

#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub inventory: Arc<Inventory>,
    pub token: Arc<str>,
    /// Wakes the reconcile loop after a write.
    pub changed: Arc<Notify>,
    /// p95 per cohort over time, for the fleet page.
    pub latency: Arc<LatencyHistory>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/apply", post(apply))
        .route("/api/v1/deployments", get(list))
        .route(
            "/api/v1/namespaces/{namespace}/deployments/{name}",
            get(get_one).delete(delete),
        )
        .route(
            "/api/v1/namespaces/{namespace}/deployments/{name}/describe",
            get(describe),
        )
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/fleet", get(fleet))
        .route_layer(middleware::from_fn_with_state(state.clone(), bearer))
        // The fleet page's shell holds no data; what it shows comes from /api/v1/fleet.
        .route("/", get(super::page::index))
        .with_state(state)
}

/// One problem with an applied manifest; `document` is 0-based within the request body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApplyError {
    pub document: usize,
    pub path: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Applied {
    pub namespace: String,
    pub name: String,
    pub generation: i64,
    /// `created`, `configured` or `unchanged`, as kubectl says.
    pub result: String,
}

struct ApiError(StatusCode, Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(self.1)).into_response()
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(err: crate::store::StoreError) -> Self {
        tracing::warn!(%err, "API request failed in the store");
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": format!("fleet store: {err}") }),
        )
    }
}

fn not_found(namespace: &str, name: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        json!({ "error": format!("modeldeployment {namespace}/{name} not found") }),
    )
}

async fn bearer(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if constant_time_eq(presented.as_bytes(), state.token.as_bytes()) {
        next.run(request).await
    } else {
        ApiError(
            StatusCode::UNAUTHORIZED,
            json!({ "error": "missing or wrong bearer token (--token / EDGEFLEET_TOKEN, or <data-dir>/token)" }),
        )
        .into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Splits a multi-document YAML body and admits every document; nothing is returned (and so
/// nothing stored) unless all of them pass.
pub fn admit_all(text: &str) -> Result<Vec<edgefleet_crds::ModelDeployment>, Vec<ApplyError>> {
    let mut admitted = Vec::new();
    let mut errors = Vec::new();
    for (document, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match Value::deserialize(doc) {
            Ok(Value::Null) => continue, // `---` with nothing after it
            Ok(value) => value,
            Err(err) => {
                errors.push(ApplyError {
                    document,
                    path: "<document>".into(),
                    message: format!("not valid YAML: {err}"),
                });
                break; // the parser cannot resynchronise after a syntax error
            }
        };
        match edgefleet_crds::manifest::admit_value(value) {
            Ok(md) => admitted.push(md),
            Err(field_errors) => errors.extend(field_errors.into_iter().map(|e| ApplyError {
                document,
                path: e.path,
                message: e.message,
            })),
        }
    }
    if admitted.is_empty() && errors.is_empty() {
        errors.push(ApplyError {
            document: 0,
            path: "<document>".into(),
            message: "no ModelDeployment in the request".into(),
        });
    }
    if errors.is_empty() {
        Ok(admitted)
    } else {
        Err(errors)
    }
}

async fn apply(State(state): State<ApiState>, body: String) -> Result<Response, ApiError> {
    let admitted = admit_all(&body).map_err(|errors| {
        ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({ "errors": errors }),
        )
    })?;
    let mut results = Vec::new();
    for md in admitted {
        let namespace = md
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = md.metadata.name.clone().unwrap_or_default();
        let spec_json = serde_json::to_string(&md.spec).map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error": e.to_string() }),
            )
        })?;
        let before = state.store.get_deployment(&namespace, &name).await?;
        let now = now_ms();
        let stored = state
            .store
            .put_deployment(&namespace, &name, &new_uid(now), &spec_json, now)
            .await?;
        let result = match before {
            None => "created",
            Some(b) if b.generation != stored.generation || b.deleting => "configured",
            Some(_) => "unchanged",
        };
        results.push(Applied {
            namespace,
            name,
            generation: stored.generation,
            result: result.into(),
        });
    }
    state.changed.notify_one();
    Ok(axum::Json(results).into_response())
}

/// A UUIDv7: its first 48 bits are the creation time in ms, which `get md` shows as AGE.
pub fn new_uid(now_ms: i64) -> String {
    let ms = u64::try_from(now_ms).unwrap_or(0) & 0xFFFF_FFFF_FFFF;
    let random: u128 = rand::random();
    let value = (u128::from(ms) << 80)
        | (0x7u128 << 76)
        | (random & 0x0FFF_u128) << 64
        | 0x8000_0000_0000_0000_u128
        | (random >> 64) & 0x3FFF_FFFF_FFFF_FFFF;
    let hex = format!("{value:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Creation time (ms) of a UUIDv7 made by [`new_uid`].
pub fn uid_created_ms(uid: &str) -> Option<i64> {
    let hex: String = uid.chars().filter(|c| *c != '-').take(12).collect();
    i64::from_str_radix(&hex, 16).ok()
}

/// A stored deployment in the shape `kubectl get -o json` would show.
pub fn resource(d: &StoredDeployment) -> Value {
    let spec: Value = serde_json::from_str(&d.spec_json).unwrap_or(Value::Null);
    let status: Value = d
        .status_json
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null);
    let mut metadata = json!({
        "name": d.name,
        "namespace": d.namespace,
        "uid": d.uid,
        "generation": d.generation,
    });
    if let Some(created) = uid_created_ms(&d.uid) {
        metadata["creationTimestamp"] = json!(rfc3339(created));
    }
    if d.deleting {
        metadata["deletionTimestamp"] = json!(rfc3339(now_ms()));
    }
    let mut object = json!({
        "apiVersion": "edgefleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": metadata,
        "spec": spec,
    });
    if !status.is_null() {
        object["status"] = status;
    }
    object
}

async fn list(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let items: Vec<Value> = state
        .store
        .list_deployments()
        .await?
        .iter()
        .map(resource)
        .collect();
    Ok(axum::Json(json!({ "items": items })).into_response())
}

async fn get_one(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let d = state
        .store
        .get_deployment(&namespace, &name)
        .await?
        .ok_or_else(|| not_found(&namespace, &name))?;
    Ok(axum::Json(resource(&d)).into_response())
}

async fn delete(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if !state
        .store
        .mark_deployment_deleting(&namespace, &name)
        .await?
    {
        return Err(not_found(&namespace, &name));
    }
    state.changed.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "namespace": namespace, "name": name, "result": "deleting" })),
    )
        .into_response())
}

/// What `edgefleet describe md` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Description {
    pub deployment: ModelDeployment,
    pub devices: Vec<DeviceLine>,
    pub history: Vec<HistoryLine>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceLine {
    pub device: String,
    pub device_class: String,
    pub online: bool,
    /// The variant the target version's policy calls for, or none.
    pub chosen: Option<String>,
    pub choice_reason: String,
    pub assigned_version: Option<String>,
    pub assigned_variant: Option<String>,
    pub role: Option<String>,
    pub phase: Option<String>,
    pub phase_reason: Option<String>,
    pub assignment_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryLine {
    pub at: String,
    pub event: String,
    pub detail: String,
}

async fn describe(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let d = state
        .store
        .get_deployment(&namespace, &name)
        .await?
        .ok_or_else(|| not_found(&namespace, &name))?;
    let spec: Option<ModelDeploymentSpec> = serde_json::from_str(&d.spec_json).ok();
    let assignments = state.store.assignments(&namespace, &name).await?;
    let mut devices = Vec::new();
    for facts in state.inventory.snapshot() {
        let Some(spec) = spec.as_ref().filter(|s| facts.is_selected_by(&s.selector)) else {
            continue;
        };
        let row = assignments
            .iter()
            .find(|r| r.device_id == facts.id.as_str());
        let (chosen, choice_reason) = match choose_variant(&facts, spec) {
            Choice::Fits { name, reason, .. } => (Some(name.to_string()), reason.to_string()),
            Choice::NoFit { reasons } => (None, no_fit_reason(&reasons)),
        };
        devices.push(DeviceLine {
            device: facts.id.to_string(),
            device_class: edgefleet_core::device_class(&facts),
            online: facts.online,
            chosen,
            choice_reason,
            assigned_version: row.map(|r| r.version().to_string()),
            assigned_variant: row.map(|r| r.variant().to_string()),
            role: row.map(|r| r.role().as_str().to_string()),
            phase: row.and_then(|r| r.phase).map(|p| p.as_str().to_string()),
            phase_reason: row.and_then(|r| r.phase_reason.clone()),
            assignment_reason: row.map(|r| r.reason.to_string()),
        });
    }
    let history = state
        .store
        .history(&namespace, &name)
        .await?
        .into_iter()
        .map(|(at, event, detail)| HistoryLine {
            at: rfc3339(at),
            event,
            detail,
        })
        .collect();
    let deployment = serde_json::from_value(resource(&d)).map_err(|e| {
        ApiError::from(crate::store::StoreError::Corrupt(format!(
            "deployment {}/{}: {e}",
            d.namespace, d.name
        )))
    })?;
    Ok(axum::Json(Description {
        deployment,
        devices,
        history,
    })
    .into_response())
}

/// One device as `edgefleet get devices` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRow {
    pub id: String,
    pub device_class: String,
    pub arch: String,
    pub memory_mib: u64,
    pub accelerators: Vec<String>,
    pub online: bool,
    /// `namespace/name version variant phase` per assignment.
    pub runs: Vec<String>,
}

async fn devices(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let mut rows = Vec::new();
    for facts in state.inventory.snapshot() {
        rows.push(device_row(&state, &facts).await?);
    }
    Ok(axum::Json(rows).into_response())
}

async fn device_row(state: &ApiState, facts: &DeviceFacts) -> Result<DeviceRow, ApiError> {
    let downloads = state.inventory.downloads_of(&facts.id);
    let runs = state
        .store
        .device_assignments(facts.id.as_str())
        .await?
        .into_iter()
        .map(|(ns, name, row)| {
            let phase = row.phase.map_or("Pending", |p| p.as_str());
            let mut run = format!("{ns}/{name} {} {} {phase}", row.version(), row.variant());
            // Large models take a while: say how far along the download is.
            if row.phase == Some(ModelPhase::Downloading)
                && let Some(progress) = downloads.get(&format!("{ns}/{name}"))
            {
                run.push_str(&format!(" {}", progress.describe()));
            }
            run
        })
        .collect();
    Ok(DeviceRow {
        id: facts.id.to_string(),
        device_class: edgefleet_core::device_class(facts),
        arch: facts.arch.clone(),
        memory_mib: facts.memory_total_mib,
        accelerators: facts.accelerators.iter().cloned().collect(),
        online: facts.online,
        runs,
    })
}

async fn fleet(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let view = super::page::gather(&state.store, &state.inventory, &state.latency).await?;
    Ok(axum::Json(view).into_response())
}

/// The status stored for a deployment, if any.
pub fn stored_status(d: &StoredDeployment) -> Option<ModelDeploymentStatus> {
    d.status_json
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
}

/// `no variant fits: fp32 needs arch x86_64, ...; int8 ...`
pub fn no_fit_reason(reasons: &[edgefleet_core::Rejection]) -> String {
    let each: Vec<String> = reasons.iter().map(ToString::to_string).collect();
    format!("no variant fits: {}", each.join("; "))
}

#[cfg(test)]
mod tests;
