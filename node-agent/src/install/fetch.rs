//! Where an artifact's bytes come from: the site cache (plain HTTP, `GET
//! {cache}/v1/blobs/{sha256}`), or its origin — an http(s) URL, or an OCI registry through
//! `edgefleet-oci`. Each source answers "the bytes from offset N" as a [`Body`] the pull loop
//! appends; the pure decisions about an answer (resume offset, [`Plan`], [`PullError`]) live
//! here too. Which source to try, and when to give up on the cache, is the pull loop's call.

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use edgefleet_oci::Registry;
use edgefleet_protocol::Artifact;
use edgefleet_protocol::oci::OciReference;

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

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PullError {
    #[error("not enough free disk: {need} bytes needed, {free} free")]
    DiskFull { need: u64, free: u64 },
    #[error("artifact is larger than its declared {limit} bytes (at least {seen})")]
    TooLarge { limit: u64, seen: u64 },
    #[error("sha256 mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("server answered HTTP {0}")]
    Http(u16),
    #[error("network: {0}")]
    Network(String),
    #[error("store: {0}")]
    Io(String),
    /// The registry refused for good: wrong credentials, a missing blob or manifest.
    #[error("registry: {0}")]
    Registry(String),
}

impl PullError {
    /// Transient failures are retried, resuming from what was already written.
    pub fn retryable(&self) -> bool {
        match self {
            PullError::Network(_) => true,
            PullError::Http(code) => *code == 408 || *code == 429 || *code >= 500,
            _ => false,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            PullError::DiskFull { .. } => "disk_full",
            PullError::TooLarge { .. } => "too_large",
            PullError::DigestMismatch { .. } => "digest_mismatch",
            PullError::Http(_) => "http",
            PullError::Network(_) => "network",
            PullError::Io(_) => "io",
            PullError::Registry(_) => "registry",
        }
    }
}

/// Where to continue a download given the bytes already on disk: `0` restarts.
pub fn resume_offset(partial_len: u64, size: u64) -> u64 {
    if partial_len < size { partial_len } else { 0 }
}

/// How to use a server's answer to a request that asked for bytes from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Append the body to the partial file (206 for our range, or 200 when starting fresh).
    Append,
    /// The server sent the whole file: truncate the partial file and start over.
    Restart,
    /// The server refuses the range (416): discard the partial file and ask again from 0.
    Discard,
}

pub fn plan_response(
    status: u16,
    offset: u64,
    content_range_start: Option<u64>,
    content_length: Option<u64>,
    size: u64,
) -> Result<Plan, PullError> {
    let plan = match status {
        206 if content_range_start == Some(offset) => Plan::Append,
        206 => return Err(PullError::Network("server sent a different range".into())),
        200 if offset == 0 => Plan::Append,
        200 => Plan::Restart,
        416 => return Ok(Plan::Discard),
        code => return Err(PullError::Http(code)),
    };
    let start = if plan == Plan::Restart { 0 } else { offset };
    if let Some(len) = content_length
        && start.saturating_add(len) > size
    {
        return Err(PullError::TooLarge {
            limit: size,
            seen: start.saturating_add(len),
        });
    }
    Ok(plan)
}

/// `bytes 100-199/200` → `100`.
pub fn content_range_start(value: &str) -> Option<u64> {
    value
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_and_response_plans() {
        assert_eq!(resume_offset(0, 100), 0);
        assert_eq!(resume_offset(40, 100), 40);
        assert_eq!(
            resume_offset(100, 100),
            0,
            "a full partial file is re-fetched"
        );
        assert_eq!(
            plan_response(206, 40, Some(40), Some(60), 100),
            Ok(Plan::Append)
        );
        assert_eq!(
            plan_response(200, 40, None, Some(100), 100),
            Ok(Plan::Restart)
        );
        assert_eq!(plan_response(200, 0, None, None, 100), Ok(Plan::Append));
        assert_eq!(plan_response(416, 40, None, None, 100), Ok(Plan::Discard));
        assert!(matches!(
            plan_response(200, 0, None, Some(101), 100),
            Err(PullError::TooLarge {
                limit: 100,
                seen: 101
            })
        ));
        assert!(plan_response(206, 40, Some(0), Some(100), 100).is_err());
        let e = plan_response(503, 0, None, None, 100).unwrap_err();
        assert!(e.retryable());
        assert!(
            !plan_response(404, 0, None, None, 100)
                .unwrap_err()
                .retryable()
        );
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("items 1-2"), None);
    }
}
