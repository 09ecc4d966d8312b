//! Plain-text tables for the CLI verbs, shaped like kubectl's.

use serde_json::Value;

use super::api::{Description, DeviceRow, uid_created_ms};

/// Left-aligned columns separated by three spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count()) + 3;
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
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

fn num(v: &Value) -> String {
    v.as_u64().map_or_else(|| "0".into(), |n| n.to_string())
}

/// NAME PHASE STEP MATCHED UPDATED READY AGE, like the CRD's printer columns.
pub fn deployments(items: &[Value], now_ms: i64) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|md| {
            let status = &md["status"];
            let phase = if md["metadata"]["deletionTimestamp"].is_string() {
                "Terminating".to_string()
            } else {
                status["phase"].as_str().unwrap_or("Pending").to_string()
            };
            let age = md["metadata"]["uid"]
                .as_str()
                .and_then(uid_created_ms)
                .map_or_else(|| "-".into(), |created| age(now_ms - created));
            vec![
                md["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                phase,
                num(&status["currentStep"]),
                num(&status["devices"]["matched"]),
                num(&status["devices"]["updated"]),
                num(&status["devices"]["ready"]),
                age,
            ]
        })
        .collect();
    table(
        &[
            "NAME", "PHASE", "STEP", "MATCHED", "UPDATED", "READY", "AGE",
        ],
        &rows,
    )
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
    let status = &md["status"];
    let spec = &md["spec"];
    let mut out = String::new();
    let field = |out: &mut String, k: &str, v: String| out.push_str(&format!("{k:<16}{v}\n"));
    field(
        &mut out,
        "Name:",
        md["metadata"]["name"].as_str().unwrap_or_default().into(),
    );
    field(
        &mut out,
        "Namespace:",
        md["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .into(),
    );
    field(
        &mut out,
        "UID:",
        md["metadata"]["uid"].as_str().unwrap_or_default().into(),
    );
    field(
        &mut out,
        "Generation:",
        md["metadata"]["generation"].to_string(),
    );
    field(
        &mut out,
        "Model:",
        format!(
            "{} {}",
            spec["model"]["name"].as_str().unwrap_or_default(),
            spec["model"]["version"].as_str().unwrap_or_default()
        ),
    );
    field(
        &mut out,
        "Phase:",
        status["phase"].as_str().unwrap_or("Pending").into(),
    );
    field(&mut out, "Step:", num(&status["currentStep"]));
    let c = &status["devices"];
    field(
        &mut out,
        "Devices:",
        format!(
            "matched {} assigned {} updated {} ready {} failed {} offline {} noFit {} demoted {} keptPrevious {}",
            num(&c["matched"]),
            num(&c["assigned"]),
            num(&c["updated"]),
            num(&c["ready"]),
            num(&c["failed"]),
            num(&c["offline"]),
            num(&c["noFit"]),
            num(&c["demoted"]),
            num(&c["keptPrevious"])
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
                l.assignment_reason
                    .clone()
                    .unwrap_or_else(|| l.choice_reason.clone()),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "  DEVICE", "CLASS", "VERSION", "VARIANT", "ROLE", "PHASE", "REASON",
        ],
        &rows,
    ));

    if let Some(variants) = status["variants"].as_array() {
        out.push_str("\nVariants:\n");
        let rows: Vec<Vec<String>> = variants
            .iter()
            .map(|v| {
                vec![
                    format!("  {}", v["name"].as_str().unwrap_or_default()),
                    num(&v["devices"]),
                    num(&v["ready"]),
                    v["p95LatencyMs"]
                        .as_f64()
                        .map_or_else(|| "-".into(), |p| format!("{p:.1} ms")),
                ]
            })
            .collect();
        out.push_str(&table(&["  VARIANT", "DEVICES", "READY", "P95"], &rows));
    }
    if let Some(cohorts) = status["cohorts"].as_array() {
        out.push_str("\nCohorts:\n");
        let rows: Vec<Vec<String>> = cohorts
            .iter()
            .map(|c| {
                vec![
                    format!("  {}", c["name"].as_str().unwrap_or_default()),
                    num(&c["devices"]),
                    c["verdict"].as_str().unwrap_or_default().into(),
                    num(&c["samples"]),
                    c["p95LatencyMs"]
                        .as_f64()
                        .map_or_else(|| "-".into(), |p| format!("{p:.1} ms")),
                    c["message"].as_str().unwrap_or_default().into(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "  COHORT", "DEVICES", "VERDICT", "SAMPLES", "P95", "MESSAGE",
            ],
            &rows,
        ));
    }
    if let Some(conditions) = status["conditions"].as_array() {
        out.push_str("\nConditions:\n");
        let rows: Vec<Vec<String>> = conditions
            .iter()
            .map(|c| {
                vec![
                    format!("  {}", c["type"].as_str().unwrap_or_default()),
                    c["status"].as_str().unwrap_or_default().into(),
                    c["reason"].as_str().unwrap_or_default().into(),
                    c["message"].as_str().unwrap_or_default().into(),
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

    #[test]
    fn tables_align_columns() {
        let text = table(&["A", "B"], &[vec!["long-name".into(), "x".into()]]);
        assert_eq!(text, "A           B\nlong-name   x\n");
    }
}
