//! The service-proxy behaviour suite, one function per behaviour, each taking
//! the proxy mode (`iptables`, `ebpf`) so every data plane runs the same
//! checks: `behaviour_suite!("iptables")` in tests/proxy_iptables.rs and
//! `behaviour_suite!("ebpf")` in tests/proxy_ebpf_lab.rs make one `#[test]`
//! per behaviour.
//!
//! Each function builds its own lab and API server, so they run in parallel.

/// One `#[test]` per behaviour of this suite, run with the proxy `mode`.
// Not every test crate that includes the lab runs the suite.
#[allow(unused_macros)]
macro_rules! behaviour_suite {
    ($mode:literal) => {
        $crate::lab::services::behaviour_suite!(@tests $mode;
            clusterip_tcp_and_udp,
            nodeport_from_underlay,
            no_endpoints_rejects,
            client_ip_affinity,
            external_traffic_policy_local,
            terminating_fallback,
            udp_flow_moves_after_endpoint_removed,
            load_balancer_source_ranges,
        );
    };
    (@tests $mode:literal; $($name:ident,)*) => {
        $(
            #[test]
            fn $name() {
                $crate::lab::services::$name($mode);
            }
        )*
    };
}
#[allow(unused_imports)]
pub(crate) use behaviour_suite;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;

use super::proxy::{apply, endpoint_slice, metric, service, Ep, ProxyProcess};
use super::sockets::{eventually, http_get, tcp_request, tcp_server, udp_server, UdpClient};
use super::Lab;
use crate::common::{StoreKind, TestServer};

/// How long a change in the API may take to reach the data plane.
const PROPAGATION: Duration = Duration::from_secs(20);

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("socket address")
}

