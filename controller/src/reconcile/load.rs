//! Step 2: the deployment's rollout state as stored, moved on by the spec it now has; and, at
//! the end of the pass, the state written back when it changed.

use edgefleet_core::rollout::{RolloutEvent, RolloutState};

use super::{DeploymentInput, ReconcileError};
use crate::store::{RolloutRow, Store, rollout_row, rollout_state};

pub(super) struct Loaded {
    /// The row as stored, to skip the write when nothing changed.
    stored: Option<RolloutRow>,
    pub state: RolloutState,
    pub events: Vec<RolloutEvent>,
}

pub(super) async fn rollout(
    store: &Store,
    input: &DeploymentInput<'_>,
    now_ms: i64,
) -> Result<Loaded, ReconcileError> {
    let stored = store.rollout(input.namespace, input.name).await?;
    let before = match &stored {
        Some(row) if row.uid == input.uid => Some(rollout_state(row)?),
        _ => None, // a deployment recreated under the same name starts afresh
    };
    let state = match before.clone() {
        None => RolloutState::first(input.spec, now_ms),
        Some(state) => state.with_spec(input.spec, now_ms),
    };
    let mut events = Vec::new();
    if before.as_ref().map(|b| &b.target.model) != Some(&state.target.model) {
        events.push(RolloutEvent {
            reason: "RolloutStarted",
            message: state.last_decision.clone(),
            warning: false,
        });
    }
    Ok(Loaded {
        stored,
        state,
        events,
    })
}

/// Keeps a decision in the deployment's history (what `describe` shows).
pub(super) async fn record_event(
    store: &Store,
    input: &DeploymentInput<'_>,
    event: &RolloutEvent,
    now_ms: i64,
) -> Result<(), ReconcileError> {
    store
        .append_history(
            input.namespace,
            input.name,
            event.reason,
            &event.message,
            now_ms,
        )
        .await?;
    Ok(())
}

/// Writes the state back if it differs from what was loaded.
pub(super) async fn save(
    store: &Store,
    input: &DeploymentInput<'_>,
    loaded: &Loaded,
    now_ms: i64,
) -> Result<(), ReconcileError> {
    let row = rollout_row(&loaded.state, input.uid)?;
    if loaded.stored.as_ref() != Some(&row) {
        store
            .put_rollout(input.namespace, input.name, &row, now_ms)
            .await?;
    }
    Ok(())
}
