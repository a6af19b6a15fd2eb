//! The service-proxy behaviour suite (tests/lab/services.rs) with
//! `skiff proxy --mode iptables`, in lab namespaces against a real `skiff server`.

mod common;
mod lab;

const MODE: &str = "iptables";

lab::services::behaviour_suite!("iptables");

/// iptables only: rules removed behind the proxy's back come back with the
/// periodic full resync (every 10 s in the lab).
#[test]
fn resync_repairs_drift() {
    use lab::proxy::{apply_web_service, ProxyProcess};
    use lab::sockets::{eventually, tcp_request, tcp_server};
    use std::time::Duration;

    let server = common::TestServer::start(common::StoreKind::Redb);
    let mut lab = lab::Lab::new("drift");
    lab.add_node("n1", 1);
    let a = lab.node("n1").add_pod("a", 2);
    let client = lab.node("n1").add_pod("client", 9);
    let _srv = tcp_server(&a.ns, 8080, "a");
    apply_web_service(&server, "web", "10.96.10.20", a.ip, "n1");
    let _proxy = ProxyProcess::start(&server, lab.node("n1"), MODE);
    let vip = "10.96.10.20:80".parse().expect("address");
    eventually(Duration::from_secs(20), "the service", || {
        tcp_request(&client.ns, vip).ok()
    });
    let node = &lab.node("n1").ns;
    let iptables = lab::proxy::implementation_in_use(node);
    node.exec(&[iptables, "-t", "nat", "-F", "KUBE-SERVICES"]);
    assert!(
        tcp_request(&client.ns, vip).is_err(),
        "the flushed rules still answered"
    );
    let reply = eventually(
        Duration::from_secs(30),
        "the resync to restore the rules",
        || tcp_request(&client.ns, vip).ok(),
    );
    assert_eq!(reply.backend, "a");
    let save = format!("{iptables}-save");
    let rules = node.exec(&[&save, "-t", "nat"]);
    assert!(rules.contains("-j KUBE-SVC-"), "{rules}");
    // Resyncs add the jumps from the built-in chains once, not once per resync.
    std::thread::sleep(Duration::from_secs(11));
    let rules = node.exec(&[&save, "-t", "nat"]);
    let jumps = rules
        .lines()
        .filter(|l| l.starts_with("-A PREROUTING") && l.ends_with("-j KUBE-SERVICES"))
        .count();
    assert_eq!(jumps, 1, "{rules}");
}

