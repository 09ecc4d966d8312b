//! Controller presence: each controller replica keeps a retained `online` message on its own
//! topic once it has subscribed to the devices' channels, and leaves `offline` as its last
//! will (or on a clean shutdown).
//!
//! Agents forward spooled telemetry only while some replica is online. A broker acknowledges
//! a QoS 1 publish even when nobody is subscribed, so without this an agent would delete
//! windows from its spool that a broker restarted without its sessions dropped on the floor.

use serde::{Deserialize, Serialize};

use crate::wire::{PROTOCOL_VERSION, WireError, check_size};

pub const PRESENCE_PREFIX: &str = "edgefleet/v1/controllers";

/// The topic of one replica. Characters MQTT gives a meaning in topics (`/`, `+`, `#`) or
/// refuses (NUL) become `_`, so any client id makes a single topic level.
pub fn presence_topic(replica: &str) -> String {
    let level: String = replica
        .chars()
        .map(|c| match c {
            '/' | '+' | '#' | '\0' => '_',
            other => other,
        })
        .collect();
    format!("{PRESENCE_PREFIX}/{level}")
}

/// Every replica's presence.
pub fn presence_subscription() -> String {
    format!("{PRESENCE_PREFIX}/+")
}

#[derive(Serialize, Deserialize)]
struct Presence {
    v: u32,
    online: bool,
}

pub fn encode_presence(online: bool) -> Vec<u8> {
    serde_json::to_vec(&Presence {
        v: PROTOCOL_VERSION,
        online,
    })
    .unwrap_or_default()
}

/// `Ok(None)` for an empty payload (a cleared retained message: the replica is gone).
pub fn decode_presence(payload: &[u8]) -> Result<Option<bool>, WireError> {
    if payload.is_empty() {
        return Ok(None);
    }
    check_size(payload)?;
    let presence: Presence =
        serde_json::from_slice(payload).map_err(|e| WireError::Malformed(e.to_string()))?;
    if presence.v != PROTOCOL_VERSION {
        return Err(WireError::UnsupportedVersion {
            found: u64::from(presence.v),
        });
    }
    Ok(Some(presence.online))
}

/// The replica a presence topic names, if it is one.
pub fn replica_of(topic: &str) -> Option<&str> {
    topic
        .strip_prefix(PRESENCE_PREFIX)?
        .strip_prefix('/')
        .filter(|r| !r.is_empty() && !r.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::MAX_PAYLOAD_BYTES;

    #[test]
    fn presence_round_trips_and_bad_payloads_say_why() {
        assert_eq!(decode_presence(&encode_presence(true)), Ok(Some(true)));
        assert_eq!(decode_presence(&encode_presence(false)), Ok(Some(false)));
        assert_eq!(decode_presence(b""), Ok(None));
        assert_eq!(
            decode_presence(b"{\"online\":true}")
                .expect_err("refused")
                .kind(),
            "malformed"
        );
        assert_eq!(
            decode_presence(b"{\"v\":2,\"online\":true}")
                .expect_err("refused")
                .kind(),
            "unsupported_version"
        );
        let huge = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert_eq!(
            decode_presence(&huge).expect_err("refused").kind(),
            "too_large"
        );
    }

    #[test]
    fn every_client_id_makes_one_topic_level() {
        let topic = presence_topic("ns/pod+1#");
        assert_eq!(topic, "edgefleet/v1/controllers/ns_pod_1_");
        assert_eq!(replica_of(&topic), Some("ns_pod_1_"));
        assert_eq!(replica_of("edgefleet/v1/controllers/"), None);
        assert_eq!(replica_of("edgefleet/v1/controllers/a/b"), None);
        assert_eq!(replica_of("edgefleet/v1/devices/d/status"), None);
    }
}
