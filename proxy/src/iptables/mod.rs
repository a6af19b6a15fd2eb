//! The iptables data plane: kube-proxy's chain layout ([`rules`]) applied with
//! `iptables-restore --noflush` in the proxy's namespace ([`exec`]), partial
//! syncs that rewrite only changed ports' chains, and stale UDP conntrack
//! entries deleted after each sync ([`crate::conntrack`]).

pub mod chains;
mod exec;
pub mod rules;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use skiff_cni::Netns;

pub use exec::ExecError;
pub use rules::{Family, RuleOptions, Transaction};

use crate::conntrack::{Conntrack, ConntrackError, Flow};
use crate::dataplane::{Dataplane, DataplaneError, SyncStats};
use crate::model::{Changes, Protocol, ServiceMap, ServicePort, ServicePortName};
use exec::Tools;

/// Errors of the iptables data plane.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    /// An iptables tool failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// Conntrack cleanup failed.
    #[error(transparent)]
    Conntrack(#[from] ConntrackError),
}

/// Jumps from the built-in chains into ours: (table, chain, rule).
const JUMPS: [(&str, &str, &[&str]); 10] = [
    (
        "nat",
        "PREROUTING",
        &[
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            chains::SERVICES,
        ],
    ),
    (
        "nat",
        "OUTPUT",
        &[
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            chains::SERVICES,
        ],
    ),
    (
        "nat",
        "POSTROUTING",
        &[
            "-m",
            "comment",
            "--comment",
            "kubernetes postrouting rules",
            "-j",
            chains::POSTROUTING,
        ],
    ),
    (
        "filter",
        "INPUT",
        &[
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-j",
            chains::EXTERNAL_SERVICES,
        ],
    ),
    (
        "filter",
        "FORWARD",
        &[
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-j",
            chains::EXTERNAL_SERVICES,
        ],
    ),
    (
        "filter",
        "FORWARD",
        &[
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-j",
            chains::SERVICES,
        ],
    ),
    (
        "filter",
        "OUTPUT",
        &[
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-j",
            chains::SERVICES,
        ],
    ),
    ("filter", "FORWARD", &["-j", chains::FORWARD]),
    ("filter", "INPUT", &["-j", chains::FIREWALL]),
    ("filter", "FORWARD", &["-j", chains::FIREWALL]),
];

/// Per-family record of what is installed.
#[derive(Default)]
struct Installed {
    /// Each port's own chains.
    chains: BTreeMap<ServicePortName, BTreeSet<String>>,
    /// Rules in each port's own chains.
    rules: BTreeMap<ServicePortName, u64>,
}

/// kube-proxy-compatible iptables rules in one network namespace.
pub struct Iptables {
    netns: Netns,
    options: RuleOptions,
    families: Vec<Family>,
    installed: BTreeMap<u8, Installed>,
    conntrack: Option<Conntrack>,
}

fn family_key(f: Family) -> u8 {
    match f {
        Family::V4 => 4,
        Family::V6 => 6,
    }
}

impl Iptables {
    /// A backend for `netns` (the proxy's own namespace: [`Netns::current`]).
    pub fn new(netns: Netns, options: RuleOptions, families: Vec<Family>) -> Iptables {
        Iptables {
            netns,
            options,
            families,
            installed: BTreeMap::new(),
            conntrack: None,
        }
    }

    fn sync_family(
        &mut self,
        family: Family,
        map: &ServiceMap,
        changes: &Changes,
    ) -> Result<SyncStats, IptablesError> {
        let tools = Tools {
            netns: &self.netns,
            family,
        };
        let full = changes.full || !self.installed.contains_key(&family_key(family));
        let old = self
            .installed
            .remove(&family_key(family))
            .unwrap_or_default();
        let mut tx = Transaction::new();
        let mut now = Installed::default();
        for (name, port) in &map.ports {
            let write = full || changes.updated.contains(name) || !old.chains.contains_key(name);
            let mark = tx.mark();
            let owned = tx.add_port(port, family, &self.options, write);
            if write {
                let rules = tx.rules_in(mark, &owned);
                now.rules.insert(name.clone(), rules);
                now.chains.insert(name.clone(), owned);
            } else {
                now.chains.insert(
                    name.clone(),
                    old.chains.get(name).cloned().unwrap_or_default(),
                );
                now.rules.insert(
                    name.clone(),
                    old.rules.get(name).copied().unwrap_or_default(),
                );
            }
        }
        tx.finish();
        let wanted: BTreeSet<&String> = now.chains.values().flatten().collect();
        let candidates: BTreeSet<String> = if full {
            existing_chains(&tools.save("nat")?)
        } else {
            changes
                .updated
                .iter()
                .chain(changes.removed.keys())
                .filter_map(|n| old.chains.get(n))
                .flatten()
                .cloned()
                .collect()
        };
        for c in candidates {
            if !wanted.contains(&c) {
                tx.delete_nat_chain(c);
            }
        }
        let written = tx.rule_count();
        let base = tx.base_rule_count();
        tools.restore(&tx.text())?;
        if full {
            // Inserted at the top in reverse, so they end up in JUMPS order.
            for (table, chain, rule) in JUMPS.iter().rev() {
                tools.ensure_jump(table, chain, rule)?;
            }
        }
        let rules = base + now.rules.values().sum::<u64>();
        self.installed.insert(family_key(family), now);
        Ok(SyncStats { rules, written })
    }

