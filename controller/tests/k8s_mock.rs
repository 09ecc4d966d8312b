//! The Kubernetes adapter's API calls, against kube's `tower-test` mock (no server): the
//! finalizer is added first, status is patched only when it changed, Events are recorded, and
//! deletion removes the finalizer after the models left the devices. An object this
//! controller cannot read gets a condition and an Event naming the field, and never stops the
//! others, neither in a LIST nor while it is reconciled.

mod common;

use std::sync::{Arc, Mutex};

use common::fleet::{RecordingPublisher, fleet_state};
use edgefleet_controller::k8s::{Context, FINALIZER, GuardedDeployment, reconcile};
use edgefleet_controller::metrics::Metrics;
use edgefleet_controller::reconcile::Reconciler;
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

fn readable(md: ModelDeployment) -> Arc<GuardedDeployment> {
    Arc::new(GuardedDeployment(Ok(md)))
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
            send.send_response(ok_json(&answer));
        }
    });
    kube::Client::new(service, "default")
}

/// A 200 answer with `body` as JSON, as the API server sends it.
fn ok_json(body: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(200)
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response")
}

async fn context(client: kube::Client) -> Arc<Context> {
    let fleet = fleet_state(Metrics::new(), 1000, 60_000).await;
    let engine = Reconciler::new(fleet, Arc::new(RecordingPublisher::default()));
    let (_tx, leader) = tokio::sync::watch::channel(true);
    std::mem::forget(_tx); // keep the leadership channel open for the test's duration
    Arc::new(Context::new(Arc::new(engine), client, leader))
}

#[tokio::test]
async fn the_finalizer_is_added_before_anything_else() {
    let recorded = Recorded::default();
    let md = deployment(&[], false, None);
    let client = mock_client(recorded.clone(), serde_json::to_value(&md).expect("json"));
    reconcile(readable(md), context(client).await)
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
    reconcile(readable(md.clone()), ctx.clone())
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
    reconcile(readable(settled), ctx).await.expect("reconcile");
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
    reconcile(readable(md), context(client).await)
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

/// A deployment that this controller version cannot read: `spec.priority` comes from a
/// newer CRD (`deny_unknown_fields` refuses it).
fn unreadable_value(finalizers: &[&str], deleting: bool) -> serde_json::Value {
    let mut value = serde_json::to_value(deployment(finalizers, deleting, None)).expect("json");
    value["metadata"]["name"] = "bad".into();
    value["metadata"]["uid"] = "uid-bad".into();
    value["spec"]["priority"] = 5.into();
    value
}

fn guarded(value: serde_json::Value) -> Arc<GuardedDeployment> {
    Arc::new(GuardedDeployment::from_value(value).expect("metadata readable"))
}

#[tokio::test]
async fn an_unreadable_deployment_gets_a_condition_and_a_warning_naming_the_field_once() {
    let recorded = Recorded::default();
    let value = unreadable_value(&[], false);
    let client = mock_client(recorded.clone(), value.clone());
    let ctx = context(client).await;
    reconcile(guarded(value.clone()), ctx.clone())
        .await
        .expect("reconcile");
    let calls = recorded.lock().expect("lock").clone();
    assert!(
        calls
            .iter()
            .all(|(_, p, _)| !p.ends_with("/modeldeployments/bad")),
        "no finalizer on an object whose spec was never read: {calls:?}"
    );
    let (_, _, patch) = calls
        .iter()
        .find(|(m, p, _)| m == "PATCH" && p.ends_with("/modeldeployments/bad/status"))
        .unwrap_or_else(|| panic!("no status patch in {calls:?}"));
    let status = patch["status"].clone();
    assert_eq!(status["phase"], "Failed", "{status}");
    let condition = &status["conditions"][0];
    assert_eq!(condition["type"], "SpecValid", "{status}");
    assert_eq!(condition["status"], "False", "{status}");
    assert_eq!(condition["reason"], "UnreadableSpec", "{status}");
    assert!(
        condition["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.priority")),
        "{status}"
    );
    let (_, _, event) = calls
        .iter()
        .find(|(m, p, _)| m == "POST" && p.contains("/events"))
        .unwrap_or_else(|| panic!("no Event in {calls:?}"));
    assert_eq!(event["type"], "Warning", "{event}");
    assert_eq!(event["reason"], "UnreadableSpec", "{event}");
    assert!(event.to_string().contains("spec.priority"), "{event}");

    // once the status says so, reconciling again (after a restart too) writes nothing
    recorded.lock().expect("lock").clear();
    let mut settled = value;
    settled["status"] = status;
    reconcile(guarded(settled), ctx).await.expect("reconcile");
    let calls = recorded.lock().expect("lock").clone();
    assert!(calls.is_empty(), "wrote again: {calls:?}");
}

