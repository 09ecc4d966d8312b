//! `edgefleet up` writes plain-text logs when stderr is not a terminal: no ANSI escape codes
//! in a log file or a journal (the same init serves `edgefleet run`).

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn up_logs_to_a_pipe_without_ansi_codes() {
    let data = tempfile::tempdir().expect("a temporary data dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgefleet"))
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("edgefleet starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (lines_tx, lines_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).split(b'\n') {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut log = Vec::new();
    while Instant::now() < deadline {
        let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        log.extend_from_slice(&line);
        log.push(b'\n');
        if String::from_utf8_lossy(&line).contains("control plane up") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    log.extend(lines_rx.try_iter().flat_map(|mut l| {
        l.push(b'\n');
        l
    }));
    let text = String::from_utf8_lossy(&log);
    assert!(
        text.contains("control plane up") && text.contains("INFO"),
        "edgefleet up did not start and log:\n{text}"
    );
    assert!(
        !log.contains(&0x1b),
        "ANSI escape codes in a piped log:\n{text:?}"
    );
}
