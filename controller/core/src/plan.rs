//! The rollout plan: for every selected device, which version and variant it runs, in which
//! role, and why. Pure glue over variant choice, cohorts and canary membership; the controller
//! turns it into `desired` documents and status.
//!
//! - First deployment (no previous version): every selected device gets the target directly,
//!   as stable. There is nothing to compare a canary against and nothing to protect, so a
//!   canary would only delay it.
//! - Canary step: the canaries of the step (see [`crate::canary`], over cohorts of the target
//!   choice after demotions) run the target as canary; every other device keeps the variant it
//!   gets under the previous spec, as stable. A device the previous spec does not select or fit
//!   gets nothing until the rollout reaches it, rather than the unproven target.
//!   Devices whose every fitting variant was demoted keep the previous version.
//! - Promoted: every device runs the target as stable; a device it does not fit gets nothing,
//!   except a device whose every fitting variant was demoted for its class: it keeps the
//!   previous version, as during the canary (`Demote` moves only the failing cohort).
//! - Rolled back: the previous spec is in force again, including its selector.
//!
//! Devices the selector in force does not select are not in the plan at all.

mod delta;
mod shared;

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use edgefleet_crds::{
    DeviceSelector, ModelDeploymentSpec, ModelFormat, ModelRef, OffloadPolicy, SelfTest, Variant,
};
use edgefleet_protocol::llm::LlmRun;
use edgefleet_protocol::wire::{Assignment, DeviceId, Role};
use serde::{Deserialize, Serialize};

use crate::analysis::Liveness;
use crate::canary::{Tier, canary_members_by_tier};
use crate::cohort::{Cohort, CohortKey, group_by_cohort};
use crate::device::{DeviceFacts, device_class};
use crate::progression::step_percent;
use crate::variant::{Choice, choose_variant, next_best};
pub use delta::follow_installed;
use shared::{Pick, Shared};

/// Where the rollout of the target spec stands. `status.currentStep` is `step + 1` during the
/// canary and `steps.len() + 1` once promoted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    /// Canary step `step`, 0-based into `spec.rollout.steps`; past the last step it is
    /// [`Stage::Promoted`].
    Canary {
        step: usize,
    },
    Promoted,
    RolledBack,
}

/// Which spec a device's assignment comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    Target,
    Previous,
}

/// What one device should run for this deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedAssignment {
    pub source: Source,
    pub model: ModelRef,
    pub variant: Variant,
    pub role: Role,
    pub self_test: Option<SelfTest>,
    /// The spec's offload policy, only when it lets inputs leave the device.
    pub offload: Option<OffloadPolicy>,
    /// Language models: the context and slots the spec declares.
    pub llm: Option<LlmRun>,
    /// Why this variant (the variant choice's explanation).
    pub variant_reason: Arc<str>,
}

/// The context and slots a GGUF variant runs with: the spec's, or its defaults.
fn llm_run(spec: &ModelDeploymentSpec, variant: &Variant) -> Option<LlmRun> {
    (variant.format == ModelFormat::Gguf).then(|| {
        let serving = spec.llm.clone().unwrap_or_default();
        LlmRun {
            context_tokens: serving.context_tokens,
            slots: serving.slots,
        }
    })
}

