//! What a report becomes: `variants:` entries for a ModelDeployment and a Markdown table.

use super::*;

/// Memory a device needs for a variant: an estimate, not a measurement. 64 MiB for the agent and
/// runtime, plus 3× the artifact (file buffer, parsed graph, runtime weights).
pub fn min_memory_mib(size_bytes: u64) -> u64 {
    64 + (3 * size_bytes).div_ceil(1 << 20)
}

/// The report's variants as CRD variants. Each variant measured on both runtimes is offered for
/// both: under its own name for tract and as `NAME-ort` for ONNX Runtime (same artifact), each
/// with that runtime's measured latency and drift, so `prefer: latency` ranks on what a device
/// would actually run. A runtime that could not load a variant is not offered it: that is found
/// here, at compress time, not on devices.
pub fn variants(report: &Report) -> Vec<Variant> {
    let mut out = Vec::new();
    for v in &report.variants {
        let runs = match v.runtime {
            Runtime::Tract => v.tract.loaded,
            // Unmeasured (no --ort-python) is offered; measured and failed is not.
            Runtime::Onnxruntime => v.onnxruntime.as_ref().is_none_or(|o| o.loaded),
            Runtime::Llamacpp => true,
        };
        if runs && slower_than_fp32(&report.variants, v, v.runtime).is_none() {
            out.push(crd_variant(v, v.runtime, v.name.clone()));
        }
        if v.runtime == Runtime::Tract
            && v.onnxruntime.as_ref().is_some_and(|o| o.loaded)
            && slower_than_fp32(&report.variants, v, Runtime::Onnxruntime).is_none()
        {
            out.push(crd_variant(
                v,
                Runtime::Onnxruntime,
                format!("{}{ORT_SUFFIX}", v.name),
            ));
        }
    }
    out
}

/// For an activation-quantized variant (whose only point is speed), measured slower than fp32
/// on `runtime`: both latencies. Such a variant is not offered for that runtime, where it would
/// only win on size (tract runs MatMulInteger without integer kernels: MiniLM 340 ms vs 7 ms).
pub fn slower_than_fp32(
    all: &[VariantReport],
    v: &VariantReport,
    runtime: Runtime,
) -> Option<(f64, f64)> {
    let activation_quantized = <VariantKind as clap::ValueEnum>::value_variants()
        .iter()
        .any(|kind| kind.quantizes_activations() && kind.name() == v.name);
    if !activation_quantized {
        return None;
    }
    let latency = |v: &VariantReport| match runtime {
        Runtime::Tract => v.tract.latency_ms,
        Runtime::Onnxruntime => v.onnxruntime.as_ref().and_then(|o| o.latency_ms),
        Runtime::Llamacpp => None,
    };
    // fp32 timed alternately with the variant where there is such a run, else fp32's own
    let paired = match runtime {
        Runtime::Onnxruntime => v.onnxruntime.as_ref().and_then(|o| o.fp32_latency_ms),
        Runtime::Tract | Runtime::Llamacpp => None,
    };
    let reference = match paired {
        Some(paired) => paired,
        None => latency(all.iter().find(|r| r.name == "fp32")?)?,
    };
    let mine = latency(v)?;
    (mine >= reference).then_some((mine, reference))
}

/// Name suffix of a variant's ONNX Runtime twin.
pub const ORT_SUFFIX: &str = "-ort";

fn crd_variant(v: &VariantReport, runtime: Runtime, name: String) -> Variant {
    let measured = match runtime {
        Runtime::Tract => Some(&v.tract),
        Runtime::Onnxruntime => v.onnxruntime.as_ref(),
        // The compressor measures ONNX models only.
        Runtime::Llamacpp => None,
    };
    let latency = measured.and_then(|m| m.latency_ms);
    let drift = match runtime {
        Runtime::Onnxruntime if v.runtime == Runtime::Tract => measured
            .and_then(|m| m.drift.as_ref())
            .map(Drift::accuracy_drift)
            .or(v.accuracy_drift),
        _ => v.accuracy_drift,
    };
    Variant {
        name,
        artifact: Artifact {
            uri: v.uri.clone(),
            sha256: v.sha256.clone(),
            size_bytes: v.size_bytes,
            signature: None,
        },
        format: ModelFormat::Onnx,
        precision: v.precision,
        runtime,
        requires: Requirements {
            min_memory_mib: min_memory_mib(v.size_bytes),
            min_free_disk_mib: (2 * v.size_bytes).div_ceil(1 << 20).max(1),
            ..Default::default()
        },
        quality: drift.map(|d| Quality {
            accuracy_drift: (d * 1e6).round() / 1e6,
            latency_hint_ms: latency.map(|l| (l * 100.0).round() / 100.0),
        }),
        gguf: None,
    }
}

/// A `variants:` block ready to paste under a `ModelDeployment`'s `spec`.
pub fn variants_yaml(report: &Report) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Block {
        variants: Vec<Variant>,
    }
    let mut out = format!(
        "# edgefleet compress: {} ({} samples, {}; latency: median of {} runs on {}).\n\
         # requires.minMemoryMib is an estimate (64 MiB + 3 x size); quality.accuracyDrift is\n\
         # 1 - top-1 agreement for classifiers, else 1 - mean cosine, against fp32.\n",
        report.model, report.samples, report.input_source, report.latency_runs, report.host
    );
    out.push_str(&serde_yaml::to_string(&Block {
        variants: variants(report),
    })?);
    Ok(out)
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
}

