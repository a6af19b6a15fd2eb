//! The tc programs over IPv6, run with BPF_PROG_TEST_RUN on crafted packets
//! (as tests/proxy_ebpf_tc.rs does for IPv4): NodePort DNAT and reverse NAT,
//! SNAT to the node's IPv6 address for remote backends, externalIPs leaving
//! from the IPv6 SNAT source, loadBalancerSourceRanges, and what passes
//! untouched. Every rewritten packet must carry a valid L4 checksum.

mod proxy_ebpf_support;

use std::net::Ipv6Addr;

use proxy_ebpf_support::packets::l4_csum6 as l4_csum;
use proxy_ebpf_support::{endpoint, map_of, service, Plane};
use skiff_proxy::model::{Changes, Protocol, ServiceMap, TrafficPolicy};
use skiff_proxy::Dataplane;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

const NODE4: &str = "192.168.50.2";
const NODE: &str = "fd00:50::2";
const CLIENT: &str = "2001:db8:7::7";

/// An Ethernet + IPv6 + TCP (SYN) or UDP packet with a correct checksum.
fn packet(proto: u8, src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    let src: Ipv6Addr = src.parse().unwrap();
    let dst: Ipv6Addr = dst.parse().unwrap();
    let payload = b"hello";
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    if proto == 6 {
        l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(payload);
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[proto, 64]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = l4_csum(&ip, &l4);
    let off = if proto == 6 { 16 } else { 6 };
    l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
    let mut p = vec![0u8; 12];
    p.extend_from_slice(&0x86ddu16.to_be_bytes());
    p.extend_from_slice(&ip);
    p.extend_from_slice(&l4);
    p
}

/// (src, sport, dst, dport) of a packet, after checking its L4 checksum.
fn addrs(p: &[u8]) -> (String, u16, String, u16) {
    let ip = &p[14..54];
    let l4 = &p[54..];
    assert_eq!(l4_csum(ip, l4), 0, "L4 checksum broken");
    let a = |o: usize| {
        let octets: [u8; 16] = ip[o..o + 16].try_into().unwrap();
        Ipv6Addr::from(octets).to_string()
    };
    let port = |o: usize| u16::from_be_bytes([l4[o], l4[o + 1]]);
    (a(8), port(0), a(24), port(2))
}

fn synced(label: &str, map: &ServiceMap) -> Plane {
    let mut plane = Plane::new(label);
    plane.dp().sync(map, &Changes::full(map)).expect("sync");
    plane
}

#[test]
fn ipv6_nodeport_dnat_to_a_local_backend_and_reply_reverse_nat() {
    let mut web = service(
        "web",
        "fd00:96::20",
        80,
        Protocol::Tcp,
        vec![endpoint("fd00:244:1::5", 8080, true)],
    );
    web.node_port = Some(30080);
    let mut plane = synced("tc6np", &map_of(&[NODE4, NODE], vec![web]));

    let syn = packet(6, CLIENT, 40000, NODE, 30080);
    let (verdict, out) = plane.dp().run_tc(true, &syn).expect("test run");
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        addrs(&out),
        (CLIENT.into(), 40000, "fd00:244:1::5".into(), 8080)
    );

    let reply = packet(6, "fd00:244:1::5", 8080, CLIENT, 40000);
    let (verdict, out) = plane.dp().run_tc(false, &reply).expect("test run");
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(addrs(&out), (NODE.into(), 30080, CLIENT.into(), 40000));

    // The next packet of the flow finds the connection table.
    let (_, out) = plane.dp().run_tc(true, &syn).expect("test run");
    assert_eq!(addrs(&out).2, "fd00:244:1::5");

    // Another port of the node, or the NodePort on an address that is not
    // the node's, pass untouched.
    for p in [
        packet(6, CLIENT, 40001, NODE, 22),
        packet(6, CLIENT, 40002, "fd00:50::99", 30080),
    ] {
        let (verdict, out) = plane.dp().run_tc(true, &p).expect("test run");
        assert_eq!((verdict, out), (TC_ACT_OK, p));
    }

    // Three packets of one flow rewritten, 79 bytes each on the wire.
    let status = plane.dp().status().expect("status").to_string();
    let web = status
        .split_once("  default/web\n")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("service default/web not listed: {status}"));
    assert!(
        web.contains("    [::]:30080/tcp NodePort connections=1 packets=3 bytes=237 dropped=0"),
        "{status}"
    );
}

