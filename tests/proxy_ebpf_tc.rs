//! The tc programs (NodePort / external IPs) run with BPF_PROG_TEST_RUN on
//! crafted packets: the service map is programmed through the real data plane,
//! then packets go through the ingress/egress programs and we read what they
//! did to them — rewritten addresses, valid checksums, or a drop.

mod proxy_ebpf_support;

use proxy_ebpf_support::packets::{ipv4_addrs as addrs, ipv4_packet};

/// A TCP SYN (`proto` 6) or UDP packet carrying "hello".
fn packet(proto: u8, src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    let flags = (proto == 6).then_some(0x02);
    ipv4_packet(flags, (src, sport), (dst, dport), b"hello")
}
use proxy_ebpf_support::{endpoint, map_of, service, Plane};
use skiff_proxy::model::{Changes, Protocol, TrafficPolicy};
use skiff_proxy::Dataplane;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

const NODE: &str = "192.168.50.2";
const CLIENT: &str = "198.51.100.7";

#[test]
fn nodeport_dnat_to_a_local_backend_and_reply_reverse_nat() {
    let mut plane = Plane::new("tcnp");
    let mut web = service(
        "web",
        "10.96.0.20",
        80,
        Protocol::Tcp,
        vec![endpoint("10.244.1.5", 8080, true)],
    );
    web.node_port = Some(30080);
    let map = map_of(&[NODE], vec![web]);
    plane.dp().sync(&map, &Changes::full(&map)).expect("sync");

    let syn = packet(6, CLIENT, 40000, NODE, 30080);
    let (verdict, out) = plane.dp().run_tc(true, &syn).expect("test run");
    assert_eq!(verdict, TC_ACT_OK);
    // Local backend: destination rewritten, client address kept.
    assert_eq!(
        addrs(&out),
        (CLIENT.into(), 40000, "10.244.1.5".into(), 8080)
    );

    // The backend's reply leaves through the node interface's egress and
    // gets the NodePort address back.
    let reply = packet(6, "10.244.1.5", 8080, CLIENT, 40000);
    let (verdict, out) = plane.dp().run_tc(false, &reply).expect("test run");
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(addrs(&out), (NODE.into(), 30080, CLIENT.into(), 40000));

    // The flow's next packet goes to the same backend via the connection table.
    let (_, out) = plane.dp().run_tc(true, &syn).expect("test run");
    assert_eq!(addrs(&out).2, "10.244.1.5");

    // Traffic to another port of the node, or a NodePort on an address that
    // is not the node's, passes untouched.
    for p in [
        packet(6, CLIENT, 40001, NODE, 22),
        packet(6, CLIENT, 40002, "10.0.0.9", 30080),
    ] {
        let (verdict, out) = plane.dp().run_tc(true, &p).expect("test run");
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(out, p);
    }
}

#[test]
fn nodeport_to_a_remote_backend_is_snated_to_the_node() {
    let mut plane = Plane::new("tcsnat");
    let mut dns = service(
        "dns",
        "10.96.0.10",
        53,
        Protocol::Udp,
        vec![endpoint("10.244.2.9", 5353, false)],
    );
    dns.node_port = Some(30053);
    let map = map_of(&[NODE], vec![dns]);
    plane.dp().sync(&map, &Changes::full(&map)).expect("sync");

    let q = packet(17, CLIENT, 41000, NODE, 30053);
    let (verdict, out) = plane.dp().run_tc(true, &q).expect("test run");
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(addrs(&out), (NODE.into(), 41000, "10.244.2.9".into(), 5353));

    // The remote backend answers the node; ingress restores both ends.
    let reply = packet(17, "10.244.2.9", 5353, NODE, 41000);
    let (verdict, out) = plane.dp().run_tc(true, &reply).expect("test run");
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(addrs(&out), (NODE.into(), 30053, CLIENT.into(), 41000));
}

#[test]
fn local_policy_keeps_the_client_address_for_every_backend() {
    let mut plane = Plane::new("tclocal");
    let mut web = service(
        "web",
        "10.96.0.21",
        80,
        Protocol::Tcp,
        vec![endpoint("10.244.1.6", 8080, true)],
    );
    web.node_port = Some(30081);
    web.external_policy = TrafficPolicy::Local;
    let map = map_of(&[NODE], vec![web]);
    plane.dp().sync(&map, &Changes::full(&map)).expect("sync");
    let (_, out) = plane
        .dp()
        .run_tc(true, &packet(6, CLIENT, 40100, NODE, 30081))
        .expect("run");
    assert_eq!(
        addrs(&out),
        (CLIENT.into(), 40100, "10.244.1.6".into(), 8080)
    );
}

