//! Rendering the service map as `iptables-restore --noflush` input, one
//! address family at a time, in kube-proxy's chain layout:
//!
//! ```text
//! nat    PREROUTING/OUTPUT → KUBE-SERVICES ─ ClusterIP ──────────────→ KUBE-SVC-* ─┐
//!                                        ├─ externalIP / LB IP ─(KUBE-FW-*)→ KUBE-EXT-* → KUBE-SVC-* | KUBE-SVL-*
//!                                        └─ dst LOCAL → KUBE-NODEPORTS → KUBE-EXT-*
//!        KUBE-SVC-* ─ recent (affinity) / statistic random ─→ KUBE-SEP-* (DNAT, hairpin mark)
//!        POSTROUTING → KUBE-POSTROUTING (MASQUERADE what carries the mark)
//! filter KUBE-SERVICES / KUBE-EXTERNAL-SERVICES: REJECT ports without endpoints
//! ```
//!
//! The base chains are rewritten on every sync (they list every port); a
//! port's own chains only when it changed (or on a full sync). Chains that
//! are no longer wanted are flushed and deleted in the same transaction.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::chains::{self, host, socket};
use crate::model::{Endpoint, ServicePort, TrafficPolicy};

/// IPv4 (`iptables-restore`) or IPv6 (`ip6tables-restore`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Whether `ip` belongs to this family.
    pub fn has(self, ip: IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }

    fn reject(self) -> &'static str {
        match self {
            Family::V4 => "-j REJECT --reject-with icmp-port-unreachable",
            Family::V6 => "-j REJECT --reject-with icmp6-port-unreachable",
        }
    }
}

/// Settings that shape the rules.
#[derive(Debug, Clone, Default)]
pub struct RuleOptions {
    /// Pod network; ClusterIP traffic from outside it is masqueraded, and pods
    /// reaching a Local-policy external address use the cluster endpoints.
    pub cluster_cidrs: Vec<IpNetwork>,
    /// Masquerade all ClusterIP traffic.
    pub masquerade_all: bool,
}

/// One table's part of a restore transaction.
#[derive(Default)]
struct Table {
    declared: Vec<String>,
    rules: Vec<String>,
    deleted: Vec<String>,
}

/// A restore transaction for one family.
#[derive(Default)]
pub struct Transaction {
    nat: Table,
    filter: Table,
}