#[test]
fn ipv6_nodeport_to_a_remote_backend_is_snated_to_the_node() {
    let mut dns = service(
        "dns",
        "fd00:96::a",
        53,
        Protocol::Udp,
        vec![endpoint("fd00:244:2::9", 5353, false)],
    );
    dns.node_port = Some(30053);
    let mut plane = synced("tc6snat", &map_of(&[NODE4, NODE], vec![dns]));

    let q = packet(17, CLIENT, 41000, NODE, 30053);
    let (verdict, out) = plane.dp().run_tc(true, &q).expect("test run");
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        addrs(&out),
        (NODE.into(), 41000, "fd00:244:2::9".into(), 5353)
    );

    // The remote backend answers the node; ingress restores both ends.
    let reply = packet(17, "fd00:244:2::9", 5353, NODE, 41000);
    let (verdict, out) = plane.dp().run_tc(true, &reply).expect("test run");
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(addrs(&out), (NODE.into(), 30053, CLIENT.into(), 41000));
}

#[test]
fn ipv6_external_ip_to_a_remote_backend_leaves_from_the_node_address() {
    let mut web = service(
        "ext",
        "fd00:96::30",
        443,
        Protocol::Tcp,
        vec![endpoint("fd00:244:2::7", 8443, false)],
    );
    web.external_ips = vec!["2001:db8:ee::10".parse().unwrap()];
    let mut plane = synced("tc6ext", &map_of(&[NODE4, NODE], vec![web]));

    let syn = packet(6, CLIENT, 42000, "2001:db8:ee::10", 443);
    let (verdict, out) = plane.dp().run_tc(true, &syn).expect("test run");
    assert_eq!(verdict, TC_ACT_OK);
    // The node does not own the external IP: replies must come back to an
    // address it does own, its first IPv6 address.
    assert_eq!(
        addrs(&out),
        (NODE.into(), 42000, "fd00:244:2::7".into(), 8443)
    );
    let reply = packet(6, "fd00:244:2::7", 8443, NODE, 42000);
    let (_, out) = plane.dp().run_tc(true, &reply).expect("test run");
    assert_eq!(
        addrs(&out),
        ("2001:db8:ee::10".into(), 443, CLIENT.into(), 42000)
    );
}

#[test]
fn ipv6_load_balancer_source_ranges_and_local_policy() {
    let mut lb = service(
        "lb",
        "fd00:96::40",
        443,
        Protocol::Tcp,
        vec![endpoint("fd00:244:2::8", 8443, false)],
    );
    lb.load_balancer_ips = vec!["2001:db8:1b::10".parse().unwrap()];
    lb.load_balancer_source_ranges = vec![
        "2001:db8:7::/48".parse().unwrap(),
        "198.51.100.0/24".parse().unwrap(),
    ];
    // Local policy: no SNAT even though the backend is remote.
    lb.external_policy = TrafficPolicy::Local;
    let mut plane = synced("tc6src", &map_of(&[NODE4, NODE], vec![lb]));

    let outsider = packet(6, "2001:db8:8::5", 40200, "2001:db8:1b::10", 443);
    let (verdict, _) = plane.dp().run_tc(true, &outsider).expect("test run");
    assert_eq!(verdict, TC_ACT_SHOT, "source outside the ranges");

    let allowed = packet(6, CLIENT, 40201, "2001:db8:1b::10", 443);
    let (verdict, out) = plane.dp().run_tc(true, &allowed).expect("test run");
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        addrs(&out),
        (CLIENT.into(), 40201, "fd00:244:2::8".into(), 8443)
    );
    let status = plane.dp().status().expect("status").to_string();
    assert!(
        status.contains(
            "[2001:db8:1b::10]:443/tcp LoadBalancer connections=1 packets=1 bytes=79 dropped=1"
        ),
        "{status}"
    );
}
