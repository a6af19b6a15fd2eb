//! The compact pod the shared cache holds ([`CachedPod`]): only what the
//! controllers on the cache read, in boxed strings and boxed slices instead
//! of k8s-openapi's structs (a `Pod` with one container is ~5 KB of struct
//! space before any content; this is a few hundred bytes plus the strings).
//!
//! Readers and what they read: replicaset (namespace, labels, owners,
//! deletion, phase, Ready condition, node, deletion-cost annotation,
//! restarts), endpointslice (labels, deletion, uid, node, hostname,
//! subdomain, named ports, IPs, phase, Ready), nodelifecycle (node,
//! tolerations, Ready, creation), podgc (node, phase, creation, deletion,
//! the DisruptionTarget reason), garbagecollector (name, uid, owners,
//! finalizers, deletion). A reader that needs more adds it here.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::core::{Expression, Selector};

/// A pod as the shared cache keeps it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CachedPod {
    /// `metadata.namespace`.
    pub namespace: Box<str>,
    /// `metadata.name`.
    pub name: Box<str>,
    /// `metadata.uid`.
    pub uid: Box<str>,
    /// `metadata.resourceVersion`.
    pub resource_version: Box<str>,
    /// `metadata.creationTimestamp`.
    pub created: Option<Timestamp>,
    /// `metadata.deletionTimestamp`.
    pub deleted: Option<Timestamp>,
    /// `metadata.labels`.
    pub labels: Labels,
    /// `metadata.annotations`.
    pub annotations: Labels,
    /// `metadata.ownerReferences`.
    pub owners: Box<[Owner]>,
    /// `metadata.finalizers`.
    pub finalizers: Box<[Box<str>]>,
    /// `spec.nodeName`, when not empty.
    pub node_name: Option<Box<str>>,
    /// `spec.hostname`.
    pub hostname: Option<Box<str>>,
    /// `spec.subdomain`.
    pub subdomain: Option<Box<str>>,
    /// `spec.tolerations`, shared between pods with equal lists
    /// (nearly every pod carries the same two default ones).
    pub tolerations: Arc<[Toleration]>,
    /// Named ports of the containers and the sidecar (restartable) init
    /// containers, the ones a Service's string targetPort can name.
    pub named_ports: Box<[NamedPort]>,
    /// `status.phase`.
    pub phase: Phase,
    /// `status.podIPs`, then `status.podIP` (when set).
    pub ips: Box<[Box<str>]>,
    /// The Ready condition.
    pub ready: Option<Readiness>,
    /// The reason of a `DisruptionTarget` condition, if the pod has one.
    pub disruption: Option<Box<str>>,
    /// Highest restart count of the regular containers and of the sidecar
    /// init containers.
    pub restarts: (i32, i32),
}

/// A pod's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// No or an unrecognised phase.
    #[default]
    None,
    /// `Pending`.
    Pending,
    /// `Running`.
    Running,
    /// `Succeeded`.
    Succeeded,
    /// `Failed`.
    Failed,
    /// `Unknown`.
    Unknown,
}

impl Phase {
    fn parse(phase: Option<&str>) -> Self {
        match phase {
            Some("Pending") => Phase::Pending,
            Some("Running") => Phase::Running,
            Some("Succeeded") => Phase::Succeeded,
            Some("Failed") => Phase::Failed,
            Some("Unknown") => Phase::Unknown,
            _ => Phase::None,
        }
    }

    /// Succeeded or Failed.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// The Ready condition of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// Its status is `True`.
    pub is_true: bool,
    /// Its `lastTransitionTime`.
    pub since: Option<Timestamp>,
}

/// A container port with a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    /// The port's name.
    pub name: Box<str>,
    /// Its protocol (`TCP` when unset).
    pub protocol: Box<str>,
    /// The container port.
    pub port: i32,
}