impl PlannedAssignment {
    /// The wire form, for the device's `desired` document; `deployment` is `namespace/name`.
    pub fn to_wire(&self, deployment: &str) -> Assignment {
        Assignment {
            deployment: deployment.to_string(),
            model: self.model.clone(),
            variant: self.variant.name.clone(),
            precision: self.variant.precision,
            runtime: self.variant.runtime,
            artifact: self.variant.artifact.clone(),
            role: self.role,
            self_test: self.self_test.clone(),
            offload: self.offload.clone(),
            llm: self.llm,
            site_cache: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DevicePlan {
    pub device: DeviceId,
    pub device_class: Arc<str>,
    pub online: bool,
    /// The target spec's variant choice for this device, after demotions.
    pub target: Choice,
    /// The target variant this device would run had its class's cohort not been demoted;
    /// `None` when demotions did not change its choice.
    pub demoted_from: Option<String>,
    /// `None`: the device should run nothing of this deployment. Shared by every device of
    /// the plan with the same assignment.
    pub assignment: Option<Arc<PlannedAssignment>>,
    /// Why this role and version (or why nothing), in one line.
    pub reason: Arc<str>,
    /// How suitable the device was to fill a canary place (it decides membership only during
    /// a canary step); kept so that a later change to the device can be checked against it.
    pub tier: Tier,
}

impl DevicePlan {
    /// The cohort the device's assignment puts it in.
    pub fn cohort(&self) -> Option<Cohort> {
        self.assignment.as_ref().map(|a| Cohort {
            role: a.role,
            key: CohortKey::new(&*self.device_class, &a.variant.name),
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanCounts {
    /// Selected by the selector in force.
    pub matched: u32,
    /// With an assignment (canary or stable).
    pub assigned: u32,
    pub canary: u32,
    pub stable: u32,
    /// No variant of the target fits, demotions aside.
    pub no_fit: u32,
    /// Whose first-choice target variant was demoted for their class: they run the next-best
    /// target variant or, when none is left, the previous version.
    pub demoted: u32,
    /// Of the demoted, those left with no target variant, running the previous version.
    pub kept_previous: u32,
    /// Selected but running nothing of this deployment.
    pub unassigned: u32,
    pub offline: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RolloutPlan {
    /// Sorted by device id, one entry per selected device.
    pub devices: Vec<DevicePlan>,
    /// Devices by cohort and role, for analysis and `status.cohorts`.
    pub cohorts: BTreeMap<Cohort, Vec<DeviceId>>,
    /// Devices running the target, per target variant name (`status.variants`).
    pub target_variants: BTreeMap<String, u32>,
    pub counts: PlanCounts,
}

impl RolloutPlan {
    /// The canary cohorts of the step, with their devices.
    pub fn canary_cohorts(&self) -> BTreeMap<&CohortKey, &[DeviceId]> {
        self.role_cohorts(Role::Canary)
            .map(|(key, devices)| (key, devices.as_slice()))
            .collect()
    }

    /// Per device class, how many stable devices (whatever their variant) there are and how
    /// many are online: the baseline a canary cohort of that class is compared with. One pass
    /// over the plan for every class.
    pub fn stable_liveness(&self) -> BTreeMap<&str, Liveness> {
        let mut by_class: BTreeMap<&str, Liveness> = BTreeMap::new();
        let stable = self.devices.iter().filter(|d| {
            d.assignment
                .as_ref()
                .is_some_and(|a| a.role == Role::Stable)
        });
        for device in stable {
            let liveness = by_class.entry(&device.device_class).or_default();
            liveness.total += 1;
            liveness.online += u32::from(device.online);
        }
        by_class
    }

    fn role_cohorts(&self, role: Role) -> impl Iterator<Item = (&CohortKey, &Vec<DeviceId>)> {
        self.cohorts
            .iter()
            .filter(move |(c, _)| c.role == role)
            .map(|(c, devices)| (&c.key, devices))
    }

    /// Whether the plan saw `device` online (unknown devices are not).
    pub fn is_online(&self, device: &str) -> bool {
        self.devices
            .binary_search_by(|d| d.device.as_str().cmp(device))
            .is_ok_and(|i| self.devices[i].online)
    }

    pub fn device(&self, id: &DeviceId) -> Option<&DevicePlan> {
        self.devices
            .binary_search_by(|d| d.device.cmp(id))
            .ok()
            .and_then(|i| self.devices.get(i))
    }
}

/// Whether moving from `previous` to `spec` changes what devices run (model, variants or
/// selection), and therefore deserves a canary rollout. Selector, rollout, SLO and self-test
/// edits apply directly.
pub fn needs_rollout(spec: &ModelDeploymentSpec, previous: Option<&ModelDeploymentSpec>) -> bool {
    previous.is_some_and(|p| {
        p.model != spec.model || p.variants != spec.variants || p.selection != spec.selection
    })
}

/// Plans every device the selector in force selects. `uid` is the deployment's UID (the canary
/// seed); `previous` the spec last promoted, if any; `demotions` the target cohorts demoted so
/// far (their variants are excluded for devices of that class).
pub fn plan_rollout(
    uid: &str,
    spec: &ModelDeploymentSpec,
    previous: Option<&ModelDeploymentSpec>,
    stage: Stage,
    devices: &[impl Borrow<DeviceFacts>],
    demotions: &BTreeSet<CohortKey>,
) -> RolloutPlan {
    let stage = effective_stage(spec, stage);
    let selector = selector_in_force(spec, previous, stage);
    let mut selected: Vec<&DeviceFacts> = devices
        .iter()
        .map(Borrow::borrow)
        .filter(|d| d.is_selected_by(selector))
        .collect();
    selected.sort_by(|a, b| a.id.cmp(&b.id));
    selected.dedup_by(|a, b| a.id == b.id);

    let mut shared = Shared::default();
    let classified: Vec<Classified> = selected
        .into_iter()
        .map(|device| classify(spec, demotions, device, &mut shared))
        .collect();

    let canaries = match (stage, previous) {
        (Stage::Canary { step }, Some(_)) => {
            let population = group_by_cohort(classified.iter().filter_map(|c| {
                let variant = c.target.variant_name()?;
                Some((CohortKey::new(&*c.class, variant), c.device.id.clone()))
            }));
            let tiers: BTreeMap<&DeviceId, Tier> = classified
                .iter()
                .map(|c| (&c.device.id, c.tier(spec)))
                .collect();
            canary_members_by_tier(uid, step_percent(&spec.rollout, step), &population, |d| {
                tiers.get(d).copied().unwrap_or(Tier::Offline)
            })
        }
        _ => BTreeSet::new(),
    };

    // The CR as it is now decides what may leave a device, whichever spec's model the
    // device runs: withdrawn consent applies at once, not after a rollout.
    let offload = consented_offload(spec);
    let plans: Vec<DevicePlan> = classified
        .into_iter()
        .map(|classified| {
            let (pick, reason) =
                assign((spec, previous), stage, &classified, &canaries, &mut shared);
            let tier = classified.tier(spec);
            let Classified {
                device,
                class,
                target,
                demoted_from,
            } = classified;
            DevicePlan {
                device: device.id.clone(),
                device_class: class,
                online: device.online,
                target,
                demoted_from,
                assignment: pick.map(|pick| shared.assignment(pick, &offload)),
                reason: shared.text(&reason),
                tier,
            }
        })
        .collect();
    summarize(plans)
}

/// A device that already stores its target variant's artifact (it was a canary before it
/// went offline, or the digest is unchanged) keeps its place; others need to be online.
fn canary_tier(spec: &ModelDeploymentSpec, device: &DeviceFacts, target: &Choice) -> Tier {
    let holds_target = match target {
        Choice::Fits { index, .. } => spec
            .variants
            .get(*index)
            .is_some_and(|v| device.installed_sha256.contains(&v.artifact.sha256)),
        Choice::NoFit { .. } => false,
    };
    match (holds_target, device.online) {
        (true, _) => Tier::HoldsTarget,
        (false, true) => Tier::Online,
        (false, false) => Tier::Offline,
    }
}

/// The stage as planned: a canary step past the last one is promotion.
fn effective_stage(spec: &ModelDeploymentSpec, stage: Stage) -> Stage {
    match stage {
        Stage::Canary { step } if step >= spec.rollout.steps.len() => Stage::Promoted,
        other => other,
    }
}

/// Which spec's selector decides the devices of the plan.
fn selector_in_force<'a>(
    spec: &'a ModelDeploymentSpec,
    previous: Option<&'a ModelDeploymentSpec>,
    stage: Stage,
) -> &'a DeviceSelector {
    match (stage, previous) {
        (Stage::RolledBack, Some(p)) => &p.selector,
        _ => &spec.selector,
    }
}

/// `device` with its class and its target choice after `demotions`.
fn classify<'a, 'd>(
    spec: &ModelDeploymentSpec,
    demotions: &BTreeSet<CohortKey>,
    device: &'d DeviceFacts,
    shared: &mut Shared<'a, 'd>,
) -> Classified<'d> {
    let class = shared.text(&device_class(device));
    let excluded: Vec<&str> = demotions
        .iter()
        .filter(|k| *k.device_class == *class)
        .map(|k| k.variant.as_str())
        .collect();
    let target = shared.choose((Source::Target, true), device, &class, || {
        next_best(device, spec, &excluded)
    });
    let demoted_from = if excluded.is_empty() {
        None
    } else {
        shared
            .choose((Source::Target, false), device, &class, || {
                next_best(device, spec, &[])
            })
            .variant_name()
            .filter(|first| Some(*first) != target.variant_name())
            .map(str::to_string)
    };
    Classified {
        device,
        class,
        target,
        demoted_from,
    }
}

/// A selected device with its class and its target choice after demotions.
struct Classified<'a> {
    device: &'a DeviceFacts,
    class: Arc<str>,
    target: Choice,
    demoted_from: Option<String>,
}

impl Classified<'_> {
    fn tier(&self, spec: &ModelDeploymentSpec) -> Tier {
        canary_tier(spec, self.device, &self.target)
    }

    /// Every target variant that fits this device was demoted for its class.
    fn only_demoted_fit(&self) -> bool {
        self.demoted_from.is_some() && self.target.variant_index().is_none()
    }

    /// Why the target has nothing for this device.
    fn no_target_reason(&self, version: &str) -> String {
        match &self.demoted_from {
            Some(variant) if self.only_demoted_fit() => format!(
                "{version}'s {variant} was demoted for {} and no other variant fits",
                self.class
            ),
            _ => format!("no variant of {version} fits"),
        }
    }
}

/// What a device runs, if anything, and why.
type Assigned<'a> = (Option<Pick<'a>>, String);

fn assign<'a, 'd>(
    (spec, previous): (&'a ModelDeploymentSpec, Option<&'a ModelDeploymentSpec>),
    stage: Stage,
    classified: &Classified<'d>,
    canaries: &BTreeSet<DeviceId>,
    shared: &mut Shared<'a, 'd>,
) -> Assigned<'a> {
    let (device, target) = (classified.device, &classified.target);
    let version = &spec.model.version;
    let Some(previous) = previous else {
        return match stage {
            Stage::RolledBack => (None, "rolled back, and there is no previous version".into()),
            _ => with_target(
                spec,
                target,
                Role::Stable,
                format!("first deployment: runs {version} directly"),
            ),
        };
    };
    match stage {
        // Demote moves only the failing cohort: promotion must not leave it with nothing.
        Stage::Promoted if classified.only_demoted_fit() => with_previous(
            previous,
            classified,
            format!(
                "promoted to {version}, but {}",
                classified.no_target_reason(version)
            ),
            shared,
        ),
        Stage::Promoted => {
            with_target(spec, target, Role::Stable, format!("promoted to {version}"))
        }
        Stage::RolledBack => with_previous(previous, classified, "rolled back".into(), shared),
        Stage::Canary { step } if canaries.contains(&device.id) => with_target(
            spec,
            target,
            Role::Canary,
            format!(
                "canary for {version} at step {} ({}%)",
                step + 1,
                step_percent(&spec.rollout, step)
            ),
        ),
        Stage::Canary { .. } => {
            let why = if target.variant_index().is_some() {
                format!("not a canary yet for {version}")
            } else {
                classified.no_target_reason(version)
            };
            with_previous(previous, classified, why, shared)
        }
    }
}

fn with_target<'a>(
    spec: &'a ModelDeploymentSpec,
    choice: &Choice,
    role: Role,
    why: String,
) -> Assigned<'a> {
    match choice {
        Choice::Fits { index, reason, .. } => match spec.variants.get(*index) {
            Some(variant) => (
                Some(Pick {
                    source: Source::Target,
                    spec,
                    variant,
                    role,
                    variant_reason: reason.clone(),
                }),
                why,
            ),
            None => (None, format!("{why}, but variant {index} does not exist")),
        },
        Choice::NoFit { .. } => (None, format!("no variant of {} fits", spec.model.version)),
    }
}

