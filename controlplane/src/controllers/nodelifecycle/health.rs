//! Node health decisions of the node lifecycle controller: when a node
//! counts as silent (no Lease renewal and no status heartbeat seen for the
//! grace period), what its conditions become then, which taints its
//! conditions call for, and how zone-wide disruption holds back NoExecute
//! taints (upstream: a zone whose nodes are all down is more likely cut off
//! from the control plane than dead, so its pods are not evicted). Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::eviction::NO_EXECUTE;

/// Taint of a node whose Ready condition is False.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Taint of a node whose Ready condition is Unknown.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const NO_SCHEDULE: &str = "NoSchedule";
/// Conditions (status True) that call for a NoSchedule taint.
const CONDITION_TAINTS: [(&str, &str); 4] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
    (
        "NetworkUnavailable",
        "node.kubernetes.io/network-unavailable",
    ),
];
const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// Conditions the kubelet owns; all turn Unknown when it goes silent.
const KUBELET_CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];
/// Zones up to this size stop NoExecute tainting in partial disruption (upstream's default).
pub const LARGE_CLUSTER_THRESHOLD: usize = 50;
/// Share of not-ready nodes that makes a zone partially disrupted.
const UNHEALTHY_ZONE_THRESHOLD: f64 = 0.55;

/// Upstream's label pair that defines a zone.
const REGION_LABEL: &str = "topology.kubernetes.io/region";
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// What proves a node alive, and when it last changed as seen here. Times
/// are this process's clock, so clock skew between node and server cannot
/// make a node look dead or alive.
#[derive(Debug, Clone)]
pub struct Probe {
    /// When a renewal or heartbeat was last seen.
    pub last_seen: Instant,
    lease_renew: Option<Timestamp>,
    heartbeat: Option<Timestamp>,
}

impl Probe {
    /// First sight of a node: it gets a full grace period from now.
    pub fn new(
        now: Instant,
        lease_renew: Option<Timestamp>,
        heartbeat: Option<Timestamp>,
    ) -> Probe {
        Probe {
            last_seen: now,
            lease_renew,
            heartbeat,
        }
    }

    /// Records the node's current Lease renewTime and Ready heartbeat; a
    /// change of either proves it alive at `now`.
    pub fn observe(
        &mut self,
        now: Instant,
        lease_renew: Option<Timestamp>,
        heartbeat: Option<Timestamp>,
    ) {
        if lease_renew != self.lease_renew || heartbeat != self.heartbeat {
            self.last_seen = now;
            self.lease_renew = lease_renew;
            self.heartbeat = heartbeat;
        }
    }

    /// True when nothing was seen for longer than `grace`.
    pub fn silent(&self, now: Instant, grace: Duration) -> bool {
        now.saturating_duration_since(self.last_seen) > grace
    }
}

/// A condition of the node.
pub fn condition<'a>(node: &'a Node, kind: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
}

/// Status of the Ready condition (`True`, `False`, `Unknown`), if any.
pub fn ready_status(node: &Node) -> Option<&str> {
    condition(node, "Ready").map(|c| c.status.as_str())
}

/// Turns the kubelet's conditions Unknown, as upstream does for a silent
/// node; returns whether anything changed.
pub fn mark_unknown(status: &mut NodeStatus, now: Timestamp, created: Option<Time>) -> bool {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let mut changed = false;
    for kind in KUBELET_CONDITIONS {
        match conditions.iter_mut().find(|c| c.type_ == kind) {
            Some(c) if c.status == "Unknown" => {}
            Some(c) => {
                c.status = "Unknown".to_string();
                c.reason = Some("NodeStatusUnknown".to_string());
                c.message = Some("Kubelet stopped posting node status.".to_string());
                c.last_transition_time = Some(Time(now));
                changed = true;
            }
            None => {
                conditions.push(NodeCondition {
                    type_: kind.to_string(),
                    status: "Unknown".to_string(),
                    reason: Some("NodeStatusNeverUpdated".to_string()),
                    message: Some("Kubelet never posted node status.".to_string()),
                    last_heartbeat_time: created.clone(),
                    last_transition_time: Some(Time(now)),
                });
                changed = true;
            }
        }
    }
    changed
}

/// The disruption zone of a node (region and zone labels).
pub fn zone_of(node: &Node) -> String {
    let labels = node.metadata.labels.as_ref();
    let get = |k: &str| {
        labels
            .and_then(|l| l.get(k))
            .map(String::as_str)
            .unwrap_or_default()
    };
    format!("{}:\u{0}:{}", get(REGION_LABEL), get(ZONE_LABEL))
}

/// Health of a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneState {
    /// Most nodes are Ready.
    Normal,
    /// More than two nodes and at least 55% of them are not Ready.
    PartialDisruption,
    /// No node is Ready.
    FullDisruption,
}