#[test]
fn load_balancer_source_ranges_drop_other_sources() {
    let mut plane = Plane::new("tcsrc");
    let mut lb = service(
        "lb",
        "10.96.0.30",
        443,
        Protocol::Tcp,
        vec![endpoint("10.244.1.7", 8443, true)],
    );
    lb.load_balancer_ips = vec!["192.0.2.10".parse().unwrap()];
    lb.load_balancer_source_ranges = vec!["198.51.100.0/24".parse().unwrap()];
    let map = map_of(&[NODE], vec![lb]);
    plane.dp().sync(&map, &Changes::full(&map)).expect("sync");

    let outsider = packet(6, "203.0.113.5", 40200, "192.0.2.10", 443);
    let (verdict, _) = plane.dp().run_tc(true, &outsider).expect("test run");
    assert_eq!(
        verdict, TC_ACT_SHOT,
        "a source outside loadBalancerSourceRanges must be dropped"
    );

    let allowed = packet(6, CLIENT, 40201, "192.0.2.10", 443);
    let (verdict, out) = plane.dp().run_tc(true, &allowed).expect("test run");
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        addrs(&out),
        (CLIENT.into(), 40201, "10.244.1.7".into(), 8443)
    );

    let status = plane.dp().status().expect("status").to_string();
    // One flow balanced (its first packet, 59 bytes on the wire, rewritten)
    // and one dropped, listed under the service's name.
    let lb = status
        .split_once("  default/lb\n")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("service default/lb not listed: {status}"));
    assert!(
        lb.contains(
            "    192.0.2.10:443/tcp LoadBalancer connections=1 packets=1 bytes=59 dropped=1"
        ),
        "{status}"
    );
}

fn flows_through(plane: &mut Plane, map: &skiff_proxy::model::ServiceMap) -> Vec<String> {
    plane.dp().sync(map, &Changes::full(map)).expect("sync");
    (42000..42060)
        .map(|port| {
            let (_, out) = plane
                .dp()
                .run_tc(true, &packet(6, CLIENT, port, NODE, 30090))
                .expect("run");
            addrs(&out).2
        })
        .collect()
}

#[test]
fn maglev_gives_every_node_the_same_backend_per_flow() {
    let eps: Vec<_> = (1..=5)
        .map(|i| endpoint(&format!("10.244.1.{i}"), 8080, true))
        .collect();
    let mut web = service("web", "10.96.0.40", 80, Protocol::Tcp, eps.clone());
    web.node_port = Some(30090);
    let map = map_of(&[NODE], vec![web.clone()]);
    // Two nodes (separate pins, separate connection tables), the same flows.
    let on_a = flows_through(&mut Plane::new("tcmga"), &map);
    let on_b = flows_through(&mut Plane::new("tcmgb"), &map);
    assert_eq!(on_a, on_b, "nodes disagree on flows' backends");
    let spread: std::collections::BTreeSet<_> = on_a.iter().collect();
    assert!(
        spread.len() >= 4,
        "60 flows over 5 backends hit only {spread:?}"
    );

    // A third node that already saw 10.244.1.3 go away: flows of the other
    // backends keep theirs (Maglev's small disruption), only its flows move.
    web.endpoints.retain(|e| e.ip.to_string() != "10.244.1.3");
    web.cluster_endpoints = web.endpoints.clone();
    web.external_endpoints = web.endpoints.clone();
    let on_c = flows_through(&mut Plane::new("tcmgc"), &map_of(&[NODE], vec![web]));
    let moved = on_a
        .iter()
        .zip(&on_c)
        .filter(|(a, c)| a.as_str() != "10.244.1.3" && a != c)
        .count();
    assert!(!on_c.iter().any(|c| c == "10.244.1.3"));
    assert!(
        moved <= 3,
        "{moved} of 60 flows of surviving backends moved"
    );
}

#[test]
fn external_ip_flows_to_remote_backends_leave_from_the_node_address() {
    let mut plane = Plane::new("tcext");
    let mut lb = service(
        "lb",
        "10.96.0.31",
        443,
        Protocol::Tcp,
        vec![endpoint("10.244.2.8", 8443, false)],
    );
    lb.load_balancer_ips = vec!["192.0.2.11".parse().unwrap()];
    let map = map_of(&[NODE], vec![lb]);
    plane.dp().sync(&map, &Changes::full(&map)).expect("sync");

    // SNAT to the node, not to the LoadBalancer IP the node does not own:
    // the other node's backend must route its reply back here.
    let syn = packet(6, CLIENT, 40300, "192.0.2.11", 443);
    let (verdict, out) = plane.dp().run_tc(true, &syn).expect("test run");
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(addrs(&out), (NODE.into(), 40300, "10.244.2.8".into(), 8443));
    let reply = packet(6, "10.244.2.8", 8443, NODE, 40300);
    let (_, out) = plane.dp().run_tc(true, &reply).expect("test run");
    assert_eq!(
        addrs(&out),
        ("192.0.2.11".into(), 443, CLIENT.into(), 40300)
    );
}

