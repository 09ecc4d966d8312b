//! The kubectl-like verbs: `apply`, `get`, `describe`, `delete` against the standalone API.

use std::io::Read as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::api::{Applied, ApplyError, Description, DeviceRow};
use super::args::{ApplyArgs, ClientArgs, DeleteArgs, DescribeArgs, GetArgs, OutputFormat};
use super::render;
use crate::clock::now_ms;

pub struct Client {
    http: reqwest::Client,
    server: String,
    token: String,
}

impl Client {
    pub fn new(args: &ClientArgs) -> anyhow::Result<Client> {
        let token = match &args.token {
            Some(token) => token.clone(),
            None => {
                let dir = args
                    .data_dir
                    .clone()
                    .unwrap_or_else(super::default_data_dir);
                let path = dir.join("token");
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no --token / EDGEFLEET_TOKEN and cannot read {} (is `edgefleet up` running with this --data-dir?)",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_string()
            }
        };
        Ok(Client::with_token(&args.server, &token))
    }

    pub fn with_token(server: &str, token: &str) -> Client {
        Client {
            http: reqwest::Client::new(),
            server: server.trim_end_matches('/').to_string(),
            token: token.to_string(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
        let response = request
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("cannot reach the EdgeFleet API at {} (--server / EDGEFLEET_SERVER; is `edgefleet up` running?)", self.server))?;
        let status = response.status().as_u16();
        let body = response.text().await?;
        let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
        if status == 401 {
            bail!("{}", value["error"].as_str().unwrap_or("unauthorized"));
        }
        Ok((status, value))
    }

    /// Applies YAML text; field errors come back as `Err` listing each field.
    pub async fn apply(&self, yaml: &str) -> anyhow::Result<Vec<Applied>> {
        let (status, body) = self
            .send(
                self.http
                    .post(format!("{}/api/v1/apply", self.server))
                    .header("content-type", "application/yaml")
                    .body(yaml.to_string()),
            )
            .await?;
        match status {
            200 => Ok(serde_json::from_value(body)?),
            422 => {
                let errors: Vec<ApplyError> =
                    serde_json::from_value(body["errors"].clone()).unwrap_or_default();
                let lines: Vec<String> = errors
                    .iter()
                    .map(|e| format!("  document {}: {}: {}", e.document + 1, e.path, e.message))
                    .collect();
                bail!(
                    "the manifest was rejected, nothing was stored:\n{}",
                    lines.join("\n")
                )
            }
            _ => bail!("apply failed ({status}): {body}"),
        }
    }

    pub async fn list(&self) -> anyhow::Result<Vec<Value>> {
        let (status, body) = self
            .send(self.http.get(format!("{}/api/v1/deployments", self.server)))
            .await?;
        if status != 200 {
            bail!("listing deployments failed ({status}): {body}");
        }
        Ok(body["items"].as_array().cloned().unwrap_or_default())
    }

    pub async fn get(&self, namespace: &str, name: &str) -> anyhow::Result<Option<Value>> {
        let (status, body) = self
            .send(self.http.get(self.deployment_url(namespace, name, "")))
            .await?;
        match status {
            200 => Ok(Some(body)),
            404 => Ok(None),
            _ => bail!("get failed ({status}): {body}"),
        }
    }

    pub async fn describe(&self, namespace: &str, name: &str) -> anyhow::Result<Description> {
        let (status, body) = self
            .send(
                self.http
                    .get(self.deployment_url(namespace, name, "/describe")),
            )
            .await?;
        match status {
            200 => Ok(serde_json::from_value(body)?),
            404 => bail!("modeldeployment {namespace}/{name} not found"),
            _ => bail!("describe failed ({status}): {body}"),
        }
    }

    pub async fn delete(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        let (status, body) = self
            .send(self.http.delete(self.deployment_url(namespace, name, "")))
            .await?;
        match status {
            202 | 200 => Ok(()),
            404 => bail!("modeldeployment {namespace}/{name} not found"),
            _ => bail!("delete failed ({status}): {body}"),
        }
    }

    pub async fn devices(&self) -> anyhow::Result<Vec<DeviceRow>> {
        let (status, body) = self
            .send(self.http.get(format!("{}/api/v1/devices", self.server)))
            .await?;
        if status != 200 {
            bail!("listing devices failed ({status}): {body}");
        }
        Ok(serde_json::from_value(body)?)
    }

    fn deployment_url(&self, namespace: &str, name: &str, suffix: &str) -> String {
        format!(
            "{}/api/v1/namespaces/{namespace}/deployments/{name}{suffix}",
            self.server
        )
    }
}

enum Resource {
    Deployments,
    Devices,
}

fn resource(name: &str) -> anyhow::Result<Resource> {
    match name.to_ascii_lowercase().as_str() {
        "md" | "mds" | "modeldeployment" | "modeldeployments" => Ok(Resource::Deployments),
        "device" | "devices" | "dev" => Ok(Resource::Devices),
        other => bail!("unknown resource {other:?}: use `md` or `devices`"),
    }
}

pub async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let mut text = String::new();
    for file in &args.files {
        let content = if file.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        } else {
            std::fs::read_to_string(file).with_context(|| format!("-f {}", file.display()))?
        };
        if !text.is_empty() {
            text.push_str("\n---\n");
        }
        text.push_str(&content);
    }
    let client = Client::new(&args.client)?;
    for applied in client.apply(&text).await? {
        println!(
            "modeldeployment.edgefleet.io/{} {}",
            applied.name, applied.result
        );
    }
    Ok(())
}

