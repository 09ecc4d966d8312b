//! The live fleet page of standalone mode in a real headless browser: `edgefleet demo --hold`
//! runs a real canary with real agents; Debian's Chromium, driven by Playwright's
//! Python client (`tests/browser/fleet_page.py`), loads the page with the printed URL and
//! watches it until v2 is promoted. Screenshots land in `target/test-artifacts/`.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use edgefleet_e2e::*;

/// The Python with Playwright that `scripts/lib.sh ensure_browser` installs.
fn browser_python() -> PathBuf {
    let python = std::env::var_os("EDGEFLEET_BROWSER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let tools = std::env::var_os("EDGEFLEET_TOOLS").map_or_else(
                || PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/edgefleet/tools"),
                PathBuf::from,
            );
            tools.join("browser-venv/bin/python")
        });
    assert!(
        python.exists(),
        "{} is missing: run scripts/test.sh (ensure_browser in scripts/lib.sh installs Chromium and Playwright)",
        python.display()
    );
    python
}

fn artifacts_dir() -> PathBuf {
    std::env::var_os("EDGEFLEET_TEST_ARTIFACTS").map_or_else(
        || PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../test-artifacts"),
        PathBuf::from,
    )
}

/// Waits for the demo's "live fleet page is at URL" line in its log.
fn page_url(demo: &Proc) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(&demo.log).unwrap_or_default();
        if let Some(url) = log
            .lines()
            .find_map(|l| l.split("live fleet page is at ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
        {
            return url.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the demo printed no page URL: {}",
            demo.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_fleet_page_shows_devices_and_canary_cohorts_as_the_rollout_advances() {
    model("orientation.onnx");
    let python = browser_python();
    let (edgefleet, agent) = binaries();
    let logs = tempfile::tempdir().unwrap();
    let mut command = Command::new(edgefleet);
    command
        // Not --short: its whole rollout takes ~5 s, less than a browser takes to start. The
        // full scenario holds v1 for 5 s and pauses 3 s per canary step.
        .args([
            "demo",
            "--devices",
            "5",
            "--hold",
            "--timeout-seconds",
            "300",
        ])
        .arg("--agent-bin")
        .arg(agent)
        .env("EDGEFLEET_MODELS", models_dir());
    let mut demo = Proc::spawn("demo", &mut command, logs.path());
    let url = page_url(&demo);
    assert!(url.contains("/#token="), "{url}");

    let shots = artifacts_dir();
    let out = Command::new(python)
        .arg(repo_root().join("tests/browser/fleet_page.py"))
        .args([
            "--url",
            &url,
            "--until-version",
            "2.0.0",
            "--timeout",
            "240",
        ])
        .arg("--screenshot-dir")
        .arg(&shots)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser run failed: {stderr}\ndemo: {}",
        demo.log_tail()
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    demo.terminate(Duration::from_secs(10));

    // Without the token: the login form, no data; a wrong token is refused in words.
    assert_eq!(seen["withoutToken"]["loginShown"], true, "{seen:#}");
    assert_eq!(seen["withoutToken"]["rows"], 0, "{seen:#}");
    assert!(
        seen["wrongTokenBanner"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{seen:#}"
    );
    assert_eq!(
        seen["tokenLeftTheUrl"], true,
        "the token is dropped from the address bar"
    );

    // The rollout, as the page showed it: every demo device, the canary's cohorts with
    // verdicts and a p95 chart, the steps advancing, v2 promoted at the end.
    let last = &seen["last"];
    let devices = last["devices"].as_object().unwrap();
    assert_eq!(devices.len(), 5, "the five demo devices: {seen:#}");
    let ready = devices
        .values()
        .filter(|runs| {
            runs.as_array()
                .unwrap()
                .iter()
                .any(|r| r["state"] == "Ready")
        })
        .count();
    assert_eq!(ready, 4, "four run a variant, one fits none: {seen:#}");
    assert!(
        devices.values().any(|runs| runs
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["state"] == "NoFit")),
        "{seen:#}"
    );
    let cohorts = seen["cohortsSeen"].as_object().unwrap();
    assert!(!cohorts.is_empty(), "canary cohorts shown: {seen:#}");
    assert!(
        cohorts
            .values()
            .any(|verdicts| verdicts.as_array().unwrap().iter().any(|v| v == "Pass")),
        "a cohort passed on the page: {seen:#}"
    );
    assert!(seen["maxChartLines"].as_u64().unwrap() >= 1, "{seen:#}");
    let phases: Vec<&str> = seen["phasesSeen"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert!(
        phases.contains(&"Progressing") && phases.contains(&"Succeeded"),
        "the page followed the rollout live: {seen:#}"
    );
    let deployment = &last["deployments"][0];
    assert_eq!(deployment["phase"], "Succeeded", "{seen:#}");
    assert_eq!(deployment["version"], "2.0.0", "{seen:#}");
    assert!(last["events"].as_u64().unwrap() > 0, "{seen:#}");

    for shot in seen["screenshots"].as_array().unwrap() {
        let bytes = std::fs::read(shot.as_str().unwrap()).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{shot} is a PNG");
        assert!(
            bytes.len() > 20_000,
            "{shot} has content ({} bytes)",
            bytes.len()
        );
    }
    eprintln!("screenshots: {}", shots.display());
}
