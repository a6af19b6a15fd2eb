//! Unit tests of the model: API objects in, chosen endpoints and diffs out.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};

use super::*;

fn node(name: &str, zone: Option<&str>) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        zone: zone.map(Into::into),
        addresses: vec![],
    }
}

fn service(name: &str, spec: Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
    .unwrap()
}

/// An endpoint: (ip, node, ready, serving, terminating, zone hints).
type Ep<'a> = (&'a str, &'a str, bool, bool, bool, &'a [&'a str]);

fn slice(svc: &str, family: &str, port_name: &str, port: i32, eps: &[Ep<'_>]) -> EndpointSlice {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(ip, node, ready, serving, terminating, hints)| {
            let mut e = json!({
                "addresses": [ip],
                "nodeName": node,
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
            });
            if !hints.is_empty() {
                let zones: Vec<Value> = hints.iter().map(|z| json!({"name": z})).collect();
                e["hints"] = json!({"forZones": zones});
            }
            e
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("{svc}-{family}"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": family,
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .unwrap()
}

fn map(services: &[Service], slices: &[EndpointSlice], node: &NodeInfo) -> ServiceMap {
    build(&BuildInput {
        services: services.iter().collect(),
        slices: slices.iter().collect(),
        node,
    })
}

fn ips(eps: &[Endpoint]) -> Vec<String> {
    eps.iter().map(|e| e.ip.to_string()).collect()
}

fn only(m: &ServiceMap) -> &ServicePort {
    assert_eq!(m.ports.len(), 1, "{m:#?}");
    m.ports.values().next().unwrap()
}

const READY: (bool, bool, bool) = (true, true, false);

fn ep<'a>(ip: &'a str, node: &'a str, c: (bool, bool, bool)) -> Ep<'a> {
    (ip, node, c.0, c.1, c.2, &[])
}

#[test]
fn clusterip_service_gets_ports_ips_and_ready_endpoints() {
    let svc = service(
        "web",
        json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::a"],
               "ports": [{"name": "http", "port": 80, "targetPort": 8080},
                         {"name": "dns", "port": 53, "protocol": "UDP"}]}),
    );
    let s4 = slice(
        "web",
        "IPv4",
        "http",
        8080,
        &[
            ep("10.244.0.2", "n1", READY),
            ep("10.244.0.3", "n2", (false, false, false)),
        ],
    );
    let s6 = slice("web", "IPv6", "http", 8080, &[ep("fd10::2", "n1", READY)]);
    let m = map(&[svc], &[s4, s6], &node("n1", None));
    assert_eq!(m.ports.len(), 2);
    let http = &m.ports[&ServicePortName {
        namespace: "default".into(),
        name: "web".into(),
        port: "http".into(),
        protocol: Protocol::Tcp,
    }];
    assert_eq!(http.port, 80);
    assert_eq!(
        http.cluster_ips,
        vec![
            "10.96.0.10".parse::<IpAddr>().unwrap(),
            "fd00::a".parse().unwrap()
        ]
    );
    assert_eq!(http.endpoints.len(), 3);
    assert_eq!(ips(&http.cluster_endpoints), ["10.244.0.2", "fd10::2"]);
    assert_eq!(http.cluster_endpoints[0].port, 8080);
    assert_eq!(http.affinity_timeout_secs, None);
    assert!(!http.externally_accessible());
    // The UDP port has no slice port of its name: no endpoints.
    let dns = m
        .ports
        .values()
        .find(|p| p.name.protocol == Protocol::Udp)
        .unwrap();
    assert!(dns.endpoints.is_empty() && !dns.has_endpoints());
}

#[test]
fn node_local_services_are_not_proxied() {
    let spec = json!({"clusterIP": "10.96.0.10", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]});
    let mut local = service("kube-dns", spec.clone());
    local.metadata.labels = Some([(NODE_LOCAL_LABEL.to_string(), "true".to_string())].into());
    assert!(map(&[local], &[], &node("n1", None)).ports.is_empty());
    let proxied = service("kube-dns", spec);
    assert_eq!(map(&[proxied], &[], &node("n1", None)).ports.len(), 1);
}

#[test]
fn headless_and_external_name_services_are_not_proxied() {
    let headless = service("h", json!({"clusterIP": "None", "ports": [{"port": 80}]}));
    let ext = service(
        "e",
        json!({"type": "ExternalName", "externalName": "example.org", "ports": [{"port": 80}]}),
    );
    assert!(map(&[headless, ext], &[], &node("n1", None))
        .ports
        .is_empty());
}

