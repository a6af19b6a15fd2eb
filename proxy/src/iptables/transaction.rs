//! One `iptables-restore --noflush` input for one address family.
//!
//! A full sync declares (and so flushes) the base chains and rewrites every
//! port. A partial sync leaves the base chains alone: it only edits the
//! changed ports' entries in them (`-D` the old rule, `-I`/`-A` the new one)
//! and rewrites the changed ports' own chains, so its input (and, with
//! nftables, the kernel work) grows with the change, not with the cluster.
//! Tables the transaction does not touch are left out of the input, which
//! spares the legacy backend a whole-table replace.

use std::fmt::Write;

use super::chains;
use super::rules::PortRules;

/// The two tables the proxy writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `nat`: service dispatch and DNAT.
    Nat,
    /// `filter`: REJECT for ports without endpoints.
    Filter,
}

/// One port's rule in a shared base chain (KUBE-SERVICES, KUBE-NODEPORTS,
/// KUBE-EXTERNAL-SERVICES); kept so a partial sync can delete it by its spec.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    /// Which table.
    pub table: Table,
    /// Which base chain.
    pub chain: &'static str,
    /// The rule after `-A <chain> `.
    pub spec: String,
}

/// Base chains of the nat table (declared, so flushed, on a full sync).
pub const NAT_BASE: [&str; 5] = [
    chains::SERVICES,
    chains::NODEPORTS,
    chains::POSTROUTING,
    chains::MARK_MASQ,
    chains::MARK_DROP,
];
/// Base chains of the filter table.
pub const FILTER_BASE: [&str; 4] = [
    chains::SERVICES,
    chains::EXTERNAL_SERVICES,
    chains::FORWARD,
    chains::FIREWALL,
];

/// One table's part of a restore transaction.
#[derive(Default)]
struct TableText {
    declared: Vec<String>,
    rules: Vec<String>,
    deleted: Vec<String>,
}

impl TableText {
    fn is_empty(&self) -> bool {
        self.declared.is_empty() && self.rules.is_empty() && self.deleted.is_empty()
    }
}

/// A restore transaction for one family.
#[derive(Default)]
pub struct Transaction {
    nat: TableText,
    filter: TableText,
    /// Rules of the base chains that belong to no port.
    base_rules: u64,
}

impl Transaction {
    /// An empty (partial) transaction: base chains are not touched.
    pub fn new() -> Transaction {
        Transaction::default()
    }

    /// A full transaction: declares the base chains and writes their fixed rules.
    pub fn with_base_chains() -> Transaction {
        let mut t = Transaction::default();
        t.nat.declared.extend(NAT_BASE.map(str::to_string));
        t.filter.declared.extend(FILTER_BASE.map(str::to_string));
        let m = chains::MASQ_MARK;
        let d = chains::DROP_MARK;
        t.nat.rules.extend([
            format!("-A {} -m mark ! --mark {m}/{m} -j RETURN", chains::POSTROUTING),
            // Clear the mark so a re-traversing packet is not masqueraded twice.
            format!("-A {} -j MARK --xor-mark {m}", chains::POSTROUTING),
            format!(
                "-A {} -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
                chains::POSTROUTING
            ),
            format!("-A {} -j MARK --or-mark {m}", chains::MARK_MASQ),
            format!("-A {} -j MARK --or-mark {d}", chains::MARK_DROP),
        ]);
        t.filter.rules.extend([
            format!("-A {} -m mark --mark {d}/{d} -j DROP", chains::FIREWALL),
            format!("-A {} -m mark --mark {m}/{m} -j ACCEPT", chains::FORWARD),
            format!(
                "-A {} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                chains::FORWARD
            ),
        ]);
        t.base_rules = (t.nat.rules.len() + t.filter.rules.len()) as u64;
        t
    }

    /// Closes a full transaction's KUBE-SERVICES: packets to node-local
    /// addresses go to the NodePorts (last, so ClusterIP / external IP rules win).
    pub fn finish_base(&mut self) {
        self.nat.rules.push(format!(
            "-A {} -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j {}",
            chains::SERVICES,
            chains::NODEPORTS
        ));
        self.base_rules += 1;
    }

    /// Rules in the base chains that belong to no port (full transactions).
    pub fn base_rule_count(&self) -> u64 {
        self.base_rules
    }

    fn table(&mut self, t: Table) -> &mut TableText {
        match t {
            Table::Nat => &mut self.nat,
            Table::Filter => &mut self.filter,
        }
    }

    /// (Re)writes a port's own chains: declared (flushed), then filled.
    pub fn write_port(&mut self, r: &PortRules) {
        self.nat.declared.extend(r.chains.iter().cloned());
        self.nat.rules.extend(r.body.iter().cloned());
    }

    /// Appends entries to their base chains (full transactions, in order).
    pub fn append_entries(&mut self, entries: &[Entry]) {
        for e in entries {
            let line = format!("-A {} {}", e.chain, e.spec);
            self.table(e.table).rules.push(line);
        }
    }

    /// Adds one entry to a base chain that is not rewritten. nat
    /// KUBE-SERVICES entries go first, ahead of the closing NodePort jump.
    pub fn add_entry(&mut self, e: &Entry) {
        let line = if e.table == Table::Nat && e.chain == chains::SERVICES {
            format!("-I {} 1 {}", e.chain, e.spec)
        } else {
            format!("-A {} {}", e.chain, e.spec)
        };
        self.table(e.table).rules.push(line);
    }

    /// Inserts `spec` at the top of `chain` (a built-in chain's jump into ours).
    pub fn insert_first(&mut self, table: Table, chain: &str, spec: &str) {
        let line = format!("-I {chain} 1 {spec}");
        self.table(table).rules.push(line);
    }

    /// Deletes one entry from a base chain by its spec.
    pub fn delete_entry(&mut self, e: &Entry) {
        let line = format!("-D {} {}", e.chain, e.spec);
        self.table(e.table).rules.push(line);
    }

    /// Flushes `chain` of the nat table (creating it when missing).
    pub fn flush_nat_chain(&mut self, chain: String) {
        self.nat.declared.push(chain);
    }

    /// Flushes and deletes `chain` of the nat table.
    pub fn delete_nat_chain(&mut self, chain: String) {
        self.nat.deleted.push(chain);
    }

    /// Flushes and deletes `chain` of the filter table.
    pub fn delete_filter_chain(&mut self, chain: String) {
        self.filter.deleted.push(chain);
    }

    /// Rule lines (`-A`, `-I`, `-D`) this transaction sends.
    pub fn rule_count(&self) -> u64 {
        (self.nat.rules.len() + self.filter.rules.len()) as u64
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.nat.is_empty() && self.filter.is_empty()
    }

    /// The `iptables-restore` input (tables with nothing to do are left out).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (name, t) in [("nat", &self.nat), ("filter", &self.filter)] {
            if t.is_empty() {
                continue;
            }
            let _ = writeln!(out, "*{name}");
            // Sorted: libiptc (legacy) keeps chains in a sorted list, and
            // creating them in order roughly halves a large restore's time.
            let mut chains: Vec<&String> = t.declared.iter().chain(&t.deleted).collect();
            chains.sort_unstable();
            chains.dedup();
            for c in chains {
                let _ = writeln!(out, ":{c} - [0:0]");
            }
            for r in &t.rules {
                let _ = writeln!(out, "{r}");
            }
            for c in &t.deleted {
                let _ = writeln!(out, "-X {c}");
            }
            let _ = writeln!(out, "COMMIT");
        }
        out
    }
}