impl Transaction {
    /// The `iptables-restore` input.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (name, t) in [("nat", &self.nat), ("filter", &self.filter)] {
            let _ = writeln!(out, "*{name}");
            for c in t.declared.iter().chain(&t.deleted) {
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

    /// Rules written by this transaction.
    pub fn rule_count(&self) -> u64 {
        (self.nat.rules.len() + self.filter.rules.len()) as u64
    }

    /// Rules in the base chains (rewritten every time) — the rest are per-port.
    pub fn base_rule_count(&self) -> u64 {
        let base = |t: &Table, chains: &[&str]| {
            t.rules
                .iter()
                .filter(|r| chain_of(r).is_some_and(|c| chains.contains(&c)))
                .count()
        };
        (base(
            &self.nat,
            &[
                chains::SERVICES,
                chains::NODEPORTS,
                chains::POSTROUTING,
                chains::MARK_MASQ,
                chains::MARK_DROP,
            ],
        ) + base(
            &self.filter,
            &[
                chains::SERVICES,
                chains::EXTERNAL_SERVICES,
                chains::FORWARD,
                chains::FIREWALL,
            ],
        )) as u64
    }

    /// Deletes `chain` of the nat table.
    pub fn delete_nat_chain(&mut self, chain: String) {
        self.nat.deleted.push(chain);
    }

    /// Deletes `chain` of the filter table.
    pub fn delete_filter_chain(&mut self, chain: String) {
        self.filter.deleted.push(chain);
    }

    /// Position in the nat rules, for [`Transaction::rules_in`].
    pub fn mark(&self) -> usize {
        self.nat.rules.len()
    }

    /// Rules written since `mark` into `owned` chains (per-port chains are all in nat).
    pub fn rules_in(&self, mark: usize, owned: &BTreeSet<String>) -> u64 {
        self.nat.rules[mark.min(self.nat.rules.len())..]
            .iter()
            .filter(|r| chain_of(r).is_some_and(|c| owned.contains(c)))
            .count() as u64
    }

    /// Starts a transaction that rewrites the base chains.
    pub fn new() -> Transaction {
        let mut t = Transaction::default();
        for c in [
            chains::SERVICES,
            chains::NODEPORTS,
            chains::POSTROUTING,
            chains::MARK_MASQ,
            chains::MARK_DROP,
        ] {
            t.nat.declared.push(c.to_string());
        }
        for c in [
            chains::SERVICES,
            chains::EXTERNAL_SERVICES,
            chains::FORWARD,
            chains::FIREWALL,
        ] {
            t.filter.declared.push(c.to_string());
        }
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
        t
    }

    /// Closes KUBE-SERVICES: packets to node-local addresses go to the NodePorts
    /// (last, so ClusterIP / external IP rules win).
    pub fn finish(&mut self) {
        self.nat.rules.push(format!(
            "-A {} -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j {}",
            chains::SERVICES,
            chains::NODEPORTS
        ));
    }

    /// Adds a port: its entries in the base chains always, its own chains when
    /// `write_chains`. Returns the names of the port's own chains.
    pub fn add_port(
        &mut self,
        p: &ServicePort,
        family: Family,
        opts: &RuleOptions,
        write_chains: bool,
    ) -> BTreeSet<String> {
        let mut owned = BTreeSet::new();
        let vips: Vec<IpAddr> = p
            .cluster_ips
            .iter()
            .copied()
            .filter(|ip| family.has(*ip))
            .collect();
        // Each family's proxier handles the services that have a ClusterIP of its family.
        if vips.is_empty() {
            return owned;
        }
        let name = &p.name;
        let proto = p.name.protocol.as_str();
        let comment = format!("-m comment --comment \"{name}\"");
        let matching = |dst: &str, port: u16| {
            format!("{comment} -d {dst} -p {proto} -m {proto} --dport {port}")
        };
        let cluster_eps: Vec<&Endpoint> = p
            .cluster_endpoints
            .iter()
            .filter(|e| family.has(e.ip))
            .collect();
        let external_eps: Vec<&Endpoint> = p
            .external_endpoints
            .iter()
            .filter(|e| family.has(e.ip))
            .collect();

        let svc = chains::svc(name);
        if !cluster_eps.is_empty() {
            owned.insert(svc.clone());
            for vip in &vips {
                self.nat.rules.push(format!(
                    "-A {} {} -j {svc}",
                    chains::SERVICES,
                    matching(&host(*vip), p.port)
                ));
            }
        } else {
            for vip in &vips {
                self.filter.rules.push(format!(
                    "-A {} {} {}",
                    chains::SERVICES,
                    matching(&host(*vip), p.port),
                    family.reject()
                ));
            }
        }

        let ext_ips: Vec<IpAddr> = p
            .external_ips
            .iter()
            .copied()
            .filter(|ip| family.has(*ip))
            .collect();
        let lb_ips: Vec<IpAddr> = p
            .load_balancer_ips
            .iter()
            .copied()
            .filter(|ip| family.has(*ip))
            .collect();
        let ranges: Vec<&IpNetwork> = p
            .load_balancer_source_ranges
            .iter()
            .filter(|r| family.has(r.ip()))
            .collect();
        let ext = chains::ext(name);
        let fw = chains::fw(name);
        // The external dispatch: the cluster chain when the sets agree, else its own.
        let ext_dispatch = if external_eps.is_empty() {
            None
        } else if p.external_endpoints == p.cluster_endpoints {
            Some(svc.clone())
        } else {
            Some(chains::svl(name))
        };
        if let Some(dispatch) = &ext_dispatch {
            owned.insert(dispatch.clone());
            owned.insert(ext.clone());
            for ip in &ext_ips {
                self.nat.rules.push(format!(
                    "-A {} {} -j {ext}",
                    chains::SERVICES,
                    matching(&host(*ip), p.port)
                ));
            }
            let lb_target = if ranges.is_empty() { &ext } else { &fw };
            if !ranges.is_empty() && !lb_ips.is_empty() {
                owned.insert(fw.clone());
            }
            for ip in &lb_ips {
                self.nat.rules.push(format!(
                    "-A {} {} -j {lb_target}",
                    chains::SERVICES,
                    matching(&host(*ip), p.port)
                ));
            }
            if let Some(np) = p.node_port {
                self.nat.rules.push(format!(
                    "-A {} {comment} -p {proto} -m {proto} --dport {np} -j {ext}",
                    chains::NODEPORTS
                ));
            }
        } else {
            for ip in ext_ips.iter().chain(&lb_ips) {
                self.filter.rules.push(format!(
                    "-A {} {} {}",
                    chains::EXTERNAL_SERVICES,
                    matching(&host(*ip), p.port),
                    family.reject()
                ));
            }
            if let Some(np) = p.node_port {
                self.filter.rules.push(format!(
                    "-A {} {comment} -m addrtype --dst-type LOCAL -p {proto} -m {proto} --dport {np} {}",
                    chains::EXTERNAL_SERVICES,
                    family.reject()
                ));
            }
        }

        if !write_chains {
            return owned;
        }
        for c in &owned {
            self.nat.declared.push(c.clone());
        }
        if !cluster_eps.is_empty() {
            self.masquerade_cluster_traffic(&svc, &vips, p, family, opts);
            self.dispatch(&svc, p, &cluster_eps, &mut owned);
        }
        if let Some(dispatch) = &ext_dispatch {
            if dispatch != &svc {
                self.dispatch(dispatch, p, &external_eps, &mut owned);
            }
            self.external_entry(
                &ext,
                dispatch,
                &svc,
                !cluster_eps.is_empty(),
                p,
                family,
                opts,
            );
            if owned.contains(&fw) {
                for r in &ranges {
                    self.nat
                        .rules
                        .push(format!("-A {fw} {comment} -s {r} -j {ext}"));
                }
                self.nat.rules.push(format!(
                    "-A {fw} -m comment --comment \"{name} loadbalancer IP: other sources\" -j {}",
                    chains::MARK_DROP
                ));
            }
        }
        owned
    }

    fn masquerade_cluster_traffic(
        &mut self,
        svc: &str,
        vips: &[IpAddr],
        p: &ServicePort,
        family: Family,
        opts: &RuleOptions,
    ) {
        let proto = p.name.protocol.as_str();
        for vip in vips {
            let m = format!("-d {} -p {proto} -m {proto} --dport {}", host(*vip), p.port);
            if opts.masquerade_all {
                self.nat
                    .rules
                    .push(format!("-A {svc} {m} -j {}", chains::MARK_MASQ));
                continue;
            }
            for cidr in opts.cluster_cidrs.iter().filter(|c| family.has(c.ip())) {
                self.nat
                    .rules
                    .push(format!("-A {svc} ! -s {cidr} {m} -j {}", chains::MARK_MASQ));
            }
        }
    }

    /// External entry: Cluster policy masquerades and uses every endpoint;
    /// Local keeps the source and uses this node's endpoints, except for
    /// traffic from pods and from the node itself, which use the cluster set.
    #[allow(clippy::too_many_arguments)] // one rule block; splitting it hides the policy
    fn external_entry(
        &mut self,
        ext: &str,
        dispatch: &str,
        svc: &str,
        has_cluster: bool,
        p: &ServicePort,
        family: Family,
        opts: &RuleOptions,
    ) {
        match p.external_policy {
            TrafficPolicy::Cluster => {
                self.nat
                    .rules
                    .push(format!("-A {ext} -j {}", chains::MARK_MASQ));
                self.nat.rules.push(format!("-A {ext} -j {dispatch}"));
            }
            TrafficPolicy::Local => {
                if has_cluster {
                    for cidr in opts.cluster_cidrs.iter().filter(|c| family.has(c.ip())) {
                        self.nat.rules.push(format!(
                            "-A {ext} -m comment --comment \"pod traffic for {} external destinations\" -s {cidr} -j {svc}",
                            p.name
                        ));
                    }
                    self.nat.rules.push(format!(
                        "-A {ext} -m addrtype --src-type LOCAL -j {}",
                        chains::MARK_MASQ
                    ));
                    self.nat
                        .rules
                        .push(format!("-A {ext} -m addrtype --src-type LOCAL -j {svc}"));
                }
                self.nat.rules.push(format!("-A {ext} -j {dispatch}"));
            }
        }
    }

    /// A dispatch chain: affinity checks first, then random spreading where
    /// rule i of n matches with probability 1/(n-i), so each endpoint gets 1/n.
    fn dispatch(
        &mut self,
        chain: &str,
        p: &ServicePort,
        eps: &[&Endpoint],
        owned: &mut BTreeSet<String>,
    ) {
        let seps: Vec<String> = eps.iter().map(|e| chains::sep(&p.name, e)).collect();
        if let Some(timeout) = p.affinity_timeout_secs {
            for sep in &seps {
                self.nat.rules.push(format!(
                    "-A {chain} -m recent --name {sep} --mask {} --rsource --rcheck --seconds {timeout} --reap -j {sep}",
                    full_mask(eps)
                ));
            }
        }
        let n = seps.len();
        for (i, sep) in seps.iter().enumerate() {
            if i + 1 < n {
                let prob = 1.0 / (n - i) as f64;
                self.nat.rules.push(format!(
                    "-A {chain} -m statistic --mode random --probability {prob:.10} -j {sep}"
                ));
            } else {
                self.nat.rules.push(format!("-A {chain} -j {sep}"));
            }
        }
        for (ep, sep) in eps.iter().zip(seps) {
            if owned.insert(sep.clone()) {
                self.nat.declared.push(sep.clone());
                self.endpoint_chain(&sep, p, ep, eps);
            }
        }
    }

    fn endpoint_chain(&mut self, sep: &str, p: &ServicePort, ep: &Endpoint, eps: &[&Endpoint]) {
        let proto = p.name.protocol.as_str();
        // Hairpin: a backend reaching itself through the service must see the
        // node as the source, or its reply would bypass the reverse NAT.
        self.nat.rules.push(format!(
            "-A {sep} -s {} -j {}",
            host(ep.ip),
            chains::MARK_MASQ
        ));
        let recent = if p.affinity_timeout_secs.is_some() {
            format!(
                " -m recent --name {sep} --mask {} --rsource --set",
                full_mask(eps)
            )
        } else {
            String::new()
        };
        self.nat.rules.push(format!(
            "-A {sep} -p {proto}{recent} -m {proto} -j DNAT --to-destination {}",
            socket(ep.ip, ep.port)
        ));
    }
}

/// The chain an `-A CHAIN ...` rule appends to.
fn chain_of(rule: &str) -> Option<&str> {
    rule.strip_prefix("-A ")?.split(' ').next()
}

/// The `recent` mask: the whole client address.
fn full_mask(eps: &[&Endpoint]) -> &'static str {
    match eps.first().map(|e| e.ip) {
        Some(IpAddr::V6(_)) => "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        _ => "255.255.255.255",
    }
}