/// The offload policy devices receive: none unless the spec consents to inputs leaving them
/// (validation refuses such a spec too; this keeps a device safe from one that slipped by).
fn consented_offload(spec: &ModelDeploymentSpec) -> Option<OffloadPolicy> {
    spec.offload
        .clone()
        .filter(|offload| offload.inputs_may_leave_device)
}

fn with_previous<'a, 'd>(
    previous: &'a ModelDeploymentSpec,
    classified: &Classified<'d>,
    why: String,
    shared: &mut Shared<'a, 'd>,
) -> Assigned<'a> {
    let (device, class) = (classified.device, &classified.class);
    let version = &previous.model.version;
    if !device.is_selected_by(&previous.selector) {
        return (None, format!("{why}; {version} did not select it"));
    }
    let choice = shared.choose((Source::Previous, false), device, class, || {
        choose_variant(device, previous)
    });
    match choice {
        Choice::Fits { index, reason, .. } => match previous.variants.get(index) {
            Some(variant) => (
                Some(Pick {
                    source: Source::Previous,
                    spec: previous,
                    variant,
                    role: Role::Stable,
                    variant_reason: reason,
                }),
                format!("{why}; keeps {version}"),
            ),
            None => (
                None,
                format!("{why}; {version} variant {index} does not exist"),
            ),
        },
        Choice::NoFit { .. } => (None, format!("{why}; no variant of {version} fits either")),
    }
}

