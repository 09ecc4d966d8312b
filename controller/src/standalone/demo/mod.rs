//! `edgefleet demo`: the standalone control plane in-process, real agent processes with
//! heterogeneous capabilities, the real orientation CNN in fp32/fp16/int8 variants, v1 rolled
//! out, then v2 through a two-step canary under inference load; a live table, then a summary.
//! `edgefleet demo --llm`: the same for a chat model in two quantizations (module `llm`).

mod fleet;
#[cfg(feature = "llm")]
mod llm;
#[cfg(not(feature = "llm"))]
mod llm {
    //! Built without the `llm` feature (no llama.cpp): `--llm` is refused before anything starts.
    pub fn fleet() -> Vec<super::fleet::DeviceSpec> {
        Vec::new()
    }
    pub async fn drive(
        _: &super::DemoArgs,
        _: &super::Standalone,
        _: &[super::fleet::Agent],
        _: &std::path::Path,
    ) -> anyhow::Result<()> {
        anyhow::bail!(NOT_BUILT)
    }
    pub const NOT_BUILT: &str = "--llm: this edgefleet was built without language-model support \
        (cargo feature `llm`, which links llama.cpp); `scripts/demo.sh --llm` builds it";
}
mod load;
mod manifest;
mod view;

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use edgefleet_crds::{ModelDeploymentStatus, Phase};
use tokio::sync::watch;

use super::Standalone;
use super::args::{DemoArgs, UpArgs};
use super::client::Client;
use view::{Observation, View};

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    #[cfg(not(feature = "llm"))]
    if args.llm {
        bail!(llm::NOT_BUILT);
    }
    let models_dir = manifest::models_dir(args.models_dir.as_deref());
    let variants = if args.llm {
        None
    } else {
        Some(manifest::variants(&models_dir)?)
    };
    let agent_bin = fleet::agent_binary(args.agent_bin.as_deref())?;
    let temp = match &args.data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("edgefleet-demo-")
                .tempdir()?,
        ),
    };
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| temp.as_ref().map(|t| t.path().to_path_buf()))
        .context("no data directory")?;
    let up = UpArgs {
        data_dir: Some(data_dir.clone()),
        database_url: None,
        listen: args.listen.clone(),
        mqtt_listen: args.mqtt_listen.clone(),
        broker_impl: args.broker_impl,
        artifacts_dir: None,
        telemetry_share_group: None, // one process counts every window
        timing: crate::run::LoopTiming {
            telemetry_slice_seconds: 1,
            mqtt_unready_after_seconds: 30,
        },
        distribution: crate::run::DistributionArgs {
            registry_auth_file: None,
            insecure_registries: Vec::new(),
            site_label: "site".into(),
        },
    };
    let plane = super::start(&up).await?;
    eprintln!(
        "demo: the live fleet page is at {} (--hold keeps it up after the demo)",
        plane.page_url()
    );
    let devices = if args.short {
        args.devices.min(5)
    } else {
        args.devices
    };
    let specs = if args.llm {
        llm::fleet()
    } else {
        fleet::fleet(devices)
    };
    let mut agents = match fleet::start(
        &agent_bin,
        &specs,
        &plane.broker.url,
        &data_dir.join("agents"),
    )
    .await
    {
        Ok(agents) => agents,
        Err(err) => {
            plane.shutdown().await;
            return Err(err);
        }
    };
    let scene = play(
        &args,
        &plane,
        &agents,
        variants.as_ref(),
        &models_dir,
        started,
    );
    let outcome = tokio::select! {
        outcome = tokio::time::timeout(Duration::from_secs(args.timeout_seconds), scene) => {
            outcome.unwrap_or_else(|_| Err(anyhow::anyhow!("the demo did not finish within {} s (--timeout-seconds)", args.timeout_seconds)))
        }
        _ = crate::run::shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
    };
    let mut result = outcome.map_err(|err| {
        err.context(format!(
            "agent logs are in {}",
            data_dir.join("agents").display()
        ))
    });
    if result.is_ok() && args.hold {
        eprintln!("holding: the control plane and agents keep running; Ctrl-C to stop");
        crate::run::shutdown_signal().await;
    }
    fleet::stop(&mut agents).await;
    plane.shutdown().await;
    if let (Err(_), Some(temp)) = (&result, temp) {
        // keep the logs of a failed run
        let kept = temp.keep();
        result = result.map_err(|e| e.context(format!("state kept in {}", kept.display())));
    }
    result
}

