//! A pass's plan and stored records, carried to the deployment's next pass. Planning,
//! reading every assignment back and pacing cost time in proportion to the fleet, while most
//! passes of a canary step only wait for telemetry or for a few devices' reports: when the
//! specs and stage are the same, the next pass reuses them, brought up to date with the
//! devices that changed since (see `follow`), and computes only the canary turn and the status.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use edgefleet_core::CohortKey;
use edgefleet_core::plan::{RolloutPlan, Stage};
use edgefleet_core::rollout::RolloutState;
use edgefleet_crds::ModelDeploymentSpec;

use super::{DeploymentInput, Records};

/// The longest a pass is carried. A report this replica did not receive (its link to the
/// broker was down while another replica recorded it) is picked up within this time.
const MAX_CARRY_MS: i64 = 30_000;

/// Everything a plan and its write depend on besides the clock and the fleet.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PassInputs {
    uid: String,
    generation: Option<i64>,
    spec: ModelDeploymentSpec,
    target: ModelDeploymentSpec,
    previous: Option<ModelDeploymentSpec>,
    stage: Stage,
    demotions: BTreeSet<CohortKey>,
}

impl PassInputs {
    /// The inputs of a pass over `input` planning from `pinned` (target artifacts resolved).
    pub fn new(input: &DeploymentInput<'_>, pinned: &RolloutState) -> Self {
        Self {
            uid: input.uid.to_string(),
            generation: input.generation,
            spec: input.spec.clone(),
            target: pinned.target.clone(),
            previous: pinned.previous.clone(),
            stage: pinned.stage,
            demotions: pinned.demotions.clone(),
        }
    }
}

/// A plan and the records its write stored.
#[derive(Clone)]
pub(super) struct Planned {
    pub plan: Arc<RolloutPlan>,
    pub records: Arc<Records>,
    /// Replacements pacing kept back when the records were written.
    pub held_back: usize,
}

/// A carried pass: its plan and records, as of a position in the inventory's change log.
pub(super) struct Carried {
    inputs: PassInputs,
    pub planned: Planned,
    /// [`crate::inventory::Inventory::revision`] the plan and records are up to date with.
    pub position: u64,
    /// When the records were last read or written whole.
    pub whole_at_ms: i64,
}

/// The last pass of each deployment (`namespace/name`).
#[derive(Default)]
pub(super) struct CarriedPasses(Mutex<HashMap<String, Carried>>);

impl CarriedPasses {
    /// Takes the last pass of `key` out if it planned from exactly `inputs` and read its
    /// records whole less than [`MAX_CARRY_MS`] ago; any other is dropped. Taken, not
    /// copied: the caller updates it in place and puts it back, and a pass that plans again
    /// does not hold the old plan beside the new one.
    pub fn take(&self, key: &str, inputs: &PassInputs, now_ms: i64) -> Option<Carried> {
        let carried = self.lock().remove(key)?;
        let fresh = now_ms.saturating_sub(carried.whole_at_ms) < MAX_CARRY_MS;
        (fresh && carried.inputs == *inputs).then_some(carried)
    }

    /// Keeps a pass for the next ones: its plan and records are up to date with the change
    /// log at `position` and were read or written whole at `whole_at_ms`.
    pub fn put(
        &self,
        key: String,
        inputs: PassInputs,
        planned: Planned,
        (position, whole_at_ms): (u64, i64),
    ) {
        self.lock().insert(
            key,
            Carried {
                inputs,
                planned,
                position,
                whole_at_ms,
            },
        );
    }

    /// Takes `key`'s pass out, whatever it planned from.
    pub fn remove(&self, key: &str) -> Option<Carried> {
        self.lock().remove(key)
    }

    /// Forgets `key`'s pass: something other than this replica's passes wrote its rows.
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Carried>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use edgefleet_core::plan::plan_rollout;
    use edgefleet_core::testutil;
    use edgefleet_crds::Precision;

    use super::*;

    fn spec() -> ModelDeploymentSpec {
        testutil::spec("1", vec![testutil::variant("fp32", Precision::Fp32, None)])
    }

    fn inputs(stage: Stage) -> PassInputs {
        let spec = spec();
        let mut state = RolloutState::first(&spec, 0);
        state.stage = stage;
        let input = DeploymentInput {
            namespace: "ns",
            name: "md",
            uid: "u1",
            generation: Some(1),
            spec: &spec,
            status: None,
        };
        PassInputs::new(&input, &state)
    }

    fn planned() -> Planned {
        let no_devices: [edgefleet_core::DeviceFacts; 0] = [];
        let plan = plan_rollout(
            "u1",
            &spec(),
            None,
            Stage::Promoted,
            &no_devices,
            &BTreeSet::new(),
        );
        Planned {
            plan: Arc::new(plan),
            records: Arc::new(Vec::new()),
            held_back: 0,
        }
    }

    #[test]
    fn a_pass_is_carried_only_to_a_pass_with_the_same_inputs_within_the_age_limit() {
        let passes = CarriedPasses::default();
        let same = inputs(Stage::Promoted);
        passes.put("ns/md".into(), same.clone(), planned(), (7, 1_000));
        let carried = passes.take("ns/md", &same, 1_001).expect("carried");
        assert_eq!((carried.position, carried.whole_at_ms), (7, 1_000));
        assert!(passes.take("ns/md", &same, 1_001).is_none(), "taken out");

        passes.put("ns/md".into(), same.clone(), planned(), (7, 1_000));
        assert!(
            passes.take("ns/other", &same, 1_001).is_none(),
            "per deployment"
        );
        assert!(
            passes
                .take("ns/md", &same, 1_000 + MAX_CARRY_MS - 1)
                .is_some()
        );

        let other = inputs(Stage::Canary { step: 0 });
        passes.put("ns/md".into(), same.clone(), planned(), (7, 1_000));
        assert!(passes.take("ns/md", &other, 1_001).is_none());
        assert!(
            passes.take("ns/md", &same, 1_001).is_none(),
            "dropped on a miss"
        );

        passes.put("ns/md".into(), same.clone(), planned(), (7, 1_000));
        assert!(
            passes.take("ns/md", &same, 1_000 + MAX_CARRY_MS).is_none(),
            "too old"
        );

        passes.put("ns/md".into(), same.clone(), planned(), (7, 1_000));
        passes.forget("ns/md");
        assert!(passes.take("ns/md", &same, 1_001).is_none(), "forgotten");
    }
}
