//! The controller's HTTP endpoints: `/healthz`, `/readyz`, `/metrics`. The standalone API
//! merges its routes into the same router.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// Readiness: the controller has loaded its state (set once) and its broker link is healthy.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The MQTT link's connection history, as far as readiness needs it. A short blip is not a
/// reason to take the controller out of service; a link that is down, or keeps dropping
/// (e.g. a message that breaks every connection), for longer than the grace period is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkHealth {
    connected: bool,
    /// When `connected` last changed; `None` before the first connection.
    changed_at: Option<Instant>,
    /// Start of the current unstable stretch: the first loss after the link was last stable.
    unstable_since: Option<Instant>,
    lost: u64,
    /// How long the link may be down or unstable before readiness fails.
    grace: Duration,
}

impl LinkHealth {
    pub const fn new(grace: Duration) -> Self {
        Self {
            connected: false,
            changed_at: None,
            unstable_since: None,
            lost: 0,
            grace,
        }
    }

    pub fn connected(&mut self, now: Instant) {
        self.connected = true;
        self.changed_at = Some(now);
    }

    pub fn lost(&mut self, now: Instant) {
        let was_stable = self.connected && self.up_for(now) >= stable_after(self.grace);
        if was_stable || self.unstable_since.is_none() {
            self.unstable_since = Some(now);
        }
        self.connected = false;
        self.changed_at = Some(now);
        self.lost += 1;
    }

    fn up_for(&self, now: Instant) -> Duration {
        match (self.connected, self.changed_at) {
            (true, Some(at)) => now.saturating_duration_since(at),
            _ => Duration::ZERO,
        }
    }

    /// `Err(reason)` when readiness must fail: never connected yet, or down or dropping
    /// again and again for longer than `grace`.
    pub fn verdict(&self, now: Instant) -> Result<(), String> {
        let grace = self.grace;
        if self.changed_at.is_none() {
            return Err("MQTT broker not connected yet".into());
        }
        if self.connected && self.up_for(now) >= stable_after(grace) {
            return Ok(());
        }
        match self.unstable_since {
            Some(since) if now.saturating_duration_since(since) > grace => Err(format!(
                "MQTT link {} for {} s (connection lost {} times since start; grace {} s)",
                if self.connected { "unstable" } else { "down" },
                now.saturating_duration_since(since).as_secs(),
                self.lost,
                grace.as_secs()
            )),
            _ => Ok(()),
        }
    }
}

/// How long a connection must hold before the link counts as stable again.
fn stable_after(grace: Duration) -> Duration {
    (grace / 3).min(Duration::from_secs(10))
}

/// Shared between the MQTT event loop (writer) and `/readyz` (reader).
#[derive(Clone)]
pub struct LinkHealthHandle(Arc<Mutex<LinkHealth>>);

impl LinkHealthHandle {
    /// `grace`: `--mqtt-unready-after-seconds`.
    pub fn new(grace: Duration) -> Self {
        Self(Arc::new(Mutex::new(LinkHealth::new(grace))))
    }
    pub fn update(&self, change: impl FnOnce(&mut LinkHealth)) {
        // A poisoned lock only means a panic elsewhere; the data is still meaningful.
        let mut health = self.0.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut health);
    }
    pub fn snapshot(&self) -> LinkHealth {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Clone)]
pub struct HealthState {
    pub metrics: Metrics,
    pub readiness: Readiness,
    pub link: LinkHealthHandle,
}

pub fn router(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<HealthState>) -> impl IntoResponse {
    if !state.readiness.get() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: state loading".to_string(),
        );
    }
    match state.link.snapshot().verdict(Instant::now()) {
        Ok(()) => (StatusCode::OK, "ready".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        ),
    }
}

async fn metrics(State(state): State<HealthState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get_status(app: Router, path: &str) -> (StatusCode, String) {
        let response = app
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let state = HealthState {
            metrics: Metrics::new(),
            readiness: Readiness::default(),
            link: LinkHealthHandle::new(Duration::ZERO),
        };
        let app = router(state.clone());
        assert_eq!(get_status(app.clone(), "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get_status(app.clone(), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.readiness.set(true);
        let (status, body) = get_status(app.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("not connected yet"), "{body}");
        state.link.update(|l| l.connected(Instant::now()));
        state.metrics.mqtt_connected.set(1);
        assert_eq!(get_status(app.clone(), "/readyz").await.0, StatusCode::OK);
        // with no grace, a lost link fails readiness at once, naming why
        state
            .link
            .update(|l| l.lost(Instant::now() - Duration::from_secs(1)));
        let (status, body) = get_status(app.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("MQTT link down"), "{body}");
        let (status, body) = get_status(app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("edgefleet_mqtt_connected 1"), "{body}");
    }

    const GRACE: Duration = Duration::from_secs(30);

    fn at(start: Instant, seconds: u64) -> Instant {
        start + Duration::from_secs(seconds)
    }

    #[test]
    fn a_short_blip_keeps_readiness() {
        let t0 = Instant::now();
        let mut link = LinkHealth::new(GRACE);
        link.connected(t0);
        assert_eq!(link.verdict(at(t0, 60)), Ok(()));
        link.lost(at(t0, 60));
        assert_eq!(link.verdict(at(t0, 80)), Ok(()), "within grace");
        link.connected(at(t0, 81));
        assert_eq!(link.verdict(at(t0, 95)), Ok(()));
        assert_eq!(link.verdict(at(t0, 200)), Ok(()));
    }

    #[test]
    fn a_link_down_longer_than_the_grace_fails_readiness() {
        let t0 = Instant::now();
        let mut link = LinkHealth::new(GRACE);
        assert!(link.verdict(t0).is_err(), "never connected");
        link.connected(t0);
        link.lost(at(t0, 100));
        let reason = link.verdict(at(t0, 131)).expect_err("down 31 s");
        assert!(reason.contains("down for 31 s"), "{reason}");
        // back, but not yet for long enough to count as stable: still unready
        link.connected(at(t0, 140));
        assert!(link.verdict(at(t0, 141)).is_err());
        assert_eq!(link.verdict(at(t0, 150)), Ok(()));
    }

    #[test]
    fn a_link_that_keeps_dropping_fails_readiness_after_the_grace() {
        // The oversized-message loop: connected for a moment, dropped, again and again.
        let t0 = Instant::now();
        let mut link = LinkHealth::new(GRACE);
        link.connected(t0);
        for second in (0..40).step_by(2) {
            link.connected(at(t0, second));
            link.lost(at(t0, second + 1));
        }
        link.connected(at(t0, 40));
        let reason = link.verdict(at(t0, 40)).expect_err("flapping");
        assert!(reason.contains("unstable"), "{reason}");
        assert!(reason.contains("lost 20 times"), "{reason}");
    }
}
