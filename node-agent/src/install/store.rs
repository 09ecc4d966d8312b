//! The on-disk model store: content-addressed artifacts, partial downloads, the persisted
//! agent state, all written atomically (temp file, fsync, rename).
//!
//! ```text
//! <store>/sha256/<digest>     verified artifacts
//! <store>/partial/<digest>    interrupted downloads, resumed with Range
//! <store>/state.json          applied desired document + what is serving
//! <store>/spool/              telemetry windows not yet acknowledged
//! <store>/telemetry-seq       next telemetry sequence number
//! <store>/listen-addr         address of the local inference API
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic_file::{sync_dir, write_atomic};
use sha2::{Digest, Sha256};

use edgefleet_protocol::wire::{Assignment, Desired};

#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// What a restarted agent needs to serve its last good models at once.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PersistedState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Desired>,
    /// By deployment.
    #[serde(default)]
    pub deployments: BTreeMap<String, DeploymentRecord>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<Assignment>,
    /// Kept on disk for rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Assignment>,
}

impl PersistedState {
    /// Digests that garbage collection must keep: current and previous of each deployment, and
    /// every artifact the applied desired document still asks for. The last keeps a verified
    /// download whose install failed (a self-test, say) for the retry, which then needs no
    /// download; once the controller stops asking for it, the next collection removes it.
    pub fn referenced(&self) -> BTreeSet<String> {
        let wanted = self.desired.iter().flat_map(|d| &d.assignments);
        self.deployments
            .values()
            .flat_map(|r| r.serving.iter().chain(r.previous.iter()))
            .chain(wanted)
            .map(|a| a.artifact.sha256.clone())
            .collect()
    }

    pub fn applied_generation(&self) -> Option<u64> {
        self.desired.as_ref().map(|d| d.generation)
    }
}

impl Store {
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Store> {
        let root = root.into();
        for dir in ["sha256", "partial", "spool"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn artifact_path(&self, sha256: &str) -> PathBuf {
        self.root.join("sha256").join(sha256)
    }

    pub fn partial_path(&self, sha256: &str) -> PathBuf {
        self.root.join("partial").join(sha256)
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.root.join("spool")
    }

    pub fn has_artifact(&self, sha256: &str) -> bool {
        self.artifact_path(sha256).is_file()
    }

    pub fn free_bytes(&self) -> io::Result<u64> {
        free_bytes(&self.root)
    }

    pub fn load_state(&self) -> io::Result<PersistedState> {
        match std::fs::read(self.root.join("state.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(PersistedState::default()),
            Err(e) => Err(e),
        }
    }

    pub fn save_state(&self, state: &PersistedState) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
        write_atomic(&self.root.join("state.json"), &bytes)
    }

    /// Moves a verified partial download into the content-addressed store.
    pub fn commit_partial(&self, sha256: &str) -> io::Result<PathBuf> {
        let dest = self.artifact_path(sha256);
        let partial = self.partial_path(sha256);
        std::fs::File::open(&partial)?.sync_all()?;
        std::fs::rename(&partial, &dest)?;
        sync_dir(&dest);
        Ok(dest)
    }

    /// Removes artifacts and partial downloads not in `keep`; returns the removed digests.
    pub fn gc(&self, keep: &BTreeSet<String>) -> io::Result<Vec<String>> {
        let mut removed = Vec::new();
        for dir in ["sha256", "partial"] {
            for entry in std::fs::read_dir(self.root.join(dir))? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) {
                    std::fs::remove_file(entry.path())?;
                    removed.push(name);
                }
            }
        }
        Ok(removed)
    }
}

pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path).map_err(io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Lower-case hex sha256 of a file.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    hash_into(path, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Feeds a file's bytes into `hasher`; returns how many there were.
pub fn hash_into(path: &Path, hasher: &mut Sha256) -> io::Result<u64> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_gc_keeps_referenced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        assert_eq!(
            store.load_state().expect("empty"),
            PersistedState::default()
        );
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        std::fs::write(store.artifact_path(&a), b"x").expect("write");
        std::fs::write(store.artifact_path(&b), b"y").expect("write");
        std::fs::write(store.partial_path(&b), b"y").expect("write");
        let keep: BTreeSet<String> = [a.clone()].into();
        let mut removed = store.gc(&keep).expect("gc");
        removed.sort();
        assert_eq!(removed, vec![b.clone(), b]);
        assert!(store.has_artifact(&a));
        let state = PersistedState::default();
        store.save_state(&state).expect("save");
        assert_eq!(store.load_state().expect("load"), state);
        assert!(store.free_bytes().expect("statvfs") > 0);
    }

    #[test]
    fn gc_keeps_what_the_desired_document_still_wants() {
        use edgefleet_protocol::wire::DeviceId;
        let assignment = |deployment: &str, sha: &str| {
            let digit = sha.chars().next().expect("a digest");
            crate::testutil::assignment(deployment, "m", digit)
        };
        let (serving, previous, failed, old) = (
            "a".repeat(64),
            "b".repeat(64),
            "c".repeat(64),
            "d".repeat(64),
        );
        let desired = |sha: &str| Desired {
            device_id: DeviceId::new("dev").expect("valid id"),
            generation: 1,
            assignments: vec![assignment("ns/d", sha)],
        };
        let mut state = PersistedState {
            // The install of `failed` did not pass its self-test: `serving` still serves.
            desired: Some(desired(&failed)),
            deployments: [(
                "ns/d".to_string(),
                DeploymentRecord {
                    serving: Some(assignment("ns/d", &serving)),
                    previous: Some(assignment("ns/d", &previous)),
                },
            )]
            .into(),
        };
        let keep = |s: &PersistedState| s.referenced().into_iter().collect::<Vec<_>>();
        assert_eq!(
            keep(&state),
            vec![serving.clone(), previous.clone(), failed.clone()]
        );
        assert!(!state.referenced().contains(&old));
        // The controller moves on: the failed digest is no longer kept.
        state.desired = Some(desired(&serving));
        assert_eq!(keep(&state), vec![serving, previous]);
    }

    #[test]
    fn sha256_of_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").expect("write");
        assert_eq!(
            sha256_file(&p).expect("hash"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
