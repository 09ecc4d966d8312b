//! Plain-text tables for the CLI verbs, shaped like kubectl's.

use edgefleet_crds::{CohortStatus, ModelDeployment};

use super::api::{Description, DeviceLine, DeviceRow, uid_created_ms};

/// Left-aligned columns separated by three spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths = column_widths(header, rows);
    let mut out = line(
        &widths,
        &header.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    );
    for row in rows {
        out.push_str(&line(&widths, row));
    }
    out
}

/// The width of each column: its widest cell or header.
pub fn column_widths(header: &[&str], rows: &[Vec<String>]) -> Vec<usize> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    widths
}

/// One row padded to `widths` (the last cell is not padded).
pub fn line(widths: &[usize], cells: &[String]) -> String {
    let mut out = String::new();
    for (i, cell) in cells.iter().enumerate() {
        out.push_str(cell);
        if i + 1 < cells.len() {
            let width = widths.get(i).copied().unwrap_or(0);
            out.push_str(&" ".repeat(width.saturating_sub(cell.chars().count()) + 3));
        }
    }
    out.trim_end().to_string() + "\n"
}

/// kubectl's AGE: 42s, 7m, 3h, 5d.
pub fn age(ms: i64) -> String {
    let s = (ms / 1000).max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |p| format!("{p:.1} ms"))
}

/// NAME PHASE STEP MATCHED UPDATED READY FAILED AGE, like the CRD's printer columns.
pub const DEPLOYMENT_COLUMNS: [&str; 8] = [
    "NAME", "PHASE", "STEP", "MATCHED", "UPDATED", "READY", "FAILED", "AGE",
];

pub fn deployments(items: &[ModelDeployment], now_ms: i64) -> String {
    table(&DEPLOYMENT_COLUMNS, &deployment_rows(items, now_ms))
}

pub fn deployment_rows(items: &[ModelDeployment], now_ms: i64) -> Vec<Vec<String>> {
    items
        .iter()
        .map(|md| {
            let status = md.status.clone().unwrap_or_default();
            let phase = if md.metadata.deletion_timestamp.is_some() {
                "Terminating"
            } else {
                status.phase.as_str()
            };
            let age = md
                .metadata
                .uid
                .as_deref()
                .and_then(uid_created_ms)
                .map_or_else(|| "-".into(), |created| age(now_ms - created));
            let d = &status.devices;
            vec![
                md.metadata.name.clone().unwrap_or_default(),
                phase.to_string(),
                status.current_step.to_string(),
                d.matched.to_string(),
                d.updated.to_string(),
                d.ready.to_string(),
                d.failed.to_string(),
                age,
            ]
        })
        .collect()
}

pub fn devices(devices: &[DeviceRow]) -> String {
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.device_class.clone(),
                d.arch.clone(),
                format!("{}Mi", d.memory_mib),
                if d.accelerators.is_empty() {
                    "-".into()
                } else {
                    d.accelerators.join(",")
                },
                if d.online { "yes" } else { "no" }.into(),
                if d.runs.is_empty() {
                    "-".into()
                } else {
                    d.runs.join("; ")
                },
            ]
        })
        .collect();
    table(
        &["ID", "CLASS", "ARCH", "MEMORY", "ACCEL", "ONLINE", "RUNS"],
        &rows,
    )
}