/// ClusterIP over TCP and UDP, from a pod and from the node itself; backends
/// on the same node and on another node are both used.
pub fn clusterip_tcp_and_udp(mode: &str) {
    let server = TestServer::start(StoreKind::Redb);
    let mut lab = Lab::new("cip");
    lab.add_node("n1", 1);
    lab.add_node("n2", 2);
    let a = lab.node("n1").add_pod("a", 2);
    let b = lab.node("n2").add_pod("b", 2);
    let client = lab.node("n1").add_pod("client", 9);
    let _servers = [
        tcp_server(&a.ns, 8080, "a"),
        tcp_server(&b.ns, 8080, "b"),
        udp_server(&a.ns, 5353, "a"),
        udp_server(&b.ns, 5353, "b"),
    ];
    apply(
        &server,
        &service(
            "web",
            "10.96.10.10",
            &[("http", "TCP", 80, None), ("dns", "UDP", 53, None)],
            json!({}),
        ),
    );
    apply(
        &server,
        &endpoint_slice(
            "web",
            &[("http", "TCP", 8080), ("dns", "UDP", 5353)],
            &[Ep::ready(a.ip, "n1"), Ep::ready(b.ip, "n2")],
        ),
    );
    let _proxy = ProxyProcess::start(&server, lab.node("n1"), mode);
    let vip_tcp = addr("10.96.10.10", 80);
    let vip_udp = addr("10.96.10.10", 53);

    // From a pod: both backends answer over TCP, and the backend sees the pod's address.
    let mut seen = BTreeSet::new();
    eventually(
        PROPAGATION,
        "both TCP backends through the ClusterIP",
        || {
            if let Ok(reply) = tcp_request(&client.ns, vip_tcp) {
                assert_eq!(
                    reply.peer,
                    client.ip.to_string(),
                    "pod source kept for pod clients"
                );
                seen.insert(reply.backend);
            }
            (seen.len() == 2).then_some(())
        },
    );
    // UDP from the pod, each request a new flow: both backends answer.
    let mut seen = BTreeSet::new();
    eventually(
        PROPAGATION,
        "both UDP backends through the ClusterIP",
        || {
            if let Ok(reply) = UdpClient::new(&client.ns).request(vip_udp) {
                seen.insert(reply.backend);
            }
            (seen.len() == 2).then_some(())
        },
    );
    // From the node itself.
    let node = &lab.node("n1").ns;
    let reply = tcp_request(node, vip_tcp).expect("TCP to the ClusterIP from the node");
    assert!(["a", "b"].contains(&reply.backend.as_str()), "{reply:?}");
    let reply = UdpClient::new(node)
        .request(vip_udp)
        .expect("UDP to the ClusterIP from the node");
    assert!(["a", "b"].contains(&reply.backend.as_str()), "{reply:?}");
    // The proxy's metrics describe what it installed.
    let metrics = ProxyProcess::metrics(lab.node("n1"));
    assert!(
        metrics.contains(r#"skiff_proxy_service_endpoints{namespace="default",name="web",port="http",protocol="tcp"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("kubeproxy_sync_proxy_rules_duration_seconds_count"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kubeproxy_sync_proxy_rules_last_timestamp_seconds"),
        "{metrics}"
    );
}

/// A NodePort answers clients on the underlay (outside every node).
pub fn nodeport_from_underlay(mode: &str) {
    let server = TestServer::start(StoreKind::Redb);
    let mut lab = Lab::new("np");
    lab.add_node("n1", 1);
    let a = lab.node("n1").add_pod("a", 2);
    let outside = lab.add_client("out", 201);
    let _srv = tcp_server(&a.ns, 8080, "a");
    apply(
        &server,
        &service(
            "web",
            "10.96.10.11",
            &[("http", "TCP", 80, Some(30080))],
            json!({"type": "NodePort"}),
        ),
    );
    apply(
        &server,
        &endpoint_slice("web", &[("http", "TCP", 8080)], &[Ep::ready(a.ip, "n1")]),
    );
    let _proxy = ProxyProcess::start(&server, lab.node("n1"), mode);
    let node_ip = lab.node("n1").ip().to_string();
    let reply = eventually(PROPAGATION, "the NodePort from the underlay", || {
        tcp_request(&outside.ns, addr(&node_ip, 30080)).ok()
    });
    assert_eq!(reply.backend, "a");
    if mode == "iptables" {
        // Cluster policy: the source is the node (so the reply comes back through it).
        assert_ne!(reply.peer, outside.ip.to_string());
    } else {
        // eBPF SNATs only flows to other nodes' backends: a local backend's
        // reply leaves through this node's tc programs anyway, so the client
        // address is kept (tests/proxy_ebpf_lab.rs checks the remote case).
        assert_eq!(reply.peer, outside.ip.to_string());
    }
}

/// A service without endpoints refuses connections at once instead of timing out.
pub fn no_endpoints_rejects(mode: &str) {
    let server = TestServer::start(StoreKind::Redb);
    let mut lab = Lab::new("rej");
    lab.add_node("n1", 1);
    let client = lab.node("n1").add_pod("client", 9);
    apply(
        &server,
        &service(
            "empty",
            "10.96.10.12",
            &[("http", "TCP", 80, None)],
            json!({}),
        ),
    );
    let _proxy = ProxyProcess::start(&server, lab.node("n1"), mode);
    let vip = addr("10.96.10.12", 80);
    eventually(
        PROPAGATION,
        "connection refused by the empty service",
        || {
            let started = Instant::now();
            let err = tcp_request(&client.ns, vip).expect_err("nothing may answer");
            (err.kind() == ErrorKind::ConnectionRefused
                && started.elapsed() < Duration::from_secs(1))
            .then_some(())
        },
    );
    // From the node as well.
    let err = tcp_request(&lab.node("n1").ns, vip).expect_err("nothing may answer");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}

/// sessionAffinity ClientIP keeps one client on one backend.
pub fn client_ip_affinity(mode: &str) {
    let server = TestServer::start(StoreKind::Redb);
    let mut lab = Lab::new("aff");
    lab.add_node("n1", 1);
    let pods: Vec<_> = (2..5)
        .map(|h| lab.node("n1").add_pod(&format!("b{h}"), h))
        .collect();
    let client = lab.node("n1").add_pod("client", 9);
    let _servers: Vec<_> = pods
        .iter()
        .map(|p| tcp_server(&p.ns, 8080, &p.name))
        .collect();
    apply(
        &server,
        &service(
            "sticky",
            "10.96.10.13",
            &[("http", "TCP", 80, None)],
            json!({"sessionAffinity": "ClientIP"}),
        ),
    );
    let eps: Vec<Ep> = pods.iter().map(|p| Ep::ready(p.ip, "n1")).collect();
    apply(
        &server,
        &endpoint_slice("sticky", &[("http", "TCP", 8080)], &eps),
    );
    let _proxy = ProxyProcess::start(&server, lab.node("n1"), mode);
    let vip = addr("10.96.10.13", 80);
    let first = eventually(PROPAGATION, "the sticky service", || {
        tcp_request(&client.ns, vip).ok()
    });
    for _ in 0..15 {
        let reply = tcp_request(&client.ns, vip).expect("request to the sticky service");
        assert_eq!(reply.backend, first.backend, "affinity broke");
    }
}

/// externalTrafficPolicy Local: the client's address reaches the backend, only
/// this node's endpoints serve, and the health-check port says so.
pub fn external_traffic_policy_local(mode: &str) {
    let server = TestServer::start(StoreKind::Redb);
    let mut lab = Lab::new("etp");
    lab.add_node("n1", 1);
    lab.add_node("n2", 2);
    let a = lab.node("n1").add_pod("a", 2);
    let b = lab.node("n2").add_pod("b", 2);
    let outside = lab.add_client("out", 201);
    let _servers = [tcp_server(&a.ns, 8080, "a"), tcp_server(&b.ns, 8080, "b")];
    apply(
        &server,
        &service(
            "local",
            "10.96.10.14",
            &[("http", "TCP", 80, Some(30090))],
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32100}),
        ),
    );
    apply(
        &server,
        &endpoint_slice(
            "local",
            &[("http", "TCP", 8080)],
            &[Ep::ready(a.ip, "n1"), Ep::ready(b.ip, "n2")],
        ),
    );
    let _p1 = ProxyProcess::start(&server, lab.node("n1"), mode);
    let _p2 = ProxyProcess::start(&server, lab.node("n2"), mode);
    for (node, backend) in [("n1", "a"), ("n2", "b")] {
        let ip = lab.node(node).ip().to_string();
        eventually(PROPAGATION, "the Local NodePort", || {
            tcp_request(&outside.ns, addr(&ip, 30090)).ok()
        });
        for _ in 0..8 {
            let reply = tcp_request(&outside.ns, addr(&ip, 30090)).expect("Local NodePort");
            assert_eq!(
                reply.backend, backend,
                "node {node} must only use its own endpoint"
            );
            assert_eq!(
                reply.peer,
                outside.ip.to_string(),
                "client source must be kept"
            );
        }
        let (status, body) =
            http_get(&outside.ns, addr(&ip, 32100), "/").expect("health-check port");
        assert_eq!(status, 200, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
        assert_eq!(
            body["service"],
            json!({"namespace": "default", "name": "local"})
        );
        assert_eq!(body["localEndpoints"], 1);
    }
    // n2 loses its endpoint: its health check fails, n1's still passes.
    apply(
        &server,
        &endpoint_slice("local", &[("http", "TCP", 8080)], &[Ep::ready(a.ip, "n1")]),
    );
    let n2 = lab.node("n2").ip().to_string();
    let body = eventually(PROPAGATION, "503 from n2's health check", || {
        http_get(&outside.ns, addr(&n2, 32100), "/")
            .ok()
            .filter(|(s, _)| *s == 503)
            .map(|(_, b)| b)
    });
    assert!(body.contains("\"localEndpoints\":0"), "{body}");
    // kube-proxy's metric of Local services left without a local endpoint.
    let no_local =
        r#"kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy="external"}"#;
    assert_eq!(
        metric(&ProxyProcess::metrics(lab.node("n2")), no_local),
        Some(1.0)
    );
    assert_eq!(
        metric(&ProxyProcess::metrics(lab.node("n1")), no_local),
        Some(0.0)
    );
    let n1 = lab.node("n1").ip().to_string();
    assert_eq!(
        http_get(&outside.ns, addr(&n1, 32100), "/")
            .expect("n1 health")
            .0,
        200
    );
    assert!(
        tcp_request(&outside.ns, addr(&n2, 30090)).is_err(),
        "n2 has no local endpoint"
    );
}

