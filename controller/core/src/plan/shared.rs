//! What the devices of a plan have in common, kept once. A rollout to 100,000 devices has a
//! handful of device classes, reason sentences and distinct assignments; holding a copy of each
//! per device made the plan the largest thing a reconcile pass held.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use edgefleet_crds::{ModelDeploymentSpec, OffloadPolicy, Runtime, Variant};
use edgefleet_protocol::wire::Role;

use super::{PlannedAssignment, Source, llm_run};
use crate::device::DeviceFacts;
use crate::shared::Pool;
use crate::variant::Choice;

/// One device's pick before it is shared: which spec and variant, in which role, and why.
pub(super) struct Pick<'a> {
    pub source: Source,
    pub spec: &'a ModelDeploymentSpec,
    pub variant: &'a Variant,
    pub role: Role,
    pub variant_reason: Arc<str>,
}

/// The reason is keyed by address: every pick's reason comes from a choice whose texts are
/// already shared, so equal reasons are the same allocation (and hashing the address is cheap).
type AssignmentKey<'a> = (Source, &'a str, Role, *const str);

/// Everything variant choice reads of a device, plus its class (which decides the demoted
/// variants it may not get). Shared sets compare by address: the same set is the same value,
/// and devices whose sets are not shared merely miss the memo.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct FitKey<'d> {
    source: Source,
    demotions_apply: bool,
    class: *const str,
    arch: &'d str,
    cores: u32,
    memory_total_mib: u64,
    memory_available_mib: u64,
    disk_free_mib: u64,
    cpu_features: *const BTreeSet<String>,
    accelerators: *const BTreeSet<String>,
    installed_sha256: *const BTreeSet<String>,
    runtimes: &'d BTreeSet<Runtime>,
}

#[derive(Default)]
pub(super) struct Shared<'a, 'd> {
    texts: Pool<str>,
    assignments: HashMap<AssignmentKey<'a>, Arc<PlannedAssignment>>,
    choices: HashMap<FitKey<'d>, Choice>,
}

impl<'a, 'd> Shared<'a, 'd> {
    /// Variant choice for `device` of `class` from the `source` spec (with or without the
    /// class's demotions), made once per distinct set of facts: 100,000 devices of a few dozen
    /// kinds cost a few dozen choices.
    pub fn choose(
        &mut self,
        (source, demotions_apply): (Source, bool),
        device: &'d DeviceFacts,
        class: &Arc<str>,
        choose: impl FnOnce() -> Choice,
    ) -> Choice {
        let key = FitKey {
            source,
            demotions_apply,
            class: Arc::as_ptr(class),
            arch: &device.arch,
            cores: device.cores,
            memory_total_mib: device.memory_total_mib,
            memory_available_mib: device.memory_available_mib,
            disk_free_mib: device.disk_free_mib,
            cpu_features: Arc::as_ptr(&device.cpu_features),
            accelerators: Arc::as_ptr(&device.accelerators),
            installed_sha256: Arc::as_ptr(&device.installed_sha256),
            runtimes: &device.runtimes,
        };
        if let Some(choice) = self.choices.get(&key) {
            return choice.clone();
        }
        let choice = self.choice(choose());
        self.choices.insert(key, choice.clone());
        choice
    }

    /// The one copy of `text`.
    pub fn text(&mut self, text: &str) -> Arc<str> {
        self.texts.share_ref(text)
    }

    /// `choice` with its name and reason replaced by their shared copies.
    pub fn choice(&mut self, choice: Choice) -> Choice {
        match choice {
            Choice::Fits {
                index,
                name,
                reason,
            } => Choice::Fits {
                index,
                name: self.text(&name),
                reason: self.text(&reason),
            },
            no_fit @ Choice::NoFit { .. } => no_fit,
        }
    }

    /// The assignment `pick` stands for, built once per distinct pick. `offload` is the
    /// policy of the spec in force, the same for every device of the plan.
    pub fn assignment(
        &mut self,
        pick: Pick<'a>,
        offload: &Option<OffloadPolicy>,
    ) -> Arc<PlannedAssignment> {
        let key = (
            pick.source,
            pick.variant.name.as_str(),
            pick.role,
            Arc::as_ptr(&pick.variant_reason),
        );
        self.assignments
            .entry(key)
            .or_insert_with(|| {
                Arc::new(PlannedAssignment {
                    source: pick.source,
                    model: pick.spec.model.clone(),
                    variant: pick.variant.clone(),
                    role: pick.role,
                    self_test: pick.spec.self_test.clone(),
                    offload: offload.clone(),
                    llm: llm_run(pick.spec, pick.variant),
                    variant_reason: pick.variant_reason,
                })
            })
            .clone()
    }
}
