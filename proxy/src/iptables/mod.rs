//! The iptables data plane: kube-proxy's chain layout ([`rules`]) applied with
//! `iptables-restore --noflush` in the proxy's namespace ([`exec`]) by the
//! implementation [`backend`] picks (legacy or nft). A full sync rewrites the
//! base chains and every port; a partial sync sends only the changed ports'
//! own chains and `-D`/`-I` edits of their entries in the base chains
//! ([`transaction`]), so its input does not grow with the cluster. Stale UDP
//! conntrack entries are deleted after each sync ([`crate::conntrack`]).

pub mod backend;
pub mod chains;
mod exec;
pub mod rules;
pub mod transaction;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use skiff_cni::Netns;

pub use backend::{Backend, BackendChoice};
pub use exec::ExecError;
pub use rules::{render_port, Family, PortRules, RuleOptions};
pub use transaction::{Entry, Table, Transaction};
use transaction::{FILTER_BASE, NAT_BASE};

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

/// nft: rules per restore transaction in a full sync. iptables-nft-restore
/// (1.8.9) takes time growing with the square of one transaction's size with
/// `--noflush`: 129k lines took 23 s at once and 5 s as ten transactions.
const NFT_CHUNK_RULES: u64 = 5000;

/// Per-family record of what is installed: every port's rules as rendered,
/// so a partial sync can delete exactly the entries that changed.
#[derive(Default)]
struct Installed {
    ports: BTreeMap<ServicePortName, PortRules>,
    /// Base-chain rules that belong to no port.
    base_rules: u64,
}

impl Installed {
    fn rule_count(&self) -> u64 {
        self.base_rules + self.ports.values().map(PortRules::rule_count).sum::<u64>()
    }
}

/// What one family's sync sent.
#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    rules: u64,
    written: u64,
    bytes: u64,
}

/// kube-proxy-compatible iptables rules in one network namespace.
pub struct Iptables {
    netns: Netns,
    options: RuleOptions,
    families: Vec<Family>,
    backend: Backend,
    installed: BTreeMap<u8, Installed>,
    conntrack: Option<Conntrack>,
    last_input_bytes: u64,
}

fn family_key(f: Family) -> u8 {
    match f {
        Family::V4 => 4,
        Family::V6 => 6,
    }
}

