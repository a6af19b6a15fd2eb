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
//! [`render_port`] gives one port's own chains with their rules and its
//! entries in the shared base chains; [`super::transaction`] turns them into
//! a full or a partial restore input.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::chains::{self, host, socket};
use super::transaction::{Entry, Table};
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

/// What one port contributes to one family's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortRules {
    /// The port's own nat chains (KUBE-SVC/SVL/EXT/FW/SEP-*).
    pub chains: BTreeSet<String>,
    /// The rules of those chains (`-A <own chain> ...`).
    pub body: Vec<String>,
    /// Its rules in the shared base chains.
    pub entries: Vec<Entry>,
}

impl PortRules {
    /// Rules this port has installed (own chains and entries).
    pub fn rule_count(&self) -> u64 {
        (self.body.len() + self.entries.len()) as u64
    }
}

/// Renders one port for `family`: nothing when it has no ClusterIP of that
/// family (each family's proxier handles the services of its family).
pub fn render_port(p: &ServicePort, family: Family, opts: &RuleOptions) -> PortRules {
    let mut w = PortWriter::default();
    w.port(p, family, opts);
    w.out
}

#[derive(Default)]
struct PortWriter {
    out: PortRules,
}

impl PortWriter {
    fn nat_entry(&mut self, chain: &'static str, spec: String) {
        self.out.entries.push(Entry {
            table: Table::Nat,
            chain,
            spec,
        });
    }

    fn filter_entry(&mut self, chain: &'static str, spec: String) {
        self.out.entries.push(Entry {
            table: Table::Filter,
            chain,
            spec,
        });
    }

    fn rule(&mut self, line: String) {
        self.out.body.push(line);
    }