/// `--iptables-backend auto`: a node whose kubelet made its hint chain in
/// nftables gets nft rules; a node without Kubernetes chains gets the
/// (faster) legacy ones. Services work on both.
#[test]
fn auto_backend_follows_the_kubelet_then_prefers_legacy() {
    use lab::proxy::{apply_web_service, ProxyProcess};
    use lab::sockets::{eventually, tcp_request, tcp_server};
    use std::time::Duration;

    let server = common::TestServer::start(common::StoreKind::Redb);
    let mut lab = lab::Lab::new("auto");
    lab.add_node("n1", 1);
    lab.add_node("n2", 2);
    // What the kubelet does on an nftables node (upstream's iptables-wrapper reads it).
    lab.node("n2")
        .ns
        .exec(&["iptables-nft", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"]);
    let a = lab.node("n1").add_pod("a", 2);
    let _srv = tcp_server(&a.ns, 8080, "a");
    apply_web_service(&server, "web", "10.96.10.21", a.ip, "n1");
    let _p1 = ProxyProcess::start(&server, lab.node("n1"), MODE);
    let _p2 = ProxyProcess::start(&server, lab.node("n2"), MODE);
    let vip = "10.96.10.21:80".parse().expect("address");
    for (node, expected) in [("n1", "iptables-legacy"), ("n2", "iptables-nft")] {
        let ns = &lab.node(node).ns;
        let reply = eventually(Duration::from_secs(20), "the service from the node", || {
            tcp_request(ns, vip).ok()
        });
        assert_eq!(reply.backend, "a");
        assert_eq!(lab::proxy::implementation_in_use(ns), expected, "on {node}");
    }
}

/// IPv6 ClusterIPs with ip6tables, with `implementation` (`auto` resolves
/// to legacy on these machines): TCP spread over both backends with the pod's
/// source kept, UDP, from the node too, REJECT for a port without
/// endpoints, and a removed endpoint stops receiving after a partial sync.
fn ipv6_services(implementation: &str) {
    use lab::sockets::eventually;
    use lab::v6::{
        service6, service_map, slice6, tcp6_request, tcp6_server, udp6_request, udp6_server, Node6,
        Proxy6,
    };
    use std::collections::BTreeSet;
    use std::io::ErrorKind;
    use std::time::Duration;

    let node = Node6::new(&format!("v6{implementation}"));
    let a = node.add_pod("a", 2);
    let b = node.add_pod("b", 3);
    let client = node.add_pod("client", 9);
    let _servers = [
        tcp6_server(&a.ns, 8080, "a"),
        tcp6_server(&b.ns, 8080, "b"),
        udp6_server(&a.ns, 5353, "a"),
        udp6_server(&b.ns, 5353, "b"),
    ];
    let ports = [("http", "TCP", 8080), ("dns", "UDP", 5353)];
    let services = [
        service6(
            "web",
            "fd00:10:96::10",
            &[("http", "TCP", 80), ("dns", "UDP", 53)],
        ),
        service6("empty", "fd00:10:96::11", &[("http", "TCP", 80)]),
    ];
    let mut proxy = Proxy6::new(&node, implementation.parse().expect("backend"));
    proxy.sync(service_map(
        &node.name,
        &services,
        &[slice6("web", &ports, &[a.ip, b.ip], &node.name)],
    ));
    let save = format!("ip6tables-{}-save", proxy.backend().as_str());
    let rules = node.ns.exec(&[&save, "-t", "nat"]);
    assert!(rules.contains("-d fd00:10:96::10/128"), "{rules}");

    let vip: std::net::SocketAddr = "[fd00:10:96::10]:80".parse().expect("address");
    let mut seen = BTreeSet::new();
    eventually(Duration::from_secs(10), "both IPv6 backends", || {
        if let Ok(reply) = tcp6_request(&client.ns, vip) {
            let (backend, peer) = reply.split_once(' ').expect("reply");
            assert_eq!(peer, client.ip.to_string(), "pod source kept");
            seen.insert(backend.to_string());
        }
        (seen.len() == 2).then_some(())
    });
    let udp = udp6_request(&client.ns, "[fd00:10:96::10]:53".parse().expect("address"))
        .expect("UDP through the IPv6 ClusterIP");
    assert!(udp.starts_with('a') || udp.starts_with('b'), "{udp}");
    let from_node = tcp6_request(&node.ns, vip).expect("TCP from the node itself");
    assert!(from_node.starts_with('a') || from_node.starts_with('b'));

    // Refused, not timed out (the 2 s connect timeout). The client's kernel
    // acts on the ICMPv6 error only from the SYN's first retransmission
    // (checked with counters: every SYN gets its error), so this takes ~1 s.
    let err = tcp6_request(&client.ns, "[fd00:10:96::11]:80".parse().expect("address"))
        .expect_err("the empty service must not answer");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

    proxy.sync(service_map(
        &node.name,
        &services,
        &[slice6("web", &ports, &[a.ip], &node.name)],
    ));
    for _ in 0..10 {
        let reply = tcp6_request(&client.ns, vip).expect("request after the change");
        assert!(reply.starts_with("a "), "{reply}");
    }
}

#[test]
fn ipv6_services_auto() {
    ipv6_services("auto");
}

#[test]
fn ipv6_services_nft() {
    ipv6_services("nft");
}

/// SCTP through a ClusterIP: the INIT a pod sends to the service address
/// arrives at the backend pod translated to the pod's address and target
/// port (raw sockets on both sides, see tests/lab/sctp.rs).
#[test]
fn sctp_clusterip_is_translated() {
    use lab::proxy::{apply, endpoint_slice, service, Ep, ProxyProcess};
    use lab::sctp::{send_init, RawSctp};
    use lab::sockets::eventually;
    use std::time::Duration;

    let server = common::TestServer::start(common::StoreKind::Redb);
    let mut lab = lab::Lab::new("sctp");
    lab.add_node("n1", 1);
    let a = lab.node("n1").add_pod("a", 2);
    let client = lab.node("n1").add_pod("client", 9);
    apply(
        &server,
        &service(
            "assoc",
            "10.96.10.22",
            &[("sctp", "SCTP", 80, None)],
            serde_json::json!({}),
        ),
    );
    apply(
        &server,
        &endpoint_slice("assoc", &[("sctp", "SCTP", 9999)], &[Ep::ready(a.ip, "n1")]),
    );
    let _proxy = ProxyProcess::start(&server, lab.node("n1"), MODE);
    let backend = RawSctp::open(&a.ns);
    let vip = "10.96.10.22:80".parse().expect("address");
    // A new source port per try: each INIT is a new association to conntrack.
    let mut src_port = 40000;
    let seen = eventually(Duration::from_secs(20), "the INIT at the backend", || {
        src_port += 1;
        send_init(&client.ns, vip, src_port).expect("send INIT");
        backend.next_from(src_port, Duration::from_millis(300))
    });
    assert_eq!(seen.dst, a.ip, "{seen:?}");
    assert_eq!(seen.dst_port, 9999, "{seen:?}");
    assert_eq!(seen.src, client.ip, "pod source kept: {seen:?}");
}

/// Hairpin: a pod reaching its own service lands on itself, and the reply
/// finds its way back because the proxy masquerades that connection (the
/// backend sees the node's bridge address, not its own).
#[test]
fn pod_reaches_itself_through_its_service() {
    use lab::proxy::{apply_web_service, ProxyProcess};
    use lab::sockets::{eventually, tcp_request, tcp_server};
    use std::time::Duration;

    let server = common::TestServer::start(common::StoreKind::Redb);
    let mut lab = lab::Lab::new("hairpin");
    lab.add_node("n1", 1);
    let a = lab.node("n1").add_pod("a", 2);
    let _srv = tcp_server(&a.ns, 8080, "a");
    apply_web_service(&server, "self", "10.96.10.26", a.ip, "n1");
    let _proxy = ProxyProcess::start(&server, lab.node("n1"), MODE);
    let vip = "10.96.10.26:80".parse().expect("address");
    let reply = eventually(
        Duration::from_secs(20),
        "the pod through its own service",
        || tcp_request(&a.ns, vip).ok(),
    );
    assert_eq!(reply.backend, "a");
    assert_eq!(
        reply.peer,
        lab.node("n1").pod_ip(1).to_string(),
        "the hairpin connection is masqueraded to the node's bridge address"
    );
}
