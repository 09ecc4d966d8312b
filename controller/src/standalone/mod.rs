//! The embedded default: the whole control plane on one machine with one command
//! (`edgefleet up`): rumqttd in-process, SQLite, a local artifact server and a REST API that
//! takes the same `ModelDeployment` YAML as the CRD. The kubectl-like verbs (`apply`, `get`,
//! `describe`, `delete`) talk to that API; `edgefleet demo` runs it with a fleet of real agents.

pub mod api;
pub mod args;
pub mod broker;
pub mod client;
pub mod demo;
pub mod page;
pub mod reconcile;
pub mod render;
pub mod watch_table;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::run::ControlArgs;
use crate::run::ControlPlane;
use api::ApiState;
use args::UpArgs;
use broker::RunningBroker;

/// A running standalone control plane.
pub struct Standalone {
    pub plane: ControlPlane,
    pub api: ApiState,
    pub data_dir: PathBuf,
    pub token: String,
    /// `http://addr` of the REST API, /metrics and /artifacts/.
    pub api_url: String,
    pub artifacts_dir: PathBuf,
    pub artifacts_url: String,
    pub broker: RunningBroker,
    stop: watch::Sender<bool>,
    loop_task: JoinHandle<()>,
}

/// `$XDG_DATA_HOME/edgefleet`, else `~/.local/share/edgefleet`.
pub fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                .join(".local/share")
        });
    base.join("edgefleet")
}

pub async fn start(args: &UpArgs) -> anyhow::Result<Standalone> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("--data-dir: cannot create {}", data_dir.display()))?;
    let artifacts_dir = args
        .artifacts_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("artifacts"));
    std::fs::create_dir_all(&artifacts_dir)
        .with_context(|| format!("--artifacts-dir: cannot create {}", artifacts_dir.display()))?;
    let database_url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("fleet.db").display()));

    let broker = broker::start(args.broker_impl, &args.mqtt_listen, &data_dir).await?;
    let token = write_token(&data_dir)?;
    let control = ControlArgs {
        database_url,
        broker: broker.controller_url.clone(),
        mqtt_client_id: "edgefleet-standalone".into(),
        telemetry_share_group: args.telemetry_share_group.clone(),
        mqtt_ca_file: None,
        mqtt_cert_file: None,
        mqtt_key_file: None,
        mqtt_username: None,
        mqtt_password_file: None,
        listen: args.listen.clone(),
        timing: args.timing.clone(),
        distribution: args.distribution.clone(),
    };
    let changed = Arc::new(Notify::new());
    let latency = Arc::new(page::history::LatencyHistory::default());
    let mut api_state = None;
    let plane = crate::run::start_with(&control, |reconciler, _kick| {
        let state = ApiState {
            store: reconciler.fleet().store.clone(),
            inventory: reconciler.fleet().inventory.clone(),
            token: Arc::from(token.as_str()),
            changed: changed.clone(),
            latency: latency.clone(),
        };
        api_state = Some(state.clone());
        api::router(state).nest_service(
            "/artifacts",
            tower_http::services::ServeDir::new(&artifacts_dir),
        )
    })
    .await?;
    let api = api_state.context("the API router was not built")?;
    plane.readiness.set(true);
    // One machine, one replica: always the leader (the value outlives its dropped sender).
    tokio::spawn(crate::run::republish_on_fresh_sessions(
        plane.reconciler.clone(),
        plane.link.fresh_sessions(),
        watch::channel(true).1,
    ));
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(page::history::sample(
        api.store.clone(),
        latency,
        std::time::Duration::from_secs(1),
        stop_rx.clone(),
    ));
    let loop_task = tokio::spawn(reconcile::run(
        plane.reconciler.clone(),
        changed,
        plane.kick.subscribe(),
        stop_rx,
    ));
    let api_url = format!("http://{}", plane.listen_addr);
    Ok(Standalone {
        artifacts_url: format!("{api_url}/artifacts"),
        api_url,
        plane,
        api,
        data_dir,
        token,
        artifacts_dir,
        broker,
        stop,
        loop_task,
    })
}

impl Standalone {
    /// The live fleet page, with the token in the URL's fragment (which browsers never send):
    /// the page keeps it for its API calls.
    pub fn page_url(&self) -> String {
        format!("{}/#token={}", self.api_url, self.token)
    }

    /// Stops the reconcile loop and disconnects from the broker.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.loop_task.await;
        self.plane.link.disconnect().await;
    }
}

/// `edgefleet up`.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let standalone = start(&args).await?;
    let token_file = standalone.data_dir.join("token");
    eprintln!(
        "edgefleet: control plane up\n  fleet page                  {page}\n  API, /metrics, /artifacts/  {api}\n  MQTT broker                 {mqtt}\n  state                       {dir}\n  token                       {token}\n  artifacts                   {arts} -> {api}/artifacts/\n\nnext: edgefleet apply -f deployment.yaml --server {api}",
        page = standalone.page_url(),
        api = standalone.api_url,
        mqtt = standalone.broker.url,
        dir = standalone.data_dir.display(),
        token = token_file.display(),
        arts = standalone.artifacts_dir.display(),
    );
    crate::run::shutdown_signal().await;
    standalone.shutdown().await;
    Ok(())
}

/// A fresh random token in `<data-dir>/token`, readable by the owner only.
fn write_token(data_dir: &Path) -> anyhow::Result<String> {
    use std::io::Write as _;
    let bytes: [u8; 32] = rand::random();
    let token = hex::encode(bytes);
    let path = data_dir.join("token");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(token.as_bytes())?;
    Ok(token)
}
