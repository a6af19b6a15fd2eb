//! The tc programs' connection table across endpoint changes, run with
//! BPF_PROG_TEST_RUN on crafted IPv4 packets (tests/proxy_ebpf_tc.rs covers
//! the translations themselves). What a rolling update needs: a TCP
//! connection keeps its backend after that backend leaves the Service (it
//! is terminating and still serving what it accepted), while a new
//! connection — a SYN, even one reusing a client port whose old entry
//! points at the removed backend — is balanced over the current backends.
//! UDP flows to a removed backend move at once, as kube-proxy flushes their
//! conntrack entries.

mod proxy_ebpf_support;

use proxy_ebpf_support::packets::{ipv4_addrs as addrs, ipv4_packet};

/// A TCP packet with `flags`, or UDP when `flags` is `None`, carrying a
/// request.
fn packet(flags: Option<u8>, src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    ipv4_packet(flags, (src, sport), (dst, dport), b"GET / HTTP/1.0\r\n\r\n")
}
use proxy_ebpf_support::{endpoint, map_of, service, Plane};
use skiff_proxy::model::{Changes, Endpoint, Protocol, ServiceMap};
use skiff_proxy::Dataplane;

const TC_ACT_OK: u32 = 0;

const NODE: &str = "192.168.51.2";
const CLIENT: &str = "198.51.100.8";
const NODE_PORT: u16 = 30180;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;
const FIN_ACK: u8 = 0x11;

/// A NodePort service over `eps` on a node with address `NODE`.
fn web(proto: Protocol, eps: Vec<Endpoint>) -> ServiceMap {
    let mut web = service("web", "10.96.1.80", 80, proto, eps);
    web.node_port = Some(NODE_PORT);
    map_of(&[NODE], vec![web])
}

/// Sends `p` through the ingress program; returns the rewritten packet's
/// (src, sport, dst, dport).
fn ingress(plane: &mut Plane, p: &[u8]) -> (String, u16, String, u16) {
    let (verdict, out) = plane.dp().run_tc(true, p).expect("test run");
    assert_eq!(verdict, TC_ACT_OK, "packet dropped");
    addrs(&out)
}

/// A connection through the NodePort is opened, then its backend leaves
/// the Service; with `local` backends the client address is kept, else the
/// flow is SNATed to the node.
fn established_flow_survives_removal(label: &str, local: bool) {
    let mut plane = Plane::new(label);
    let eps = vec![
        endpoint("10.244.1.21", 8080, local),
        endpoint("10.244.2.22", 8080, local),
    ];
    let map = web(Protocol::Tcp, eps.clone());
    plane.dp().sync(&map, &Changes::full(&map)).expect("sync");

    let (src, nat_port, backend, _) = ingress(
        &mut plane,
        &packet(Some(SYN), CLIENT, 47000, NODE, NODE_PORT),
    );
    assert_eq!(src, if local { CLIENT } else { NODE });
    let other = eps
        .iter()
        .map(|e| e.ip.to_string())
        .find(|ip| *ip != backend)
        .expect("the other backend");

    // The chosen pod starts terminating: the Service drops it.
    let map = web(
        Protocol::Tcp,
        eps.into_iter()
            .filter(|e| e.ip.to_string() != backend)
            .collect(),
    );
    plane.dp().sync(&map, &Changes::full(&map)).expect("sync");

    // The rest of the connection still reaches the pod that accepted it:
    // sent elsewhere, its packets would be answered with a reset.
    for flags in [ACK, PSH_ACK, FIN_ACK] {
        let (s, p, d, dp) = ingress(
            &mut plane,
            &packet(Some(flags), CLIENT, 47000, NODE, NODE_PORT),
        );
        assert_eq!(
            (s.as_str(), p, d.as_str(), dp),
            (src.as_str(), nat_port, backend.as_str(), 8080),
            "packet with TCP flags {flags:#04x} of an established flow moved"
        );
    }
    // Its answers still get the NodePort address back: a local backend's
    // leave through the egress program, a remote one's come in to the node.
    let (to, is_ingress) = if local { (CLIENT, false) } else { (NODE, true) };
    let reply = packet(Some(PSH_ACK), &backend, 8080, to, nat_port);
    let (verdict, out) = plane.dp().run_tc(is_ingress, &reply).expect("run");
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        addrs(&out),
        (NODE.into(), NODE_PORT, CLIENT.into(), 47000),
        "reply of the removed backend"
    );

    // A new connection from the same client port (the old one is over)
    // goes to a backend of the Service, not to the stale entry's.
    let (_, _, d, _) = ingress(
        &mut plane,
        &packet(Some(SYN), CLIENT, 47000, NODE, NODE_PORT),
    );
    assert_eq!(
        d, other,
        "a SYN followed a stale entry to a removed backend"
    );
    // ... and stays there for the rest of that connection.
    let (_, _, d, _) = ingress(
        &mut plane,
        &packet(Some(ACK), CLIENT, 47000, NODE, NODE_PORT),
    );
    assert_eq!(d, other);
}

#[test]
fn established_flow_to_a_remote_backend_keeps_it_after_removal() {
    established_flow_survives_removal("tcflr", false);
}

#[test]
fn established_flow_to_a_local_backend_keeps_it_after_removal() {
    established_flow_survives_removal("tcfll", true);
}

/// A retransmitted SYN (or a new connection on a reused client port) whose
/// entry points at a backend still in the Service keeps that entry: same
/// backend, same SNAT source port.
#[test]
fn a_repeated_syn_keeps_a_live_backend_and_its_nat_port() {
    let mut plane = Plane::new("tcfls");
    let eps = (1..=4)
        .map(|i| endpoint(&format!("10.244.2.{i}"), 8080, false))
        .collect();
    let map = web(Protocol::Tcp, eps);
    plane.dp().sync(&map, &Changes::full(&map)).expect("sync");
    for port in 47100..47110 {
        let syn = packet(Some(SYN), CLIENT, port, NODE, NODE_PORT);
        let first = ingress(&mut plane, &syn);
        assert_eq!(ingress(&mut plane, &syn), first);
        let ack = packet(Some(ACK), CLIENT, port, NODE, NODE_PORT);
        assert_eq!(ingress(&mut plane, &ack), first);
    }
}

/// A UDP flow has no connection to keep: once its backend leaves, its next
/// datagram goes to a remaining backend.
#[test]
fn udp_flow_moves_when_its_backend_is_removed() {
    let mut plane = Plane::new("tcflu");
    let eps = vec![
        endpoint("10.244.2.31", 5353, false),
        endpoint("10.244.2.32", 5353, false),
    ];
    let map = web(Protocol::Udp, eps.clone());
    plane.dp().sync(&map, &Changes::full(&map)).expect("sync");
    let q = packet(None, CLIENT, 47200, NODE, NODE_PORT);
    let (_, _, first, _) = ingress(&mut plane, &q);
    let map = web(
        Protocol::Udp,
        eps.into_iter()
            .filter(|e| e.ip.to_string() != first)
            .collect(),
    );
    plane.dp().sync(&map, &Changes::full(&map)).expect("sync");
    let (_, _, next, _) = ingress(&mut plane, &q);
    assert_ne!(next, first, "a UDP flow stayed on a removed backend");
}
