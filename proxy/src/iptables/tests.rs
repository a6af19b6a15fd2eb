//! Unit tests of the rule rendering: restore input for a map, partial
//! transactions, and the chain naming.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};

use skiff_cni::Netns;

use super::chains;
use super::rules::{render_port, Family, RuleOptions};
use super::transaction::Transaction;
use super::{Backend, Installed, Iptables};
use crate::model::{self, BuildInput, NodeInfo, ServiceMap};

fn map(services: &[Value], slices: &[Value]) -> ServiceMap {
    let services: Vec<Service> = services
        .iter()
        .map(|v| serde_json::from_value(v.clone()).unwrap())
        .collect();
    let slices: Vec<EndpointSlice> = slices
        .iter()
        .map(|v| serde_json::from_value(v.clone()).unwrap())
        .collect();
    let node = NodeInfo {
        name: "n1".into(),
        ..NodeInfo::default()
    };
    model::build(&BuildInput {
        services: services.iter().collect(),
        slices: slices.iter().collect(),
        node: &node,
    })
}

fn svc(name: &str, ip: &str, extra: Value) -> Value {
    let mut spec = json!({"clusterIP": ip, "ports": [{"name": "p", "port": 80, "protocol": "TCP", "nodePort": 30080}]});
    if let Value::Object(e) = extra {
        spec.as_object_mut().unwrap().extend(e);
    }
    json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

fn slice(name: &str, ips: &[(&str, &str)]) -> Value {
    let eps: Vec<Value> = ips
        .iter()
        .map(|(ip, node)| json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": true}}))
        .collect();
    json!({"metadata": {"name": name, "namespace": "default",
                        "labels": {"kubernetes.io/service-name": name}},
           "addressType": if ips.first().is_some_and(|(ip, _)| ip.contains(':')) {"IPv6"} else {"IPv4"},
           "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}], "endpoints": eps})
}

fn options() -> RuleOptions {
    RuleOptions {
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        masquerade_all: false,
    }
}

/// A full transaction for `m`.
fn render(m: &ServiceMap, family: Family) -> String {
    let mut tx = Transaction::with_base_chains();
    for p in m.ports.values() {
        let r = render_port(p, family, &options());
        tx.write_port(&r);
        tx.append_entries(&r.entries);
    }
    tx.finish_base();
    tx.text()
}

/// An IPv4 proxy that has installed `m` (nothing is executed).
fn installed(m: &ServiceMap) -> (Iptables, Installed) {
    let ipt = Iptables::new(Netns::current(), options(), vec![Family::V4], Backend::Nft);
    let (now, _) = ipt.full(Family::V4, m, "");
    (ipt, now)
}

fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn endpoints_are_spread_evenly_with_statistic() {
    let m = map(
        &[svc("web", "10.96.0.10", json!({}))],
        &[slice(
            "web",
            &[
                ("10.244.0.2", "n1"),
                ("10.244.0.3", "n1"),
                ("10.244.0.4", "n2"),
            ],
        )],
    );
    let text = render(&m, Family::V4);
    let name = m.ports.keys().next().unwrap();
    let svc_chain = chains::svc(name);
    let jumps = lines_with(&text, &format!("-A {svc_chain} "));
    let spread: Vec<&str> = jumps
        .iter()
        .copied()
        .filter(|l| l.contains("KUBE-SEP-"))
        .collect();
    assert_eq!(spread.len(), 3, "{text}");
    assert!(
        spread[0].contains("--probability 0.3333333333"),
        "{}",
        spread[0]
    );
    assert!(
        spread[1].contains("--probability 0.5000000000"),
        "{}",
        spread[1]
    );
    assert!(!spread[2].contains("statistic"), "{}", spread[2]);
    // Each endpoint chain DNATs to its backend and marks hairpin traffic.
    for ip in ["10.244.0.2", "10.244.0.3", "10.244.0.4"] {
        let dnat = lines_with(&text, &format!("--to-destination {ip}:8080"));
        assert_eq!(dnat.len(), 1, "{text}");
        assert!(text.contains(&format!("-s {ip}/32 -j KUBE-MARK-MASQ")));
    }
    // Off-cluster sources to the ClusterIP are masqueraded; the NodePort goes through EXT.
    assert!(text.contains(&format!(
        "-A {svc_chain} ! -s 10.244.0.0/16 -d 10.96.0.10/32"
    )));
    assert!(text.contains(&format!(
        "-A KUBE-NODEPORTS -m comment --comment \"{name}\" -p tcp -m tcp --dport 30080 -j {}",
        chains::ext(name)
    )));
    assert!(text.ends_with("COMMIT\n"));
    assert!(text.contains("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"));
}

#[test]
fn ports_without_endpoints_are_rejected_in_filter() {
    let m = map(&[svc("empty", "10.96.0.11", json!({}))], &[]);
    let text = render(&m, Family::V4);
    let filter = text.split("*filter").nth(1).unwrap();
    assert!(filter.contains("-A KUBE-SERVICES -m comment --comment \"default/empty:p/tcp\" -d 10.96.0.11/32 -p tcp -m tcp --dport 80 -j REJECT"), "{filter}");
    assert!(filter.contains("-A KUBE-EXTERNAL-SERVICES -m comment --comment \"default/empty:p/tcp\" -m addrtype --dst-type LOCAL -p tcp -m tcp --dport 30080 -j REJECT"), "{filter}");
    assert!(!text.contains("KUBE-SVC-"), "{text}");
}

#[test]
fn affinity_uses_recent_and_source_ranges_get_a_firewall_chain() {
    let mut lb = svc(
        "lb",
        "10.96.0.12",
        json!({"type": "LoadBalancer", "sessionAffinity": "ClientIP",
               "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
               "loadBalancerSourceRanges": ["192.168.0.0/24"]}),
    );
    lb["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}});
    let m = map(
        &[lb],
        &[slice("lb", &[("10.244.0.2", "n1"), ("10.244.0.3", "n1")])],
    );
    let text = render(&m, Family::V4);
    let name = m.ports.keys().next().unwrap();
    assert_eq!(
        lines_with(&text, "--rcheck --seconds 60 --reap").len(),
        2,
        "{text}"
    );
    assert_eq!(lines_with(&text, "-m recent --name KUBE-SEP-").len(), 4);
    let fw = chains::fw(name);
    assert!(text.contains(&format!(
        "-d 192.0.2.10/32 -p tcp -m tcp --dport 80 -j {fw}"
    )));
    assert!(text.contains(&format!(
        "-A {fw} -m comment --comment \"{name}\" -s 192.168.0.0/24 -j {}",
        chains::ext(name)
    )));
    assert!(lines_with(&text, &format!("-A {fw} "))
        .last()
        .unwrap()
        .ends_with("-j KUBE-MARK-DROP"));
}

#[test]
fn partial_sync_sends_only_the_changed_port() {
    let services = [
        svc("a", "10.96.0.20", json!({})),
        svc("b", "10.96.0.21", json!({})),
    ];
    let before = map(
        &services,
        &[
            slice("a", &[("10.244.0.2", "n1")]),
            slice("b", &[("10.244.0.3", "n1")]),
        ],
    );
    let after = map(
        &services,
        &[
            slice("a", &[("10.244.0.2", "n1")]),
            slice("b", &[("10.244.0.4", "n1")]),
        ],
    );
    let (ipt, now) = installed(&before);
    let changes = model::diff(&before, &after);
    let (now, tx) = ipt.partial(Family::V4, &after, &changes, now);
    let text = tx.text();
    let declared: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let a = after.ports.keys().find(|n| n.name == "a").unwrap();
    let b = after.ports.keys().find(|n| n.name == "b").unwrap();
    // Only b's chains: the base chains are neither declared (flushed) nor listed.
    assert!(declared.contains(chains::svc(b).as_str()), "{text}");
    assert!(!declared.contains(chains::svc(a).as_str()), "{text}");
    assert!(!declared.contains(chains::SERVICES), "{text}");
    assert!(!text.contains("-A KUBE-SERVICES"), "{text}");
    assert!(!text.contains("*filter"), "untouched table sent: {text}");
    assert!(text.contains("--to-destination 10.244.0.4:8080"), "{text}");
    assert!(!text.contains("10.244.0.2"), "{text}");
    // b's old endpoint chain goes; its KUBE-SERVICES entry is unchanged, so not sent.
    let old_sep = chains::sep(b, &before.ports[b].endpoints[0]);
    assert!(text.contains(&format!("-X {old_sep}")), "{text}");
    assert_eq!(now.rule_count(), installed(&after).1.rule_count());
}

#[test]
fn partial_sync_edits_base_chain_entries_in_place() {
    let before = map(
        &[
            svc("a", "10.96.0.20", json!({})),
            svc("gone", "10.96.0.22", json!({})),
        ],
        &[
            slice("a", &[("10.244.0.2", "n1")]),
            slice("gone", &[("10.244.0.5", "n1")]),
        ],
    );
    // a loses its endpoints (REJECT instead of dispatch), "gone" is deleted,
    // "new" appears.
    let after = map(
        &[
            svc("a", "10.96.0.20", json!({})),
            svc("new", "10.96.0.23", json!({})),
        ],
        &[slice("new", &[("10.244.0.6", "n1")])],
    );
    let (ipt, now) = installed(&before);
    let changes = model::diff(&before, &after);
    let (now, tx) = ipt.partial(Family::V4, &after, &changes, now);
    let text = tx.text();
    let a = after.ports.keys().find(|n| n.name == "a").unwrap();
    let gone = before.ports.keys().find(|n| n.name == "gone").unwrap();
    let new = after.ports.keys().find(|n| n.name == "new").unwrap();
    assert!(text.contains(&format!(
        "-D KUBE-SERVICES -m comment --comment \"{a}\" -d 10.96.0.20/32 -p tcp -m tcp --dport 80 -j {}",
        chains::svc(a)
    )), "{text}");
    assert!(text.contains(&format!("-X {}", chains::svc(a))), "{text}");
    assert!(
        text.contains(&format!("-X {}", chains::svc(gone))),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "-D KUBE-NODEPORTS -m comment --comment \"{gone}\""
        )),
        "{text}"
    );
    // New ClusterIP entries go in front of the closing NodePort jump.
    assert!(
        text.contains(&format!(
            "-I KUBE-SERVICES 1 -m comment --comment \"{new}\" -d 10.96.0.23/32"
        )),
        "{text}"
    );
    let filter = text.split("*filter").nth(1).expect("filter part");
    assert!(filter.contains("-A KUBE-SERVICES -m comment --comment \"default/a:p/tcp\" -d 10.96.0.20/32 -p tcp -m tcp --dport 80 -j REJECT"), "{filter}");
    assert!(filter.contains("-A KUBE-EXTERNAL-SERVICES"), "{filter}");
    // Deletions come before additions in each table.
    let first_add = text.find("-I KUBE-SERVICES").unwrap();
    assert!(text.find("-D KUBE-SERVICES").unwrap() < first_add, "{text}");
    assert_eq!(now.rule_count(), installed(&after).1.rule_count());
}

#[test]
fn unchanged_map_sends_nothing() {
    let m = map(
        &[svc("a", "10.96.0.20", json!({}))],
        &[slice("a", &[("10.244.0.2", "n1")])],
    );
    let (ipt, now) = installed(&m);
    let mut changes = model::diff(&m, &m);
    // A port reported as updated whose rules render the same is skipped too.
    changes
        .updated
        .insert(m.ports.keys().next().unwrap().clone());
    let (_, tx) = ipt.partial(Family::V4, &m, &changes, now);
    assert!(tx.is_empty(), "{}", tx.text());
}

#[test]
fn ipv6_rules_use_v6_addresses_only() {
    let dual = json!({"metadata": {"name": "d", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.30", "clusterIPs": ["10.96.0.30", "fd00::30"],
                 "ports": [{"name": "p", "port": 80, "protocol": "TCP"}]}});
    let m = map(&[dual], &[slice("d", &[("fd10::2", "n1")])]);
    let v6 = render(&m, Family::V6);
    assert!(v6.contains("-d fd00::30/128"), "{v6}");
    assert!(v6.contains("--to-destination [fd10::2]:8080"), "{v6}");
    assert!(!v6.contains("10.96.0.30"));
    // No IPv4 endpoints: the IPv4 ClusterIP rejects.
    let v4 = render(&m, Family::V4);
    assert!(v4.contains("-d 10.96.0.30/32 -p tcp -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable"), "{v4}");
}

#[test]
fn chain_names_are_stable_and_fit_iptables() {
    let m = map(
        &[svc("web", "10.96.0.10", json!({}))],
        &[slice("web", &[("10.244.0.2", "n1")])],
    );
    let (name, port) = m.ports.iter().next().unwrap();
    let sep = chains::sep(name, &port.endpoints[0]);
    assert!(sep.len() <= 28 && chains::svc(name).len() <= 28);
    assert_eq!(sep, chains::sep(name, &port.endpoints[0].clone()));
    let mut other = name.clone();
    other.name = "web2".into();
    assert_ne!(chains::svc(name), chains::svc(&other));
}

#[test]
fn nft_full_sync_is_chunked_with_each_port_whole_and_the_base_chains_last() {
    let services: Vec<Value> = (0..400)
        .map(|i| {
            svc(
                &format!("s{i}"),
                &format!("10.96.1.{}", i % 250 + 1),
                json!({}),
            )
        })
        .collect();
    let slices: Vec<Value> = (0..400)
        .map(|i| {
            let ips: Vec<String> = (0..10)
                .map(|e| format!("10.244.{}.{}", i % 200, e + 2))
                .collect();
            let pairs: Vec<(&str, &str)> = ips.iter().map(|ip| (ip.as_str(), "n1")).collect();
            slice(&format!("s{i}"), &pairs)
        })
        .collect();
    let m = map(&services, &slices);
    let (ipt, _) = installed(&m);
    let (now, txs) = ipt.full(Family::V4, &m, "");
    let texts: Vec<String> = txs.iter().map(Transaction::text).collect();
    // A fresh namespace: the mark chains come first, then >1 chunk, then the base.
    assert!(texts.len() >= 4, "{} transactions", texts.len());
    assert!(texts[0].contains(":KUBE-MARK-MASQ - [0:0]"));
    let last = texts.last().unwrap();
    assert!(last.contains(":KUBE-SERVICES - [0:0]"));
    assert!(
        !last.contains(":KUBE-SVC-"),
        "port chains belong in the chunks"
    );
    let declared: Vec<BTreeSet<&str>> = texts
        .iter()
        .map(|t| {
            t.lines()
                .filter_map(|l| l.strip_prefix(':'))
                .filter_map(|l| l.split(' ').next())
                .collect()
        })
        .collect();
    for (name, r) in &now.ports {
        let holding: Vec<usize> = declared
            .iter()
            .enumerate()
            .filter(|(_, d)| r.chains.iter().any(|c| d.contains(c.as_str())))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(holding.len(), 1, "{name}'s chains are split: {holding:?}");
    }
    // Legacy: one transaction.
    let legacy = Iptables::new(
        Netns::current(),
        options(),
        vec![Family::V4],
        Backend::Legacy,
    );
    assert_eq!(legacy.full(Family::V4, &m, "").1.len(), 1);
}
