//! The models currently answering requests. Readers take a lock-free snapshot; a switch
//! replaces one entry atomically, so in-flight requests finish on the model they started with.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use edgefleet_protocol::wire::Assignment;

use crate::runtime::Model;

pub struct Served {
    pub assignment: Assignment,
    pub model: Arc<dyn Model>,
}

impl Served {
    pub fn sha256(&self) -> &str {
        &self.assignment.artifact.sha256
    }
}

#[derive(Default)]
struct Index {
    by_deployment: BTreeMap<String, Arc<Served>>,
    /// Model name, deployment (`namespace/name`) and the deployment's bare name.
    by_alias: HashMap<String, Arc<Served>>,
}

impl Index {
    fn build(by_deployment: BTreeMap<String, Arc<Served>>) -> Index {
        let mut by_alias = HashMap::new();
        // Exact names first so that a deployment name never shadows a model name.
        for served in by_deployment.values() {
            by_alias
                .entry(served.assignment.model.name.clone())
                .or_insert_with(|| served.clone());
        }
        for (deployment, served) in &by_deployment {
            by_alias
                .entry(deployment.clone())
                .or_insert_with(|| served.clone());
            if let Some((_, bare)) = deployment.rsplit_once('/') {
                by_alias
                    .entry(bare.to_string())
                    .or_insert_with(|| served.clone());
            }
        }
        Index {
            by_deployment,
            by_alias,
        }
    }
}

#[derive(Default)]
pub struct Registry {
    index: ArcSwap<Index>,
    writer: Mutex<()>,
}

impl Registry {
    pub fn get(&self, name: &str) -> Option<Arc<Served>> {
        self.index.load().by_alias.get(name).cloned()
    }

    pub fn by_deployment(&self, deployment: &str) -> Option<Arc<Served>> {
        self.index.load().by_deployment.get(deployment).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Served>> {
        self.index.load().by_deployment.values().cloned().collect()
    }

    /// Switches the deployment to `served`; returns what served before.
    pub fn insert(&self, served: Served) -> Option<Arc<Served>> {
        self.update(|map| map.insert(served.assignment.deployment.clone(), Arc::new(served)))
    }

    pub fn remove(&self, deployment: &str) -> Option<Arc<Served>> {
        self.update(|map| map.remove(deployment))
    }

    fn update<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Arc<Served>>) -> R) -> R {
        let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut map = self.index.load().by_deployment.clone();
        let result = f(&mut map);
        self.index.store(Arc::new(Index::build(map)));
        result
    }
}