fn drift_cell(m: Option<&RuntimeMeasurement>) -> String {
    match m.and_then(|m| m.drift.as_ref()) {
        Some(d) => match d.top1_agreement {
            Some(a) => format!("cos {:.4}, top-1 {:.1}%", d.mean_cosine, a * 100.0),
            None => format!("cos {:.4}", d.mean_cosine),
        },
        None => match m {
            Some(m) if !m.loaded => "does not load".into(),
            _ => "-".into(),
        },
    }
}

/// The report as a markdown table.
pub fn markdown(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: {} samples ({}), latency median of {} runs, 1 thread, {}\n",
        report.model, report.samples, report.input_source, report.latency_runs, report.host
    );
    let _ = writeln!(
        s,
        "| variant | precision | runtime | size | vs fp32 | sha256 | tract ms | tract drift | ort ms | ort drift | accuracyDrift |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---:|---|---:|---|---:|---|---:|");
    for v in &report.variants {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} MB | {:.0}% | {}… | {} | {} | {} | {} | {} |",
            v.name,
            serde_json::to_value(v.precision)
                .ok()
                .and_then(|p| p.as_str().map(String::from))
                .unwrap_or_default(),
            v.runtime.as_str(),
            v.size_bytes as f64 / 1e6,
            v.size_ratio * 100.0,
            &v.sha256[..12],
            ms(v.tract.latency_ms),
            drift_cell(Some(&v.tract)),
            ms(v.onnxruntime.as_ref().and_then(|o| o.latency_ms)),
            drift_cell(v.onnxruntime.as_ref()),
            v.accuracy_drift
                .map(|d| format!("{d:.4}"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    for v in &report.variants {
        for note in &v.notes {
            if note != "reference" {
                let _ = writeln!(s, "\n- {}: {note}", v.name);
            }
        }
        match (&v.tract.error, v.tract.loaded) {
            (Some(e), true) => {
                let _ = writeln!(s, "\n- {}: tract drift not measured: {e}", v.name);
            }
            (Some(e), false) => {
                let _ = writeln!(s, "\n- {}: tract cannot run it: {e}", v.name);
            }
            (None, _) => {}
        }
        if let Some(o) = &v.onnxruntime
            && let Some(e) = &o.error
        {
            let _ = writeln!(s, "\n- {}: onnxruntime: {e}", v.name);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(latency_ms: f64, fp32_latency_ms: Option<f64>) -> RuntimeMeasurement {
        RuntimeMeasurement {
            loaded: true,
            latency_ms: Some(latency_ms),
            fp32_latency_ms,
            ..Default::default()
        }
    }

    fn variant(name: &str, tract_ms: f64, ort: RuntimeMeasurement) -> VariantReport {
        VariantReport {
            name: name.into(),
            precision: Precision::Int8,
            runtime: Runtime::Tract,
            file: PathBuf::from(format!("{name}.onnx")),
            uri: format!("https://models.example/m/{name}.onnx"),
            size_bytes: 1,
            sha256: "00".into(),
            size_ratio: 1.0,
            rewrite: None,
            tract: measured(tract_ms, None),
            onnxruntime: Some(ort),
            accuracy_drift: Some(0.0),
            notes: Vec::new(),
        }
    }

    #[test]
    fn faster_than_fp32_is_decided_on_the_paired_run_where_there_is_one() {
        let fp32 = variant("fp32", 10.0, measured(6.0, None));
        // slower than fp32's own (earlier) run, faster than fp32 timed alternately with it
        let paired_faster = variant("int8-static", 12.0, measured(6.5, Some(7.0)));
        let all = [fp32.clone(), paired_faster.clone()];
        assert_eq!(
            slower_than_fp32(&all, &paired_faster, Runtime::Onnxruntime),
            None
        );
        // tract has no paired run: fp32's own is the reference
        assert_eq!(
            slower_than_fp32(&all, &paired_faster, Runtime::Tract),
            Some((12.0, 10.0))
        );
        let paired_slower = variant("int8-static", 9.0, measured(6.5, Some(6.2)));
        let all = [fp32.clone(), paired_slower.clone()];
        assert_eq!(
            slower_than_fp32(&all, &paired_slower, Runtime::Onnxruntime),
            Some((6.5, 6.2))
        );
        let offered: Vec<String> = variants(&Report {
            model: "m".into(),
            reference: PathBuf::from("m.onnx"),
            opset: 13,
            ir_version: 7,
            inputs: serde_json::Value::Null,
            input_source: "generated".into(),
            samples: 1,
            latency_runs: 1,
            threads: 1,
            host: "test".into(),
            variants: all.to_vec(),
        })
        .into_iter()
        .map(|v| v.name)
        .collect();
        assert_eq!(offered, ["fp32", "fp32-ort", "int8-static"]);
        // weight-only variants are offered whatever their speed
        let int8 = variant("int8", 50.0, measured(60.0, Some(6.0)));
        assert_eq!(
            slower_than_fp32(&[fp32, int8.clone()], &int8, Runtime::Onnxruntime),
            None
        );
    }
}
