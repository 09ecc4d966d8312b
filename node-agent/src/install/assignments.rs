//! The pure reconciler: given a desired document and what is serving, which actions bring the
//! device there. No I/O; the supervisor carries the actions out.

use std::collections::BTreeMap;

use edgefleet_protocol::wire::{self, Assignment, Desired, DeviceId, WireError};

/// Why a desired message was not applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("generation {generation} is not newer than the applied generation {applied}")]
    Stale { generation: u64, applied: u64 },
}

impl Rejection {
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::Wire(e) => e.kind(),
            Rejection::Stale { .. } => "stale",
        }
    }
}

/// Decodes a desired payload for `device` and accepts it only if newer than `applied`.
pub fn accept(
    device: &DeviceId,
    payload: &[u8],
    applied: Option<u64>,
) -> Result<Desired, Rejection> {
    let desired: Desired = wire::decode_from(device, payload)?;
    match applied {
        Some(applied) if desired.generation <= applied => Err(Rejection::Stale {
            generation: desired.generation,
            applied,
        }),
        _ => Ok(desired),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Fetch if needed, verify, load, self-test, then switch this deployment to the assignment.
    Install(Assignment),
    /// The same artifact already serves; only the assignment's metadata changed.
    Update(Assignment),
    /// The deployment is no longer assigned: stop serving it.
    Remove(String),
}

/// Actions that take `serving` (by deployment) to `desired`, removals first.
pub fn plan(desired: &Desired, serving: &BTreeMap<String, Assignment>) -> Vec<Action> {
    let mut actions: Vec<Action> = serving
        .keys()
        .filter(|d| !desired.assignments.iter().any(|a| &a.deployment == *d))
        .map(|d| Action::Remove(d.clone()))
        .collect();
    for a in &desired.assignments {
        match serving.get(&a.deployment) {
            Some(current) if same_artifact(current, a) => {
                if current != a {
                    actions.push(Action::Update(a.clone()));
                }
            }
            _ => actions.push(Action::Install(a.clone())),
        }
    }
    actions
}

/// Whether two assignments serve the same loaded model (same bytes, same runtime, same shapes).
pub fn same_artifact(a: &Assignment, b: &Assignment) -> bool {
    a.artifact.sha256 == b.artifact.sha256 && a.runtime == b.runtime && a.self_test == b.self_test
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::Role;

    fn assignment(deployment: &str, sha: char) -> Assignment {
        crate::testutil::assignment(deployment, "m", sha)
    }

    fn desired(generation: u64, assignments: Vec<Assignment>) -> Desired {
        Desired {
            device_id: DeviceId::new("d1").expect("valid"),
            generation,
            assignments,
        }
    }

    #[test]
    fn accepts_only_newer_generations_for_this_device() {
        let d1 = DeviceId::new("d1").expect("valid");
        let bytes = wire::encode(&desired(5, vec![]));
        assert_eq!(accept(&d1, &bytes, None).expect("fresh").generation, 5);
        assert_eq!(accept(&d1, &bytes, Some(4)).expect("newer").generation, 5);
        let e = accept(&d1, &bytes, Some(5)).unwrap_err();
        assert_eq!(e.kind(), "stale");
        let d2 = DeviceId::new("d2").expect("valid");
        assert_eq!(
            accept(&d2, &bytes, None).unwrap_err().kind(),
            "device_mismatch"
        );
        assert_eq!(accept(&d1, b"{", None).unwrap_err().kind(), "not_json");
        assert_eq!(
            accept(&d1, b"{\"v\":2}", None).unwrap_err().kind(),
            "unsupported_version"
        );
        let bad = br#"{"v":1,"deviceId":"d1","generation":"x"}"#;
        assert_eq!(accept(&d1, bad, None).unwrap_err().kind(), "malformed");
    }

    #[test]
    fn plans_installs_updates_and_removals() {
        let serving: BTreeMap<String, Assignment> = [
            ("ns/keep".to_string(), assignment("ns/keep", 'a')),
            ("ns/upgrade".to_string(), assignment("ns/upgrade", 'b')),
            ("ns/gone".to_string(), assignment("ns/gone", 'c')),
        ]
        .into();
        let mut canary = assignment("ns/keep", 'a');
        canary.role = Role::Canary;
        let d = desired(
            2,
            vec![
                canary.clone(),
                assignment("ns/upgrade", 'd'),
                assignment("ns/new", 'e'),
            ],
        );
        assert_eq!(
            plan(&d, &serving),
            vec![
                Action::Remove("ns/gone".into()),
                Action::Update(canary),
                Action::Install(assignment("ns/upgrade", 'd')),
                Action::Install(assignment("ns/new", 'e')),
            ]
        );
        // Idempotent: applying the same document to its result plans nothing.
        let after: BTreeMap<String, Assignment> = d
            .assignments
            .iter()
            .map(|a| (a.deployment.clone(), a.clone()))
            .collect();
        assert!(plan(&d, &after).is_empty());
        assert_eq!(
            plan(&desired(3, vec![]), &after).len(),
            3,
            "an empty list removes everything"
        );
    }
}
