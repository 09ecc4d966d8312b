//! A loopback probe on the controller's own topic: the link is only healthy if a QoS 1
//! message it publishes comes back. Mosquitto 2.0.11, asked to drop a QoS 1 message larger
//! than our Maximum Packet Size, keeps its in-flight slot: after 20 such messages it sends
//! the controller nothing more while the connection looks fine (each new connection drops
//! 20 more and stalls again), so a probe that does not come back in time forces a reconnect
//! after which the link reads packets of any size and drops the oversized ones itself. Any other message that
//! arrives meanwhile proves the broker is delivering (a probe queued behind a large backlog
//! is late, not lost), so it restarts the probe's clock.

use std::time::{Duration, Instant};

/// What the event loop should do on a probe tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    /// Publish this payload on the probe topic.
    Send(String),
    /// A probe is on its way and not yet late.
    Wait,
    /// The last probe did not come back within the timeout: drop the connection.
    Stalled,
}

#[derive(Debug)]
pub struct LoopbackProbe {
    timeout: Duration,
    connected: bool,
    next: u64,
    outstanding: Option<(String, Instant)>,
}

impl LoopbackProbe {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            connected: false,
            next: 0,
            outstanding: None,
        }
    }

    /// A new connection: whatever was in flight belongs to the old one.
    pub fn connected(&mut self) {
        self.connected = true;
        self.outstanding = None;
    }

    pub fn lost(&mut self) {
        self.connected = false;
        self.outstanding = None;
    }

    pub fn on_tick(&mut self, now: Instant) -> ProbeAction {
        if !self.connected {
            return ProbeAction::Wait;
        }
        match &self.outstanding {
            Some((_, sent)) if now.saturating_duration_since(*sent) > self.timeout => {
                ProbeAction::Stalled
            }
            Some(_) => ProbeAction::Wait,
            None => {
                self.next += 1;
                let payload = self.next.to_string();
                self.outstanding = Some((payload.clone(), now));
                ProbeAction::Send(payload)
            }
        }
    }

    /// Some other message arrived: the broker is delivering, the probe is just queued.
    pub fn delivered(&mut self, now: Instant) {
        if let Some((_, since)) = &mut self.outstanding {
            *since = now;
        }
    }

    /// A message on the probe topic came back.
    pub fn echoed(&mut self, payload: &[u8]) {
        if self
            .outstanding
            .as_ref()
            .is_some_and(|(sent, _)| sent.as_bytes() == payload)
        {
            self.outstanding = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(20);

    #[test]
    fn a_probe_that_comes_back_keeps_the_link() {
        let t0 = Instant::now();
        let mut probe = LoopbackProbe::new(TIMEOUT);
        assert_eq!(probe.on_tick(t0), ProbeAction::Wait, "not connected");
        probe.connected();
        assert_eq!(probe.on_tick(t0), ProbeAction::Send("1".into()));
        assert_eq!(
            probe.on_tick(t0 + Duration::from_secs(10)),
            ProbeAction::Wait
        );
        probe.echoed(b"1");
        assert_eq!(
            probe.on_tick(t0 + Duration::from_secs(30)),
            ProbeAction::Send("2".into())
        );
    }

    #[test]
    fn other_deliveries_keep_a_late_probe_waiting() {
        let t0 = Instant::now();
        let mut probe = LoopbackProbe::new(TIMEOUT);
        probe.connected();
        assert_eq!(probe.on_tick(t0), ProbeAction::Send("1".into()));
        probe.delivered(t0 + Duration::from_secs(19));
        assert_eq!(
            probe.on_tick(t0 + Duration::from_secs(30)),
            ProbeAction::Wait
        );
        assert_eq!(
            probe.on_tick(t0 + Duration::from_secs(40)),
            ProbeAction::Stalled
        );
    }

    #[test]
    fn a_probe_that_does_not_come_back_in_time_means_a_stalled_link() {
        let t0 = Instant::now();
        let mut probe = LoopbackProbe::new(TIMEOUT);
        probe.connected();
        assert_eq!(probe.on_tick(t0), ProbeAction::Send("1".into()));
        probe.echoed(b"0"); // an old probe's echo does not count
        assert_eq!(probe.on_tick(t0 + TIMEOUT), ProbeAction::Wait);
        assert_eq!(
            probe.on_tick(t0 + TIMEOUT + Duration::from_secs(1)),
            ProbeAction::Stalled
        );
        // after the reconnect it starts over
        probe.lost();
        probe.connected();
        assert_eq!(
            probe.on_tick(t0 + Duration::from_secs(40)),
            ProbeAction::Send("2".into())
        );
    }
}