fn summarize(devices: Vec<DevicePlan>) -> RolloutPlan {
    let mut counts = PlanCounts::default();
    let mut target_variants = BTreeMap::new();
    for d in &devices {
        counts.matched += 1;
        counts.offline += u32::from(!d.online);
        let demoted = d.demoted_from.is_some();
        counts.no_fit += u32::from(d.target.variant_index().is_none() && !demoted);
        counts.demoted += u32::from(demoted);
        let on_previous = d.assignment.as_ref().map(|a| a.source) == Some(Source::Previous);
        counts.kept_previous +=
            u32::from(demoted && d.target.variant_index().is_none() && on_previous);
        match &d.assignment {
            None => counts.unassigned += 1,
            Some(a) => {
                counts.assigned += 1;
                match a.role {
                    Role::Canary => counts.canary += 1,
                    Role::Stable => counts.stable += 1,
                }
                if a.source == Source::Target {
                    *target_variants.entry(a.variant.name.clone()).or_insert(0) += 1;
                }
            }
        }
    }
    let cohorts = group_by_cohort(
        devices
            .iter()
            .filter_map(|d| Some((d.cohort()?, d.device.clone()))),
    );
    RolloutPlan {
        devices,
        cohorts,
        target_variants,
        counts,
    }
}

#[cfg(test)]
mod tests;
