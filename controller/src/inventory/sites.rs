//! The per-site view of downloads: how many bytes each site's devices fetched across the
//! uplink (`origin`) and from their site cache (`site_cache`), from the `fetched` counts in
//! their state reports. A device's latest report per deployment replaces its earlier one, so
//! the gauge is the bytes behind the models devices were last assigned. Sites are a label
//! value devices choose; past [`MAX_SITES`] distinct ones, the rest count as `other`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use edgefleet_protocol::wire::{DeviceId, FetchedBytes, StateReport};
use prometheus::IntGaugeVec;

pub const MAX_SITES: usize = 256;

#[derive(Default)]
pub struct SiteFetches {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (device, deployment) → (site label value, bytes)
    reports: HashMap<(DeviceId, String), (String, FetchedBytes)>,
    sites: BTreeSet<String>,
}

impl SiteFetches {
    /// Applies a report from a device of `site`; moves the gauge by what changed.
    pub fn apply(&self, report: &StateReport, site: Option<&str>, gauge: &IntGaugeVec) {
        let Some(site) = site else { return };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let site = if inner.sites.contains(site) || inner.sites.len() < MAX_SITES {
            inner.sites.insert(site.to_string());
            site.to_string()
        } else {
            "other".to_string()
        };
        for model in &report.models {
            let Some(fetched) = model.fetched else {
                continue;
            };
            let key = (report.device_id.clone(), model.deployment.clone());
            let before = inner.reports.insert(key, (site.clone(), fetched));
            if let Some((old_site, old)) = &before {
                move_gauge(gauge, old_site, old, -1);
            }
            move_gauge(gauge, &site, &fetched, 1);
        }
    }
}

fn move_gauge(gauge: &IntGaugeVec, site: &str, fetched: &FetchedBytes, sign: i64) {
    for (source, bytes) in [
        ("origin", fetched.origin),
        ("site_cache", fetched.site_cache),
    ] {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        gauge.with_label_values(&[site, source]).add(sign * bytes);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed step should panic with its location
mod tests {
    use edgefleet_protocol::wire::{ModelPhase, ModelState};
    use prometheus::Opts;

    use super::*;

    fn report(device: &str, origin: u64, site_cache: u64) -> StateReport {
        StateReport {
            device_id: DeviceId::new(device).expect("valid id"),
            generation: 1,
            models: vec![ModelState {
                deployment: "default/m".into(),
                variant: "fp32".into(),
                version: "1".into(),
                sha256: "a".repeat(64),
                phase: ModelPhase::Ready,
                bytes_done: None,
                bytes_total: None,
                reason: None,
                serving_sha256: None,
                fetched: Some(FetchedBytes { origin, site_cache }),
            }],
        }
    }

    #[test]
    fn a_sites_bytes_are_the_sum_of_its_devices_latest_reports() {
        let gauge = IntGaugeVec::new(Opts::new("g", "h"), &["site", "source"]).expect("gauge");
        let fetches = SiteFetches::default();
        let get = |site: &str, source: &str| gauge.with_label_values(&[site, source]).get();
        fetches.apply(&report("cache", 100, 0), Some("a"), &gauge);
        fetches.apply(&report("d1", 0, 100), Some("a"), &gauge);
        fetches.apply(&report("d2", 40, 60), Some("a"), &gauge);
        assert_eq!((get("a", "origin"), get("a", "site_cache")), (140, 160));
        // the same report again (every state report repeats it) changes nothing
        fetches.apply(&report("d2", 40, 60), Some("a"), &gauge);
        assert_eq!((get("a", "origin"), get("a", "site_cache")), (140, 160));
        fetches.apply(&report("b1", 100, 0), Some("b"), &gauge);
        fetches.apply(&report("loner", 100, 0), None, &gauge);
        assert_eq!(get("b", "origin"), 100);
    }

    #[test]
    fn sites_past_the_limit_count_as_other() {
        let gauge = IntGaugeVec::new(Opts::new("g", "h"), &["site", "source"]).expect("gauge");
        let fetches = SiteFetches::default();
        for i in 0..MAX_SITES + 3 {
            fetches.apply(
                &report(&format!("d{i}"), 1, 0),
                Some(&format!("s{i}")),
                &gauge,
            );
        }
        assert_eq!(gauge.with_label_values(&["other", "origin"]).get(), 3);
    }
}
