//! Wire protocol: round trips, typed errors, and no panic on arbitrary bytes.

use std::collections::BTreeMap;

use edgefleet_protocol::wire::*;
use edgefleet_protocol::{Artifact, LatencyHistogram, ModelRef, Precision, Runtime};
use proptest::prelude::*;

fn device(id: &str) -> DeviceId {
    DeviceId::new(id).expect("valid id")
}

fn hello() -> Hello {
    Hello {
        device_id: device("pi-01"),
        agent_version: "0.1.0".into(),
        labels: BTreeMap::from([("site".into(), "plant-a".into())]),
        arch: "aarch64".into(),
        cores: 4,
        cpu_features: vec!["neon".into(), "dotprod".into()],
        memory_total_mib: 4096,
        memory_available_mib: 3000,
        disk_free_mib: 20_000,
        accelerators: vec![],
        runtimes: vec![Runtime::Tract],
        site_cache_url: None,
    }
}

fn desired() -> Desired {
    Desired {
        device_id: device("pi-01"),
        generation: 7,
        assignments: vec![Assignment {
            deployment: "default/vad".into(),
            model: ModelRef {
                name: "silero-vad".into(),
                version: "6.2.3".into(),
            },
            variant: "int8".into(),
            precision: Precision::Int8,
            runtime: Runtime::Tract,
            artifact: Artifact {
                uri: "http://127.0.0.1:8080/a.onnx".into(),
                sha256: "ab".repeat(32),
                size_bytes: 10,
                signature: None,
            },
            role: Role::Canary,
            self_test: None,
            offload: None,
            llm: None,
            site_cache: None,
        }],
    }
}

fn telemetry() -> Telemetry {
    let mut latency = LatencyHistogram::default();
    latency.observe(0.004);
    latency.observe(0.012);
    Telemetry {
        device_id: device("pi-01"),
        seq: 42,
        window_start_ms: 1_700_000_000_000,
        window_seconds: 10,
        models: vec![ModelWindow {
            deployment: "default/vad".into(),
            variant: "int8".into(),
            requests: 2,
            errors: 0,
            latency,
            offload: None,
            llm: None,
        }],
    }
}

#[test]
fn every_payload_round_trips() {
    assert_eq!(decode::<Hello>(&encode(&hello())), Ok(hello()));
    assert_eq!(decode::<Desired>(&encode(&desired())), Ok(desired()));
    assert_eq!(decode::<Telemetry>(&encode(&telemetry())), Ok(telemetry()));
    let status = DeviceStatus {
        device_id: device("pi-01"),
        online: false,
    };
    assert_eq!(decode::<DeviceStatus>(&encode(&status)), Ok(status));
    let state = StateReport {
        device_id: device("pi-01"),
        generation: 7,
        models: vec![ModelState {
            deployment: "default/vad".into(),
            variant: "int8".into(),
            version: "6.2.3".into(),
            sha256: "ab".repeat(32),
            phase: ModelPhase::Downloading,
            bytes_done: Some(5),
            bytes_total: Some(10),
            reason: None,
            serving_sha256: None,
            fetched: None,
        }],
    };
    assert_eq!(decode::<StateReport>(&encode(&state)), Ok(state));
}

#[test]
fn payloads_carry_the_protocol_version() {
    let json: serde_json::Value = serde_json::from_slice(&encode(&hello())).expect("json");
    assert_eq!(json["v"], 1);
    assert_eq!(json["deviceId"], "pi-01");
}

