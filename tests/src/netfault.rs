//! Network faults between a device and its broker: a TCP forwarder that can partition the
//! link like a dead cellular modem does, silently. Nothing is closed; bytes simply stop, so
//! each side only notices through its MQTT keep-alive, and the broker publishes the device's
//! last will.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Partition {
    pub port: u16,
    partitioned: Arc<watch::Sender<bool>>,
}

impl Partition {
    /// Forwards 127.0.0.1:`port` to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> Partition {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let partitioned = Arc::new(watch::channel(false).0);
        let state = partitioned.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(forward(inbound, upstream, state.subscribe()));
            }
        });
        Partition { port, partitioned }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Stops all traffic, both ways, on live and new connections (sockets stay open).
    pub fn cut(&self) {
        self.partitioned.send_replace(true);
    }

    /// Heals the link; connections that lived through the partition are then closed, as a
    /// NAT that forgot them would, and new ones flow.
    pub fn heal(&self) {
        self.partitioned.send_replace(false);
    }
}

async fn forward(mut inbound: TcpStream, upstream: u16, mut partitioned: watch::Receiver<bool>) {
    if *partitioned.borrow_and_update() {
        // Accepted but black-holed: the client's CONNECT goes nowhere.
        let _ = partitioned.wait_for(|cut| !*cut).await;
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let (mut a, mut b) = ([0u8; 16 * 1024], [0u8; 16 * 1024]);
    loop {
        let cut = tokio::select! {
            read = inbound.read(&mut a) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => outbound.write_all(&a[..n]).await.is_err(),
            },
            read = outbound.read(&mut b) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => inbound.write_all(&b[..n]).await.is_err(),
            },
            changed = partitioned.changed() => changed.is_err() || *partitioned.borrow(),
        };
        if cut {
            // Hold both sockets, silent, until the partition heals; then drop them.
            let _ = partitioned.wait_for(|cut| !*cut).await;
            return;
        }
    }
}

/// Sum of every sample of `name` (all label sets) in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The sum of `metric` over the series of one deployment (all its cohorts: the role may
/// change during a test), if the exposition has any.
pub fn deployment_metric(text: &str, metric: &str, deployment: &str) -> Option<f64> {
    let label = format!("deployment=\"{deployment}\"");
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_metric_sums_one_deployments_series_of_exactly_that_name() {
        let text = "x_total{cohort=\"a\",deployment=\"chat\"} 2\n\
                    x_total{cohort=\"b\",deployment=\"chat\"} 3\n\
                    x_total{deployment=\"other\"} 7\n\
                    x_total_more{deployment=\"chat\"} 11\n";
        assert_eq!(deployment_metric(text, "x_total", "chat"), Some(5.0));
        assert_eq!(deployment_metric(text, "x_total", "none"), None);
    }

    #[test]
    fn metric_sum_adds_every_label_set_of_exactly_that_name() {
        let text = "# TYPE x_total counter\nx_total{a=\"1\"} 2\nx_total{a=\"2\"} 3.5\nx_total_other 100\nx_total 1\n";
        assert_eq!(metric_sum(text, "x_total"), 6.5);
        assert_eq!(metric_sum(text, "missing"), 0.0);
    }
}
