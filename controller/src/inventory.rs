//! The fleet inventory: what every device announced, whether it is online, and what it runs.
//! SQL is the truth (it survives restarts); an in-memory copy serves the planners.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};

use edgefleet_core::device::SharedFacts;
use edgefleet_core::{DeviceFacts, device_class};
use edgefleet_protocol::wire::{DeviceId, DeviceStatus, Hello, ModelPhase, StateReport};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::store::{DeviceWrite, ModelReport, Store, StoreError};

mod changelog;
mod downloads;
mod presence;
mod sites;
pub use changelog::{ChangeKind, DeviceChange};
pub use downloads::Progress;
pub use presence::Presence;

/// What changed, so that the engine re-plans only when it matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// New device, changed capabilities or labels, or online/offline: deployments re-plan.
    Fleet,
    /// A device reported model progress: statuses refresh, rollouts may advance.
    Progress,
    Nothing,
}

pub struct Inventory {
    /// Shared with the snapshots reconcile plans over: a snapshot costs a pointer per device,
    /// and a device changed meanwhile is copied once, on write.
    devices: RwLock<BTreeMap<DeviceId, Arc<DeviceFacts>>>,
    /// The label maps and capability sets devices hold, one copy of each.
    shared: Mutex<SharedFacts>,
    store: Store,
    metrics: Metrics,
    /// Bumped on every fleet change; reconcilers watch it.
    changes: watch::Sender<u64>,
    /// Each change to devices' facts or to what they reported for their assignments, logged
    /// once it is stored: a pass that began at the same position planned and wrote from the
    /// same inputs, and a later pass needs to look only at what was logged since.
    log: Mutex<changelog::ChangeLog>,
    /// Devices online and offline, for the `edgefleet_devices` gauge.
    online: std::sync::atomic::AtomicI64,
    offline: std::sync::atomic::AtomicI64,
    downloads: downloads::Downloads,
    site_fetches: sites::SiteFetches,
    /// The device label that names a device's site (for the per-site download view).
    site_label: RwLock<String>,
}

impl Inventory {
    /// Which device label names a device's site (default `site`).
    pub fn set_site_label(&self, label: &str) {
        *self.site_label.write().unwrap_or_else(|p| p.into_inner()) = label.to_string();
    }

    pub async fn load(store: Store, metrics: Metrics) -> Result<Self, StoreError> {
        let mut loaded = BTreeMap::new();
        for stored in store.load_devices().await? {
            let mut facts = DeviceFacts::from(&stored.hello);
            facts.online = stored.online;
            facts.installed_sha256 = Arc::new(stored.installed_sha256);
            loaded.insert(facts.id.clone(), facts);
        }
        // Canary places go first to devices holding the target; after a restart that must
        // not wait for their next state report (it may not come until something changes).
        // What devices last reported holding is stored with them; databases written before
        // that was kept still know what each assignment served.
        for (device, sha256) in store.serving_digests().await? {
            if let Some(facts) = DeviceId::new(&device)
                .ok()
                .and_then(|id| loaded.get_mut(&id))
            {
                Arc::make_mut(&mut facts.installed_sha256).insert(sha256);
            }
        }
        let mut shared = SharedFacts::default();
        let devices: BTreeMap<DeviceId, Arc<DeviceFacts>> = loaded
            .into_iter()
            .map(|(id, facts)| (id, Arc::new(shared.share(facts))))
            .collect();
        let (changes, _) = watch::channel(0);
        let online = devices.values().filter(|d| d.online).count() as i64;
        let inventory = Self {
            online: online.into(),
            offline: (devices.len() as i64 - online).into(),
            devices: RwLock::new(devices),
            shared: Mutex::new(shared),
            store,
            metrics,
            changes,
            log: Default::default(),
            downloads: Default::default(),
            site_fetches: Default::default(),
            site_label: RwLock::new("site".into()),
        };
        inventory.update_gauges();
        Ok(inventory)
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The position in the change log (see the `log` field); read it before reading what
    /// it covers.
    pub fn revision(&self) -> u64 {
        self.log().end()
    }

    /// The devices that changed after position `since`, in order, and the position after
    /// them; `None` when the log no longer reaches back that far. Read before what they cover.
    pub fn changes_since(&self, since: u64) -> Option<(Vec<DeviceChange>, u64)> {
        let log = self.log();
        Some((log.since(since)?, log.end()))
    }

    /// The current facts of `ids`, or `None` if one is not known.
    pub fn devices_of<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a DeviceId>,
    ) -> Option<Vec<Arc<DeviceFacts>>> {
        let devices = self.read();
        ids.into_iter().map(|id| devices.get(id).cloned()).collect()
    }