    /// Deletes UDP conntrack entries that would keep clients on a backend that
    /// no longer receives the port's traffic, or on a port that used to reject.
    fn clean_conntrack(
        &mut self,
        map: &ServiceMap,
        changes: &Changes,
    ) -> Result<usize, IptablesError> {
        let port_of = |n: &ServicePortName| -> Option<ServicePort> {
            map.ports.get(n).or_else(|| changes.removed.get(n)).cloned()
        };
        let mut stale_backends: Vec<(ServicePort, IpAddr)> = Vec::new();
        for (name, eps) in &changes.stale_endpoints {
            if name.protocol != Protocol::Udp {
                continue;
            }
            if let Some(p) = port_of(name) {
                stale_backends.extend(eps.iter().map(|e| (p.clone(), e.ip)));
            }
        }
        let newly: Vec<ServicePort> = changes
            .newly_served
            .iter()
            .filter(|n| n.protocol == Protocol::Udp)
            .filter_map(port_of)
            .collect();
        if stale_backends.is_empty() && newly.is_empty() {
            return Ok(0);
        }
        let to_service = |p: &ServicePort, f: &Flow| {
            (f.orig.dport == p.port && p.service_ips().any(|ip| ip == f.orig.dst))
                || p.node_port == Some(f.orig.dport)
        };
        let stale = |f: &Flow| {
            stale_backends
                .iter()
                .any(|(p, ip)| f.reply.src == *ip && to_service(p, f))
                || newly
                    .iter()
                    .any(|p| to_service(p, f) && f.reply.src == f.orig.dst)
        };
        if self.conntrack.is_none() {
            self.conntrack = Some(Conntrack::open(&self.netns)?);
        }
        let ct = self.conntrack.as_mut().expect("opened above");
        match ct.delete_matching(Protocol::Udp.number(), stale) {
            Ok(n) => Ok(n),
            Err(e) => {
                // A broken socket is reopened on the next sync.
                self.conntrack = None;
                Err(e.into())
            }
        }
    }

    fn remove_all(&mut self) -> Result<(), IptablesError> {
        for family in self.families.clone() {
            let tools = Tools {
                netns: &self.netns,
                family,
            };
            for (table, chain, rule) in JUMPS {
                tools.remove_jump(table, chain, rule)?;
            }
            let mut tx = Transaction::default();
            for c in existing_chains(&tools.save("nat")?) {
                tx.delete_nat_chain(c);
            }
            for c in [
                chains::SERVICES,
                chains::NODEPORTS,
                chains::POSTROUTING,
                chains::MARK_MASQ,
                chains::MARK_DROP,
            ] {
                tx.delete_nat_chain(c.to_string());
            }
            for c in [
                chains::SERVICES,
                chains::EXTERNAL_SERVICES,
                chains::FORWARD,
                chains::FIREWALL,
            ] {
                tx.delete_filter_chain(c.to_string());
            }
            tools.restore(&tx.text())?;
        }
        self.installed.clear();
        Ok(())
    }
}

/// Per-port chains present in `iptables-save -t nat` output.
fn existing_chains(save: &str) -> BTreeSet<String> {
    save.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| chains::OWNED_PREFIXES.iter().any(|p| c.starts_with(p)))
        .map(str::to_string)
        .collect()
}

impl Dataplane for Iptables {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn sync(&mut self, map: &ServiceMap, changes: &Changes) -> Result<SyncStats, DataplaneError> {
        let mut total = SyncStats::default();
        for family in self.families.clone() {
            let s = self
                .sync_family(family, map, changes)
                .map_err(|e| DataplaneError::new("iptables", e))?;
            total.rules += s.rules;
            total.written += s.written;
        }
        let cleaned = self
            .clean_conntrack(map, changes)
            .map_err(|e| DataplaneError::new("iptables", e))?;
        if cleaned > 0 {
            tracing::info!(entries = cleaned, "deleted stale UDP conntrack entries");
        }
        Ok(total)
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        self.remove_all()
            .map_err(|e| DataplaneError::new("iptables", e))
    }
}

#[cfg(test)]
mod tests;
