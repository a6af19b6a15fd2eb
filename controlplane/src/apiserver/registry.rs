//! The table of API resources the server serves: group, version, kind, names,
//! scope, subresources, and the k8s-openapi type each one decodes into.
//!
//! Everything that is per-kind but data-like (discovery, OpenAPI, storage
//! keys, decoding) reads this table; behaviour that differs per kind
//! (defaulting, validation, table columns) lives in its own module.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Subresources a resource may serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// `/status`: only `.status` changes through it; the main resource ignores `.status`.
    Status,
    /// `/scale`: an autoscaling/v1 Scale view of `.spec.replicas`.
    Scale,
    /// `/binding`: pods only, sets `.spec.nodeName`.
    Binding,
    /// `/log`: pods only, served by the node agent.
    Log,
    /// `/finalize`: namespaces only, updates `spec.finalizers`.
    Finalize,
    /// `/eviction`: pods only, a delete that respects PodDisruptionBudgets.
    Eviction,
}

impl Subresource {
    /// The path segment and discovery name suffix.
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
            Subresource::Log => "log",
            Subresource::Finalize => "finalize",
            Subresource::Eviction => "eviction",
        }
    }
}

/// Decodes JSON into the kind's k8s-openapi type and re-encodes it, so that
/// the stored form is canonical and type errors name the offending field.
pub type Codec = fn(Value) -> Result<Value, DecodeError>;

/// A decode failure with the JSON path of the field that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DecodeError {
    /// Dotted path such as `spec.containers[0].ports[0].containerPort`.
    pub path: String,
    /// What serde said about the value.
    pub message: String,
}

/// One served resource (one group/version/plural).
#[derive(Debug, Clone, Copy)]
pub struct Resource {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// Version within the group.
    pub version: &'static str,
    /// Kind, e.g. `Pod`.
    pub kind: &'static str,
    /// Plural resource name used in paths, e.g. `pods`.
    pub plural: &'static str,
    /// Singular name, e.g. `pod`.
    pub singular: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names for kubectl, e.g. `po`.
    pub short_names: &'static [&'static str],
    /// Categories, e.g. `all`.
    pub categories: &'static [&'static str],
    /// Subresources served.
    pub subresources: &'static [Subresource],
    /// Storage name: resources served in several versions share it.
    pub storage: &'static str,
    /// Round trip through the typed struct.
    pub codec: Codec,
}

impl Resource {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// True when the resource serves the subresource.
    pub fn has(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }

    /// Group-qualified plural for messages, e.g. `deployments.apps`.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Storage key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{}/{}", self.storage, ns, name),
            _ => format!("/registry/{}/{}", self.storage, name),
        }
    }

    /// Storage prefix of a list, across namespaces when `namespace` is None.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{}/", self.storage, ns),
            _ => format!("/registry/{}/", self.storage),
        }
    }
}

fn codec<T: DeserializeOwned + Serialize>(value: Value) -> Result<Value, DecodeError> {
    let typed: T = serde_path_to_error::deserialize(value).map_err(|e| DecodeError {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })?;
    serde_json::to_value(typed).map_err(|e| DecodeError {
        path: ".".into(),
        message: e.to_string(),
    })
}

macro_rules! res {
    ($group:expr, $version:expr, $kind:expr, $plural:expr, $singular:expr, $ns:expr, $short:expr, $cat:expr, $subs:expr, $storage:expr, $ty:ty) => {
        Resource {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $ns,
            short_names: $short,
            categories: $cat,
            subresources: $subs,
            storage: $storage,
            codec: codec::<$ty>,
        }
    };
}

mod resources;

pub use resources::RESOURCES;

/// Finds a resource by group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Finds a resource by apiVersion (`v1`, `apps/v1`) and kind.
pub fn find_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}

/// The storage version of a storage name: the first listed resource that uses it.
pub fn storage_resource(storage: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.storage == storage)
}

/// Groups in discovery order with their versions, preferred version first.
pub fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) if !versions.contains(&r.version) => versions.push(r.version),
            Some(_) => {}
            None => out.push((r.group, vec![r.version])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn codec_names_the_failing_field() {
        let pods = find("", "v1", "pods").unwrap();
        let err = (pods.codec)(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
            "spec": {"containers": [{"name": "a", "image": "i", "ports": [{"containerPort": "eighty"}]}]}
        }))
        .unwrap_err();
        assert_eq!(err.path, "spec.containers[0].ports[0].containerPort");
    }

    #[test]
    fn hpa_versions_share_storage_and_v2_is_preferred() {
        let v2 = find("autoscaling", "v2", "horizontalpodautoscalers").unwrap();
        let v1 = find("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        assert_eq!(v1.key(Some("ns"), "a"), v2.key(Some("ns"), "a"));
        let autoscaling = groups()
            .into_iter()
            .find(|(g, _)| *g == "autoscaling")
            .unwrap();
        assert_eq!(autoscaling.1, vec!["v2", "v1"]);
    }
}
