//! What install tasks need, shared by all of them: the store, the sources artifacts come from,
//! the backends, the limits a model must fit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use edgefleet_protocol::Runtime;
use edgefleet_protocol::wire::FetchedBytes;

use crate::install::fetch::Sources;
use crate::install::memory;
use crate::install::repository::InstallStates;
use crate::install::signing::TrustedKeys;
use crate::install::store::Store;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::runtime::Backend;

/// What install tasks need; shared by all of them.
pub struct InstallContext {
    pub store: Store,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// HTTP, OCI registries and the site cache.
    pub sources: Arc<Sources>,
    /// Bytes fetched per artifact by source, for the state report's per-site view.
    pub fetched: Mutex<HashMap<String, FetchedBytes>>,
    pub backends: Vec<Arc<dyn Backend>>,
    /// Caps the free disk space believed available (capability override).
    pub free_limit: Option<u64>,
    /// The memory the agent announced, which a model must fit before it is loaded.
    pub memory: memory::Announced,
    pub trusted_keys: TrustedKeys,
    /// Where the repository index reads the install phases from.
    pub install_states: Arc<InstallStates>,
}

impl InstallContext {
    pub(crate) fn backend(&self, runtime: Runtime) -> Option<Arc<dyn Backend>> {
        self.backends
            .iter()
            .find(|b| b.runtime() == runtime)
            .cloned()
    }
}
