//! A device's desired document: every assignment it holds across deployments, as one retained
//! message. Rebuilt after each change; republished only when its content changed. A document
//! is encoded once: the same bytes are compared with what was sent, stored and published.

use edgefleet_protocol::wire::{self, Assignment, Desired, DeviceId};

/// The document last sent to a device: its generation and its payload as sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SentDocument<'a> {
    pub generation: i64,
    pub payload: &'a str,
}

/// A desired document with its wire payload.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedDesired {
    pub desired: Desired,
    pub payload: String,
}

impl EncodedDesired {
    pub fn new(desired: Desired) -> Self {
        let payload = wire::encode_to_string(&desired);
        Self { desired, payload }
    }
}

/// The document for `device` holding `assignments`, or `None` when nothing changed since
/// `previous`. The generation only grows. "Changed" compares payloads, so a previous payload
/// that cannot be read (or an older encoding of the same content) is replaced once, with a
/// higher generation, rather than parsed.
pub fn next_desired(
    device: &DeviceId,
    mut assignments: Vec<Assignment>,
    previous: Option<&SentDocument>,
) -> Option<EncodedDesired> {
    assignments.sort_by(|a, b| a.deployment.cmp(&b.deployment));
    let Some(previous) = previous else {
        // never had anything, still has nothing
        return (!assignments.is_empty()).then(|| {
            EncodedDesired::new(Desired {
                device_id: device.clone(),
                generation: 1,
                assignments,
            })
        });
    };
    let previous_generation = u64::try_from(previous.generation).unwrap_or(0);
    let mut desired = Desired {
        device_id: device.clone(),
        generation: previous_generation,
        assignments,
    };
    if wire::encode_to_string(&desired) == previous.payload {
        return None;
    }
    desired.generation = previous_generation + 1;
    Some(EncodedDesired::new(desired))
}

#[cfg(test)]
mod tests {
    use edgefleet_protocol::wire::Role;

    use super::*;
    use crate::testutil::record;

    fn assignment(deployment: &str, variant: &str) -> Assignment {
        let record = record("d1", "1", Role::Stable, None);
        let mut assignment = Assignment::clone(&record.assignment);
        assignment.deployment = deployment.into();
        assignment.variant = variant.into();
        assignment
    }

    fn sent(doc: &EncodedDesired) -> SentDocument<'_> {
        SentDocument {
            generation: doc.desired.generation as i64,
            payload: &doc.payload,
        }
    }

    #[test]
    fn generation_grows_only_when_the_content_changes() {
        let device = DeviceId::new("d1").expect("id");
        let both = vec![assignment("ns/b", "int8"), assignment("ns/a", "fp32")];
        let first = next_desired(&device, both.clone(), None).expect("new document");
        assert_eq!(first.desired.generation, 1);
        assert_eq!(
            first.desired.assignments[0].deployment, "ns/a",
            "sorted by deployment"
        );
        assert_eq!(
            wire::decode::<Desired>(first.payload.as_bytes()).expect("payload"),
            first.desired,
            "the payload is the document"
        );
        let reordered = vec![both[1].clone(), both[0].clone()];
        assert_eq!(next_desired(&device, reordered, Some(&sent(&first))), None);

        let changed = vec![assignment("ns/a", "int8")];
        let second = next_desired(&device, changed, Some(&sent(&first))).expect("changed");
        assert_eq!(second.desired.generation, 2);

        // removing everything is a change too: the device must drop its models
        let emptied = next_desired(&device, vec![], Some(&sent(&first))).expect("emptied");
        assert!(emptied.desired.assignments.is_empty());
        assert_eq!(next_desired(&device, vec![], None), None);
    }

    #[test]
    fn an_unreadable_previous_document_is_replaced_with_a_higher_generation() {
        let device = DeviceId::new("d1").expect("id");
        let unreadable = SentDocument {
            generation: 7,
            payload: "{not json",
        };
        let doc = next_desired(&device, vec![], Some(&unreadable)).expect("replaced");
        assert_eq!(doc.desired.generation, 8);
    }
}