#[test]
fn typed_errors_for_bad_payloads() {
    let mut unknown_version: serde_json::Value =
        serde_json::from_slice(&encode(&hello())).expect("json");
    unknown_version["v"] = 2.into();
    let bytes = serde_json::to_vec(&unknown_version).expect("json");
    assert_eq!(
        decode::<Hello>(&bytes),
        Err(WireError::UnsupportedVersion { found: 2 })
    );

    assert!(matches!(
        decode::<Hello>(b"\xff\xfe"),
        Err(WireError::NotJson(_))
    ));
    assert_eq!(
        decode::<Hello>(b"{\"deviceId\":\"x\"}"),
        Err(WireError::MissingVersion)
    );
    assert!(matches!(
        decode::<Hello>(b"{\"v\":1,\"deviceId\":\"x\"}"),
        Err(WireError::Malformed(_))
    ));
    assert!(matches!(decode::<Hello>(b"{\"v\":1,\"deviceId\":\"../etc\",\"agentVersion\":\"1\",\"arch\":\"x\",\"cores\":1,\"memoryTotalMib\":1,\"memoryAvailableMib\":1,\"diskFreeMib\":1}"), Err(WireError::Malformed(_))));
    let huge = vec![b' '; MAX_PAYLOAD_BYTES + 1];
    assert!(matches!(
        decode::<Hello>(&huge),
        Err(WireError::TooLarge { .. })
    ));

    let mut bad_digest = desired();
    bad_digest.assignments[0].artifact.sha256 = "abc".into();
    assert!(matches!(
        decode::<Desired>(&encode(&bad_digest)),
        Err(WireError::Invalid(_))
    ));

    let mut twice = desired();
    twice.assignments.push(twice.assignments[0].clone());
    assert!(matches!(
        decode::<Desired>(&encode(&twice)),
        Err(WireError::Invalid(_))
    ));

    let mut bad_layout = telemetry();
    bad_layout.models[0].latency.counts.pop();
    assert!(matches!(
        decode::<Telemetry>(&encode(&bad_layout)),
        Err(WireError::Invalid(_))
    ));
}

#[test]
fn a_device_cannot_speak_on_another_devices_topic() {
    let err = decode_from::<Hello>(&device("pi-02"), &encode(&hello())).expect_err("mismatch");
    assert_eq!(err.kind(), "device_mismatch");
}

#[test]
fn topics_are_built_and_parsed() {
    let id = device("gw-7.plant_a");
    let t = topic(&id, Channel::Telemetry);
    assert_eq!(t, "edgefleet/v1/devices/gw-7.plant_a/telemetry");
    assert_eq!(parse_topic(&t), Ok((id, Channel::Telemetry)));
    assert_eq!(subscription(Channel::Hello), "edgefleet/v1/devices/+/hello");
    for bad in [
        "edgefleet/v1/devices/x/bogus",
        "edgefleet/v1/devices/+/hello",
        "edgefleet/v1/devices/../hello",
        "other/x/hello",
        "edgefleet/v1/devices/a/b/hello",
    ] {
        assert!(parse_topic(bad).is_err(), "{bad} should not parse");
    }
    for bad in ["", ".hidden", "a/b", "a+b", "a#", &"x".repeat(129)] {
        assert!(DeviceId::new(bad).is_err(), "{bad:?} should be refused");
    }
}

proptest! {
    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode::<Hello>(&bytes);
        let _ = decode::<DeviceStatus>(&bytes);
        let _ = decode::<Desired>(&bytes);
        let _ = decode::<StateReport>(&bytes);
        let _ = decode::<Telemetry>(&bytes);
    }

    /// Mutating a valid payload (JSON-shaped garbage) must still give a typed result.
    #[test]
    fn decoders_never_panic_on_mutated_payloads(index in 0usize..400, byte in any::<u8>()) {
        let mut bytes = encode(&desired());
        let i = index % bytes.len();
        bytes[i] = byte;
        let _ = decode::<Desired>(&bytes);
        let mut bytes = encode(&telemetry());
        let i = index % bytes.len();
        bytes[i] = byte;
        let _ = decode::<Telemetry>(&bytes);
    }

    #[test]
    fn telemetry_round_trips_for_any_counts(seq in any::<u64>(), counts in proptest::collection::vec(0u64..1_000_000, 31), requests in 0u64..1000) {
        let mut window = telemetry();
        window.seq = seq;
        window.models[0].latency.counts = counts;
        window.models[0].requests = requests;
        window.models[0].errors = requests / 2;
        prop_assert_eq!(decode::<Telemetry>(&encode(&window)), Ok(window));
    }

    #[test]
    fn topic_parsing_never_panics(s in ".{0,200}") {
        let _ = parse_topic(&s);
        let _ = DeviceId::new(s);
    }
}

#[test]
fn role_and_phase_names_round_trip_and_match_their_json() {
    for role in Role::ALL {
        assert_eq!(Role::parse(role.as_str()), Some(role));
        assert_eq!(
            serde_json::to_string(&role).expect("json"),
            format!("\"{}\"", role.as_str())
        );
    }
    for phase in ModelPhase::ALL {
        assert_eq!(ModelPhase::parse(phase.as_str()), Some(phase));
        assert_eq!(
            serde_json::to_string(&phase).expect("json"),
            format!("\"{}\"", phase.as_str())
        );
    }
    assert_eq!(Role::parse("Canary"), None);
    assert_eq!(ModelPhase::parse("ready"), None);
}
