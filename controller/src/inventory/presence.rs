//! Folding a batch of hello and status messages into one outcome per device, so that a fleet
//! coming online is written a batch at a time with the same result as one message at a time.

use std::collections::BTreeMap;

use edgefleet_protocol::wire::{DeviceId, DeviceStatus, Hello};

/// A device saying who it is, or whether it is online.
#[derive(Debug, Clone, Copy)]
pub enum Presence<'a> {
    Hello(&'a Hello),
    Status(&'a DeviceStatus),
}

impl<'a> Presence<'a> {
    fn device(self) -> &'a DeviceId {
        match self {
            Presence::Hello(hello) => &hello.device_id,
            Presence::Status(status) => &status.device_id,
        }
    }
}

/// What one device's messages in a batch leave behind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PresenceOutcome<'a> {
    pub device: &'a DeviceId,
    /// The last hello in the batch.
    pub hello: Option<&'a Hello>,
    /// The online flag after the batch, when a message set it: a new device's first hello
    /// sets it, a status sets it once the device is known (a status before any hello is
    /// dropped; the hello follows).
    pub online: Option<bool>,
}

/// Folds `messages` in arrival order, one outcome per device that ends up with something to
/// record, in device-id order. `known` says whether a device said hello before this batch.
pub fn fold<'a>(
    messages: &[Presence<'a>],
    known: impl Fn(&DeviceId) -> bool,
) -> Vec<PresenceOutcome<'a>> {
    let mut outcomes: BTreeMap<&'a DeviceId, (bool, PresenceOutcome<'a>)> = BTreeMap::new();
    for message in messages {
        let device = message.device();
        let (exists, outcome) = outcomes.entry(device).or_insert_with(|| {
            let outcome = PresenceOutcome {
                device,
                hello: None,
                online: None,
            };
            (known(device), outcome)
        });
        match *message {
            Presence::Hello(hello) => {
                outcome.hello = Some(hello);
                if !*exists {
                    *exists = true;
                    outcome.online = Some(true);
                }
            }
            Presence::Status(status) if *exists => outcome.online = Some(status.online),
            Presence::Status(_) => {}
        }
    }
    outcomes
        .into_values()
        .map(|(_, outcome)| outcome)
        .filter(|outcome| outcome.hello.is_some() || outcome.online.is_some())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(id: &str) -> Hello {
        Hello {
            device_id: DeviceId::new(id).expect("id"),
            agent_version: "0.1.0".into(),
            labels: BTreeMap::new(),
            arch: "x86_64".into(),
            cores: 2,
            cpu_features: vec![],
            memory_total_mib: 1024,
            memory_available_mib: 512,
            disk_free_mib: 4096,
            accelerators: vec![],
            runtimes: vec![],
            site_cache_url: None,
        }
    }

    fn status(id: &str, online: bool) -> DeviceStatus {
        DeviceStatus {
            device_id: DeviceId::new(id).expect("id"),
            online,
        }
    }

    fn summary(outcomes: &[PresenceOutcome]) -> Vec<(String, bool, Option<bool>)> {
        outcomes
            .iter()
            .map(|o| (o.device.to_string(), o.hello.is_some(), o.online))
            .collect()
    }

    #[test]
    fn a_status_before_the_first_hello_is_dropped_and_the_hello_brings_the_device_online() {
        let (h, s) = (hello("new"), status("new", false));
        let outcomes = fold(&[Presence::Status(&s), Presence::Hello(&h)], |_| false);
        assert_eq!(summary(&outcomes), [("new".into(), true, Some(true))]);
    }

    #[test]
    fn a_status_after_the_first_hello_wins() {
        let (h, s) = (hello("new"), status("new", false));
        let outcomes = fold(&[Presence::Hello(&h), Presence::Status(&s)], |_| false);
        assert_eq!(summary(&outcomes), [("new".into(), true, Some(false))]);
    }

    #[test]
    fn a_known_device_keeps_its_online_flag_through_a_hello_and_takes_the_last_status() {
        let (h, off, on) = (hello("old"), status("old", false), status("old", true));
        let only_hello = fold(&[Presence::Hello(&h)], |_| true);
        assert_eq!(summary(&only_hello), [("old".into(), true, None)]);
        let statuses = fold(
            &[
                Presence::Status(&on),
                Presence::Hello(&h),
                Presence::Status(&off),
            ],
            |_| true,
        );
        assert_eq!(summary(&statuses), [("old".into(), true, Some(false))]);
    }

    #[test]
    fn unknown_devices_with_only_a_status_leave_nothing_and_outcomes_come_in_id_order() {
        let (b, a, ghost) = (hello("b"), hello("a"), status("ghost", true));
        let (b2, a2) = (hello("b"), status("a", false));
        let outcomes = fold(
            &[
                Presence::Hello(&b),
                Presence::Status(&ghost),
                Presence::Hello(&a),
                Presence::Hello(&b2),
                Presence::Status(&a2),
            ],
            |_| false,
        );
        assert_eq!(
            summary(&outcomes),
            [
                ("a".into(), true, Some(false)),
                ("b".into(), true, Some(true))
            ]
        );
        assert!(
            std::ptr::eq(outcomes[1].hello.expect("hello"), &b2),
            "last hello wins"
        );
    }
}
