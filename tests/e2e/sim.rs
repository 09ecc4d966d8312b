//! A small run of the fleet simulator (`edgefleet-sim`) against the real standalone
//! controller and Mosquitto: 50 simulated devices behind two gateway connections. The
//! simulator itself fails unless every device that fits got its desired document and the
//! controller assigned exactly those; this test checks the rest of its report.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use edgefleet_e2e::binaries;

#[test]
fn fifty_simulated_devices_roll_out_twice_and_lose_no_telemetry() {
    let (edgefleet, _) = binaries();
    let output = Command::new(env!("CARGO_BIN_EXE_edgefleet-sim"))
        .args([
            "--devices",
            "50",
            "--gateways",
            "2",
            "--telemetry-seconds",
            "1",
        ])
        .args([
            "--flood-windows",
            "3",
            "--phase-timeout-seconds",
            "60",
            "-o",
            "json",
        ])
        .arg("--edgefleet-bin")
        .arg(edgefleet)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "edgefleet-sim failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let fitting = report["fitting"].as_u64().unwrap();
    assert_eq!(report["devices"], 50);
    assert!(
        (30..50).contains(&fitting),
        "the mix has devices that fit nothing: {report}"
    );
    assert!(report["planPublishSeconds"].as_f64().unwrap() > 0.0);
    assert!(report["rolloutTo100Seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(
        report["steadyWindowsPublished"], report["steadyWindowsReceived"],
        "{report}"
    );
    assert!(report["steadyWindowsPublished"].as_u64().unwrap() > 0);
    assert_eq!(report["floodWindowsPublished"], fitting * 3);
    assert_eq!(report["floodBrokerReceived"], fitting * 3);
    assert_eq!(report["floodWindowsLost"], 0, "{report}");
    assert!(report["peakRssKib"].as_u64().unwrap() > 0);
    assert_eq!(report["simErrors"], 0, "{stderr}");
}