#[test]
fn terminating_endpoints_are_used_only_when_nothing_is_ready() {
    let svc = service(
        "web",
        json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
    );
    let serving_terminating = (false, true, true);
    let not_serving_terminating = (false, false, true);
    let with_ready = slice(
        "web",
        "IPv4",
        "",
        80,
        &[
            ep("10.244.0.2", "n1", READY),
            ep("10.244.0.3", "n1", serving_terminating),
        ],
    );
    let m = map(std::slice::from_ref(&svc), &[with_ready], &node("n1", None));
    assert_eq!(ips(&only(&m).cluster_endpoints), ["10.244.0.2"]);
    let draining = slice(
        "web",
        "IPv4",
        "",
        80,
        &[
            ep("10.244.0.3", "n1", serving_terminating),
            ep("10.244.0.4", "n1", not_serving_terminating),
        ],
    );
    let m = map(&[svc], &[draining], &node("n1", None));
    assert_eq!(ips(&only(&m).cluster_endpoints), ["10.244.0.3"]);
    assert_eq!(only(&m).local_ready_endpoints, 0);
}

#[test]
fn local_policies_restrict_to_this_nodes_endpoints() {
    let svc = service(
        "web",
        json!({"type": "LoadBalancer", "clusterIP": "10.96.0.10",
               "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
               "internalTrafficPolicy": "Cluster",
               "ports": [{"port": 80, "nodePort": 30080}]}),
    );
    let s = slice(
        "web",
        "IPv4",
        "",
        80,
        &[ep("10.244.0.2", "n1", READY), ep("10.244.1.2", "n2", READY)],
    );
    let m = map(
        std::slice::from_ref(&svc),
        std::slice::from_ref(&s),
        &node("n1", None),
    );
    let p = only(&m);
    assert_eq!(ips(&p.cluster_endpoints), ["10.244.0.2", "10.244.1.2"]);
    assert_eq!(ips(&p.external_endpoints), ["10.244.0.2"]);
    assert_eq!(p.health_check_node_port, Some(32000));
    assert_eq!(p.node_port, Some(30080));
    assert_eq!(p.local_ready_endpoints, 1);
    // On a node without local endpoints external traffic has nowhere to go.
    let m = map(&[svc], &[s], &node("n3", None));
    assert!(only(&m).external_endpoints.is_empty());
    assert_eq!(only(&m).local_ready_endpoints, 0);

    let internal = service(
        "web",
        json!({"clusterIP": "10.96.0.10", "internalTrafficPolicy": "Local",
               "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
    );
    let s = slice(
        "web",
        "IPv4",
        "",
        80,
        &[ep("10.244.0.2", "n1", READY), ep("10.244.1.2", "n2", READY)],
    );
    let m = map(&[internal], &[s], &node("n2", None));
    let p = only(&m);
    assert_eq!(ips(&p.cluster_endpoints), ["10.244.1.2"]);
    // Not externally reachable: the external policy does not apply.
    assert_eq!(p.external_policy, TrafficPolicy::Cluster);
}

#[test]
fn prefer_close_uses_zone_hints_only_when_complete() {
    let svc = service(
        "web",
        json!({"clusterIP": "10.96.0.10", "trafficDistribution": "PreferClose",
               "ports": [{"port": 80}]}),
    );
    let hinted = |a: &'static [&'static str], b: &'static [&'static str]| {
        slice(
            "web",
            "IPv4",
            "",
            80,
            &[
                ("10.244.0.2", "n1", true, true, false, a),
                ("10.244.1.2", "n2", true, true, false, b),
            ],
        )
    };
    let zone_a = node("n1", Some("a"));
    let m = map(
        std::slice::from_ref(&svc),
        &[hinted(&["a"], &["b"])],
        &zone_a,
    );
    assert_eq!(ips(&only(&m).cluster_endpoints), ["10.244.0.2"]);
    // One endpoint without hints: topology is ignored.
    let m = map(std::slice::from_ref(&svc), &[hinted(&["a"], &[])], &zone_a);
    assert_eq!(only(&m).cluster_endpoints.len(), 2);
    // No endpoint hinted for our zone: do not black-hole it.
    let m = map(
        std::slice::from_ref(&svc),
        &[hinted(&["b"], &["b"])],
        &zone_a,
    );
    assert_eq!(only(&m).cluster_endpoints.len(), 2);
    // Without PreferClose hints are ignored.
    let plain = service(
        "web",
        json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
    );
    let m = map(&[plain], &[hinted(&["a"], &["b"])], &zone_a);
    assert_eq!(only(&m).cluster_endpoints.len(), 2);
}