/// Upstream's ComputeZoneState.
pub fn zone_state(ready: usize, not_ready: usize) -> ZoneState {
    let total = ready + not_ready;
    if ready == 0 && not_ready > 0 {
        ZoneState::FullDisruption
    } else if not_ready > 2 && not_ready as f64 / total.max(1) as f64 >= UNHEALTHY_ZONE_THRESHOLD {
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    }
}

/// How the NoExecute taints of a zone's nodes may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoExecutePolicy {
    /// Follow the Ready condition.
    Apply,
    /// Keep (or swap) taints already there, add none.
    KeepExisting,
    /// Every zone is fully disrupted: remove them all, evict nobody.
    RemoveAll,
}

/// States of all zones from the nodes' Ready conditions, with zone sizes.
pub fn zone_states<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
) -> BTreeMap<String, (ZoneState, usize)> {
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for node in nodes {
        let entry = counts.entry(zone_of(node)).or_default();
        if ready_status(node) == Some("True") {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }
    counts
        .into_iter()
        .map(|(zone, (ready, not_ready))| (zone, (zone_state(ready, not_ready), ready + not_ready)))
        .collect()
}

/// The NoExecute policy for nodes in `zone`.
pub fn no_execute_policy(
    states: &BTreeMap<String, (ZoneState, usize)>,
    zone: &str,
) -> NoExecutePolicy {
    if !states.is_empty()
        && states
            .values()
            .all(|(s, _)| *s == ZoneState::FullDisruption)
    {
        return NoExecutePolicy::RemoveAll;
    }
    match states.get(zone) {
        Some((ZoneState::PartialDisruption, size)) if *size <= LARGE_CLUSTER_THRESHOLD => {
            NoExecutePolicy::KeepExisting
        }
        _ => NoExecutePolicy::Apply,
    }
}

fn is_managed(taint: &Taint) -> bool {
    let no_schedule_keys = [TAINT_NOT_READY, TAINT_UNREACHABLE, TAINT_UNSCHEDULABLE];
    match taint.effect.as_str() {
        NO_SCHEDULE => {
            no_schedule_keys.contains(&taint.key.as_str())
                || CONDITION_TAINTS.iter().any(|(_, k)| *k == taint.key)
        }
        NO_EXECUTE => taint.key == TAINT_NOT_READY || taint.key == TAINT_UNREACHABLE,
        _ => false,
    }
}

/// The node's taints as its conditions and `policy` call for, or `None`
/// when they are already right. Taints of others are kept as they are.
pub fn reconcile_taints(
    node: &Node,
    policy: NoExecutePolicy,
    now: Timestamp,
) -> Option<Vec<Taint>> {
    let current: &[Taint] = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let readiness_key = match ready_status(node) {
        Some("False") => Some(TAINT_NOT_READY),
        Some("Unknown") => Some(TAINT_UNREACHABLE),
        _ => None,
    };
    let mut no_schedule: BTreeSet<&str> = readiness_key.into_iter().collect();
    for (kind, key) in CONDITION_TAINTS {
        if condition(node, kind).is_some_and(|c| c.status == "True") {
            no_schedule.insert(key);
        }
    }
    if node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
    {
        no_schedule.insert(TAINT_UNSCHEDULABLE);
    }
    let has_no_execute = current
        .iter()
        .any(|t| t.effect == NO_EXECUTE && is_managed(t));
    let no_execute = match policy {
        NoExecutePolicy::Apply => readiness_key,
        NoExecutePolicy::KeepExisting => readiness_key.filter(|_| has_no_execute),
        NoExecutePolicy::RemoveAll => None,
    };

    let mut out: Vec<Taint> = Vec::new();
    for taint in current {
        let wanted = match taint.effect.as_str() {
            _ if !is_managed(taint) => true,
            NO_SCHEDULE => no_schedule.contains(taint.key.as_str()),
            _ => no_execute == Some(taint.key.as_str()),
        };
        let duplicate = out
            .iter()
            .any(|t| t.key == taint.key && t.effect == taint.effect);
        if wanted && !duplicate {
            out.push(taint.clone());
        }
    }
    let missing = |out: &[Taint], key: &str, effect: &str| {
        !out.iter().any(|t| t.key == key && t.effect == effect)
    };
    for key in no_schedule {
        if missing(&out, key, NO_SCHEDULE) {
            out.push(Taint {
                key: key.to_string(),
                effect: NO_SCHEDULE.to_string(),
                ..Default::default()
            });
        }
    }
    if let Some(key) = no_execute {
        if missing(&out, key, NO_EXECUTE) {
            out.push(Taint {
                key: key.to_string(),
                effect: NO_EXECUTE.to_string(),
                time_added: Some(Time(now)),
                value: None,
            });
        }
    }
    (out.as_slice() != current).then_some(out)
}

#[cfg(test)]
mod tests;
