//! The Kubernetes adapter's API calls, against kube's `tower-test` mock (no server): the
//! finalizer is added first, status is patched only when it changed, Events are recorded, and
//! deletion removes the finalizer after the models left the devices.

use std::sync::{Arc, Mutex};

use edgefleet_controller::engine::{Engine, Publisher};
use edgefleet_controller::inventory::Inventory;
use edgefleet_controller::k8s::{Context, FINALIZER, reconcile};
use edgefleet_controller::metrics::Metrics;
use edgefleet_controller::store::Store;
use edgefleet_controller::telemetry::Telemetry;
use edgefleet_crds::ModelDeployment;
use http::{Request, Response};
use kube::client::Body;

type Recorded = Arc<Mutex<Vec<(String, String, serde_json::Value)>>>;

fn deployment(
    finalizers: &[&str],
    deleting: bool,
    status: Option<serde_json::Value>,
) -> ModelDeployment {
    let mut value = serde_json::json!({
        "apiVersion": "edgefleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "vad", "namespace": "default", "uid": "uid-1", "generation": 1,
                     "resourceVersion": "7", "finalizers": finalizers},
        "spec": {"model": {"name": "vad", "version": "1"},
                 "variants": [{"name": "fp32", "precision": "fp32",
                               "artifact": {"uri": "http://a/m", "sha256": "ab".repeat(32), "sizeBytes": 1}}]}
    });
    if deleting {
        value["metadata"]["deletionTimestamp"] = "2026-11-29T00:00:00Z".into();
    }
    if let Some(status) = status {
        value["status"] = status;
    }
    serde_json::from_value(value).expect("valid deployment")
}

/// A client whose every request is recorded and answered with `answer(path)`.
fn mock_client(recorded: Recorded, object: serde_json::Value) -> kube::Client {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().to_string();
            let path = request.uri().path().to_string();
            let bytes = request.into_body().collect_bytes().await.expect("body");
            let body: serde_json::Value =
                serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
            let answer = if path.contains("/events") {
                body.clone()
            } else {
                object.clone()
            };
            recorded.lock().expect("lock").push((method, path, body));
            send.send_response(
                Response::builder()
                    .status(200)
                    .body(Body::from(serde_json::to_vec(&answer).expect("json")))
                    .expect("response"),
            );
        }
    });
    kube::Client::new(service, "default")
}

async fn context(client: kube::Client) -> Arc<Context> {
    let metrics = Metrics::new();
    let store = Store::connect("sqlite::memory:").await.expect("store");
    let inventory = Arc::new(
        Inventory::load(store.clone(), metrics.clone())
            .await
            .expect("inventory"),
    );
    let engine = Engine::new(
        store,
        inventory,
        Arc::new(Telemetry::new(1000, 60_000)),
        metrics,
        Publisher::Recorder(Arc::default()),
    );
    let (_tx, leader) = tokio::sync::watch::channel(true);
    std::mem::forget(_tx); // keep the leadership channel open for the test's duration
    Arc::new(Context::new(Arc::new(engine), client, leader))
}

#[tokio::test]
async fn the_finalizer_is_added_before_anything_else() {
    let recorded = Recorded::default();
    let md = deployment(&[], false, None);
    let client = mock_client(recorded.clone(), serde_json::to_value(&md).expect("json"));
    reconcile(Arc::new(md), context(client).await)
        .await
        .expect("reconcile");
    let calls = recorded.lock().expect("lock").clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let (method, path, body) = &calls[0];
    assert_eq!(
        (method.as_str(), path.as_str()),
        (
            "PATCH",
            "/apis/edgefleet.io/v1alpha1/namespaces/default/modeldeployments/vad"
        )
    );
    assert!(body.to_string().contains(FINALIZER), "{body}");
}

#[tokio::test]
async fn status_is_patched_when_it_changes_and_not_again() {
    let recorded = Recorded::default();
    let md = deployment(&[FINALIZER], false, None);
    let client = mock_client(recorded.clone(), serde_json::to_value(&md).expect("json"));
    let ctx = context(client).await;
    reconcile(Arc::new(md.clone()), ctx.clone())
        .await
        .expect("reconcile");
    let calls = recorded.lock().expect("lock").clone();
    let status_patch = calls
        .iter()
        .find(|(m, p, _)| m == "PATCH" && p.ends_with("/modeldeployments/vad/status"))
        .unwrap_or_else(|| panic!("no status patch in {calls:?}"));
    let status = status_patch.2["status"].clone();
    assert_eq!(
        status["phase"], "Succeeded",
        "no devices: nothing to wait for; {status}"
    );
    assert_eq!(status["observedGeneration"], 1);
    assert!(
        calls
            .iter()
            .any(|(m, p, _)| m == "POST" && p.contains("/events")),
        "RolloutStarted event: {calls:?}"
    );

    // the object now carries that status: a second reconcile patches nothing
    recorded.lock().expect("lock").clear();
    let settled = deployment(&[FINALIZER], false, Some(status));
    reconcile(Arc::new(settled), ctx).await.expect("reconcile");
    let calls = recorded.lock().expect("lock").clone();
    assert!(
        calls.iter().all(|(_, p, _)| !p.ends_with("/status")),
        "patched an unchanged status: {calls:?}"
    );
}

#[tokio::test]
async fn deletion_cleans_up_then_removes_the_finalizer() {
    let recorded = Recorded::default();
    let md = deployment(&[FINALIZER], true, None);
    let client = mock_client(recorded.clone(), serde_json::to_value(&md).expect("json"));
    reconcile(Arc::new(md), context(client).await)
        .await
        .expect("reconcile");
    let calls = recorded.lock().expect("lock").clone();
    let finalizer_patch = calls
        .iter()
        .find(|(m, p, _)| m == "PATCH" && p.ends_with("/modeldeployments/vad"))
        .unwrap_or_else(|| panic!("no finalizer removal in {calls:?}"));
    let ops = finalizer_patch.2.to_string();
    assert!(ops.contains("remove") || ops.contains("replace"), "{ops}");
    assert!(
        calls
            .iter()
            .any(|(_, p, b)| p.contains("/events") && b.to_string().contains("ModelsRemoved")),
        "{calls:?}"
    );
}