/// The orientation CNN's scene with its live view, or the chat model's (`--llm`).
async fn play(
    args: &DemoArgs,
    plane: &Standalone,
    agents: &[fleet::Agent],
    cnn: Option<&[Vec<u8>; 3]>,
    models_dir: &std::path::Path,
    started: Instant,
) -> anyhow::Result<()> {
    let Some(variants) = cnn else {
        return llm::drive(args, plane, agents, models_dir).await;
    };
    let mut view = View::new(args.output, plane, agents);
    let observation = drive(args, plane, agents, variants, &mut view).await?;
    view.finish(plane, &observation, started.elapsed()).await
}

/// The scenario; returns what was observed at the end.
async fn drive(
    args: &DemoArgs,
    plane: &Standalone,
    agents: &[fleet::Agent],
    variants: &[Vec<u8>; 3],
    view: &mut View,
) -> anyhow::Result<Observation> {
    let client = Client::with_token(&plane.api_url, &plane.token);
    view.stage("waiting for every device to say hello");
    wait(view, plane, agents, |o| o.online == agents.len()).await?;

    let (min_samples, pause_seconds, load_pause) = if args.short {
        (3, 0, Duration::from_millis(20))
    } else {
        (20, 3, Duration::from_millis(100))
    };
    let input = manifest::input_name(&variants[0])?;
    let stats = load::SharedStats::default();
    let (stop_load, stop_rx) = watch::channel(false);
    let targets = agents.iter().map(|a| (a.spec.id.clone(), a.api)).collect();
    let load_task = tokio::spawn(load::drive(
        targets,
        manifest::MODEL.into(),
        input.clone(),
        stats.clone(),
        load_pause,
        stop_rx,
    ));
    view.stats = Some(stats.clone());

    let v1 = manifest::publish(
        variants,
        "1.0.0",
        &plane.artifacts_dir,
        &plane.artifacts_url,
    )?;
    view.stage("apply v1.0.0: each device gets the variant its capabilities call for");
    client
        .apply(&manifest::manifest(
            "1.0.0",
            &v1,
            "[{percent: 50}]",
            min_samples,
            &input,
        ))
        .await?;
    wait(view, plane, agents, |o| o.settled("1.0.0")).await?;
    if !args.short {
        view.stage("v1.0.0 serving; inference load running");
        hold(view, plane, agents, Duration::from_secs(5)).await?;
    }

    let v2 = manifest::publish(
        variants,
        "2.0.0",
        &plane.artifacts_dir,
        &plane.artifacts_url,
    )?;
    view.stage("apply v2.0.0: canary 34% -> 67% -> 100%, judged on agent telemetry");
    let steps = format!(
        "[{{percent: 34, pauseSeconds: {pause_seconds}}}, {{percent: 67, pauseSeconds: {pause_seconds}}}]"
    );
    client
        .apply(&manifest::manifest(
            "2.0.0",
            &v2,
            &steps,
            min_samples,
            &input,
        ))
        .await?;
    let observation = wait(view, plane, agents, |o| o.settled("2.0.0")).await?;
    let observation = if args.short {
        observation
    } else {
        view.stage("v2.0.0 promoted; measuring");
        hold(view, plane, agents, Duration::from_secs(5)).await?
    };
    let _ = stop_load.send(true);
    let _ = load_task.await;
    if observation.status.phase != Phase::Succeeded {
        bail!("rollout ended in {:?}", observation.status.phase);
    }
    Ok(observation)
}

/// Refreshes the view until `done` holds.
async fn wait(
    view: &mut View,
    plane: &Standalone,
    agents: &[fleet::Agent],
    done: impl Fn(&Observation) -> bool,
) -> anyhow::Result<Observation> {
    loop {
        let observation = Observation::take(plane, agents).await?;
        view.show(&observation);
        if done(&observation) {
            return Ok(observation);
        }
        if observation.status.phase == Phase::RolledBack
            || observation.status.phase == Phase::Failed
        {
            bail!(
                "the rollout ended in {:?}: {}",
                observation.status.phase,
                view::conditions(&observation.status)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn hold(
    view: &mut View,
    plane: &Standalone,
    agents: &[fleet::Agent],
    duration: Duration,
) -> anyhow::Result<Observation> {
    let until = Instant::now() + duration;
    loop {
        let observation = Observation::take(plane, agents).await?;
        view.show(&observation);
        if Instant::now() >= until {
            return Ok(observation);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Used by `view` for the status of the demo deployment.
fn status_of(d: Option<&crate::store::StoredDeployment>) -> ModelDeploymentStatus {
    d.and_then(super::api::stored_status).unwrap_or_default()
}
