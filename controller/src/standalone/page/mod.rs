//! The live fleet page of `edgefleet up` at `/`: deployments, canary cohorts with a p95 chart
//! over time, devices with their variant and why, the last events. The page itself is one
//! static file (`fleet.html`, no framework, nothing fetched from elsewhere) that polls
//! `GET /api/v1/fleet` with the REST API's bearer token; the JSON is [`view::FleetView`].

pub mod history;
pub mod view;

use axum::http::header;
use axum::response::IntoResponse;

use crate::inventory::Inventory;
use crate::store::{Store, StoreError};
use view::{DeploymentInput, DeviceInput, FleetView};

const PAGE: &str = include_str!("fleet.html");

/// `GET /`: the page (no data in it, so no token needed to load it).
pub async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            // Everything the page needs is in the page; nothing else may run or load.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
            ),
        ],
        PAGE,
    )
}

/// What `GET /api/v1/fleet` returns.
pub async fn gather(
    store: &Store,
    inventory: &Inventory,
    latency: &history::LatencyHistory,
) -> Result<FleetView, StoreError> {
    let mut deployments = Vec::new();
    for stored in store.list_deployments().await? {
        let assignments = store.assignments(&stored.namespace, &stored.name).await?;
        let history = store.history(&stored.namespace, &stored.name).await?;
        deployments.push(DeploymentInput {
            stored,
            assignments,
            history,
        });
    }
    let devices: Vec<DeviceInput> = inventory
        .snapshot()
        .into_iter()
        .map(|facts| DeviceInput {
            downloads: inventory.downloads_of(&facts.id),
            facts: std::sync::Arc::unwrap_or_clone(facts),
        })
        .collect();
    Ok(view::build(
        &deployments,
        &devices,
        &latency.snapshot(),
        crate::clock::now_ms(),
    ))
}