fn print_value(value: &Value, format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Yaml => print!("{}", serde_yaml::to_string(value)?),
        _ => println!("{}", serde_json::to_string_pretty(value)?),
    }
    Ok(())
}

/// The deployments `get md` shows: the one named, or every one in the namespace.
async fn deployments(client: &Client, args: &GetArgs) -> anyhow::Result<Vec<Value>> {
    Ok(match &args.name {
        Some(name) => match client.get(&args.client.namespace, name).await? {
            Some(item) => vec![item],
            None => bail!("modeldeployment {}/{name} not found", args.client.namespace),
        },
        None => client
            .list()
            .await?
            .into_iter()
            .filter(|md| md["metadata"]["namespace"] == args.client.namespace.as_str())
            .collect(),
    })
}

/// `get md -w`: the table, then a line per change, until Ctrl-C. A deployment that goes
/// away is shown `Deleted`; a named one that goes away ends the watch, as in kubectl.
async fn watch(client: &Client, args: &GetArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut watch = super::watch_table::RowWatch::default();
    let interval = Duration::from_millis(args.watch_interval_ms);
    let shutdown = crate::run::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let items = match args.name {
            Some(_) => deployments(client, args).await.unwrap_or_default(),
            None => deployments(client, args).await?,
        };
        let typed = items
            .iter()
            .map(|md| serde_json::from_value(md.clone()))
            .collect::<Result<Vec<_>, _>>()
            .context("the API answered with an unreadable ModelDeployment")?;
        let rows = render::deployment_rows(&typed, now_ms());
        print!("{}", watch.update(&render::DEPLOYMENT_COLUMNS, &rows));
        std::io::stdout().flush()?;
        if args.name.is_some() && rows.is_empty() {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut shutdown => return Ok(()),
        }
    }
}

pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client)?;
    if args.watch {
        if !matches!(resource(&args.resource)?, Resource::Deployments) {
            bail!("--watch supports `md` only");
        }
        if args.output != OutputFormat::Table {
            bail!("--watch prints a table; drop --output");
        }
        return watch(&client, &args).await;
    }
    match resource(&args.resource)? {
        Resource::Deployments => {
            let items = deployments(&client, &args).await?;
            match args.output {
                OutputFormat::Table if items.is_empty() => {
                    eprintln!("No resources found in {} namespace.", args.client.namespace)
                }
                OutputFormat::Table => {
                    let typed = items
                        .iter()
                        .map(|md| serde_json::from_value(md.clone()))
                        .collect::<Result<Vec<_>, _>>()
                        .context("the API answered with an unreadable ModelDeployment")?;
                    print!("{}", render::deployments(&typed, now_ms()))
                }
                format if args.name.is_some() => print_value(&items[0], format)?,
                format => print_value(&serde_json::json!({ "items": items }), format)?,
            }
        }
        Resource::Devices => {
            let mut devices = client.devices().await?;
            if let Some(name) = &args.name {
                devices.retain(|d| &d.id == name);
                if devices.is_empty() {
                    bail!("device {name} not found");
                }
            }
            match args.output {
                OutputFormat::Table => print!("{}", render::devices(&devices)),
                format => print_value(&serde_json::to_value(&devices)?, format)?,
            }
        }
    }
    Ok(())
}

pub async fn describe(args: DescribeArgs) -> anyhow::Result<()> {
    let Resource::Deployments = resource(&args.resource)? else {
        bail!("describe supports `md` only; try `edgefleet get devices`");
    };
    let client = Client::new(&args.client)?;
    let description = client.describe(&args.client.namespace, &args.name).await?;
    print!("{}", render::describe(&description));
    Ok(())
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let Resource::Deployments = resource(&args.resource)? else {
        bail!("delete supports `md` only");
    };
    let client = Client::new(&args.client)?;
    let namespace = &args.client.namespace;
    client.delete(namespace, &args.name).await?;
    if args.wait {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while client.get(namespace, &args.name).await?.is_some() {
            if std::time::Instant::now() > deadline {
                bail!(
                    "modeldeployment {namespace}/{} is still being deleted after 120 s",
                    args.name
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!("modeldeployment.edgefleet.io/{} deleted", args.name);
    Ok(())
}