    fn log(&self) -> std::sync::MutexGuard<'_, changelog::ChangeLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Logs changes after they are stored and applied in memory.
    fn log_changes(&self, changes: impl IntoIterator<Item = DeviceChange>) {
        // a pass that falls a whole fleet of changes behind is cheaper done in full
        let capacity = self.len().max(4096);
        let mut log = self.log();
        for change in changes {
            log.push(change, capacity);
        }
    }

    /// The deployments whose artifact `device` is downloading, with its last reported progress.
    pub fn downloads_of(&self, device: &DeviceId) -> BTreeMap<String, Progress> {
        self.downloads.of(device)
    }

    pub fn snapshot(&self) -> Vec<Arc<DeviceFacts>> {
        self.read().values().cloned().collect()
    }

    pub fn device(&self, id: &DeviceId) -> Option<DeviceFacts> {
        self.read().get(id).map(|facts| DeviceFacts::clone(facts))
    }

    pub fn device_class_of(&self, id: &DeviceId) -> Option<String> {
        self.read().get(id).map(|facts| device_class(facts))
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub async fn apply_hello(&self, hello: &Hello, now_ms: i64) -> Result<Change, StoreError> {
        self.apply_presence(&[Presence::Hello(hello)], now_ms).await
    }

    pub async fn apply_status(
        &self,
        status: &DeviceStatus,
        now_ms: i64,
    ) -> Result<Change, StoreError> {
        self.apply_presence(&[Presence::Status(status)], now_ms)
            .await
    }

    /// Applies hellos and statuses in arrival order, written in one transaction. A hello
    /// brings a new device online; a known device's online flag follows its statuses (its
    /// agent publishes `online` before its hello on every connect).
    pub async fn apply_presence(
        &self,
        messages: &[Presence<'_>],
        now_ms: i64,
    ) -> Result<Change, StoreError> {
        let outcomes = {
            let devices = self.read();
            presence::fold(messages, |id| devices.contains_key(id))
        };
        let facts: Vec<Option<DeviceFacts>> = {
            let mut shared = self.shared();
            outcomes
                .iter()
                .map(|outcome| outcome.hello.map(|h| shared.share(DeviceFacts::from(h))))
                .collect()
        };
        let classes: Vec<Option<String>> = facts
            .iter()
            .map(|facts| facts.as_ref().map(device_class))
            .collect();
        let writes: Vec<DeviceWrite> = outcomes
            .iter()
            .zip(&classes)
            .map(|(outcome, class)| DeviceWrite {
                device: outcome.device,
                hello: outcome.hello.zip(class.as_deref()),
                online: outcome.online,
            })
            .collect();
        self.store.record_presence(&writes, now_ms).await?;
        let mut changed = Vec::new();
        let mut devices = self.write();
        for (outcome, announced) in outcomes.iter().zip(facts) {
            let before = devices.get(outcome.device).map(|p| p.online);
            let online = outcome.online.or(before).unwrap_or(true);
            let device_changed = match (announced, devices.get_mut(outcome.device)) {
                (Some(mut facts), Some(previous)) => {
                    facts.online = online;
                    facts.installed_sha256 = previous.installed_sha256.clone();
                    let differs = **previous != facts;
                    if differs {
                        *previous = Arc::new(facts);
                    }
                    differs
                }
                (Some(mut facts), None) => {
                    facts.online = online;
                    devices.insert(facts.id.clone(), Arc::new(facts));
                    true
                }
                (None, Some(previous)) => {
                    let differs = previous.online != online;
                    if differs {
                        Arc::make_mut(previous).online = online;
                    }
                    differs
                }
                (None, None) => false, // the fold drops these
            };
            if device_changed {
                changed.push(DeviceChange {
                    device: outcome.device.clone(),
                    kind: ChangeKind::Presence,
                });
                self.count_online(before, Some(online));
            }
        }
        drop(devices);
        let any = !changed.is_empty();
        self.log_changes(changed);
        Ok(self.changed_if(any, Change::Fleet))
    }

    /// Records each model's phase against its assignment; reports for assignments the
    /// controller no longer holds (stale versions) are ignored.
    pub async fn apply_state(
        &self,
        report: &StateReport,
        now_ms: i64,
    ) -> Result<Change, StoreError> {
        self.apply_states(&[report], now_ms).await
    }

    /// [`Inventory::apply_state`] for many reports: their phases written in one transaction,
    /// what each device holds in another.
    pub async fn apply_states(
        &self,
        reports: &[&StateReport],
        now_ms: i64,
    ) -> Result<Change, StoreError> {
        let mut rows = Vec::new();
        for report in reports {
            for model in &report.models {
                let Some((namespace, name)) = model.deployment.split_once('/') else {
                    self.metrics
                        .mqtt_rejected
                        .with_label_values(&["invalid"])
                        .inc();
                    continue;
                };
                rows.push(ModelReport {
                    device: report.device_id.as_str(),
                    namespace,
                    name,
                    version: &model.version,
                    variant: &model.variant,
                    phase: model.phase.as_str(),
                    reason: model.reason.as_deref(),
                    serving_sha256: model.serving_sha256.as_deref(),
                });
            }
        }
        let any = self.store.record_model_states(&rows, now_ms).await? > 0;
        // Most reports (download progress, a phase change) leave what a device holds as it
        // was: only changes are written.
        let installed: Vec<(&DeviceId, BTreeSet<String>)> = {
            // the last report of a device in the batch is what it holds now
            let last: BTreeMap<&DeviceId, &StateReport> = reports
                .iter()
                .map(|report| (&report.device_id, *report))
                .collect();
            let devices = self.read();
            last.into_iter()
                .map(|(device, report)| (device, installed_digests(report)))
                .filter(|(device, digests)| {
                    devices
                        .get(*device)
                        .is_some_and(|facts| *facts.installed_sha256 != *digests)
                })
                .collect()
        };
        let writes: Vec<(&str, &BTreeSet<String>)> = installed
            .iter()
            .map(|(device, digests)| (device.as_str(), digests))
            .collect();
        self.store.record_installed(&writes).await?;
        for report in reports {
            self.downloads.apply(report);
        }
        let installed: Vec<(&DeviceId, Arc<BTreeSet<String>>)> = {
            let mut shared = self.shared();
            installed
                .into_iter()
                .map(|(device, digests)| (device, shared.set(digests)))
                .collect()
        };
        let mut devices = self.write();
        {
            let site_label = self.site_label.read().unwrap_or_else(|p| p.into_inner());
            for report in reports {
                let site = devices
                    .get(&report.device_id)
                    .and_then(|d| d.labels.get(site_label.as_str()));
                self.site_fetches.apply(
                    report,
                    site.map(String::as_str),
                    &self.metrics.site_fetched_bytes,
                );
            }
        }
        let facts_changed: BTreeSet<&DeviceId> = installed.iter().map(|(d, _)| *d).collect();
        for (device, digests) in installed {
            if let Some(facts) = devices.get_mut(device) {
                Arc::make_mut(facts).installed_sha256 = digests;
            }
        }
        drop(devices);
        if any || !facts_changed.is_empty() {
            let reported: BTreeSet<&DeviceId> = reports.iter().map(|r| &r.device_id).collect();
            self.log_changes(reported.into_iter().map(|device| DeviceChange {
                device: device.clone(),
                kind: ChangeKind::Reported {
                    installed: facts_changed.contains(device),
                },
            }));
        }
        Ok(if any {
            Change::Progress
        } else {
            Change::Nothing
        })
    }

    fn changed_if(&self, changed: bool, change: Change) -> Change {
        if !changed {
            return Change::Nothing;
        }
        self.update_gauges();
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        change
    }

    /// Keeps the online/offline counts up to date as one device goes from `before` to
    /// `after` (`None`: unknown), so that a change costs O(1), not a walk over the fleet.
    fn count_online(&self, before: Option<bool>, after: Option<bool>) {
        let delta = |state: Option<bool>, sign: i64| match state {
            Some(true) => (sign, 0),
            Some(false) => (0, sign),
            None => (0, 0),
        };
        let (on_before, off_before) = delta(before, -1);
        let (on_after, off_after) = delta(after, 1);
        self.online
            .fetch_add(on_before + on_after, std::sync::atomic::Ordering::Relaxed);
        self.offline
            .fetch_add(off_before + off_after, std::sync::atomic::Ordering::Relaxed);
    }

    fn update_gauges(&self) {
        let load = |n: &std::sync::atomic::AtomicI64| n.load(std::sync::atomic::Ordering::Relaxed);
        self.metrics
            .devices
            .with_label_values(&["online"])
            .set(load(&self.online));
        self.metrics
            .devices
            .with_label_values(&["offline"])
            .set(load(&self.offline));
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, SharedFacts> {
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<DeviceId, Arc<DeviceFacts>>> {
        // A poisoned lock means a panic elsewhere already; the map itself is still consistent
        // because every write is a single insert or field update.
        self.devices
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<DeviceId, Arc<DeviceFacts>>> {
        self.devices
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What a state report says the device holds: artifacts of its Ready models and those it
/// serves. They do not count against its free disk for re-planning, and they give canary
/// places to devices that already hold the target.
fn installed_digests(report: &StateReport) -> BTreeSet<String> {
    let ready = report
        .models
        .iter()
        .filter(|m| m.phase == ModelPhase::Ready)
        .map(|m| m.sha256.clone());
    let serving = report
        .models
        .iter()
        .filter_map(|m| m.serving_sha256.clone());
    ready.chain(serving).collect()
}