/// With no ready endpoint, serving+terminating ones take the traffic, and a
/// new ready endpoint takes over.
pub fn terminating_fallback(mode: &str) {
    let server = TestServer::start(StoreKind::Redb);
    let mut lab = Lab::new("term");
    lab.add_node("n1", 1);
    let draining = lab.node("n1").add_pod("draining", 2);
    let gone = lab.node("n1").add_pod("gone", 3);
    let fresh = lab.node("n1").add_pod("fresh", 4);
    let client = lab.node("n1").add_pod("client", 9);
    let _servers = [
        tcp_server(&draining.ns, 8080, "draining"),
        tcp_server(&gone.ns, 8080, "gone"),
        tcp_server(&fresh.ns, 8080, "fresh"),
    ];
    apply(
        &server,
        &service(
            "roll",
            "10.96.10.15",
            &[("http", "TCP", 80, None)],
            json!({}),
        ),
    );
    apply(
        &server,
        &endpoint_slice(
            "roll",
            &[("http", "TCP", 8080)],
            &[
                Ep::terminating(draining.ip, "n1", true),
                Ep::terminating(gone.ip, "n1", false),
            ],
        ),
    );
    let _proxy = ProxyProcess::start(&server, lab.node("n1"), mode);
    let vip = addr("10.96.10.15", 80);
    eventually(PROPAGATION, "the draining endpoint", || {
        tcp_request(&client.ns, vip).ok()
    });
    for _ in 0..10 {
        assert_eq!(
            tcp_request(&client.ns, vip).expect("request").backend,
            "draining"
        );
    }
    apply(
        &server,
        &endpoint_slice(
            "roll",
            &[("http", "TCP", 8080)],
            &[
                Ep::terminating(draining.ip, "n1", true),
                Ep::ready(fresh.ip, "n1"),
            ],
        ),
    );
    eventually(PROPAGATION, "the ready endpoint to take over", || {
        (tcp_request(&client.ns, vip).ok()?.backend == "fresh").then_some(())
    });
    for _ in 0..10 {
        assert_eq!(
            tcp_request(&client.ns, vip).expect("request").backend,
            "fresh"
        );
    }
}

