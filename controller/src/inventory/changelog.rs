//! Which devices changed, in order, so that a reconcile pass can bring its last plan and rows
//! up to date with the devices that changed since, instead of reading and planning the whole
//! fleet again. Bounded: a reader that fell further behind than the log reaches gets `None`
//! and does the full pass.

use std::collections::VecDeque;

use edgefleet_protocol::wire::DeviceId;

/// What changed about a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Announced facts: a new device, capabilities, labels, online or offline.
    Presence,
    /// It reported on its models; `installed` when the digests it holds changed too.
    Reported { installed: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceChange {
    pub device: DeviceId,
    pub kind: ChangeKind,
}

/// The log; a position in it (its [`ChangeLog::end`] at some moment) is a revision of the
/// fleet: equal positions saw the same devices and reports.
#[derive(Debug, Default)]
pub struct ChangeLog {
    /// The position of the oldest entry kept.
    first: u64,
    entries: VecDeque<DeviceChange>,
}

impl ChangeLog {
    /// The position after the last change.
    pub fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    /// Appends a change, forgetting the oldest beyond `capacity` entries.
    pub fn push(&mut self, change: DeviceChange, capacity: usize) {
        self.entries.push_back(change);
        while self.entries.len() > capacity.max(1) {
            self.entries.pop_front();
            self.first += 1;
        }
    }

    /// The changes from position `since` to the end; `None` when some were forgotten.
    pub fn since(&self, since: u64) -> Option<Vec<DeviceChange>> {
        let skip = since.checked_sub(self.first)?;
        let skip = usize::try_from(skip).ok()?;
        if skip > self.entries.len() {
            return None;
        }
        Some(self.entries.iter().skip(skip).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(name: &str) -> DeviceChange {
        DeviceChange {
            device: DeviceId::new(name).expect("valid id"),
            kind: ChangeKind::Reported { installed: false },
        }
    }

    #[test]
    fn a_reader_gets_what_came_after_its_position_until_the_log_forgets_it() {
        let mut log = ChangeLog::default();
        assert_eq!(log.end(), 0);
        assert_eq!(log.since(0), Some(vec![]));
        log.push(change("a"), 3);
        log.push(change("b"), 3);
        assert_eq!(log.end(), 2);
        assert_eq!(log.since(1), Some(vec![change("b")]));
        log.push(change("c"), 3);
        log.push(change("d"), 3);
        assert_eq!(log.end(), 4);
        assert_eq!(log.since(0), None, "a was forgotten");
        assert_eq!(
            log.since(1),
            Some(vec![change("b"), change("c"), change("d")])
        );
        assert_eq!(log.since(4), Some(vec![]));
        assert_eq!(log.since(5), None, "a position from the future");
    }
}
