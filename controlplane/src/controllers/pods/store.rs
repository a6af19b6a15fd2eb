//! The shared cache's map of [`CachedPod`]s, keyed by uid (a UUID packed in
//! 16 bytes), readable by every controller while the informer writes it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use uuid::Uuid;

use super::cached::CachedPod;

/// What a pod is cached under: its uid, packed when it is a UUID (as the
/// API server makes them).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum PodKey {
    /// A UUID uid.
    Uuid(Uuid),
    /// Any other uid, or `namespace/name` for a pod without one.
    Other(Box<str>),
}

impl PodKey {
    /// The key of `pod`.
    pub(super) fn of(pod: &CachedPod) -> Self {
        if pod.uid.is_empty() {
            return PodKey::Other(format!("{}/{}", pod.namespace, pod.name).into());
        }
        Uuid::parse_str(&pod.uid).map_or_else(|_| PodKey::Other(pod.uid.clone()), PodKey::Uuid)
    }
}

/// The pods of the shared cache.
#[derive(Debug, Clone, Default)]
pub struct PodStore(Arc<RwLock<HashMap<PodKey, Arc<CachedPod>>>>);

impl PodStore {
    fn read(&self) -> RwLockReadGuard<'_, HashMap<PodKey, Arc<CachedPod>>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<PodKey, Arc<CachedPod>>> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Every cached pod, in no particular order.
    pub fn state(&self) -> Vec<Arc<CachedPod>> {
        self.read().values().cloned().collect()
    }

    /// The cached pods `keep` accepts.
    pub fn filter(&self, keep: impl Fn(&CachedPod) -> bool) -> Vec<Arc<CachedPod>> {
        self.read().values().filter(|p| keep(p)).cloned().collect()
    }

    /// The pods of one namespace.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<CachedPod>> {
        self.filter(|p| &*p.namespace == namespace)
    }

    /// Number of cached pods.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// No pod is cached.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    pub(super) fn get(&self, key: &PodKey) -> Option<Arc<CachedPod>> {
        self.read().get(key).cloned()
    }

    /// Stores `pod`; returns what it replaced.
    pub(super) fn insert(&self, key: PodKey, pod: Arc<CachedPod>) -> Option<Arc<CachedPod>> {
        self.write().insert(key, pod)
    }

    pub(super) fn remove(&self, key: &PodKey) -> Option<Arc<CachedPod>> {
        self.write().remove(key)
    }

    /// Replaces every pod (after a relist); returns the pods that were
    /// cached but are not in `pods`.
    pub(super) fn replace(&self, pods: HashMap<PodKey, Arc<CachedPod>>) -> Vec<Arc<CachedPod>> {
        let mut map = self.write();
        let gone = map
            .iter()
            .filter(|(k, _)| !pods.contains_key(k))
            .map(|(_, p)| p.clone())
            .collect();
        *map = pods;
        gone
    }
}