    fn port(&mut self, p: &ServicePort, family: Family, opts: &RuleOptions) {
        let vips: Vec<IpAddr> = p
            .cluster_ips
            .iter()
            .copied()
            .filter(|ip| family.has(*ip))
            .collect();
        if vips.is_empty() {
            return;
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
            self.out.chains.insert(svc.clone());
            for vip in &vips {
                self.nat_entry(
                    chains::SERVICES,
                    format!("{} -j {svc}", matching(&host(*vip), p.port)),
                );
            }
        } else {
            for vip in &vips {
                self.filter_entry(
                    chains::SERVICES,
                    format!("{} {}", matching(&host(*vip), p.port), family.reject()),
                );
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
        // The external dispatch (none for ClusterIP-only ports, as kube-proxy):
        // the cluster chain when the sets agree, else its own.
        let ext_dispatch = if external_eps.is_empty() || !p.externally_accessible() {
            None
        } else if p.external_endpoints == p.cluster_endpoints {
            Some(svc.clone())
        } else {
            Some(chains::svl(name))
        };
        if let Some(dispatch) = &ext_dispatch {
            self.out.chains.insert(dispatch.clone());
            self.out.chains.insert(ext.clone());
            for ip in &ext_ips {
                self.nat_entry(
                    chains::SERVICES,
                    format!("{} -j {ext}", matching(&host(*ip), p.port)),
                );
            }
            let lb_target = if ranges.is_empty() { &ext } else { &fw };
            if !ranges.is_empty() && !lb_ips.is_empty() {
                self.out.chains.insert(fw.clone());
            }
            for ip in &lb_ips {
                self.nat_entry(
                    chains::SERVICES,
                    format!("{} -j {lb_target}", matching(&host(*ip), p.port)),
                );
            }
            if let Some(np) = p.node_port {
                self.nat_entry(
                    chains::NODEPORTS,
                    format!("{comment} -p {proto} -m {proto} --dport {np} -j {ext}"),
                );
            }
        } else {
            for ip in ext_ips.iter().chain(&lb_ips) {
                self.filter_entry(
                    chains::EXTERNAL_SERVICES,
                    format!("{} {}", matching(&host(*ip), p.port), family.reject()),
                );
            }
            if let Some(np) = p.node_port {
                self.filter_entry(
                    chains::EXTERNAL_SERVICES,
                    format!(
                        "{comment} -m addrtype --dst-type LOCAL -p {proto} -m {proto} --dport {np} {}",
                        family.reject()
                    ),
                );
            }
        }

        if !cluster_eps.is_empty() {
            self.masquerade_cluster_traffic(&svc, &vips, p, family, opts);
            self.dispatch(&svc, p, &cluster_eps);
        }
        if let Some(dispatch) = &ext_dispatch {
            if dispatch != &svc {
                self.dispatch(dispatch, p, &external_eps);
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
            if self.out.chains.contains(&fw) {
                for r in &ranges {
                    self.rule(format!("-A {fw} {comment} -s {r} -j {ext}"));
                }
                self.rule(format!(
                    "-A {fw} -m comment --comment \"{name} loadbalancer IP: other sources\" -j {}",
                    chains::MARK_DROP
                ));
            }
        }
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
                self.rule(format!("-A {svc} {m} -j {}", chains::MARK_MASQ));
                continue;
            }
            for cidr in opts.cluster_cidrs.iter().filter(|c| family.has(c.ip())) {
                self.rule(format!("-A {svc} ! -s {cidr} {m} -j {}", chains::MARK_MASQ));
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
                self.rule(format!("-A {ext} -j {}", chains::MARK_MASQ));
                self.rule(format!("-A {ext} -j {dispatch}"));
            }
            TrafficPolicy::Local => {
                if has_cluster {
                    for cidr in opts.cluster_cidrs.iter().filter(|c| family.has(c.ip())) {
                        self.rule(format!(
                            "-A {ext} -m comment --comment \"pod traffic for {} external destinations\" -s {cidr} -j {svc}",
                            p.name
                        ));
                    }
                    self.rule(format!(
                        "-A {ext} -m addrtype --src-type LOCAL -j {}",
                        chains::MARK_MASQ
                    ));
                    self.rule(format!("-A {ext} -m addrtype --src-type LOCAL -j {svc}"));
                }
                self.rule(format!("-A {ext} -j {dispatch}"));
            }
        }
    }

    /// A dispatch chain: affinity checks first, then random spreading where
    /// rule i of n matches with probability 1/(n-i), so each endpoint gets 1/n.
    fn dispatch(&mut self, chain: &str, p: &ServicePort, eps: &[&Endpoint]) {
        let seps: Vec<String> = eps.iter().map(|e| chains::sep(&p.name, e)).collect();
        if let Some(timeout) = p.affinity_timeout_secs {
            for sep in &seps {
                self.rule(format!(
                    "-A {chain} -m recent --name {sep} --mask {} --rsource --rcheck --seconds {timeout} --reap -j {sep}",
                    full_mask(eps)
                ));
            }
        }
        let n = seps.len();
        for (i, sep) in seps.iter().enumerate() {
            if i + 1 < n {
                let prob = 1.0 / (n - i) as f64;
                self.rule(format!(
                    "-A {chain} -m statistic --mode random --probability {prob:.10} -j {sep}"
                ));
            } else {
                self.rule(format!("-A {chain} -j {sep}"));
            }
        }
        for (ep, sep) in eps.iter().zip(seps) {
            if self.out.chains.insert(sep.clone()) {
                self.endpoint_chain(&sep, p, ep, eps);
            }
        }
    }

    fn endpoint_chain(&mut self, sep: &str, p: &ServicePort, ep: &Endpoint, eps: &[&Endpoint]) {
        let proto = p.name.protocol.as_str();
        // Hairpin: a backend reaching itself through the service must see the
        // node as the source, or its reply would bypass the reverse NAT.
        self.rule(format!(
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
        self.rule(format!(
            "-A {sep} -p {proto}{recent} -m {proto} -j DNAT --to-destination {}",
            socket(ep.ip, ep.port)
        ));
    }
}

/// The `recent` mask: the whole client address.
fn full_mask(eps: &[&Endpoint]) -> &'static str {
    match eps.first().map(|e| e.ip) {
        Some(IpAddr::V6(_)) => "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        _ => "255.255.255.255",
    }
}