/// An owner reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// `apiVersion`.
    pub api_version: Box<str>,
    /// `kind`.
    pub kind: Box<str>,
    /// `name`.
    pub name: Box<str>,
    /// `uid`.
    pub uid: Box<str>,
    /// `controller` is true.
    pub controller: bool,
    /// `blockOwnerDeletion`.
    pub block_owner_deletion: Option<bool>,
}

impl From<&OwnerReference> for Owner {
    fn from(r: &OwnerReference) -> Self {
        Owner {
            api_version: r.api_version.as_str().into(),
            kind: r.kind.as_str().into(),
            name: r.name.as_str().into(),
            uid: r.uid.as_str().into(),
            controller: r.controller == Some(true),
            block_owner_deletion: r.block_owner_deletion,
        }
    }
}

impl From<&Owner> for OwnerReference {
    fn from(o: &Owner) -> Self {
        OwnerReference {
            api_version: o.api_version.to_string(),
            kind: o.kind.to_string(),
            name: o.name.to_string(),
            uid: o.uid.to_string(),
            controller: o.controller.then_some(true),
            block_owner_deletion: o.block_owner_deletion,
        }
    }
}

/// A string map kept as a slice sorted by key (labels, annotations).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_ref().cmp(key))
            .ok()
            .map(|i| self.0[i].1.as_ref())
    }

    /// The entries, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    /// As the API's map (`None` when empty, as an absent map).
    pub fn to_map(&self) -> Option<BTreeMap<String, String>> {
        (!self.0.is_empty()).then(|| {
            self.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
    }

    /// Every entry of `want` is here with the same value.
    pub fn contains_all(&self, want: &BTreeMap<String, String>) -> bool {
        want.iter().all(|(k, v)| self.get(k) == Some(v.as_str()))
    }
}

impl From<Option<&BTreeMap<String, String>>> for Labels {
    fn from(map: Option<&BTreeMap<String, String>>) -> Self {
        // A BTreeMap iterates sorted by key already.
        Labels(
            map.into_iter()
                .flatten()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect(),
        )
    }
}

/// A label selector's expressions, evaluated on [`Labels`] without
/// building a map per pod.
#[derive(Debug, Clone, Default)]
pub struct LabelQuery(Vec<Expression>);

impl From<&Selector> for LabelQuery {
    fn from(selector: &Selector) -> Self {
        LabelQuery(selector.clone().into_iter().collect())
    }
}

impl LabelQuery {
    /// The selector has no terms (it selects everything).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every term holds for `labels`, as kube's `SelectorExt::matches`.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|e| match e {
            Expression::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
            Expression::NotIn(k, values) => labels.get(k).is_none_or(|v| !values.contains(v)),
            Expression::Exists(k) => labels.get(k).is_some(),
            Expression::DoesNotExist(k) => labels.get(k).is_none(),
            Expression::Equal(k, value) => labels.get(k) == Some(value.as_str()),
            Expression::NotEqual(k, value) => labels.get(k) != Some(value.as_str()),
        })
    }
}

fn boxed(s: Option<&String>) -> Box<str> {
    s.map_or_else(Box::default, |s| s.as_str().into())
}