/// tc links on live interfaces: found in the node's namespace, kept (not
/// stacked) across a restart, added for a new interface at the next sync
/// (whose address then answers NodePorts) and unpinned when it goes.
#[test]
fn tc_programs_follow_the_node_interfaces_across_restarts() {
    use proxy_ebpf_support::{unique, veth, Bpffs, Cgroup, Netns};
    use skiff_proxy::ebpf::{EbpfConfig, EbpfDataplane};

    let node = Netns::new(&unique("tcifn"));
    let peer = Netns::new(&unique("tcifp"));
    veth(&node, NODE, &peer, "192.168.50.9");
    let bpffs = Bpffs::new();
    let name = unique("tcif");
    let cgroup = Cgroup::new(&name);
    let cfg = EbpfConfig {
        pin_dir: bpffs.pin_dir(&name),
        cgroup: cgroup.path().to_path_buf(),
        interfaces: Vec::new(),
        discover_interfaces: true,
        netns: Some(std::path::Path::new("/var/run/netns").join(node.name())),
        maglev_size: 251,
        tcp_destroy_grace: std::time::Duration::from_secs(1),
    };
    let tc_progs = |dp: &EbpfDataplane, dev: &str| {
        let (ingress, egress) = dp.tc_programs(dev).expect("tcx query");
        // The kernel keeps 15 characters of a program's name.
        (
            ingress.iter().filter(|n| *n == "skiff_tc_ingres").count(),
            egress.iter().filter(|n| *n == "skiff_tc_egress").count(),
        )
    };
    let mut web = service(
        "web",
        "10.96.0.50",
        80,
        Protocol::Tcp,
        vec![endpoint("10.244.1.5", 8080, true)],
    );
    web.node_port = Some(30085);
    // No node addresses from the API: the interfaces' own addresses count.
    let map = map_of(&[], vec![web]);

    let mut dp = EbpfDataplane::new(cfg.clone()).expect("load");
    assert_eq!(dp.interfaces(), vec!["eth0".to_string()]);
    assert_eq!(tc_progs(&dp, "eth0"), (1, 1));
    drop(dp);
    dp = EbpfDataplane::new(cfg.clone()).expect("restart");
    assert_eq!(
        tc_progs(&dp, "eth0"),
        (1, 1),
        "a restart must not stack programs"
    );

    node.exec(&[
        "ip",
        "link",
        "add",
        "up1",
        "type",
        "veth",
        "peer",
        "name",
        "eth1",
        "netns",
        peer.name(),
    ]);
    node.exec(&["ip", "addr", "add", "192.168.60.1/24", "dev", "up1"]);
    node.exec(&["ip", "link", "set", "up1", "up"]);
    dp.sync(&map, &Changes::full(&map)).expect("sync");
    assert_eq!(tc_progs(&dp, "up1"), (1, 1));
    for dst in [NODE, "192.168.60.1"] {
        let (_, out) = dp
            .run_tc(true, &packet(6, CLIENT, 40400, dst, 30085))
            .expect("test run");
        assert_eq!(addrs(&out).2, "10.244.1.5", "NodePort on {dst}");
    }

    node.exec(&["ip", "link", "del", "up1"]);
    dp.sync(&map, &Changes::full(&map)).expect("sync");
    assert_eq!(dp.interfaces(), vec!["eth0".to_string()]);
    let links = dp.status().expect("status").to_string();
    assert!(!links.contains("tc-up1"), "{links}");
    assert!(links.contains("tc-eth0-ingress"), "{links}");
    dp.cleanup().expect("cleanup");
    assert_eq!(
        tc_progs(&dp, "eth0"),
        (0, 0),
        "cleanup detaches the tc programs"
    );
}

/// Two clients using the same source port through one node to one remote
/// backend: SNAT makes both flows come from the node, so the second gets
/// another source port, and each reply finds its own client.
#[test]
fn snat_gives_colliding_client_ports_distinct_node_ports() {
    let mut plane = Plane::new("tcport");
    let mut web = service(
        "web",
        "10.96.0.60",
        80,
        Protocol::Tcp,
        vec![endpoint("10.244.2.7", 8080, false)],
    );
    web.node_port = Some(30086);
    let map = map_of(&[NODE], vec![web]);
    plane.dp().sync(&map, &Changes::full(&map)).expect("sync");

    let other = "203.0.113.9";
    let mut sent = Vec::new();
    for client in [CLIENT, other] {
        let (verdict, out) = plane
            .dp()
            .run_tc(true, &packet(6, client, 45000, NODE, 30086))
            .expect("test run");
        assert_eq!(verdict, TC_ACT_OK);
        let (src, sport, dst, _) = addrs(&out);
        assert_eq!((src.as_str(), dst.as_str()), (NODE, "10.244.2.7"));
        sent.push(sport);
    }
    assert_eq!(sent[0], 45000, "a free client port is kept");
    assert_ne!(sent[1], sent[0], "the second flow needs another node port");
    for (client, port) in [(CLIENT, sent[0]), (other, sent[1])] {
        let reply = packet(6, "10.244.2.7", 8080, NODE, port);
        let (_, out) = plane.dp().run_tc(true, &reply).expect("test run");
        assert_eq!(addrs(&out), (NODE.into(), 30086, client.into(), 45000));
    }
    // The flows keep their ports for their next packets.
    let (_, out) = plane
        .dp()
        .run_tc(true, &packet(6, other, 45000, NODE, 30086))
        .expect("test run");
    assert_eq!(addrs(&out).1, sent[1]);
}
