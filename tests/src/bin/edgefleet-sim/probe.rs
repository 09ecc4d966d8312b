//! Readings of the controller under test: CPU time and memory from `/proc/<pid>`, counters
//! from its Prometheus `/metrics` text.

use std::path::Path;

/// CPU seconds (user + system) of a process and its peak and current resident set.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    pub cpu_seconds: f64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

pub fn sample(pid: u32, ticks_per_second: f64) -> Option<ProcSample> {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let stat = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
    let status = std::fs::read_to_string(proc_dir.join("status")).ok()?;
    let ticks = cpu_ticks(&stat)?;
    Some(ProcSample {
        cpu_seconds: ticks as f64 / ticks_per_second,
        rss_kib: status_kib(&status, "VmRSS")?,
        peak_rss_kib: status_kib(&status, "VmHWM")?,
    })
}

/// utime + stime from `/proc/<pid>/stat` (fields 14 and 15, counted after the `(comm)` that
/// may itself contain spaces).
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // after_comm starts at field 3 (state): utime is field 14, stime field 15
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Key:   1234 kB` line of `/proc/<pid>/status`.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The children of a process (Linux 3.5+ `/proc/<pid>/task/<pid>/children`).
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The value of one series in Prometheus text format, e.g.
/// `edgefleet_telemetry_windows_total{result="counted"}`; absent series are 0.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let rest = line.strip_prefix(series)?;
            let value = rest.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_survive_spaces_in_the_command_name() {
        let stat =
            "4242 (edge fleet) S 1 4242 4242 0 -1 4194560 500 0 0 0 731 269 0 0 20 0 9 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some(1000));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_lines_and_metric_series_parse() {
        let status = "Name:\tedgefleet\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(status_kib(status, "VmSwap"), None);
        let text = "# HELP x\nedgefleet_devices{state=\"online\"} 1000\nedgefleet_devices{state=\"offline\"} 2\nedgefleet_telemetry_windows_total{result=\"counted\"} 3.5e4\n";
        assert_eq!(metric(text, "edgefleet_devices{state=\"online\"}"), 1000.0);
        assert_eq!(
            metric(
                text,
                "edgefleet_telemetry_windows_total{result=\"counted\"}"
            ),
            35000.0
        );
        assert_eq!(metric(text, "edgefleet_missing"), 0.0);
    }
}
