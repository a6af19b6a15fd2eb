//! Old map vs new map → only what changed, so a data plane can rewrite just
//! the affected service ports (and flush flows to backends that went away).

use std::collections::{BTreeMap, BTreeSet};

use super::{Endpoint, ServiceMap, ServicePort, ServicePortName};

/// The difference between two [`ServiceMap`]s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Everything must be (re)written: first sync, node change, or periodic resync.
    pub full: bool,
    /// Ports that are new or differ in any field (look them up in the new map).
    pub updated: BTreeSet<ServicePortName>,
    /// Ports that are gone, with their last state (to remove their rules/entries).
    pub removed: BTreeMap<ServicePortName, ServicePort>,
    /// Endpoints that received traffic before and no longer do, per port (old
    /// cluster ∪ external sets minus new ones); flows to them are stale.
    pub stale_endpoints: BTreeMap<ServicePortName, Vec<Endpoint>>,
    /// Ports that had no endpoints and now have some: flows cached while the
    /// port rejected traffic are stale (matters for UDP).
    pub newly_served: BTreeSet<ServicePortName>,
}

impl Changes {
    /// Changes that rewrite everything in `map`.
    pub fn full(map: &ServiceMap) -> Changes {
        Changes {
            full: true,
            updated: map.ports.keys().cloned().collect(),
            ..Changes::default()
        }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        !self.full && self.updated.is_empty() && self.removed.is_empty()
    }
}

fn receiving(p: &ServicePort) -> BTreeSet<(std::net::IpAddr, u16)> {
    p.cluster_endpoints
        .iter()
        .chain(&p.external_endpoints)
        .map(|e| (e.ip, e.port))
        .collect()
}

/// The changes that turn `old` into `new`. A different node identity makes the
/// change `full` (every endpoint's locality may have changed).
pub fn diff(old: &ServiceMap, new: &ServiceMap) -> Changes {
    let mut changes = Changes {
        full: old.node != new.node,
        ..Changes::default()
    };
    for (name, port) in &new.ports {
        match old.ports.get(name) {
            Some(prev) if prev == port => {}
            Some(prev) => {
                changes.updated.insert(name.clone());
                let now = receiving(port);
                let gone: Vec<Endpoint> = prev
                    .cluster_endpoints
                    .iter()
                    .chain(&prev.external_endpoints)
                    .filter(|e| !now.contains(&(e.ip, e.port)))
                    .cloned()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                if !gone.is_empty() {
                    changes.stale_endpoints.insert(name.clone(), gone);
                }
                if !prev.has_endpoints() && port.has_endpoints() {
                    changes.newly_served.insert(name.clone());
                }
            }
            None => {
                changes.updated.insert(name.clone());
                if port.has_endpoints() {
                    changes.newly_served.insert(name.clone());
                }
            }
        }
    }
    for (name, port) in &old.ports {
        if !new.ports.contains_key(name) {
            let gone: Vec<Endpoint> = port
                .cluster_endpoints
                .iter()
                .chain(&port.external_endpoints)
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            if !gone.is_empty() {
                changes.stale_endpoints.insert(name.clone(), gone);
            }
            changes.removed.insert(name.clone(), port.clone());
        }
    }
    if changes.full {
        changes.updated = new.ports.keys().cloned().collect();
    }
    changes
}
