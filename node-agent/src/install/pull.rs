//! Artifact pull: resumable (HTTP Range), size-capped, sha256-verified, atomically committed.
//!
//! The decisions (where to resume, whether a response may be used) are pure functions in
//! [`super::fetch`]; the async [`pull`] only moves bytes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use edgefleet_protocol::Artifact;
use edgefleet_protocol::wire::FetchedBytes;
use futures_util::StreamExt;

pub use crate::install::fetch::PullError;
use crate::install::fetch::{Plan, Sources, Via, resume_offset};
use crate::install::store::{self, Store};

fn io_err(e: std::io::Error) -> PullError {
    PullError::Io(e.to_string())
}

/// How long a device waits for its site cache to fetch an artifact from the origin (the
/// cache answers 503 meanwhile) before downloading it itself.
const MAX_WAIT_FOR_SITE_CACHE: Duration = Duration::from_secs(30 * 60);

/// What a pull did: where the artifact is, and how many bytes each source sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Pulled {
    pub path: PathBuf,
    pub fetched: FetchedBytes,
}

/// Follows a pull: `(via, new_bytes, done, total)` after each chunk.
pub type Progress<'a> = &'a (dyn Fn(Via, u64, u64, u64) + Send + Sync);

/// Ensures `artifact` is in the store, verified; returns its path. With a `site_cache`, the
/// cache is asked first and the origin takes over (from the bytes already written) as soon
/// as the cache fails; if the result does not verify after the cache served part of it, the
/// whole file is fetched again from the origin. `free_limit` caps the free space believed
/// available (to simulate small disks).
pub async fn pull(
    sources: &Sources,
    store: &Store,
    artifact: &Artifact,
    site_cache: Option<&str>,
    free_limit: Option<u64>,
    progress: Progress<'_>,
) -> Result<Pulled, PullError> {
    let sha = &artifact.sha256;
    let mut fetched = FetchedBytes::default();
    if store.has_artifact(sha) {
        let path = store.artifact_path(sha);
        let actual = hash_blocking(path.clone()).await?;
        if &actual == sha {
            return Ok(Pulled { path, fetched });
        }
        tracing::warn!(%sha, %actual, "stored artifact is corrupt; downloading it again");
        std::fs::remove_file(&path).map_err(io_err)?;
    }
    let partial = store.partial_path(sha);
    let mut refetched = false;
    let wait_for_cache_until = Instant::now() + MAX_WAIT_FOR_SITE_CACHE;
    let mut via = if site_cache.is_some() {
        Via::SiteCache
    } else {
        Via::Origin
    };
    loop {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = download(
                sources,
                store,
                artifact,
                (via, site_cache),
                free_limit,
                &mut fetched,
                progress,
            )
            .await;
            match result {
                Ok(()) => break,
                // the cache is fetching it from the origin: ask again shortly
                Err(PullError::Http(503))
                    if via == Via::SiteCache && Instant::now() < wait_for_cache_until =>
                {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) if via == Via::SiteCache && !matches!(e, PullError::DiskFull { .. }) => {
                    tracing::warn!(%sha, error = %e, "site cache failed; continuing from the origin");
                    via = Via::Origin;
                }
                Err(e) if e.retryable() && attempt < 6 => {
                    let delay = Duration::from_millis(200 * (1 << attempt.min(5)));
                    tracing::warn!(%sha, attempt, error = %e, ?delay, "download interrupted; will resume");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
        let actual = hash_blocking(partial.clone()).await?;
        if &actual == sha {
            let path = store.commit_partial(sha).map_err(io_err)?;
            return Ok(Pulled { path, fetched });
        }
        let _ = std::fs::remove_file(&partial);
        if fetched.site_cache > 0 && !refetched {
            refetched = true;
            // a cache can never make a device run wrong bytes: start over from the origin
            tracing::warn!(%sha, %actual, "bytes from the site cache did not verify; fetching from the origin");
            via = Via::Origin;
            continue;
        }
        return Err(PullError::DigestMismatch {
            expected: sha.clone(),
            actual,
        });
    }
}

async fn hash_blocking(path: PathBuf) -> Result<String, PullError> {
    tokio::task::spawn_blocking(move || store::sha256_file(&path))
        .await
        .map_err(|e| PullError::Io(e.to_string()))?
        .map_err(io_err)
}

/// One attempt from one source: appends to the partial file until it holds `size` bytes.
async fn download(
    sources: &Sources,
    store: &Store,
    artifact: &Artifact,
    (via, site_cache): (Via, Option<&str>),
    free_limit: Option<u64>,
    fetched: &mut FetchedBytes,
    progress: Progress<'_>,
) -> Result<(), PullError> {
    let size = artifact.size_bytes;
    let path = store.partial_path(&artifact.sha256);
    let on_disk = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut offset = resume_offset(on_disk, size);
    if offset == 0 && on_disk > 0 {
        std::fs::remove_file(&path).map_err(io_err)?;
    }
    let free = store.free_bytes().map_err(io_err)?;
    let free = free_limit.map_or(free, |limit| limit.min(free));
    let need = size - offset;
    if need > free {
        return Err(PullError::DiskFull { need, free });
    }
    let mut body = sources.open(artifact, via, site_cache, offset).await?;
    let mut file = match body.plan {
        Plan::Append => tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(io_err)?,
        Plan::Restart => {
            offset = 0;
            tokio::fs::File::create(&path).await.map_err(io_err)?
        }
        Plan::Discard => {
            let _ = std::fs::remove_file(&path);
            return Err(PullError::Network("server refused the resume range".into()));
        }
    };
    if offset > 0 {
        tracing::info!(sha = %artifact.sha256, offset, via = via.as_str(), "resuming download");
    }
    let mut done = offset;
    progress(via, 0, done, size);
    while let Some(chunk) = body.chunks.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                file.flush().await.map_err(io_err)?;
                return Err(e);
            }
        };
        done += chunk.len() as u64;
        if done > size {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(PullError::TooLarge {
                limit: size,
                seen: done,
            });
        }
        file.write_all(&chunk).await.map_err(io_err)?;
        let new = chunk.len() as u64;
        match via {
            Via::Origin => fetched.origin += new,
            Via::SiteCache => fetched.site_cache += new,
        }
        progress(via, new, done, size);
    }
    file.flush().await.map_err(io_err)?;
    file.sync_all().await.map_err(io_err)?;
    if done < size {
        return Err(PullError::Network(format!(
            "connection closed after {done} of {size} bytes"
        )));
    }
    Ok(())
}

/// Sha256 of bytes (for tests and tools).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