pub fn describe(d: &Description) -> String {
    let md = &d.deployment;
    let status = md.status.clone().unwrap_or_default();
    let meta = &md.metadata;
    let mut out = String::new();
    let field = |out: &mut String, k: &str, v: String| out.push_str(&format!("{k:<16}{v}\n"));
    field(&mut out, "Name:", meta.name.clone().unwrap_or_default());
    field(
        &mut out,
        "Namespace:",
        meta.namespace.clone().unwrap_or_default(),
    );
    field(&mut out, "UID:", meta.uid.clone().unwrap_or_default());
    field(
        &mut out,
        "Generation:",
        meta.generation
            .map_or_else(|| "null".into(), |g| g.to_string()),
    );
    let model = &md.spec.model;
    field(
        &mut out,
        "Model:",
        format!("{} {}", model.name, model.version),
    );
    field(&mut out, "Phase:", status.phase.as_str().into());
    field(&mut out, "Step:", status.current_step.to_string());
    let c = &status.devices;
    field(
        &mut out,
        "Devices:",
        format!(
            "matched {} assigned {} updated {} ready {} failed {} offline {} noFit {} demoted {} keptPrevious {}",
            c.matched,
            c.assigned,
            c.updated,
            c.ready,
            c.failed,
            c.offline,
            c.no_fit,
            c.demoted,
            c.kept_previous
        ),
    );

    out.push_str("\nDevices:\n");
    let rows: Vec<Vec<String>> = d
        .devices
        .iter()
        .map(|l| {
            vec![
                format!("  {}", l.device),
                l.device_class.clone(),
                l.assigned_version.clone().unwrap_or_else(|| "-".into()),
                l.assigned_variant
                    .clone()
                    .or_else(|| l.chosen.as_ref().map(|c| format!("({c})")))
                    .unwrap_or_else(|| "no fit".into()),
                l.role.clone().unwrap_or_else(|| "-".into()),
                l.phase.clone().unwrap_or_else(|| "-".into()),
                device_reason(l),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "  DEVICE", "CLASS", "VERSION", "VARIANT", "ROLE", "PHASE", "REASON",
        ],
        &rows,
    ));

    if !status.variants.is_empty() {
        out.push_str("\nVariants:\n");
        let rows: Vec<Vec<String>> = status
            .variants
            .iter()
            .map(|v| {
                vec![
                    format!("  {}", v.name),
                    v.devices.to_string(),
                    v.ready.to_string(),
                    ms(v.p95_latency_ms),
                ]
            })
            .collect();
        out.push_str(&table(&["  VARIANT", "DEVICES", "READY", "P95"], &rows));
    }
    if !status.cohorts.is_empty() {
        // CANARY: the current step's canary members (none once promoted); SERVING: devices of
        // the cohort's class that run its variant of the target version and are Ready.
        out.push_str("\nCohorts:\n");
        let target = status.target_version.as_deref();
        let rows: Vec<Vec<String>> = status
            .cohorts
            .iter()
            .map(|c| {
                vec![
                    format!("  {}", c.name),
                    c.devices.to_string(),
                    serving(c, target, &d.devices).to_string(),
                    c.verdict.as_str().into(),
                    c.samples.to_string(),
                    ms(c.p95_latency_ms),
                    c.message.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "  COHORT", "CANARY", "SERVING", "VERDICT", "SAMPLES", "P95", "MESSAGE",
            ],
            &rows,
        ));
    }
    if !status.conditions.is_empty() {
        out.push_str("\nConditions:\n");
        let rows: Vec<Vec<String>> = status
            .conditions
            .iter()
            .map(|c| {
                vec![
                    format!("  {}", c.type_),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                ]
            })
            .collect();
        out.push_str(&table(&["  TYPE", "STATUS", "REASON", "MESSAGE"], &rows));
    }
    out.push_str("\nRollout history:\n");
    if d.history.is_empty() {
        out.push_str("  <none>\n");
    }
    for h in &d.history {
        out.push_str(&format!("  {}  {:<12} {}\n", h.at, h.event, h.detail));
    }
    out
}

/// Why a device runs what it runs, or, when it failed, why it failed.
fn device_reason(l: &DeviceLine) -> String {
    if l.phase.as_deref() == Some("Failed") {
        return format!(
            "failed: {}",
            l.phase_reason.as_deref().unwrap_or("no reason given")
        );
    }
    l.assignment_reason
        .clone()
        .unwrap_or_else(|| l.choice_reason.clone())
}