/// A rule's arguments as `iptables-save` prints them (quoted when spaced).
fn spec(rule: &[&str]) -> String {
    rule.iter()
        .map(|a| {
            if a.contains(' ') {
                format!("\"{a}\"")
            } else {
                (*a).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Adds the jumps from the built-in chains that `save` (both tables'
/// `iptables-save` output) lacks, at the top, in [`JUMPS`] order.
fn add_missing_jumps(tx: &mut Transaction, save: &str) {
    let present: BTreeSet<&str> = save.lines().collect();
    // Inserted at the top in reverse, so they end up in JUMPS order.
    for (table, chain, rule) in JUMPS.iter().rev() {
        let spec = spec(rule);
        if !present.contains(format!("-A {chain} {spec}").as_str()) {
            let table = if *table == "nat" {
                Table::Nat
            } else {
                Table::Filter
            };
            tx.insert_first(table, chain, &spec);
        }
    }
}

impl Iptables {
    /// A backend for `netns` (the proxy's own namespace: [`Netns::current`])
    /// programmed with the `backend` implementation.
    pub fn new(
        netns: Netns,
        options: RuleOptions,
        families: Vec<Family>,
        backend: Backend,
    ) -> Iptables {
        Iptables {
            netns,
            options,
            families,
            backend,
            installed: BTreeMap::new(),
            conntrack: None,
            last_input_bytes: 0,
        }
    }

    /// The implementation in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Bytes of `iptables-restore` input the last sync sent (all families).
    pub fn last_input_bytes(&self) -> u64 {
        self.last_input_bytes
    }

    fn tools(&self, family: Family) -> Tools<'_> {
        Tools {
            netns: &self.netns,
            family,
            backend: self.backend,
        }
    }

    fn sync_family(
        &mut self,
        family: Family,
        map: &ServiceMap,
        changes: &Changes,
    ) -> Result<Sent, IptablesError> {
        let key = family_key(family);
        let (installed, txs) = match self.installed.remove(&key) {
            Some(old) if !changes.full => {
                let (installed, tx) = self.partial(family, map, changes, old);
                (installed, vec![tx])
            }
            _ => {
                let tools = self.tools(family);
                // What exists now: chains left by an earlier run (or another
                // proxy) go, and jumps someone removed come back.
                let nat = tools.save("nat")?;
                let filter = tools.save("filter")?;
                let (installed, mut txs) = self.full(family, map, &nat);
                if let Some(last) = txs.last_mut() {
                    add_missing_jumps(last, &(nat + &filter));
                }
                (installed, txs)
            }
        };
        let mut sent = Sent {
            rules: installed.rule_count(),
            ..Sent::default()
        };
        for tx in txs.iter().filter(|t| !t.is_empty()) {
            let text = tx.text();
            self.tools(family).restore(&text)?;
            sent.written += tx.rule_count();
            sent.bytes += text.len() as u64;
        }
        self.installed.insert(key, installed);
        Ok(sent)
    }

    /// Everything: base chains, every port, and the deletion of chains we
    /// own that nothing wants any more (`existing`: `iptables-save -t nat`).
    ///
    /// Legacy gets one transaction. nft gets the ports' own chains in chunks
    /// of about [`NFT_CHUNK_RULES`] rules (each port's chains within one
    /// chunk, so every port switches atomically), then one transaction that
    /// rewrites the base chains, which only then point at new chains, and
    /// deletes the stale ones.
    fn full(
        &self,
        family: Family,
        map: &ServiceMap,
        existing: &str,
    ) -> (Installed, Vec<Transaction>) {
        let chunked = self.backend == Backend::Nft;
        let mut txs = Vec::new();
        let has = |chain: &str| {
            existing
                .lines()
                .any(|l| l.starts_with(&format!(":{chain} ")))
        };
        if chunked && !(has(chains::MARK_MASQ) && has(chains::MARK_DROP)) {
            // The chunks jump to the mark chains: make them first.
            let mut base = Transaction::with_base_chains();
            base.finish_base();
            txs.push(base);
        }
        let mut last = Transaction::with_base_chains();
        let mut chunk = Transaction::new();
        let mut now = Installed::default();
        for (name, port) in &map.ports {
            let r = render_port(port, family, &self.options);
            if r == PortRules::default() {
                continue;
            }
            if chunked {
                chunk.write_port(&r);
                if chunk.rule_count() >= NFT_CHUNK_RULES {
                    txs.push(std::mem::take(&mut chunk));
                }
            } else {
                last.write_port(&r);
            }
            last.append_entries(&r.entries);
            now.ports.insert(name.clone(), r);
        }
        if !chunk.is_empty() {
            txs.push(chunk);
        }
        last.finish_base();
        now.base_rules = last.base_rule_count();
        let wanted: BTreeSet<&String> = now.ports.values().flat_map(|r| &r.chains).collect();
        let stale: Vec<String> = existing_chains(existing)
            .into_iter()
            .filter(|c| !wanted.contains(c))
            .collect();
        if chunked {
            // Unreferenced once the base chains are rewritten.
            txs.push(last);
            txs.extend(self.nat_chain_removal(stale));
        } else {
            for c in stale {
                last.delete_nat_chain(c);
            }
            txs.push(last);
        }
        (now, txs)
    }

    /// Transactions that flush and delete `doomed` nat chains, which nothing
    /// outside them references: one for legacy; for nft, chunks that flush
    /// them all (so none references another any more), then chunks that
    /// delete them.
    fn nat_chain_removal(&self, doomed: Vec<String>) -> Vec<Transaction> {
        if self.backend != Backend::Nft {
            let mut tx = Transaction::new();
            for c in doomed {
                tx.delete_nat_chain(c);
            }
            return vec![tx];
        }
        let chunk = usize::try_from(NFT_CHUNK_RULES).unwrap_or(usize::MAX);
        let mut txs = Vec::new();
        for part in doomed.chunks(chunk) {
            let mut tx = Transaction::new();
            part.iter().for_each(|c| tx.flush_nat_chain(c.clone()));
            txs.push(tx);
        }
        for part in doomed.chunks(chunk) {
            let mut tx = Transaction::new();
            part.iter().for_each(|c| tx.delete_nat_chain(c.clone()));
            txs.push(tx);
        }
        txs
    }

    /// Only the changed ports: their own chains rewritten, their base-chain
    /// entries edited one by one; nothing else is sent.
    fn partial(
        &self,
        family: Family,
        map: &ServiceMap,
        changes: &Changes,
        mut now: Installed,
    ) -> (Installed, Transaction) {
        let mut tx = Transaction::new();
        let mut adds = Vec::new();
        let touched = changes.updated.iter().chain(changes.removed.keys());
        for name in touched {
            let new = map
                .ports
                .get(name)
                .map(|p| render_port(p, family, &self.options))
                .unwrap_or_default();
            let old = now.ports.remove(name).unwrap_or_default();
            if new == old {
                if new != PortRules::default() {
                    now.ports.insert(name.clone(), new);
                }
                continue;
            }
            let kept: BTreeSet<&Entry> = new.entries.iter().collect();
            let before: BTreeSet<&Entry> = old.entries.iter().collect();
            // Deletions first, so a replaced entry is never there twice.
            for e in old.entries.iter().filter(|e| !kept.contains(e)) {
                tx.delete_entry(e);
            }
            adds.extend(new.entries.iter().filter(|e| !before.contains(e)).cloned());
            if new.body != old.body || new.chains != old.chains {
                tx.write_port(&new);
            }
            for c in old.chains.difference(&new.chains) {
                tx.delete_nat_chain(c.clone());
            }
            if new != PortRules::default() {
                now.ports.insert(name.clone(), new);
            }
        }
        for e in &adds {
            tx.add_entry(e);
        }
        (now, tx)
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

    /// Removes every chain and jump of this proxy in the namespace.
    pub(crate) fn remove_all(&mut self) -> Result<(), IptablesError> {
        for family in self.families.clone() {
            let tools = self.tools(family);
            for (table, chain, rule) in JUMPS {
                tools.remove_jump(table, chain, rule)?;
            }
            // Base chains flushed first: then no rule outside the per-port
            // chains points at them, and they can go (in chunks for nft).
            let mut txs = vec![Transaction::new()];
            for c in NAT_BASE {
                txs[0].flush_nat_chain(c.to_string());
            }
            txs.extend(
                self.nat_chain_removal(existing_chains(&tools.save("nat")?).into_iter().collect()),
            );
            let mut last = Transaction::new();
            for c in NAT_BASE {
                last.delete_nat_chain(c.to_string());
            }
            for c in FILTER_BASE {
                last.delete_filter_chain(c.to_string());
            }
            txs.push(last);
            for tx in txs.iter().filter(|t| !t.is_empty()) {
                tools.restore(&tx.text())?;
            }
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
        let mut bytes = 0;
        for family in self.families.clone() {
            let s = self
                .sync_family(family, map, changes)
                .map_err(|e| DataplaneError::new("iptables", e))?;
            total.rules += s.rules;
            total.written += s.written;
            bytes += s.bytes;
        }
        self.last_input_bytes = bytes;
        tracing::debug!(
            backend = self.backend.as_str(),
            full = changes.full,
            rules = total.rules,
            written = total.written,
            bytes,
            "iptables-restore input sent"
        );
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
