//! `compress` on the real SmolLM2 135M GGUF (Q4_1): llama.cpp makes Q8_0 and Q4_0, every file
//! is measured, and the written variants.yaml is a valid `ModelDeployment` spec.
//!
//! Needs tests/tools/fetch-models.sh (fails, never skips, without it).

mod common;

use edgefleet_compress::gguf::{self, GgufOptions, Settings};
use edgefleet_crds::{ModelFormat, Precision, Runtime};
use edgefleet_gguf_quantize::Quantization;
use sha2::Digest;

#[test]
fn compresses_the_real_gguf_model_end_to_end() {
    let source = common::model("smollm2-135m-instruct-q4_1.gguf");
    let dir = tempfile::tempdir().expect("tempdir");
    let options = GgufOptions {
        quantizations: vec![Quantization::Q8_0, Quantization::Q4_0],
        settings: Settings {
            threads: 2,
            decode_tokens: 8,
            runs: 1,
        },
        uri_template: "https://models.example/{model}/{variant}.gguf".into(),
        model_name: Some("smollm2".into()),
    };
    let report = gguf::compress_gguf(&source, dir.path(), &options).expect("compress");
    let names: Vec<&str> = report.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["q4-1", "q8-0", "q4-0"]);
    assert_eq!(report.layers, 30);
    assert!(report.drift_positions >= gguf::measure::PROMPTS.len());
    for v in &report.variants {
        assert!(v.error.is_none(), "{}: {:?}", v.name, v.error);
        let bytes = std::fs::read(&v.file).expect("variant file");
        assert_eq!(bytes.len() as u64, v.size_bytes);
        assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), v.sha256);
        let p = v.performance.as_ref().expect("measured");
        assert!(p.load_ms > 0.0 && p.ttft_ms > 0.0, "{}: {p:?}", v.name);
        assert!(p.decode_tokens_per_s > 0.0, "{}: {p:?}", v.name);
        let d = v.drift.as_ref().expect("drift");
        assert!((0.0..=1.0).contains(&d.top1_agreement), "{}: {d:?}", v.name);
        assert!(
            d.mean_kl >= 0.0 && d.mean_kl.is_finite(),
            "{}: {d:?}",
            v.name
        );
        if v.source {
            assert_eq!(d.top1_agreement, 1.0);
            assert!(d.mean_kl < 1e-9, "{d:?}");
        } else {
            // Requantizing a 135M model changes some next tokens, not most.
            assert!(d.top1_agreement > 0.5, "{}: {d:?}", v.name);
        }
    }
    let size = |name: &str| {
        report
            .variants
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.size_bytes)
            .expect("variant")
    };
    assert!(size("q4-0") < size("q4-1") && size("q4-1") < size("q8-0"));

    // The written block is a valid ModelDeployment spec.
    let yaml = std::fs::read_to_string(dir.path().join("variants.yaml")).expect("variants.yaml");
    let block: serde_yaml::Value = serde_yaml::from_str(&yaml).expect("yaml");
    let manifest = serde_yaml::to_string(&serde_json::json!({
        "apiVersion": "edgefleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "smollm2"},
        "spec": {
            "model": {"name": "smollm2-135m-instruct", "version": "1"},
            "variants": block["variants"],
        },
    }))
    .expect("manifest");
    let deployment = edgefleet_crds::manifest::admit_yaml(&manifest)
        .unwrap_or_else(|e| panic!("{e:?}\n{manifest}"));
    let variants = &deployment.spec.variants;
    assert_eq!(variants.len(), 3);
    for v in variants {
        assert_eq!(v.format, ModelFormat::Gguf);
        assert_eq!(v.runtime, Runtime::Llamacpp);
        let g = v.gguf.as_ref().expect("gguf block");
        assert_eq!((g.layers, g.embedding_length), (30, 576));
        assert!(
            v.artifact
                .uri
                .ends_with(&format!("/smollm2/{}.gguf", v.name))
        );
        let q = v.quality.as_ref().expect("quality");
        assert!((0.0..=1.0).contains(&q.accuracy_drift));
        assert!(q.latency_hint_ms.is_some_and(|l| l > 0.0));
    }
    assert_eq!(variants[0].precision, Precision::Int4);
    assert_eq!(
        variants[0].quality.as_ref().map(|q| q.accuracy_drift),
        Some(0.0)
    );
    assert_eq!(variants[1].precision, Precision::Int8);
    assert_eq!(
        variants[1].gguf.as_ref().map(|g| g.quantization.as_str()),
        Some("Q8_0")
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).expect("json"))
            .expect("report.json");
    assert_eq!(json["variants"][0]["source"], true);
}
