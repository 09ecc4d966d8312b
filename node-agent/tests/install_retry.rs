//! Installs through the real binary, a real Mosquitto and real models: integer (token-id)
//! self-tests, failed installs that keep their verified download for the retry, and the
//! repository index that lists what serves and what failed.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use edgefleet_protocol::wire::ModelPhase;
use edgefleet_protocol::{SelfTest, SelfTestInput, TensorDatatype};
use serde_json::{Value, json};

use common::*;

const T: Duration = Duration::from_secs(60);
/// MiniLM is 69 MB: downloading, loading and optimising it takes longer than the small models.
const SLOW: Duration = Duration::from_secs(240);

fn start(store: &Path, device: &str, broker: &str) -> AgentProcess {
    AgentProcess::spawn(store, &["--device-id", device, "--broker", broker])
}

fn stored(store: &Path, dir: &str) -> BTreeSet<String> {
    std::fs::read_dir(store.join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn requests_for(server: &ArtifactServer, name: &str) -> usize {
    server.ranges(name).len()
}

/// POSTs a JSON body and returns the status and the JSON answer (the agent's dev build of
/// reqwest has no `json` feature).
async fn post_json(url: String, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn repository_index(agent: &AgentProcess) -> Vec<Value> {
    let (status, index) = post_json(agent.url("/v2/repository/index"), &json!({})).await;
    assert_eq!(status, 200);
    serde_json::from_value(index).unwrap()
}

fn minilm_bytes() -> Vec<u8> {
    let path = models_dir().join("minilm.onnx");
    assert!(
        path.is_file(),
        "{} is missing: run tests/tools/fetch-compress-models.sh",
        path.display()
    );
    std::fs::read(path).unwrap()
}

/// "[CLS] hello , world ! this is [SEP]" as BERT token ids, every token attended.
fn token_self_test(ids: Vec<f64>) -> SelfTest {
    let shape = vec![1, ids.len() as u64];
    SelfTest {
        inputs: vec![
            SelfTestInput {
                name: "input_ids".into(),
                shape: shape.clone(),
                datatype: TensorDatatype::Int64,
                fill: None,
                data: Some(ids),
            },
            SelfTestInput {
                name: "attention_mask".into(),
                shape,
                datatype: TensorDatatype::Int64,
                fill: Some(1.0),
                data: None,
            },
        ],
    }
}

const TOKEN_IDS: [f64; 8] = [101.0, 7592.0, 1010.0, 2088.0, 999.0, 2023.0, 2003.0, 102.0];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_with_a_token_id_self_test_installs_and_a_retry_needs_no_download() {
    let server = ArtifactServer::start().await;
    let bytes = minilm_bytes();
    let uri = server.add("minilm.onnx", bytes.clone());
    let broker = TestBroker::get();
    let device = unique_device("tokens");
    let mut obs = Observer::connect(broker.port(), &device).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let agent = start(&store, &device, &broker.url());
    let d = "nlp/embeddings";
    let mut a = assignment(d, "minilm", "fp32", &uri, &bytes);
    let sha = a.artifact.sha256.clone();

    // 1. A token id that is no integer: the install fails naming the input and element.
    let mut ids = TOKEN_IDS.to_vec();
    ids[1] = 7592.5;
    a.self_test = Some(token_self_test(ids));
    obs.publish_desired(&device, desired(&device, 1, vec![a.clone()]))
        .await;
    let m = wait_phase(&mut obs, 1, d, ModelPhase::Failed, SLOW).await;
    let reason = m.reason.unwrap();
    assert!(
        reason.contains("self-test input \"input_ids\": element 1 is not a valid INT64: 7592.5"),
        "{reason}"
    );
    // The verified download stays in the store for the retry.
    assert_eq!(stored(&store, "sha256"), [sha.clone()].into());
    let index = repository_index(&agent).await;
    assert_eq!(index.len(), 1, "{index:?}");
    assert_eq!(
        (&index[0]["name"], &index[0]["state"]),
        (&json!("minilm"), &json!("UNAVAILABLE"))
    );
    assert!(index[0]["reason"].as_str().unwrap().contains("7592.5"));

    // 2. The corrected self-test: whole-number token ids pass, without a second download.
    let requests = requests_for(&server, "minilm.onnx");
    let served = server.sent_bytes();
    assert_eq!(requests, 1);
    a.self_test = Some(token_self_test(TOKEN_IDS.to_vec()));
    obs.publish_desired(&device, desired(&device, 2, vec![a.clone()]))
        .await;
    let m = wait_phase(&mut obs, 2, d, ModelPhase::Ready, SLOW).await;
    assert_eq!(m.serving_sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(requests_for(&server, "minilm.onnx"), requests);
    assert_eq!(server.sent_bytes(), served, "the retry downloaded again");
    let meta = wait_serving(&agent, "minilm", &sha, T).await;
    let inputs: Vec<(&str, &str)> = meta["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap(), i["datatype"].as_str().unwrap()))
        .collect();
    assert_eq!(
        inputs,
        [("input_ids", "INT64"), ("attention_mask", "INT64")],
        "MiniLM takes token ids and a mask (no token_type_ids)"
    );

    // Token ids work through the local API too, and the index says it is READY.
    let request = json!({"inputs": [
        {"name": "input_ids", "shape": [1, 8], "datatype": "INT64", "data": TOKEN_IDS.map(|v| v as i64)},
        {"name": "attention_mask", "shape": [1, 8], "datatype": "INT64", "data": [1, 1, 1, 1, 1, 1, 1, 1]},
    ]});
    let (status, response) = post_json(agent.url("/v2/models/minilm/infer"), &request).await;
    assert_eq!(status, 200, "{response}");
    for output in response["outputs"].as_array().unwrap() {
        let data = output["data"].as_array().unwrap();
        assert!(!data.is_empty());
        assert!(data.iter().all(|v| v.as_f64().is_some_and(f64::is_finite)));
    }
    let index = repository_index(&agent).await;
    assert_eq!(index.len(), 1, "{index:?}");
    assert_eq!(index[0]["state"], "READY");
    assert_eq!(index[0]["version"], "1.0.0");
    obs.clear_retained(&device).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_install_keeps_its_verified_blob_until_no_longer_wanted() {
    let server = ArtifactServer::start().await;
    let ocr = model_bytes("ocr-cls.onnx");
    let ocr_uri = server.add("ocr-cls.onnx", ocr.clone());
    let vad = model_bytes("silero-vad.onnx");
    let vad_uri = server.add("silero-vad.onnx", vad.clone());
    let broker = TestBroker::get();
    let device = unique_device("keepblob");
    let mut obs = Observer::connect(broker.port(), &device).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let agent = start(&store, &device, &broker.url());
    let d = "ocr/text-direction";

    // 1. The self-test names an input the model does not have: Failed after a full download.
    let mut good = assignment(d, "ocr-cls", "fp32", &ocr_uri, &ocr);
    good.self_test = Some(self_test("ocr-cls.onnx"));
    let mut broken = good.clone();
    broken.self_test.as_mut().unwrap().inputs[0].name = "image".into();
    obs.publish_desired(&device, desired(&device, 1, vec![broken]))
        .await;
    let m = wait_phase(&mut obs, 1, d, ModelPhase::Failed, T).await;
    assert!(
        m.reason.as_deref().unwrap().contains("not an input"),
        "{m:?}"
    );
    assert_eq!(
        stored(&store, "sha256"),
        [good.artifact.sha256.clone()].into()
    );
    assert!(stored(&store, "partial").is_empty());
    assert_eq!(requests_for(&server, "ocr-cls.onnx"), 1);

    // 2. The corrected self-test installs from the store.
    obs.publish_desired(&device, desired(&device, 2, vec![good.clone()]))
        .await;
    wait_phase(&mut obs, 2, d, ModelPhase::Ready, T).await;
    wait_serving(&agent, "ocr-cls", &good.artifact.sha256, T).await;
    assert_eq!(
        requests_for(&server, "ocr-cls.onnx"),
        1,
        "the retry downloaded again"
    );

    // 3. Another version fails its self-test: its blob stays while it is wanted, and the
    //    index shows the serving model READY and the failed one UNAVAILABLE with the reason.
    let mut bad_vad = assignment(d, "ocr-cls", "fp32", &vad_uri, &vad);
    bad_vad.model.version = "2.0.0".into();
    bad_vad.self_test = Some(self_test("orientation.onnx"));
    obs.publish_desired(&device, desired(&device, 3, vec![bad_vad.clone()]))
        .await;
    let m = wait_phase(&mut obs, 3, d, ModelPhase::Failed, T).await;
    assert_eq!(
        stored(&store, "sha256"),
        [
            good.artifact.sha256.clone(),
            bad_vad.artifact.sha256.clone()
        ]
        .into()
    );
    let index = repository_index(&agent).await;
    let states: Vec<(&str, &str)> = index
        .iter()
        .map(|e| (e["version"].as_str().unwrap(), e["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("1.0.0", "READY"), ("2.0.0", "UNAVAILABLE")]);
    assert_eq!(index[1]["reason"].as_str(), m.reason.as_deref());
    assert_eq!(index[1]["deployment"], d);

    // 4. The controller goes back to the serving version: normal GC removes the failed blob.
    obs.publish_desired(&device, desired(&device, 4, vec![good.clone()]))
        .await;
    let m = wait_phase(&mut obs, 4, d, ModelPhase::Ready, T).await;
    assert_eq!(m.sha256, good.artifact.sha256, "{m:?}");
    let deadline = std::time::Instant::now() + T;
    while stored(&store, "sha256") != [good.artifact.sha256.clone()].into() {
        assert!(
            std::time::Instant::now() < deadline,
            "failed blob not collected: {:?}",
            stored(&store, "sha256")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let index = repository_index(&agent).await;
    assert_eq!(index.len(), 1, "{index:?}");
    assert_eq!(index[0]["state"], "READY");
    assert_eq!(requests_for(&server, "silero-vad.onnx"), 1);
    obs.clear_retained(&device).await;
}
