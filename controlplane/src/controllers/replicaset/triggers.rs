//! Which ReplicaSets a watched change concerns, as upstream's pod and
//! ReplicaSet event handlers: a pod's controller (or, for an orphan, every
//! ReplicaSet whose selector matches it; after a controller reference
//! changes, the previous controller too). Pod creations and deletions seen
//! here fulfil the [`super::expectations`] of the ReplicaSet that made them.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::runtime::reflector::ObjectRef;

use super::informer::{key_of, Change};
use super::ownership;
use super::{selector_of, State};
use crate::controllers::pods::{CachedPod, LabelQuery, Owner, PodChange};

impl State {
    /// The ReplicaSet a controller reference points at, if it is in the cache.
    fn resolve(&self, namespace: &str, r: &Owner) -> Option<Arc<ReplicaSet>> {
        if &*r.kind != "ReplicaSet" || !r.api_version.starts_with("apps/") {
            return None;
        }
        let rs = self.sets.get(&ObjectRef::new(&r.name).within(namespace))?;
        (rs.metadata.uid.as_deref() == Some(&*r.uid)).then_some(rs)
    }

    /// ReplicaSets whose selector matches an orphan pod.
    fn sets_selecting(&self, pod: &CachedPod) -> Vec<ObjectRef<ReplicaSet>> {
        self.sets
            .state()
            .iter()
            .filter(|rs| rs.metadata.namespace.as_deref().unwrap_or_default() == &*pod.namespace)
            .filter(|rs| {
                selector_of(rs)
                    .is_ok_and(|s| ownership::query_selects(&LabelQuery::from(&s), &pod.labels))
            })
            .map(|rs| ObjectRef::from_obj(rs.as_ref()))
            .collect()
    }

    pub(super) fn on_set(&self, change: Change<ReplicaSet>) -> Vec<ObjectRef<ReplicaSet>> {
        match change {
            Change::Applied { new, .. } => vec![ObjectRef::from_obj(new.as_ref())],
            Change::Deleted(rs) => {
                self.expectations.forget(&key_of(rs.as_ref()));
                Vec::new()
            }
        }
    }

    pub(super) fn on_pod(&self, change: PodChange) -> Vec<ObjectRef<ReplicaSet>> {
        match change {
            PodChange::Applied { old: None, new } => self.pod_added(&new),
            PodChange::Applied {
                old: Some(old),
                new,
            } => self.pod_updated(&old, &new),
            PodChange::Deleted(pod) => self.pod_deleted(&pod),
            // Deletions missed while the watch was down came as `Deleted`.
            PodChange::Resynced => Vec::new(),
        }
    }

    fn pod_added(&self, pod: &CachedPod) -> Vec<ObjectRef<ReplicaSet>> {
        if pod.deleted.is_some() {
            // Seen for the first time already terminating (e.g. after a relist).
            return self.pod_deleted(pod);
        }
        let ns = &pod.namespace;
        match pod.controller() {
            Some(r) => self
                .resolve(ns, r)
                .map(|rs| {
                    self.expectations.creation_observed(&key_of(rs.as_ref()));
                    vec![ObjectRef::from_obj(rs.as_ref())]
                })
                .unwrap_or_default(),
            None => self.sets_selecting(pod),
        }
    }

    fn pod_updated(&self, old: &CachedPod, new: &CachedPod) -> Vec<ObjectRef<ReplicaSet>> {
        if old.resource_version == new.resource_version {
            return Vec::new();
        }
        let labels_changed = old.labels != new.labels;
        if new.deleted.is_some() {
            // A graceful deletion started: replace the pod now, not when it is gone.
            let mut out = self.pod_deleted(new);
            if labels_changed {
                out.extend(self.pod_deleted(old));
            }
            return out;
        }
        let ns = &new.namespace;
        let (old_ref, new_ref) = (old.controller(), new.controller());
        let mut out = Vec::new();
        if old_ref != new_ref {
            if let Some(rs) = old_ref.and_then(|r| self.resolve(ns, r)) {
                out.push(ObjectRef::from_obj(rs.as_ref()));
            }
        }
        match new_ref {
            Some(r) => out.extend(
                self.resolve(ns, r)
                    .map(|rs| ObjectRef::from_obj(rs.as_ref())),
            ),
            None if labels_changed || old_ref.is_some() => out.extend(self.sets_selecting(new)),
            None => {}
        }
        out
    }

    fn pod_deleted(&self, pod: &CachedPod) -> Vec<ObjectRef<ReplicaSet>> {
        let Some(rs) = pod
            .controller()
            .and_then(|r| self.resolve(&pod.namespace, r))
        else {
            return Vec::new();
        };
        self.expectations
            .deletion_observed(&key_of(rs.as_ref()), &pod.key());
        vec![ObjectRef::from_obj(rs.as_ref())]
    }
}
