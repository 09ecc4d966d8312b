use axum::body::Body;
use axum::http::Request;
use tower::ServiceExt;

use super::*;

pub const VALID: &str = r#"apiVersion: edgefleet.io/v1alpha1
kind: ModelDeployment
metadata: {name: demo, namespace: default}
spec:
  model: {name: m, version: "1.0.0"}
  variants:
  - name: fp32
    precision: fp32
    artifact: {uri: "http://127.0.0.1:1/m.onnx", sha256: "0000000000000000000000000000000000000000000000000000000000000000", sizeBytes: 10}
"#;

async fn state() -> ApiState {
    let store = Store::connect("sqlite::memory:").await.expect("store");
    let inventory = Inventory::load(store.clone(), crate::metrics::Metrics::new())
        .await
        .expect("inventory");
    ApiState {
        store,
        inventory: Arc::new(inventory),
        token: Arc::from("secret"),
        changed: Arc::new(Notify::new()),
        latency: Default::default(),
    }
}

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    body: &str,
    token: &str,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::from(body.to_string()))
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn error_paths(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["path"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn bad_manifests_are_refused_naming_the_field_and_nothing_is_stored() {
    let app = router(state().await);
    let (status, _) = call(&app, "GET", "/api/v1/deployments", "", "wrong").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, body) = call(&app, "POST", "/api/v1/apply", "spec: [unclosed", "secret").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("YAML"),
        "{body}"
    );

    let unknown = VALID.replace("  variants:", "  replicas: 3\n  variants:");
    let (status, body) = call(&app, "POST", "/api/v1/apply", &unknown, "secret").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("replicas"), "{body}");

    let percent = format!("{VALID}  rollout:\n    steps: [{{percent: 150}}]\n");
    let (status, body) = call(&app, "POST", "/api/v1/apply", &percent, "secret").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        error_paths(&body).contains(&"spec.rollout.steps[0].percent".to_string()),
        "{body}"
    );

    // a good document next to a bad one: neither is stored
    let mixed = format!("{VALID}---\n{percent}");
    let (status, _) = call(&app, "POST", "/api/v1/apply", &mixed, "secret").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, body) = call(&app, "GET", "/api/v1/deployments", "", "secret").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["items"], json!([]), "nothing stored: {body}");
}

#[tokio::test]
async fn apply_get_describe_and_delete() {
    let state = state().await;
    let app = router(state.clone());
    let (status, body) = call(&app, "POST", "/api/v1/apply", VALID, "secret").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body[0]["result"], "created");
    let (_, body) = call(&app, "POST", "/api/v1/apply", VALID, "secret").await;
    assert_eq!(body[0]["result"], "unchanged", "same spec, same generation");
    let changed = VALID.replace("\"1.0.0\"", "\"2.0.0\"");
    let (_, body) = call(&app, "POST", "/api/v1/apply", &changed, "secret").await;
    assert_eq!(
        (body[0]["result"].as_str(), body[0]["generation"].as_i64()),
        (Some("configured"), Some(2))
    );

    let (status, md) = call(
        &app,
        "GET",
        "/api/v1/namespaces/default/deployments/demo",
        "",
        "secret",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(md["spec"]["model"]["version"], "2.0.0");
    let created = md["metadata"]["uid"]
        .as_str()
        .and_then(uid_created_ms)
        .expect("v7 uid");
    assert!(
        (now_ms() - created).abs() < 60_000,
        "uid carries the creation time"
    );

    let (status, d) = call(
        &app,
        "GET",
        "/api/v1/namespaces/default/deployments/demo/describe",
        "",
        "secret",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["history"], json!([]));

    let (status, _) = call(
        &app,
        "DELETE",
        "/api/v1/namespaces/default/deployments/demo",
        "",
        "secret",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let stored = state
        .store
        .get_deployment("default", "demo")
        .await
        .expect("query");
    assert!(
        stored.is_some_and(|d| d.deleting),
        "marked for the reconcile loop"
    );
    let (status, _) = call(
        &app,
        "DELETE",
        "/api/v1/namespaces/default/deployments/nope",
        "",
        "secret",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_fleet_page_loads_without_a_token_and_its_data_needs_one() {
    let state = state().await;
    let app = router(state.clone());
    let response = app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let page = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let page = String::from_utf8(page.to_vec()).expect("utf-8");
    assert!(
        page.contains("/api/v1/fleet"),
        "the page reads the fleet API"
    );
    assert!(!page.contains("secret"), "the shell carries no token");
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http"),
        "nothing is fetched from elsewhere"
    );

    let (status, _) = call(&app, "GET", "/api/v1/fleet", "", "wrong").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, _) = call(&app, "POST", "/api/v1/apply", VALID, "secret").await;
    assert_eq!(status, StatusCode::OK);
    let (status, fleet) = call(&app, "GET", "/api/v1/fleet", "", "secret").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fleet["deployments"][0]["name"], "default/demo");
    assert_eq!(fleet["deployments"][0]["phase"], "Pending");
    assert_eq!(fleet["devicesTotal"], 0);
}
