//! Downloads in progress as devices report them (bytes of total, per deployment). Kept in
//! memory only: progress is of the moment and arrives often, and SQL already keeps the phase.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use edgefleet_protocol::wire::{DeviceId, ModelPhase, StateReport};

/// One artifact's download on one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

impl Progress {
    /// `45% of 98.4 MB`.
    pub fn describe(&self) -> String {
        let percent = (self.done.min(self.total).saturating_mul(100))
            .checked_div(self.total)
            .unwrap_or(0);
        format!("{percent}% of {:.1} MB", self.total as f64 / 1e6)
    }
}

/// Per device, the deployments whose artifact it is downloading.
#[derive(Default)]
pub struct Downloads {
    devices: Mutex<HashMap<DeviceId, BTreeMap<String, Progress>>>,
}

impl Downloads {
    /// A device's report replaces what it said before about each deployment it names.
    pub fn apply(&self, report: &StateReport) {
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        let entry = devices.entry(report.device_id.clone()).or_default();
        for model in &report.models {
            match (model.phase, model.bytes_done, model.bytes_total) {
                (ModelPhase::Downloading, Some(done), Some(total)) if total > 0 => {
                    entry.insert(model.deployment.clone(), Progress { done, total });
                }
                _ => {
                    entry.remove(&model.deployment);
                }
            }
        }
        if entry.is_empty() {
            devices.remove(&report.device_id);
        }
    }

    pub fn of(&self, device: &DeviceId) -> BTreeMap<String, Progress> {
        let devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        devices.get(device).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use edgefleet_protocol::wire::ModelState;

    use super::*;

    /// (deployment, phase, bytes done and total)
    type Model<'a> = (&'a str, ModelPhase, Option<(u64, u64)>);

    fn id(device: &str) -> DeviceId {
        DeviceId::new(device).expect("a valid device id")
    }

    fn report(device: &str, models: &[Model]) -> StateReport {
        StateReport {
            device_id: id(device),
            generation: 1,
            models: models
                .iter()
                .map(|(deployment, phase, bytes)| ModelState {
                    deployment: deployment.to_string(),
                    variant: "q4-1".into(),
                    version: "1".into(),
                    sha256: "a".repeat(64),
                    phase: *phase,
                    bytes_done: bytes.map(|b| b.0),
                    bytes_total: bytes.map(|b| b.1),
                    reason: None,
                    serving_sha256: None,
                    fetched: None,
                })
                .collect(),
        }
    }

    #[test]
    fn progress_is_kept_while_downloading_and_dropped_after() {
        let downloads = Downloads::default();
        let device = id("pi-1");
        downloads.apply(&report(
            "pi-1",
            &[
                (
                    "default/chat",
                    ModelPhase::Downloading,
                    Some((44_000_000, 98_362_432)),
                ),
                ("default/vad", ModelPhase::Ready, None),
            ],
        ));
        let now = downloads.of(&device);
        assert_eq!(now.len(), 1);
        assert_eq!(now["default/chat"].describe(), "44% of 98.4 MB");

        downloads.apply(&report(
            "pi-1",
            &[("default/chat", ModelPhase::Loading, None)],
        ));
        assert!(downloads.of(&device).is_empty());
        assert!(
            downloads.devices.lock().expect("unpoisoned").is_empty(),
            "no empty entries kept"
        );
    }

    #[test]
    fn odd_counts_never_panic_or_exceed_100_percent() {
        assert_eq!(Progress { done: 5, total: 0 }.describe(), "0% of 0.0 MB");
        assert_eq!(Progress { done: 9, total: 4 }.describe(), "100% of 0.0 MB");
        let downloads = Downloads::default();
        downloads.apply(&report(
            "pi-2",
            &[("default/chat", ModelPhase::Downloading, Some((1, 0)))],
        ));
        assert!(downloads.of(&id("pi-2")).is_empty());
    }
}