impl CachedPod {
    /// The compact form of `pod`; `tolerations` is the pod's list (shared
    /// by the cache between pods with equal lists).
    pub fn new(pod: &Pod, tolerations: Arc<[Toleration]>) -> Self {
        let meta = &pod.metadata;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let sidecars = spec
            .into_iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        let named_ports = spec
            .into_iter()
            .flat_map(|s| s.containers.iter())
            .chain(sidecars.clone())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.as_deref()?.into(),
                    protocol: p.protocol.as_deref().unwrap_or("TCP").into(),
                    port: p.container_port,
                })
            })
            .collect();
        let sidecar_names: Vec<&str> = sidecars.map(|c| c.name.as_str()).collect();
        let regular = status
            .into_iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
            .map(|c| c.restart_count)
            .max()
            .unwrap_or(0);
        let sidecar = status
            .into_iter()
            .flat_map(|s| s.init_container_statuses.iter().flatten())
            .filter(|c| sidecar_names.contains(&c.name.as_str()))
            .map(|c| c.restart_count)
            .max()
            .unwrap_or(0);
        let conditions = status.and_then(|s| s.conditions.as_ref());
        let condition = |t: &str| conditions.into_iter().flatten().find(|c| c.type_ == t);
        let ips = status
            .into_iter()
            .flat_map(|s| {
                let listed = s.pod_ips.iter().flatten().map(|p| p.ip.as_str());
                listed.chain(s.pod_ip.as_deref().filter(|ip| !ip.is_empty()))
            })
            .map(Into::into)
            .collect();
        CachedPod {
            namespace: boxed(meta.namespace.as_ref()),
            name: boxed(meta.name.as_ref()),
            uid: boxed(meta.uid.as_ref()),
            resource_version: boxed(meta.resource_version.as_ref()),
            created: meta.creation_timestamp.as_ref().map(|t| t.0),
            deleted: meta.deletion_timestamp.as_ref().map(|t| t.0),
            labels: meta.labels.as_ref().into(),
            annotations: meta.annotations.as_ref().into(),
            owners: meta
                .owner_references
                .iter()
                .flatten()
                .map(Owner::from)
                .collect(),
            finalizers: meta
                .finalizers
                .iter()
                .flatten()
                .map(|f| f.as_str().into())
                .collect(),
            node_name: spec
                .and_then(|s| s.node_name.as_deref())
                .filter(|n| !n.is_empty())
                .map(Into::into),
            hostname: spec.and_then(|s| s.hostname.as_deref()).map(Into::into),
            subdomain: spec.and_then(|s| s.subdomain.as_deref()).map(Into::into),
            tolerations,
            named_ports,
            phase: Phase::parse(status.and_then(|s| s.phase.as_deref())),
            ips,
            ready: condition("Ready").map(|c| Readiness {
                is_true: c.status == "True",
                since: c.last_transition_time.as_ref().map(|t| t.0),
            }),
            disruption: condition("DisruptionTarget")
                .map(|c| c.reason.as_deref().unwrap_or_default().into()),
            restarts: (regular, sidecar),
        }
    }

    /// `namespace/name`, for messages.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The controller owner reference, if any.
    pub fn controller(&self) -> Option<&Owner> {
        self.owners.iter().find(|o| o.controller)
    }

    /// The Ready condition is True.
    pub fn is_ready(&self) -> bool {
        self.ready.is_some_and(|r| r.is_true)
    }

    /// The pod's metadata as far as the cache keeps it (no annotations).
    pub fn meta(&self) -> ObjectMeta {
        let some = |s: &str| Some(s.to_string());
        ObjectMeta {
            namespace: some(&self.namespace),
            name: some(&self.name),
            uid: some(&self.uid),
            resource_version: some(&self.resource_version),
            creation_timestamp: self.created.map(Time),
            deletion_timestamp: self.deleted.map(Time),
            labels: self.labels.to_map(),
            owner_references: (!self.owners.is_empty())
                .then(|| self.owners.iter().map(OwnerReference::from).collect()),
            finalizers: (!self.finalizers.is_empty())
                .then(|| self.finalizers.iter().map(|f| f.to_string()).collect()),
            ..ObjectMeta::default()
        }
    }

    /// An event's reference to this pod.
    pub fn reference(&self) -> ObjectReference {
        let some = |s: &str| Some(s.to_string());
        ObjectReference {
            api_version: some("v1"),
            kind: some("Pod"),
            name: some(&self.name),
            namespace: some(&self.namespace),
            uid: some(&self.uid),
            resource_version: some(&self.resource_version),
            field_path: None,
        }
    }
}

impl From<&Pod> for CachedPod {
    fn from(pod: &Pod) -> Self {
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        CachedPod::new(pod, tolerations.into())
    }
}

#[cfg(test)]
mod tests;