/// Devices of `cohort`'s class Ready on its variant of the target version.
fn serving(cohort: &CohortStatus, target_version: Option<&str>, devices: &[DeviceLine]) -> usize {
    devices
        .iter()
        .filter(|l| l.device_class == cohort.device_class)
        .filter(|l| l.assigned_variant.as_deref() == Some(cohort.variant.as_str()))
        .filter(|l| target_version.is_some() && l.assigned_version.as_deref() == target_version)
        .filter(|l| l.phase.as_deref() == Some("Ready"))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(5_000), "5s");
        assert_eq!(age(300_000), "5m");
        assert_eq!(age(3 * 3_600_000), "3h");
        assert_eq!(age(3 * 86_400_000), "3d");
    }

    /// The cell under `column` in the first data row of a rendered table.
    fn cell(table: &str, column: &str) -> String {
        let mut lines = table.lines();
        let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
        let row: Vec<&str> = lines.next().expect("a row").split_whitespace().collect();
        let at = header
            .iter()
            .position(|h| *h == column)
            .unwrap_or_else(|| panic!("no {column} column in:\n{table}"));
        row.get(at).expect("a cell per column").to_string()
    }

    fn failed_device_status() -> ModelDeployment {
        deployment(serde_json::json!({
            "phase": "Progressing",
            "targetVersion": "2.0.0",
            "currentStep": 3,
            "devices": {"matched": 1, "assigned": 1, "updated": 1, "ready": 0, "failed": 1,
                        "offline": 0, "noFit": 0},
        }))
    }

    fn deployment(status: serde_json::Value) -> ModelDeployment {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "edgefleet.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "vad", "namespace": "default", "uid": "00000000-0000-0000-0000-000000000000"},
            "spec": {
                "model": {"name": "vad", "version": "2.0.0"},
                "variants": [{"name": "int8", "precision": "int8", "artifact": {
                    "uri": "http://a/vad.onnx", "sha256": "ab".repeat(32), "sizeBytes": 1}}],
            },
            "status": status,
        }))
        .expect("a ModelDeployment")
    }

    #[test]
    fn get_md_shows_failed_devices() {
        let text = deployments(&[failed_device_status()], 0);
        assert_eq!(cell(&text, "PHASE"), "Progressing", "{text}");
        assert_eq!(cell(&text, "READY"), "0", "{text}");
        assert_eq!(cell(&text, "FAILED"), "1", "{text}");
    }

    fn line(device: &str, variant: &str, phase: &str, phase_reason: Option<&str>) -> DeviceLine {
        DeviceLine {
            device: device.into(),
            device_class: "x86_64".into(),
            online: true,
            chosen: Some(variant.into()),
            choice_reason: format!("{variant} fits, ranked first"),
            assigned_version: Some("2.0.0".into()),
            assigned_variant: Some(variant.into()),
            role: Some("stable".into()),
            phase: Some(phase.into()),
            phase_reason: phase_reason.map(Into::into),
            assignment_reason: Some(format!("{variant} fits, ranked first")),
        }
    }

    /// The REASON cell of `device`'s row in the describe output.
    fn reason_of(text: &str, device: &str) -> String {
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with(device))
            .unwrap_or_else(|| panic!("no row for {device} in:\n{text}"));
        row.split_whitespace().skip(6).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn describe_shows_why_a_failed_device_failed() {
        let d = Description {
            deployment: failed_device_status(),
            devices: vec![
                line("dev-a", "int8", "Failed", Some("self-test: output is NaN")),
                line("dev-b", "int8", "Failed", None),
                line("dev-c", "fp32", "Ready", None),
            ],
            history: Vec::new(),
        };
        let text = describe(&d);
        assert_eq!(
            reason_of(&text, "dev-a"),
            "failed: self-test: output is NaN",
            "{text}"
        );
        assert_eq!(
            reason_of(&text, "dev-b"),
            "failed: no reason given",
            "{text}"
        );
        assert_eq!(
            reason_of(&text, "dev-c"),
            "fp32 fits, ranked first",
            "{text}"
        );
    }

    #[test]
    fn describe_counts_the_devices_serving_each_cohort_after_promotion() {
        // after promotion no cohort has canary members: the status says 0 for each
        let deployment = deployment(serde_json::json!({
            "phase": "Succeeded",
            "targetVersion": "2.0.0",
            "currentStep": 3,
            "cohorts": [
                {"name": "x86_64/int8", "deviceClass": "x86_64", "variant": "int8", "devices": 0,
                 "verdict": "Pass", "samples": 40},
                {"name": "x86_64/fp32", "deviceClass": "x86_64", "variant": "fp32", "devices": 0,
                 "verdict": "Fail", "samples": 40},
            ],
        }));
        let mut old = line("dev-d", "int8", "Ready", None);
        old.assigned_version = Some("1.0.0".into());
        let d = Description {
            deployment,
            devices: vec![
                line("dev-a", "int8", "Ready", None),
                line("dev-b", "int8", "Ready", None),
                line("dev-c", "int8", "Failed", Some("load failed")),
                old,
            ],
            history: Vec::new(),
        };
        let text = describe(&d);
        let cohorts = text.split("\nCohorts:\n").nth(1).expect("a Cohorts table");
        let rows: Vec<Vec<&str>> = cohorts
            .lines()
            .take(3)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[0][..4],
            ["COHORT", "CANARY", "SERVING", "VERDICT"],
            "{text}"
        );
        assert_eq!(rows[1][..3], ["x86_64/int8", "0", "2"], "{text}");
        assert_eq!(rows[2][..3], ["x86_64/fp32", "0", "0"], "{text}");
    }

    #[test]
    fn tables_align_columns() {
        let text = table(&["A", "B"], &[vec!["long-name".into(), "x".into()]]);
        assert_eq!(text, "A           B\nlong-name   x\n");
    }
}
