//! What a pod asks of a node: its effective resource requests (containers,
//! init containers, sidecars, pod overhead, pod-level resources — computed as
//! upstream's `resourcehelper.PodRequests`), the "non-zero" requests used
//! for scoring, its host ports and the owner it spreads with.
//!
//! Only reads pod and node objects; keeps no state.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::quantity::{self, QuantityError};

/// Cpu a container without a cpu request is assumed to use when scoring
/// (upstream's `DefaultMilliCPURequest`); filters use the real request.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Memory a container without a memory request is assumed to use when
/// scoring (upstream's `DefaultMemoryRequest`, 200 MiB).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// A resource quantity of a pod or node could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource} quantity {quantity:?} is invalid: {source}")]
pub struct ResourceError {
    /// The resource name (`cpu`, `memory`, ...).
    pub resource: String,
    /// The quantity as written.
    pub quantity: String,
    /// What is wrong with it.
    pub source: QuantityError,
}

/// Amounts of the resources the scheduler accounts for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// Cpu in thousandths of a core.
    pub milli_cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Ephemeral storage in bytes.
    pub ephemeral_storage: i64,
    /// Extended resources (`example.com/gpu`) and hugepages, in units.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// Reads a `ResourceList` (requests, limits, allocatable). `pods` and
    /// other non-accounted names are ignored.
    pub fn from_list(list: &BTreeMap<String, Quantity>) -> Result<Resources, ResourceError> {
        let mut out = Resources::default();
        for (name, q) in list {
            out.set(name, q)?;
        }
        Ok(out)
    }

    /// Sets one resource from a quantity, if the scheduler accounts for it.
    fn set(&mut self, name: &str, q: &Quantity) -> Result<(), ResourceError> {
        let err = |source| ResourceError {
            resource: name.to_string(),
            quantity: q.0.clone(),
            source,
        };
        match name {
            "cpu" => self.milli_cpu = quantity::milli_value(&q.0).map_err(err)?,
            "memory" => self.memory = quantity::value(&q.0).map_err(err)?,
            "ephemeral-storage" => self.ephemeral_storage = quantity::value(&q.0).map_err(err)?,
            _ if is_scalar(name) => {
                self.scalar
                    .insert(name.to_string(), quantity::value(&q.0).map_err(err)?);
            }
            _ => {}
        }
        Ok(())
    }

    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_add(other.ephemeral_storage);
        for (name, v) in &other.scalar {
            let slot = self.scalar.entry(name.clone()).or_insert(0);
            *slot = slot.saturating_add(*v);
        }
    }

    /// Subtracts `other` from `self`, dropping scalars that reach zero.
    pub fn sub(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(other.milli_cpu);
        self.memory = self.memory.saturating_sub(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_sub(other.ephemeral_storage);
        for (name, v) in &other.scalar {
            if let Some(slot) = self.scalar.get_mut(name) {
                *slot = slot.saturating_sub(*v);
                if *slot == 0 {
                    self.scalar.remove(name);
                }
            }
        }
    }

    /// Raises every resource of `self` to at least `other`'s amount.
    fn max_with(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (name, v) in &other.scalar {
            let slot = self.scalar.entry(name.clone()).or_insert(0);
            *slot = (*slot).max(*v);
        }
    }
}

/// Extended resources (with a domain prefix outside `kubernetes.io/`) and
/// hugepages are accounted like cpu and memory.
fn is_scalar(name: &str) -> bool {
    name.starts_with("hugepages-")
        || name.contains('/')
            && !name.starts_with("kubernetes.io/")
            && !name.starts_with("requests.")
}

/// A host port a pod binds on its node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Host IP; `0.0.0.0` (the default) means every address.
    pub ip: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The port number.
    pub port: i32,
}

impl HostPort {
    /// True if both cannot be bound on one node at once: same port and
    /// protocol, and the same address or one of them the wildcard.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == WILDCARD_IP || other.ip == WILDCARD_IP)
    }
}

const WILDCARD_IP: &str = "0.0.0.0";

/// Everything about a pod that takes up room on a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodDemand {
    /// Effective requests, as the fit filter compares them.
    pub requests: Resources,
    /// Requests with upstream's defaults for unset cpu and memory, for scoring.
    pub non_zero: Resources,
    /// Host ports the pod binds.
    pub host_ports: Vec<HostPort>,
    /// UID of the controller owner (ReplicaSet, StatefulSet, ...), for spreading.
    pub owner: Option<String>,
}

impl PodDemand {
    /// Reads the demand of `pod`.
    pub fn of(pod: &Pod) -> Result<PodDemand, ResourceError> {
        let owner = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true))
            .map(|r| r.uid.clone());
        let Some(spec) = &pod.spec else {
            return Ok(PodDemand {
                owner,
                ..PodDemand::default()
            });
        };
        let restartable_inits = || {
            spec.init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        };
        let host_ports = spec
            .containers
            .iter()
            .chain(restartable_inits())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let port = p.host_port.filter(|p| *p > 0)?;
                Some(HostPort {
                    ip: p
                        .host_ip
                        .clone()
                        .filter(|ip| !ip.is_empty())
                        .unwrap_or_else(|| WILDCARD_IP.to_string()),
                    protocol: p
                        .protocol
                        .clone()
                        .filter(|p| !p.is_empty())
                        .unwrap_or_else(|| "TCP".to_string()),
                    port,
                })
            })
            .collect();
        Ok(PodDemand {
            requests: pod_requests(pod, false)?,
            non_zero: pod_requests(pod, true)?,
            host_ports,
            owner,
        })
    }
}

