//! Filters: can this pod run on this node at all? They run in upstream's
//! plugin order — NodeUnschedulable (plus readiness), TaintToleration,
//! NodeAffinity, NodePorts, NodeResourcesFit — and the first failing one
//! decides the node's reasons, worded as upstream words them so the
//! FailedScheduling message reads the same as on any cluster.

use std::fmt;

use k8s_openapi::api::core::v1::PodSpec;

use super::affinity;
use super::cache::{NodeFacts, NodeInfo};
use super::resources::PodDemand;
use super::taints;

/// Why a node cannot take a pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The node's Ready condition is not True.
    NotReady,
    /// The node is cordoned (`spec.unschedulable`).
    Unschedulable,
    /// A NoSchedule/NoExecute taint the pod does not tolerate.
    UntoleratedTaint {
        /// Taint key.
        key: String,
        /// Taint value (may be empty).
        value: String,
    },
    /// nodeSelector or required node affinity does not match.
    NodeAffinity,
    /// A requested host port is taken.
    HostPorts,
    /// Not enough of a resource left.
    Insufficient(String),
    /// The node runs its allocatable number of pods already.
    TooManyPods,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NotReady => f.write_str("node(s) were not ready"),
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::UntoleratedTaint { key, value } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Reason::NodeAffinity => {
                f.write_str("node(s) didn't match Pod's node affinity/selector")
            }
            Reason::HostPorts => {
                f.write_str("node(s) didn't have free ports for the requested pod ports")
            }
            Reason::Insufficient(resource) => write!(f, "Insufficient {resource}"),
            Reason::TooManyPods => f.write_str("Too many pods"),
        }
    }
}

/// A pending pod as the filters and scores see it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The pod's spec.
    pub spec: &'a PodSpec,
    /// What it takes up on a node.
    pub demand: &'a PodDemand,
}

/// Runs every filter on `node`. Returns true if the pod fits; otherwise
/// `reasons` holds why (several only for resource shortages).
pub fn fits(pod: Candidate<'_>, node: &NodeInfo, reasons: &mut Vec<Reason>) -> bool {
    reasons.clear();
    let Some(facts) = &node.facts else {
        // Ghost nodes are never offered; treat as not ready if they are.
        reasons.push(Reason::NotReady);
        return false;
    };
    if let Some(reason) = node_condition(pod.spec, facts)
        .or_else(|| taint_toleration(pod.spec, facts))
        .or_else(|| {
            (!affinity::required_matches(pod.spec, &node.name, facts))
                .then_some(Reason::NodeAffinity)
        })
        .or_else(|| host_ports(pod.demand, node))
    {
        reasons.push(reason);
        return false;
    }
    resources_fit(pod.demand, node, facts, reasons);
    reasons.is_empty()
}

fn tolerations(spec: &PodSpec) -> &[k8s_openapi::api::core::v1::Toleration] {
    spec.tolerations.as_deref().unwrap_or_default()
}

/// NodeUnschedulable, and readiness: a cordoned or not-ready node takes only
/// pods that tolerate the matching node-condition taint.
fn node_condition(spec: &PodSpec, facts: &NodeFacts) -> Option<Reason> {
    let tolerations = tolerations(spec);
    if facts.unschedulable && !taints::tolerates_condition(tolerations, taints::UNSCHEDULABLE_KEY) {
        return Some(Reason::Unschedulable);
    }
    if !facts.ready && !taints::tolerates_condition(tolerations, taints::NOT_READY_KEY) {
        return Some(Reason::NotReady);
    }
    None
}

fn taint_toleration(spec: &PodSpec, facts: &NodeFacts) -> Option<Reason> {
    taints::first_untolerated(&facts.taints, tolerations(spec)).map(|t| Reason::UntoleratedTaint {
        key: t.key.clone(),
        value: t.value.clone().unwrap_or_default(),
    })
}

fn host_ports(demand: &PodDemand, node: &NodeInfo) -> Option<Reason> {
    if demand.host_ports.is_empty() || node.host_ports.is_empty() {
        return None;
    }
    let taken = demand
        .host_ports
        .iter()
        .any(|wanted| node.host_ports.keys().any(|used| wanted.conflicts(used)));
    taken.then_some(Reason::HostPorts)
}