#[tokio::test]
async fn an_unreadable_deployment_can_still_be_deleted() {
    let recorded = Recorded::default();
    let value = unreadable_value(&[FINALIZER, "other.io/keep"], true);
    let client = mock_client(recorded.clone(), value.clone());
    reconcile(guarded(value), context(client).await)
        .await
        .expect("reconcile");
    let calls = recorded.lock().expect("lock").clone();
    let (_, _, patch) = calls
        .iter()
        .find(|(m, p, _)| m == "PATCH" && p.ends_with("/modeldeployments/bad"))
        .unwrap_or_else(|| panic!("no finalizer removal in {calls:?}"));
    assert_eq!(
        patch["metadata"]["finalizers"],
        serde_json::json!(["other.io/keep"]),
        "{patch}"
    );
    assert_eq!(patch["metadata"]["resourceVersion"], "7", "{patch}");
    assert!(
        calls
            .iter()
            .any(|(_, p, b)| p.contains("/events") && b.to_string().contains("ModelsRemoved")),
        "{calls:?}"
    );
}

/// An API server whose LIST holds `items`, whose watches never answer (nothing changes) and
/// which echoes every write.
fn list_and_watch_server(recorded: Recorded, items: Vec<serde_json::Value>) -> kube::Client {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        let mut open_watches = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().to_string();
            let path = request.uri().path().to_string();
            let query = request.uri().query().unwrap_or_default().to_string();
            let bytes = request.into_body().collect_bytes().await.expect("body");
            let body: serde_json::Value =
                serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
            recorded.lock().expect("lock").push((
                method.clone(),
                format!("{path}?{query}"),
                body.clone(),
            ));
            if query.contains("watch=true") {
                open_watches.push(send);
                continue;
            }
            let answer = if method == "GET" {
                serde_json::json!({"apiVersion": "edgefleet.io/v1alpha1", "kind": "ModelDeploymentList",
                                   "metadata": {"resourceVersion": "10"}, "items": items})
            } else if path.contains("/events") {
                body
            } else {
                let name = path.split('/').nth(7).unwrap_or_default();
                items
                    .iter()
                    .find(|i| i["metadata"]["name"] == name)
                    .cloned()
                    .unwrap_or_default()
            };
            send.send_response(ok_json(&answer));
        }
    });
    kube::Client::new(service, "default")
}

/// The restart case of the issue: the initial LIST holds an unreadable object beside a valid
/// one. The valid one is reconciled, the other reported and counted, and shutdown is prompt.
#[tokio::test]
async fn one_unreadable_object_in_the_list_does_not_stop_the_others() {
    let recorded = Recorded::default();
    let mut good = serde_json::to_value(deployment(&[], false, None)).expect("json");
    good["metadata"]["name"] = "good".into();
    let client = list_and_watch_server(recorded.clone(), vec![unreadable_value(&[], false), good]);
    let ctx = context(client).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(edgefleet_controller::k8s::run(
        ctx.clone(),
        Some("default".into()),
        futures::stream::pending(),
        async move {
            let _ = stopped.await;
        },
    ));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let calls = recorded.lock().expect("lock").clone();
        let good_reconciled = calls
            .iter()
            .any(|(m, p, _)| m == "PATCH" && p.contains("/modeldeployments/good?"));
        let bad_reported = calls.iter().any(|(m, p, b)| {
            m == "PATCH"
                && p.contains("/modeldeployments/bad/status")
                && b.to_string().contains("spec.priority")
        });
        if good_reconciled && bad_reported {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "good reconciled: {good_reconciled}, bad reported: {bad_reported}; {calls:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let metrics = ctx.reconciler.fleet().metrics.render();
    assert!(
        metrics.contains("edgefleet_deployments_unreadable 1"),
        "{metrics}"
    );
    stop.send(()).expect("controller still running");
    tokio::time::timeout(std::time::Duration::from_secs(5), controller)
        .await
        .expect("the controller stopped within 5 s of the shutdown signal")
        .expect("controller task");
}