/// Requests of one container; limits stand in for unset requests (as the API
/// server's defaulting does); with `non_zero`, unset cpu and memory count as
/// upstream's scoring defaults.
fn container_requests(c: &Container, non_zero: bool) -> Result<Resources, ResourceError> {
    let resources = c.resources.as_ref();
    let mut list: BTreeMap<String, Quantity> =
        resources.and_then(|r| r.limits.clone()).unwrap_or_default();
    if let Some(requests) = resources.and_then(|r| r.requests.as_ref()) {
        list.extend(requests.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let mut out = Resources::from_list(&list)?;
    if non_zero {
        if !list.contains_key("cpu") {
            out.milli_cpu = DEFAULT_MILLI_CPU_REQUEST;
        }
        if !list.contains_key("memory") {
            out.memory = DEFAULT_MEMORY_REQUEST;
        }
    }
    Ok(out)
}

/// Upstream's `PodRequests`: the sum of the regular containers and of the
/// sidecars (restartable init containers), at least what each one-shot init
/// container needs next to the sidecars started before it, plus overhead.
/// Pod-level `spec.resources.requests` replace the container sum for the
/// resources they name.
fn pod_requests(pod: &Pod, non_zero: bool) -> Result<Resources, ResourceError> {
    let Some(spec) = &pod.spec else {
        return Ok(Resources::default());
    };
    let mut total = Resources::default();
    for c in &spec.containers {
        total.add(&container_requests(c, non_zero)?);
    }
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let req = container_requests(c, non_zero)?;
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&req);
            // A sidecar runs next to the ones before it while init continues.
            init_peak.max_with(&sidecars);
        } else {
            let mut during = req;
            during.add(&sidecars);
            init_peak.max_with(&during);
        }
    }
    total.add(&sidecars);
    total.max_with(&init_peak);
    if let Some(pod_level) = spec.resources.as_ref().and_then(|r| r.requests.as_ref()) {
        let level = Resources::from_list(pod_level)?;
        if pod_level.contains_key("cpu") {
            total.milli_cpu = level.milli_cpu;
        }
        if pod_level.contains_key("memory") {
            total.memory = level.memory;
        }
    }
    if let Some(overhead) = &spec.overhead {
        total.add(&Resources::from_list(overhead)?);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "ownerReferences": [
                {"apiVersion": "v1", "kind": "Other", "name": "o", "uid": "not-controller"},
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-uid", "controller": true}
            ]},
            "spec": spec,
        }))
        .expect("valid pod")
    }

    #[test]
    fn sums_containers_and_takes_init_peak() {
        let p = pod(serde_json::json!({
            "initContainers": [
                {"name": "init", "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}},
            ],
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "128Mi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "250m"}, "limits": {"memory": "64Mi"}}},
            ],
            "overhead": {"cpu": "10m"},
        }));
        let d = PodDemand::of(&p).expect("demand");
        assert_eq!(d.requests.milli_cpu, 2010);
        assert_eq!(d.requests.memory, 1 << 30);
        assert_eq!(d.owner.as_deref(), Some("rs-uid"));
    }

    #[test]
    fn sidecars_add_to_the_sum() {
        let p = pod(serde_json::json!({
            "initContainers": [
                {"name": "sidecar", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}},
                {"name": "init", "resources": {"requests": {"cpu": "300m"}}},
            ],
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "200m"}}}],
        }));
        let d = PodDemand::of(&p).expect("demand");
        // max(200 + 100 sidecar, 300 init + 100 sidecar)
        assert_eq!(d.requests.milli_cpu, 400);
    }

    #[test]
    fn non_zero_defaults_for_scoring() {
        let p = pod(
            serde_json::json!({"containers": [{"name": "a"}, {"name": "b", "resources": {"requests": {"cpu": "1"}}}]}),
        );
        let d = PodDemand::of(&p).expect("demand");
        assert_eq!(d.requests.milli_cpu, 1000);
        assert_eq!(d.requests.memory, 0);
        assert_eq!(d.non_zero.milli_cpu, 1100);
        assert_eq!(d.non_zero.memory, 2 * DEFAULT_MEMORY_REQUEST);
    }

    #[test]
    fn extended_resources_and_host_ports() {
        let p = pod(serde_json::json!({"containers": [{"name": "a",
            "resources": {"limits": {"example.com/gpu": "2"}},
            "ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 53, "hostPort": 53, "protocol": "UDP", "hostIP": "10.0.0.1"}, {"containerPort": 9}]
        }]}));
        let d = PodDemand::of(&p).expect("demand");
        assert_eq!(d.requests.scalar.get("example.com/gpu"), Some(&2));
        assert_eq!(d.host_ports.len(), 2);
        assert_eq!(
            d.host_ports[0],
            HostPort {
                ip: "0.0.0.0".into(),
                protocol: "TCP".into(),
                port: 8080
            }
        );
    }

    #[test]
    fn host_port_conflicts() {
        let hp = |ip: &str, proto: &str, port| HostPort {
            ip: ip.into(),
            protocol: proto.into(),
            port,
        };
        assert!(hp("0.0.0.0", "TCP", 80).conflicts(&hp("10.0.0.1", "TCP", 80)));
        assert!(hp("10.0.0.1", "TCP", 80).conflicts(&hp("10.0.0.1", "TCP", 80)));
        assert!(!hp("10.0.0.1", "TCP", 80).conflicts(&hp("10.0.0.2", "TCP", 80)));
        assert!(!hp("0.0.0.0", "TCP", 80).conflicts(&hp("0.0.0.0", "UDP", 80)));
        assert!(!hp("0.0.0.0", "TCP", 80).conflicts(&hp("0.0.0.0", "TCP", 81)));
    }

    #[test]
    fn invalid_quantity_is_an_error() {
        let p = pod(
            serde_json::json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "lots"}}}]}),
        );
        let err = PodDemand::of(&p).expect_err("invalid");
        assert_eq!(err.resource, "cpu");
    }
}
