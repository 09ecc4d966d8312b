//! `edgefleet ingest`: a replica that only counts telemetry. It joins the telemetry share group,
//! claims and rolls up its share of the windows in the fleet store the leader reads, and
//! reconciles nothing, so ingest scales apart from the one reconciling leader (Kubernetes
//! standbys do the same work while they wait for the Lease).

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::run::{ControlArgs, shutdown_signal, start};

/// How often the worker re-reads which devices are canaries (the leader changes assignments
/// at most once per reconcile pass).
const MIRROR_EVERY: Duration = Duration::from_secs(2);

#[derive(Args, Debug, Clone)]
pub struct IngestArgs {
    #[command(flatten)]
    pub control: ControlArgs,
}

pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    if args.control.telemetry_share_group.is_none() {
        anyhow::bail!(
            "--telemetry-share-group / EDGEFLEET_TELEMETRY_SHARE_GROUP: an ingest worker needs \
             the group the leader's replicas share (without one it would receive, and race \
             for, every window)"
        );
    }
    let plane = start(&args.control, axum::Router::new())
        .await
        .context("starting the ingest worker")?;
    plane.readiness.set(true);
    let mut tick = tokio::time::interval(MIRROR_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(err) = plane.reconciler.mirror_all().await {
                    plane.reconciler.fleet().metrics.store_errors.inc();
                    tracing::warn!(%err, "could not read the leader's deployments");
                }
            }
            () = &mut shutdown => break,
        }
    }
    plane.link.disconnect().await;
    Ok(())
}
