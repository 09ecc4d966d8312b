//! Loading a verified artifact: re-checking a stored one's digest and signature, the memory
//! check, then load, warm-up and self-test off the async threads.

use std::path::PathBuf;
use std::sync::Arc;

use edgefleet_protocol::wire::Assignment;

use crate::install::context::InstallContext;
use crate::install::store;
use crate::runtime::Model;

/// Loads a model already in the store, re-verifying its digest first.
pub(crate) async fn load_stored(
    ctx: &Arc<InstallContext>,
    a: &Assignment,
) -> Result<Arc<dyn Model>, String> {
    // The trusted keys may have changed since it was installed (a revoked key).
    ctx.trusted_keys
        .verify(&a.artifact)
        .map_err(|e| format!("signature: {e}"))?;
    let path = ctx.store.artifact_path(&a.artifact.sha256);
    let check = path.clone();
    let actual = tokio::task::spawn_blocking(move || store::sha256_file(&check))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    if actual != a.artifact.sha256 {
        return Err(format!("stored artifact has sha256 {actual}"));
    }
    load_and_test(ctx, a, path).await
}

/// Loads, warms up and self-tests a verified artifact, off the async threads.
pub(crate) async fn load_and_test(
    ctx: &Arc<InstallContext>,
    a: &Assignment,
    path: PathBuf,
) -> Result<Arc<dyn Model>, String> {
    let backend = ctx.backend(a.runtime).ok_or_else(|| {
        format!(
            "runtime {} is not available on this device",
            a.runtime.as_str()
        )
    })?;
    let loaded = ctx.registry.all();
    ctx.memory.check(a, loaded.iter().map(|s| &s.assignment))?;
    let assignment = a.clone();
    tokio::task::spawn_blocking(move || {
        let test = assignment.self_test.as_ref();
        let model = backend
            .load_assigned(&path, &assignment)
            .map_err(|e| format!("load: {e:#}"))?;
        model.prepare(test).map_err(|e| format!("self-test: {e}"))?;
        Ok(model)
    })
    .await
    .map_err(|e| format!("load task: {e}"))?
}