/// A UDP flow whose backend is removed moves to a live backend (its stale
/// conntrack entry is deleted), while the client keeps its socket.
pub fn udp_flow_moves_after_endpoint_removed(mode: &str) {
    let server = TestServer::start(StoreKind::Redb);
    let mut lab = Lab::new("udp");
    lab.add_node("n1", 1);
    let a = lab.node("n1").add_pod("a", 2);
    let b = lab.node("n1").add_pod("b", 3);
    let client = lab.node("n1").add_pod("client", 9);
    let mut servers = [
        Some(udp_server(&a.ns, 5353, "a")),
        Some(udp_server(&b.ns, 5353, "b")),
    ];
    apply(
        &server,
        &service("dns", "10.96.10.16", &[("dns", "UDP", 53, None)], json!({})),
    );
    let eps = [Ep::ready(a.ip, "n1"), Ep::ready(b.ip, "n1")];
    apply(
        &server,
        &endpoint_slice("dns", &[("dns", "UDP", 5353)], &eps),
    );
    let _proxy = ProxyProcess::start(&server, lab.node("n1"), mode);
    let vip = addr("10.96.10.16", 53);
    let socket = UdpClient::new(&client.ns);
    let first = eventually(PROPAGATION, "the UDP service", || socket.request(vip).ok());
    // The flow is pinned: the same socket keeps the same backend.
    for _ in 0..5 {
        assert_eq!(
            socket.request(vip).expect("same flow").backend,
            first.backend
        );
    }
    let (dead, live) = if first.backend == "a" { (0, 1) } else { (1, 0) };
    servers[dead] = None;
    apply(
        &server,
        &endpoint_slice("dns", &[("dns", "UDP", 5353)], &[eps[live].clone()]),
    );
    let moved = eventually(PROPAGATION, "the flow to move to the live backend", || {
        socket.request(vip).ok()
    });
    assert_ne!(moved.backend, first.backend);
    assert!(servers[live].is_some());
}

/// loadBalancerSourceRanges: only listed sources reach the LoadBalancer IP.
pub fn load_balancer_source_ranges(mode: &str) {
    let server = TestServer::start(StoreKind::Redb);
    let mut lab = Lab::new("lbr");
    lab.add_node("n1", 1);
    let a = lab.node("n1").add_pod("a", 2);
    let allowed = lab.add_client("ok", 201);
    let denied = lab.add_client("no", 202);
    let _srv = tcp_server(&a.ns, 8080, "a");
    apply(
        &server,
        &service(
            "lb",
            "10.96.10.17",
            &[("http", "TCP", 80, Some(30070))],
            json!({"type": "LoadBalancer", "loadBalancerSourceRanges": [format!("{}/32", allowed.ip)]}),
        ),
    );
    server.kubectl_ok(&[
        "patch",
        "service",
        "lb",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.10"}]}}}"#,
    ]);
    apply(
        &server,
        &endpoint_slice("lb", &[("http", "TCP", 8080)], &[Ep::ready(a.ip, "n1")]),
    );
    let _proxy = ProxyProcess::start(&server, lab.node("n1"), mode);
    for c in [&allowed, &denied] {
        c.route_via("192.0.2.10/32", lab.node("n1"));
    }
    let lb = addr("192.0.2.10", 80);
    let reply = eventually(
        PROPAGATION,
        "the LoadBalancer IP from an allowed source",
        || tcp_request(&allowed.ns, lb).ok(),
    );
    assert_eq!(reply.backend, "a");
    for _ in 0..3 {
        assert!(
            tcp_request(&denied.ns, lb).is_err(),
            "a source outside the ranges got through"
        );
    }
    assert_eq!(
        tcp_request(&allowed.ns, lb).expect("allowed again").backend,
        "a"
    );
}
