//! The site cache: a device that serves artifacts from its own store to the devices of its
//! site, so a rollout crosses the site's uplink once. `GET /v1/blobs/{sha256}` answers from
//! the cache's store (with HTTP Range, so devices resume); a blob it does not have yet is
//! fetched from the origin the request names — once, however many devices ask at the same
//! time — through the same resumable, digest-verified pull as an install, while devices get
//! 503 + `Retry-After` and ask again (a long fetch never runs into their read timeout).
//! Devices check the digest again, so a cache can never make them run wrong bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use serde::Deserialize;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use edgefleet_protocol::Artifact;

use crate::install::fetch::Sources;
use crate::install::pull;
use crate::install::store::Store;
use crate::metrics::Metrics;

/// A blob being fetched from the origin, or the error of the last attempt.
enum Fill {
    Running,
    Failed { error: String, at: Instant },
}

/// A failed fetch is reported to devices (who then use the origin) for this long before the
/// next request tries again.
const RETRY_FAILED_FILL_AFTER: Duration = Duration::from_secs(30);

pub struct SiteCache {
    store: Store,
    sources: Arc<Sources>,
    metrics: Arc<Metrics>,
    fills: Mutex<HashMap<String, Fill>>,
}

#[derive(Deserialize)]
pub struct BlobQuery {
    size: Option<u64>,
    origin: Option<String>,
}

impl SiteCache {
    /// `store` is the cache's own directory, apart from the device's models (whose garbage
    /// collection keeps only what this device runs).
    pub fn new(store: Store, sources: Arc<Sources>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            store,
            sources,
            metrics,
            fills: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `artifact` can be expected: `Ok` while its fetch from the origin runs (started
    /// here if nobody has), the error of a fetch that failed lately.
    fn fill(self: &Arc<Self>, artifact: Artifact) -> Result<(), String> {
        let mut fills = self.fills.lock().unwrap_or_else(|e| e.into_inner());
        match fills.get(&artifact.sha256) {
            Some(Fill::Running) => return Ok(()),
            Some(Fill::Failed { error, at }) if at.elapsed() < RETRY_FAILED_FILL_AFTER => {
                return Err(error.clone());
            }
            _ => {}
        }
        fills.insert(artifact.sha256.clone(), Fill::Running);
        let cache = self.clone();
        // its own task: devices poll for the outcome, and one that gives up stops nothing
        tokio::spawn(async move {
            let outcome = pull::pull(
                &cache.sources,
                &cache.store,
                &artifact,
                None,
                None,
                &|_, _, _, _| {},
            )
            .await;
            let mut fills = cache.fills.lock().unwrap_or_else(|e| e.into_inner());
            match outcome {
                Ok(_) => {
                    fills.remove(&artifact.sha256);
                }
                Err(e) => {
                    let error = format!("{}: {e}", e.kind());
                    tracing::warn!(sha = %artifact.sha256, %error, "site cache could not fetch an artifact");
                    fills.insert(
                        artifact.sha256.clone(),
                        Fill::Failed {
                            error,
                            at: Instant::now(),
                        },
                    );
                }
            }
        });
        Ok(())
    }
}

pub fn router(cache: Arc<SiteCache>) -> Router {
    Router::new()
        .route("/v1/blobs/{sha256}", get(blob))
        .with_state(cache)
}

async fn blob(
    State(cache): State<Arc<SiteCache>>,
    Path(sha256): Path<String>,
    Query(query): Query<BlobQuery>,
    request: Request,
) -> Response {
    let is_digest = sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !is_digest {
        return (StatusCode::BAD_REQUEST, "not a sha256 digest\n").into_response();
    }
    if !cache.store.has_artifact(&sha256) {
        let (Some(size), Some(origin)) = (query.size.filter(|s| *s > 0), query.origin) else {
            return (StatusCode::NOT_FOUND, "not in this site cache\n").into_response();
        };
        let artifact = Artifact {
            uri: origin,
            sha256: sha256.clone(),
            size_bytes: size,
            signature: None,
        };
        return match cache.fill(artifact) {
            // devices wait on 503 (the agent's pull polls while the cache fetches)
            Ok(()) => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(axum::http::header::RETRY_AFTER, "1")],
                "fetching from the origin\n",
            )
                .into_response(),
            Err(e) => (StatusCode::BAD_GATEWAY, format!("site cache: {e}\n")).into_response(),
        };
    }
    let path = cache.store.artifact_path(&sha256);
    match ServeFile::new(path).oneshot(request).await {
        Ok(response) => {
            // counted as the bytes leave, so a cut transfer counts what was sent
            let served = cache.clone();
            response.map(|body| {
                let counted = axum::body::Body::new(body)
                    .into_data_stream()
                    .map(move |chunk| {
                        if let Ok(bytes) = &chunk {
                            served
                                .metrics
                                .site_cache_served_bytes
                                .inc_by(bytes.len() as u64);
                        }
                        chunk
                    });
                axum::body::Body::from_stream(counted)
            })
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
