//! The repository index of the KServe/Triton model repository extension
//! (`POST /v2/repository/index`): what this agent serves and what it was asked to install but
//! does not (yet) serve, and why. [`index`] is a pure function over plain data; the supervisor
//! publishes its install phases into [`InstallStates`] for the API to read.

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use edgefleet_protocol::wire::{ModelPhase, ModelState};

use crate::registry::Served;

/// One assignment of the applied desired document and how its install stands.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    /// The model name (`/v2/models/{name}`), which [`ModelState`] does not carry.
    pub model: String,
    pub state: ModelState,
}

/// The supervisor's latest install phases, readable without blocking it.
#[derive(Default)]
pub struct InstallStates(ArcSwap<Vec<Wanted>>);

impl InstallStates {
    pub fn publish(&self, wanted: Vec<Wanted>) {
        self.0.store(Arc::new(wanted));
    }

    pub fn snapshot(&self) -> Arc<Vec<Wanted>> {
        self.0.load_full()
    }
}

/// Triton's model states; EdgeFleet uses the three a client can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    Ready,
    Unavailable,
    Loading,
}

/// One element of the response array. `name`, `version`, `state` and `reason` are the
/// protocol's fields (`reason` is empty when READY); `deployment` and `variant` tell apart
/// two entries of one model name.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    pub state: State,
    pub reason: String,
    pub deployment: String,
    pub variant: String,
}

/// Every served model (READY), then every wanted artifact that is not the one serving its
/// deployment: LOADING while it downloads, verifies or loads, UNAVAILABLE when its install
/// failed (the reason says why; an older model of the deployment may still be READY).
/// `ready_only` keeps READY entries only, as the protocol's `{"ready": true}` asks.
pub fn index(served: &[Arc<Served>], wanted: &[Wanted], ready_only: bool) -> Vec<IndexEntry> {
    let mut entries: Vec<IndexEntry> = served
        .iter()
        .map(|s| {
            let a = &s.assignment;
            IndexEntry {
                name: a.model.name.clone(),
                version: a.model.version.clone(),
                state: State::Ready,
                reason: String::new(),
                deployment: a.deployment.clone(),
                variant: a.variant.clone(),
            }
        })
        .collect();
    for w in wanted {
        let m = &w.state;
        let serving_it = served
            .iter()
            .any(|s| s.assignment.deployment == m.deployment && s.sha256() == m.sha256);
        if serving_it || m.phase == ModelPhase::Removed {
            continue;
        }
        let (state, reason) = match m.phase {
            ModelPhase::Downloading => (
                State::Loading,
                match (m.bytes_done, m.bytes_total) {
                    (Some(done), Some(total)) => format!("downloading ({done} of {total} bytes)"),
                    _ => "downloading".into(),
                },
            ),
            ModelPhase::Verifying => (State::Loading, "verifying the download".into()),
            ModelPhase::Loading => (State::Loading, "loading and self-testing".into()),
            ModelPhase::Failed => (
                State::Unavailable,
                m.reason.clone().unwrap_or_else(|| "install failed".into()),
            ),
            ModelPhase::Ready | ModelPhase::Removed => {
                (State::Unavailable, "not loaded on this device".into())
            }
        };
        entries.push(IndexEntry {
            name: w.model.clone(),
            version: m.version.clone(),
            state,
            reason,
            deployment: m.deployment.clone(),
            variant: m.variant.clone(),
        });
    }
    entries.retain(|e| !ready_only || e.state == State::Ready);
    entries.sort_by(|a, b| {
        (&a.name, &a.deployment, a.state != State::Ready).cmp(&(
            &b.name,
            &b.deployment,
            b.state != State::Ready,
        ))
    });
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{IoSpec, Model};
    use crate::tensor::Tensor;

    struct NoModel;

    impl Model for NoModel {
        fn inputs(&self) -> &[IoSpec] {
            &[]
        }
        fn outputs(&self) -> &[IoSpec] {
            &[]
        }
        fn run(&self, _: Vec<Tensor>) -> anyhow::Result<Vec<Tensor>> {
            anyhow::bail!("not a real model")
        }
    }

    fn served(deployment: &str, name: &str, sha: char) -> Arc<Served> {
        Arc::new(Served {
            assignment: crate::testutil::assignment(deployment, name, sha),
            model: Arc::new(NoModel),
        })
    }

    fn wanted(deployment: &str, name: &str, sha: char, phase: ModelPhase) -> Wanted {
        Wanted {
            model: name.into(),
            state: ModelState {
                deployment: deployment.into(),
                variant: "int8".into(),
                version: "2".into(),
                sha256: sha.to_string().repeat(64),
                phase,
                bytes_done: None,
                bytes_total: None,
                reason: None,
                serving_sha256: None,
                fetched: None,
            },
        }
    }

    fn summary(entries: &[IndexEntry]) -> Vec<(&str, &str, State, &str)> {
        entries
            .iter()
            .map(|e| {
                (
                    e.name.as_str(),
                    e.version.as_str(),
                    e.state,
                    e.reason.as_str(),
                )
            })
            .collect()
    }

    #[test]
    fn phases_map_to_triton_states() {
        let served = [served("a/one", "one", 'a')];
        let wanted = [
            // Serving what it wants: the READY entry says it all.
            wanted("a/one", "one", 'a', ModelPhase::Ready),
            wanted("b/two", "two", 'b', ModelPhase::Verifying),
            wanted("c/three", "three", 'c', ModelPhase::Loading),
            wanted("d/four", "four", 'd', ModelPhase::Failed),
            wanted("e/five", "five", 'e', ModelPhase::Removed),
            wanted("f/six", "six", 'f', ModelPhase::Downloading),
        ];
        let all = index(&served, &wanted, false);
        assert_eq!(
            summary(&all),
            [
                ("four", "2", State::Unavailable, "install failed"),
                ("one", "1", State::Ready, ""),
                ("six", "2", State::Loading, "downloading"),
                ("three", "2", State::Loading, "loading and self-testing"),
                ("two", "2", State::Loading, "verifying the download"),
            ]
        );
        let ready = index(&served, &wanted, true);
        assert_eq!(summary(&ready), [("one", "1", State::Ready, "")]);
        assert!(index(&[], &[], false).is_empty());
    }
}