/// NodeResourcesFit: pod count, then every requested resource against what
/// is left of allocatable; each shortage is its own reason.
fn resources_fit(
    demand: &PodDemand,
    node: &NodeInfo,
    facts: &NodeFacts,
    reasons: &mut Vec<Reason>,
) {
    if node.pod_count + 1 > facts.allowed_pods {
        reasons.push(Reason::TooManyPods);
    }
    let want = &demand.requests;
    let free = |allocatable: i64, requested: i64| allocatable.saturating_sub(requested);
    if want.milli_cpu > 0
        && want.milli_cpu > free(facts.allocatable.milli_cpu, node.requested.milli_cpu)
    {
        reasons.push(Reason::Insufficient("cpu".into()));
    }
    if want.memory > 0 && want.memory > free(facts.allocatable.memory, node.requested.memory) {
        reasons.push(Reason::Insufficient("memory".into()));
    }
    if want.ephemeral_storage > 0
        && want.ephemeral_storage
            > free(
                facts.allocatable.ephemeral_storage,
                node.requested.ephemeral_storage,
            )
    {
        reasons.push(Reason::Insufficient("ephemeral-storage".into()));
    }
    for (name, amount) in &want.scalar {
        let allocatable = facts.allocatable.scalar.get(name).copied().unwrap_or(0);
        let used = node.requested.scalar.get(name).copied().unwrap_or(0);
        if *amount > 0 && *amount > free(allocatable, used) {
            reasons.push(Reason::Insufficient(name.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::resources::{HostPort, Resources};
    use k8s_openapi::api::core::v1::Taint;

    fn node(cpu: i64, pods: i64) -> NodeInfo {
        NodeInfo {
            name: "n1".into(),
            facts: Some(NodeFacts {
                labels: [("zone".to_string(), "a".to_string())].into(),
                allocatable: Resources {
                    milli_cpu: cpu,
                    memory: 1 << 30,
                    ..Resources::default()
                },
                allowed_pods: pods,
                ready: true,
                ..NodeFacts::default()
            }),
            ..NodeInfo::default()
        }
    }

    fn spec(v: serde_json::Value) -> PodSpec {
        let mut v = v;
        v["containers"] = serde_json::json!([]);
        serde_json::from_value(v).expect("valid spec")
    }

    fn demand(cpu: i64, memory: i64) -> PodDemand {
        PodDemand {
            requests: Resources {
                milli_cpu: cpu,
                memory,
                ..Resources::default()
            },
            ..PodDemand::default()
        }
    }

    fn check(spec: &PodSpec, demand: &PodDemand, node: &NodeInfo) -> Vec<Reason> {
        let mut reasons = Vec::new();
        let ok = fits(Candidate { spec, demand }, node, &mut reasons);
        assert_eq!(ok, reasons.is_empty());
        reasons
    }

    #[test]
    fn resources() {
        let s = spec(serde_json::json!({}));
        let mut n = node(1000, 2);
        assert!(check(&s, &demand(1000, 0), &n).is_empty());
        n.requested.milli_cpu = 500;
        n.requested.memory = 1 << 30;
        n.pod_count = 2;
        assert_eq!(
            check(&s, &demand(600, 1), &n),
            vec![
                Reason::TooManyPods,
                Reason::Insufficient("cpu".into()),
                Reason::Insufficient("memory".into())
            ]
        );
        n.pod_count = 0;
        // A pod that requests nothing fits a full node.
        assert!(check(&s, &demand(0, 0), &n).is_empty());
        let mut gpu = demand(0, 0);
        gpu.requests.scalar.insert("example.com/gpu".into(), 1);
        assert_eq!(
            check(&s, &gpu, &n),
            vec![Reason::Insufficient("example.com/gpu".into())]
        );
    }

    #[test]
    fn cordoned_and_not_ready_nodes() {
        let s = spec(serde_json::json!({}));
        let mut n = node(1000, 10);
        if let Some(f) = n.facts.as_mut() {
            f.unschedulable = true;
            f.ready = false;
        }
        assert_eq!(check(&s, &demand(0, 0), &n), vec![Reason::Unschedulable]);
        let tolerant = spec(
            serde_json::json!({"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}),
        );
        assert_eq!(check(&tolerant, &demand(0, 0), &n), vec![Reason::NotReady]);
        let everything = spec(serde_json::json!({"tolerations": [{"operator": "Exists"}]}));
        assert!(check(&everything, &demand(0, 0), &n).is_empty());
    }

    #[test]
    fn taints_come_before_affinity_and_resources() {
        let mut n = node(100, 10);
        if let Some(f) = n.facts.as_mut() {
            f.taints = vec![Taint {
                key: "dedicated".into(),
                value: Some("gpu".into()),
                effect: "NoSchedule".into(),
                time_added: None,
            }];
        }
        let s = spec(serde_json::json!({"nodeSelector": {"zone": "b"}}));
        assert_eq!(
            check(&s, &demand(5000, 0), &n),
            vec![Reason::UntoleratedTaint {
                key: "dedicated".into(),
                value: "gpu".into()
            }]
        );
        let s = spec(
            serde_json::json!({"nodeSelector": {"zone": "b"}, "tolerations": [{"key": "dedicated", "value": "gpu"}]}),
        );
        assert_eq!(check(&s, &demand(5000, 0), &n), vec![Reason::NodeAffinity]);
    }

    #[test]
    fn host_port_conflict() {
        let s = spec(serde_json::json!({}));
        let mut n = node(1000, 10);
        let port = HostPort {
            ip: "0.0.0.0".into(),
            protocol: "TCP".into(),
            port: 8080,
        };
        n.host_ports.insert(port.clone(), 1);
        let mut d = demand(0, 0);
        d.host_ports = vec![HostPort {
            ip: "127.0.0.1".into(),
            ..port.clone()
        }];
        assert_eq!(check(&s, &d, &n), vec![Reason::HostPorts]);
        d.host_ports = vec![HostPort {
            protocol: "UDP".into(),
            ..port
        }];
        assert!(check(&s, &d, &n).is_empty());
    }

    #[test]
    fn reason_texts() {
        let taint = Reason::UntoleratedTaint {
            key: "key".into(),
            value: "value".into(),
        };
        assert_eq!(
            taint.to_string(),
            "node(s) had untolerated taint {key: value}"
        );
        assert_eq!(
            Reason::Insufficient("cpu".into()).to_string(),
            "Insufficient cpu"
        );
        assert_eq!(
            Reason::NodeAffinity.to_string(),
            "node(s) didn't match Pod's node affinity/selector"
        );
    }
}
