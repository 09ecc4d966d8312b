//! A device's assignment for one deployment as the fleet store holds it, typed: what the
//! controller told the device (the wire [`Assignment`]) and what the device last said about it.

use std::sync::Arc;

use edgefleet_protocol::wire::{Assignment, ModelPhase, Role};

#[derive(Debug, Clone, PartialEq)]
pub struct AssignmentRecord {
    pub device_id: String,
    /// Why the device runs this: selection, canary membership and variant choice. Shared by
    /// the records with the same sentence.
    pub reason: Arc<str>,
    /// The document entry sent to the device, with its version, variant and role; shared by
    /// the records of devices whose entries are identical (a rollout has a handful of
    /// distinct entries for any number of devices).
    pub assignment: Arc<Assignment>,
    /// The deployment generation the assignment was planned from.
    pub generation: i64,
    /// The device's last report for this assignment; `None` until it reports.
    pub phase: Option<ModelPhase>,
    pub phase_reason: Option<String>,
    /// The artifact the device says it serves for this deployment (the previous one until a
    /// swap completes).
    pub serving_sha256: Option<String>,
}

impl AssignmentRecord {
    /// The model version the device was told to run (the entry's: rows with the same entry
    /// share it instead of holding a copy each).
    pub fn version(&self) -> &str {
        &self.assignment.model.version
    }

    pub fn variant(&self) -> &str {
        &self.assignment.variant
    }

    pub fn role(&self) -> Role {
        self.assignment.role
    }

    pub fn is_ready(&self) -> bool {
        self.phase == Some(ModelPhase::Ready)
    }

    pub fn is_failed(&self) -> bool {
        self.phase == Some(ModelPhase::Failed)
    }

    /// The digest of the artifact the device was told to run.
    pub fn sha256(&self) -> &str {
        &self.assignment.artifact.sha256
    }
}