#[test]
fn affinity_external_addresses_and_source_ranges_are_read() {
    let mut svc = service(
        "web",
        json!({"type": "LoadBalancer", "clusterIP": "10.96.0.10",
               "externalIPs": ["192.0.2.10"],
               "loadBalancerSourceRanges": ["198.51.100.0/24", " 2001:db8::/32 "],
               "sessionAffinity": "ClientIP",
               "ports": [{"port": 80, "nodePort": 30080}]}),
    );
    svc.status = Some(
        serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}))
            .unwrap(),
    );
    let m = map(&[svc.clone()], &[], &node("n1", None));
    let p = only(&m);
    assert_eq!(p.affinity_timeout_secs, Some(DEFAULT_AFFINITY_TIMEOUT_SECS));
    assert_eq!(
        p.load_balancer_ips,
        ["203.0.113.7".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(p.external_ips, ["192.0.2.10".parse::<IpAddr>().unwrap()]);
    assert_eq!(p.load_balancer_source_ranges.len(), 2);
    assert_eq!(p.service_ips().count(), 3);
    assert!(p.externally_accessible());

    let spec = svc.spec.as_mut().unwrap();
    spec.session_affinity_config =
        Some(serde_json::from_value(json!({"clientIP": {"timeoutSeconds": 60}})).unwrap());
    let m = map(&[svc], &[], &node("n1", None));
    assert_eq!(only(&m).affinity_timeout_secs, Some(60));
}

#[test]
fn duplicate_addresses_across_slices_keep_the_ready_copy() {
    let svc = service(
        "web",
        json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
    );
    let a = slice(
        "web",
        "IPv4",
        "",
        80,
        &[ep("10.244.0.2", "n1", (false, false, true))],
    );
    let mut b = slice("web", "IPv4", "", 80, &[ep("10.244.0.2", "n1", READY)]);
    b.metadata.name = Some("web-2".into());
    let m = map(&[svc], &[a, b], &node("n1", None));
    assert_eq!(only(&m).endpoints.len(), 1);
    assert!(only(&m).endpoints[0].ready);
}

#[test]
fn diff_reports_only_changed_ports_and_stale_endpoints() {
    let svc = |n: &str| {
        service(
            n,
            json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53, "protocol": "UDP", "name": "dns"}]}),
        )
    };
    let udp_slice = |n: &str, eps: &[Ep<'_>]| {
        let mut s = slice(n, "IPv4", "dns", 5353, eps);
        s.ports.as_mut().unwrap()[0].protocol = Some("UDP".into());
        s
    };
    let n1 = node("n1", None);
    let old = map(
        &[svc("a"), svc("b"), svc("c")],
        &[
            udp_slice(
                "a",
                &[ep("10.244.0.2", "n1", READY), ep("10.244.0.3", "n1", READY)],
            ),
            udp_slice("b", &[ep("10.244.0.4", "n1", READY)]),
        ],
        &n1,
    );
    let new = map(
        &[svc("a"), svc("b"), svc("d")],
        &[
            udp_slice("a", &[ep("10.244.0.2", "n1", READY)]),
            udp_slice("b", &[ep("10.244.0.4", "n1", READY)]),
            udp_slice("d", &[ep("10.244.0.9", "n1", READY)]),
        ],
        &n1,
    );
    let ch = diff(&old, &new);
    assert!(!ch.full);
    let names =
        |s: &BTreeSet<ServicePortName>| s.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
    use std::collections::BTreeSet;
    assert_eq!(names(&ch.updated), ["a", "d"]);
    assert_eq!(
        ch.removed
            .keys()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>(),
        ["c"]
    );
    assert_eq!(ch.stale_endpoints.len(), 1);
    assert_eq!(
        ips(ch.stale_endpoints.values().next().unwrap()),
        ["10.244.0.3"]
    );
    assert_eq!(names(&ch.newly_served), ["d"]);
    assert!(diff(&new, &new).is_empty());
    // The same objects seen from another node: a full rewrite.
    let elsewhere = map(&[svc("a")], &[], &node("n2", None));
    let ch = diff(&new, &elsewhere);
    assert!(ch.full);
    assert_eq!(names(&ch.updated), ["a"]);
}
