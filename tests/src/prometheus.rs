//! A real Prometheus (Debian's package, 1 s scrapes) scraping one target, and the dashboard's
//! panel queries, each with the row it sits in, ready to send to it.

use std::net::SocketAddr;
use std::process::Command;

use crate::{Proc, free_port, repo_root};

/// The dashboard row whose panels need devices serving a language model (llama.cpp).
pub const LLM_ROW: &str = "Language models";

pub struct Prometheus {
    pub port: u16,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n- job_name: edgefleet\n  static_configs: [{{targets: ['{target}']}}]\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let mut command = Command::new("prometheus");
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let proc = Proc::spawn("prometheus", &mut command, dir.path());
        Prometheus {
            port,
            _proc: proc,
            _dir: dir,
        }
    }

    /// The rows of an instant query.
    pub async fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let response = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query(&[("query", promql)])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{promql}: {body}"));
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// `Ok` once some row of `promql` is a finite number (a dashboard panel with data).
    pub async fn has_data(&self, promql: &str) -> Result<(), String> {
        let rows = self.query(promql).await?;
        let finite = rows.iter().any(|r| {
            r["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(f64::is_finite)
        });
        if finite {
            Ok(())
        } else {
            Err(format!("{promql}: {rows:?}"))
        }
    }

    /// The value of the first row, when it is a finite number.
    pub async fn value(&self, promql: &str) -> Result<f64, String> {
        let rows = self.query(promql).await?;
        rows.first()
            .and_then(|r| r["value"][1].as_str()?.parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .ok_or(format!("{promql}: {rows:?}"))
    }
}

/// One target of one dashboard panel.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    /// Title of the row the panel sits in ("" above the first row).
    pub row: String,
    pub panel: String,
    /// As in the dashboard, Grafana variables included; [`PanelQuery::promql`] resolves them.
    pub expr: String,
}

impl PanelQuery {
    /// The query with Grafana's variables replaced as a 1 s-scrape Prometheus needs them.
    pub fn promql(&self) -> String {
        self.expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "5m")
            .replace("$__interval", "5s")
            .replace("\"$namespace\"", "\".*\"")
            .replace("\"$deployment\"", "\".*\"")
            .replace("$namespace", ".*")
            .replace("$deployment", ".*")
    }
}

/// Every panel target of `charts/edgefleet/dashboards/edgefleet.json`, with its row: a panel
/// belongs to the row panel before it in the list (Grafana's layout of expanded rows), or to
/// the row whose `panels` hold it (collapsed rows).
pub fn dashboard_queries() -> Vec<PanelQuery> {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("charts/edgefleet/dashboards/edgefleet.json"))
            .unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    let mut row = String::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        if panel["type"] == "row" {
            row = panel["title"].as_str().unwrap_or_default().to_string();
            for nested in panel["panels"].as_array().into_iter().flatten() {
                push_targets(&row, nested, &mut out);
            }
        } else {
            push_targets(&row, panel, &mut out);
        }
    }
    out
}

fn push_targets(row: &str, panel: &serde_json::Value, out: &mut Vec<PanelQuery>) {
    for target in panel["targets"].as_array().into_iter().flatten() {
        if let Some(expr) = target["expr"].as_str() {
            out.push(PanelQuery {
                row: row.to_string(),
                panel: panel["title"].as_str().unwrap_or_default().to_string(),
                expr: expr.to_string(),
            });
        }
    }
}
