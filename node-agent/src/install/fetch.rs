//! Where an artifact's bytes come from: the site cache (plain HTTP, `GET
//! {cache}/v1/blobs/{sha256}`), or its origin — an http(s) URL, or an OCI registry through
//! `edgefleet-oci`. Each source answers "the bytes from offset N" as a [`Body`] the pull loop
//! appends; which source to try, and when to give up on the cache, is [`super::pull`]'s call.

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use edgefleet_oci::Registry;
use edgefleet_protocol::Artifact;
use edgefleet_protocol::oci::OciReference;

use super::pull::{Plan, PullError, content_range_start, plan_response};

/// Which source served a byte, for the per-source counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Origin,
    SiteCache,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Origin => "origin",
            Via::SiteCache => "site_cache",
        }
    }
}

/// The clients every source needs.
pub struct Sources {
    pub http: reqwest::Client,
    pub registry: Registry,
}

/// An answer to "the bytes from `offset`": how to use it, and the bytes.
pub struct Body {
    pub plan: Plan,
    pub chunks: BoxStream<'static, Result<Bytes, PullError>>,
}

impl Sources {
    /// Opens `artifact` from `via` (the site cache at `site_cache`, or the origin) at `offset`.
    pub async fn open(
        &self,
        artifact: &Artifact,
        via: Via,
        site_cache: Option<&str>,
        offset: u64,
    ) -> Result<Body, PullError> {
        match (via, site_cache) {
            (Via::SiteCache, Some(cache)) => {
                let url = format!(
                    "{}/v1/blobs/{}",
                    cache.trim_end_matches('/'),
                    artifact.sha256
                );
                // The origin travels along so that a cache that has not got the blob yet can
                // fetch it (once, for the whole site); the digest check makes that safe.
                let request = self.http.get(url).query(&[
                    ("size", artifact.size_bytes.to_string()),
                    ("origin", artifact.uri.clone()),
                ]);
                self.open_http(request, artifact.size_bytes, offset).await
            }
            _ if OciReference::is_oci(&artifact.uri) => self.open_oci(artifact, offset).await,
            _ => {
                let request = self.http.get(&artifact.uri);
                self.open_http(request, artifact.size_bytes, offset).await
            }
        }
    }

    async fn open_http(
        &self,
        mut request: reqwest::RequestBuilder,
        size: u64,
        offset: u64,
    ) -> Result<Body, PullError> {
        if offset > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let response = request
            .send()
            .await
            .map_err(|e| PullError::Network(e.to_string()))?;
        let range_start = response
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(content_range_start);
        let plan = plan_response(
            response.status().as_u16(),
            offset,
            range_start,
            response.content_length(),
            size,
        )?;
        let chunks = response
            .bytes_stream()
            .map(|chunk| chunk.map_err(|e| PullError::Network(e.to_string())))
            .boxed();
        Ok(Body { plan, chunks })
    }

    async fn open_oci(&self, artifact: &Artifact, offset: u64) -> Result<Body, PullError> {
        let reference = OciReference::parse(&artifact.uri).map_err(PullError::Registry)?;
        let blob = self
            .registry
            .open_blob(&reference, &artifact.sha256, offset)
            .await
            .map_err(|e| {
                if e.retryable() {
                    PullError::Network(e.to_string())
                } else {
                    PullError::Registry(e.to_string())
                }
            })?;
        // oci-client has already turned anything but 200/206 into an error
        let (status, range_start) = if blob.partial {
            (206, Some(offset))
        } else {
            (200, None)
        };
        let plan = plan_response(
            status,
            offset,
            range_start,
            blob.content_length,
            artifact.size_bytes,
        )?;
        let chunks = blob
            .stream
            .map(|chunk| chunk.map_err(|e| PullError::Network(e.to_string())))
            .boxed();
        Ok(Body { plan, chunks })
    }
}
