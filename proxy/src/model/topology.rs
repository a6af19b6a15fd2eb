//! Endpoint choice, as upstream kube-proxy's `CategorizeEndpoints`: which
//! endpoints of a port receive cluster traffic and which receive external
//! traffic on this node.
//!
//! - Cluster endpoints are the ready ones (narrowed to this zone when the
//!   service asks for PreferClose and every ready endpoint carries zone hints
//!   that include this node's zone); with none ready, the serving+terminating
//!   ones, so connections still drain during a rolling update.
//! - Local endpoints are this node's ready ones; with none ready, this node's
//!   serving+terminating ones.
//! - A Local policy uses the local set, Cluster the cluster set.

use super::{Endpoint, NodeInfo, TrafficPolicy};

/// The policies of a port that decide its endpoint sets.
pub(super) struct Policies {
    pub internal: TrafficPolicy,
    pub external: TrafficPolicy,
    pub prefer_close: bool,
}

/// The endpoint sets of one port on one node.
pub(super) struct Chosen {
    pub cluster: Vec<Endpoint>,
    pub external: Vec<Endpoint>,
    pub local_ready: usize,
}

/// Chooses the endpoints of a port for `node`.
pub(super) fn choose(endpoints: &[Endpoint], policies: &Policies, node: &NodeInfo) -> Chosen {
    let zone_filter = use_zone_hints(endpoints, policies, node);
    let mut cluster: Vec<Endpoint> = endpoints
        .iter()
        .filter(|e| e.ready)
        .filter(|e| match &zone_filter {
            Some(zone) => e.zone_hints.iter().any(|z| z == zone),
            None => true,
        })
        .cloned()
        .collect();
    if cluster.is_empty() {
        cluster = endpoints
            .iter()
            .filter(|e| e.serving && e.terminating)
            .cloned()
            .collect();
    }
    let mut local: Vec<Endpoint> = endpoints
        .iter()
        .filter(|e| e.is_local && e.ready)
        .cloned()
        .collect();
    let local_ready = local.len();
    if local.is_empty() {
        local = endpoints
            .iter()
            .filter(|e| e.is_local && e.serving && e.terminating)
            .cloned()
            .collect();
    }
    let pick = |policy| match policy {
        TrafficPolicy::Local => local.clone(),
        TrafficPolicy::Cluster => cluster.clone(),
    };
    Chosen {
        cluster: pick(policies.internal),
        external: pick(policies.external),
        local_ready,
    }
}

/// The zone to narrow cluster endpoints to, when topology hints apply.
///
/// As upstream: only with PreferClose, a known node zone, every ready endpoint
/// hinted (a half-hinted slice means the controller is mid-update), and at
/// least one endpoint hinted for this zone (else the zone would be black-holed).
fn use_zone_hints(endpoints: &[Endpoint], policies: &Policies, node: &NodeInfo) -> Option<String> {
    if !policies.prefer_close {
        return None;
    }
    let zone = node.zone.as_ref()?;
    let mut ready = endpoints.iter().filter(|e| e.ready).peekable();
    ready.peek()?;
    let mut any_for_zone = false;
    for e in ready {
        if e.zone_hints.is_empty() {
            return None;
        }
        any_for_zone |= e.zone_hints.iter().any(|z| z == zone);
    }
    any_for_zone.then(|| zone.clone())
}
