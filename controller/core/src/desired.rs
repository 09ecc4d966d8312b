//! A device's desired document: every assignment it holds across deployments, as one retained
//! message. Rebuilt after each change; republished only when its content changed.

use edgefleet_protocol::wire::{Assignment, Desired, DeviceId};

/// The document last sent to a device: its generation and, if it could be read, its
/// assignments.
#[derive(Debug, Clone, PartialEq)]
pub struct SentDocument {
    pub generation: i64,
    pub assignments: Option<Vec<Assignment>>,
}

/// The document for `device` holding `assignments`, or `None` when nothing changed since
/// `previous`. The generation only grows.
pub fn next_desired(
    device: &DeviceId,
    mut assignments: Vec<Assignment>,
    previous: Option<&SentDocument>,
) -> Option<Desired> {
    assignments.sort_by(|a, b| a.deployment.cmp(&b.deployment));
    if previous.and_then(|p| p.assignments.as_ref()) == Some(&assignments) {
        return None;
    }
    if previous.is_none() && assignments.is_empty() {
        return None; // never had anything, still has nothing
    }
    let previous_generation = previous.map_or(0, |p| p.generation);
    let generation = u64::try_from(previous_generation).unwrap_or(0) + 1;
    Some(Desired {
        device_id: device.clone(),
        generation,
        assignments,
    })
}

#[cfg(test)]
mod tests {
    use edgefleet_protocol::wire::Role;

    use super::*;
    use crate::testutil::record;

    fn assignment(deployment: &str, variant: &str) -> Assignment {
        let mut record = record("d1", "1", Role::Stable, None);
        record.assignment.deployment = deployment.into();
        record.assignment.variant = variant.into();
        record.assignment
    }

    fn sent(doc: &Desired) -> SentDocument {
        SentDocument {
            generation: doc.generation as i64,
            assignments: Some(doc.assignments.clone()),
        }
    }

    #[test]
    fn generation_grows_only_when_the_content_changes() {
        let device = DeviceId::new("d1").expect("id");
        let both = vec![assignment("ns/b", "int8"), assignment("ns/a", "fp32")];
        let first = next_desired(&device, both.clone(), None).expect("new document");
        assert_eq!(first.generation, 1);
        assert_eq!(
            first.assignments[0].deployment, "ns/a",
            "sorted by deployment"
        );
        assert_eq!(next_desired(&device, both, Some(&sent(&first))), None);

        let changed = vec![assignment("ns/a", "int8")];
        let second = next_desired(&device, changed, Some(&sent(&first))).expect("changed");
        assert_eq!(second.generation, 2);

        // removing everything is a change too: the device must drop its models
        let emptied = next_desired(&device, vec![], Some(&sent(&first))).expect("emptied");
        assert!(emptied.assignments.is_empty());
        assert_eq!(next_desired(&device, vec![], None), None);
    }

    #[test]
    fn an_unreadable_previous_document_is_replaced_with_a_higher_generation() {
        let device = DeviceId::new("d1").expect("id");
        let unreadable = SentDocument {
            generation: 7,
            assignments: None,
        };
        let doc = next_desired(&device, vec![], Some(&unreadable)).expect("replaced");
        assert_eq!(doc.generation, 8);
    }
}
