//! A device's desired document: every assignment it holds across deployments, as one retained
//! message. Rebuilt from SQL after each change; republished only when its content changed.

use edgefleet_crds::wire::{Assignment, Desired, DeviceId};

use crate::store::{AssignmentRow, StoreError};

/// The document for `device` from its assignment rows, or `None` when nothing changed since
/// `previous` (generation and content as stored).
pub fn next_desired(
    device: &DeviceId,
    rows: &[(String, String, AssignmentRow)],
    previous: Option<(i64, &str)>,
) -> Result<Option<Desired>, StoreError> {
    let mut assignments: Vec<Assignment> = rows
        .iter()
        .map(|(_, _, row)| {
            serde_json::from_str(&row.assignment_json).map_err(|e| {
                StoreError::Corrupt(format!("assignments.assignment_json of {device}: {e}"))
            })
        })
        .collect::<Result<_, _>>()?;
    assignments.sort_by(|a, b| a.deployment.cmp(&b.deployment));

    let (previous_generation, previous_assignments) = match previous {
        Some((generation, json)) => {
            let doc: Option<Desired> = serde_json::from_str(json).ok();
            (generation, doc.map(|d| d.assignments))
        }
        None => (0, None),
    };
    if previous_assignments.as_ref() == Some(&assignments) {
        return Ok(None);
    }
    if previous_assignments.is_none() && previous.is_none() && assignments.is_empty() {
        return Ok(None); // never had anything, still has nothing
    }
    let generation = u64::try_from(previous_generation).unwrap_or(0) + 1;
    Ok(Some(Desired {
        device_id: device.clone(),
        generation,
        assignments,
    }))
}

#[cfg(test)]
mod tests {
    use edgefleet_crds::wire::Role;
    use edgefleet_crds::{Artifact, ModelRef, Precision, Runtime};

    use super::*;

    fn row(deployment: &str, variant: &str) -> (String, String, AssignmentRow) {
        let assignment = Assignment {
            deployment: deployment.into(),
            model: ModelRef {
                name: "m".into(),
                version: "1".into(),
            },
            variant: variant.into(),
            precision: Precision::Int8,
            runtime: Runtime::Tract,
            artifact: Artifact {
                uri: "http://a/m".into(),
                sha256: "ab".repeat(32),
                size_bytes: 1,
                signature: None,
            },
            role: Role::Stable,
            self_test: None,
            offload: None,
        };
        let (ns, name) = deployment.split_once('/').expect("ns/name");
        (
            ns.into(),
            name.into(),
            AssignmentRow {
                device_id: "d1".into(),
                version: "1".into(),
                variant: variant.into(),
                role: "stable".into(),
                reason: String::new(),
                assignment_json: serde_json::to_string(&assignment).expect("json"),
                generation: 0,
                phase: None,
                phase_reason: None,
                serving_sha256: None,
            },
        )
    }

    #[test]
    fn generation_grows_only_when_the_content_changes() {
        let device = DeviceId::new("d1").expect("id");
        let rows = vec![row("ns/b", "int8"), row("ns/a", "fp32")];
        let first = next_desired(&device, &rows, None)
            .expect("ok")
            .expect("new document");
        assert_eq!(first.generation, 1);
        assert_eq!(
            first.assignments[0].deployment, "ns/a",
            "sorted by deployment"
        );

        let stored = serde_json::to_string(&first).expect("json");
        assert_eq!(
            next_desired(&device, &rows, Some((1, &stored))).expect("ok"),
            None
        );

        let changed = vec![row("ns/a", "int8")];
        let second = next_desired(&device, &changed, Some((1, &stored)))
            .expect("ok")
            .expect("changed");
        assert_eq!(second.generation, 2);

        // removing everything is a change too: the device must drop its models
        let emptied = next_desired(&device, &[], Some((1, &stored)))
            .expect("ok")
            .expect("emptied");
        assert!(emptied.assignments.is_empty());
        assert_eq!(next_desired(&device, &[], None).expect("ok"), None);
    }
}
