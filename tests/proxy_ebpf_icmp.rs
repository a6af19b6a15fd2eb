//! The tc programs with BPF_PROG_TEST_RUN on crafted ICMP errors and IPv6
//! packets with extension headers: an ICMP/ICMPv6 error about a NATed flow
//! (port unreachable, fragmentation needed, packet too big, time exceeded)
//! reaches the client as an error about the address it used, with valid
//! checksums; IPv6 TCP/UDP behind hop-by-hop, destination-options or
//! fragment headers is translated like any other; later fragments pass.

mod proxy_ebpf_support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proxy_ebpf_support::packets::{csum, csum6};
use proxy_ebpf_support::{endpoint, map_of, service, Plane};
use skiff_proxy::model::{Changes, Protocol, ServiceMap};
use skiff_proxy::Dataplane;

const TC_ACT_OK: u32 = 0;

const NODE: &str = "192.168.50.2";
const CLIENT: &str = "198.51.100.7";
const NODE6: &str = "fd00:50::2";
const CLIENT6: &str = "2001:db8:7::7";

fn put_csum(buf: &mut [u8], off: usize, c: u16) {
    buf[off..off + 2].copy_from_slice(&c.to_be_bytes());
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// An IPv4 header for `len` payload bytes of `proto`, checksum filled in.
fn ipv4(src: &str, dst: &str, proto: u8, len: usize) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (ip(src), ip(dst)) else {
        panic!("IPv4 addresses expected");
    };
    let mut h = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&((20 + len) as u16).to_be_bytes());
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    let c = csum(&h);
    put_csum(&mut h, 10, c);
    h
}

/// A UDP header and payload with its checksum over the IPv4 pseudo header.
fn udp4(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&13u16.to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(b"hello");
    let h = ipv4(src, dst, 17, l4.len());
    let mut pseudo = h[12..20].to_vec();
    pseudo.extend_from_slice(&[0, 17, 0, 13]);
    pseudo.extend_from_slice(&l4);
    let c = csum(&pseudo);
    put_csum(&mut l4, 6, c);
    l4
}

fn eth(ethertype: u16, rest: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 12];
    p.extend_from_slice(&ethertype.to_be_bytes());
    p.extend_from_slice(rest);
    p
}

/// An Ethernet + IPv4 + UDP datagram.
fn udp_packet(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    let l4 = udp4(src, sport, dst, dport);
    let mut p = ipv4(src, dst, 17, l4.len());
    p.extend_from_slice(&l4);
    eth(0x0800, &p)
}

/// An ICMP error of `ty`/`code` (`rest`: the 4 bytes after the checksum,
/// e.g. the next-hop MTU) from `src` to `dst` quoting the IPv4 datagram
/// `quoted` (its IP header and the UDP header and payload).
fn icmp4(src: &str, dst: &str, ty: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(quoted);
    let c = csum(&m);
    put_csum(&mut m, 2, c);
    let mut p = ipv4(src, dst, 1, m.len());
    p.extend_from_slice(&m);
    eth(0x0800, &p)
}

/// The IPv4 datagram (without Ethernet) of a UDP packet from `udp_packet`.
fn quoted4(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    udp_packet(src, sport, dst, dport)[14..].to_vec()
}

/// What an ICMPv4 error says, after checking every checksum: (outer src,
/// outer dst, quoted src, quoted sport, quoted dst, quoted dport, bytes 4..8).
type Said = (String, String, String, u16, String, u16, [u8; 4]);

fn read_icmp4(p: &[u8]) -> Said {
    let outer = &p[14..34];
    assert_eq!(csum(outer), 0, "outer IPv4 header checksum broken");
    let m = &p[34..];
    assert_eq!(csum(m), 0, "ICMP checksum broken");
    let inner = &m[8..28];
    assert_eq!(csum(inner), 0, "quoted IPv4 header checksum broken");
    let a = |b: &[u8], o: usize| Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]).to_string();
    let port = |o: usize| u16::from_be_bytes([m[28 + o], m[29 + o]]);
    (
        a(outer, 12),
        a(outer, 16),
        a(inner, 12),
        port(0),
        a(inner, 16),
        port(2),
        m[4..8].try_into().unwrap(),
    )
}

fn synced(label: &str, map: &ServiceMap) -> Plane {
    let mut plane = Plane::new(label);
    plane.dp().sync(map, &Changes::full(map)).expect("sync");
    plane
}

fn dns(backend: &str, local: bool, node_port: u16) -> skiff_proxy::model::ServicePort {
    let mut dns = service(
        "dns",
        "10.96.0.10",
        53,
        Protocol::Udp,
        vec![endpoint(backend, 5353, local)],
    );
    dns.node_port = Some(node_port);
    dns
}

/// A local backend's port is closed: its "port unreachable" leaves through
/// the node's egress and must name the NodePort the client sent to, coming
/// from the node; an error the client sends about a reply goes the other way.
#[test]
fn port_unreachable_from_a_local_backend_names_the_node_port() {
    let mut plane = synced(
        "icmpl",
        &map_of(&[NODE], vec![dns("10.244.1.5", true, 30053)]),
    );
    let q = udp_packet(CLIENT, 40000, NODE, 30053);
    let (verdict, _) = plane.dp().run_tc(true, &q).expect("test run");
    assert_eq!(verdict, TC_ACT_OK);

    let quoted = quoted4(CLIENT, 40000, "10.244.1.5", 5353);
    let err = icmp4("10.244.1.5", CLIENT, 3, 3, [0; 4], &quoted);
    let (verdict, out) = plane.dp().run_tc(false, &err).expect("test run");
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        read_icmp4(&out),
        (
            NODE.into(),
            CLIENT.into(),
            CLIENT.into(),
            40000,
            NODE.into(),
            30053,
            [0; 4]
        )
    );

    // The client's host says a reply was undeliverable (quoting it as it
    // got it: from the NodePort); the backend must learn it about itself.
    let quoted = quoted4(NODE, 30053, CLIENT, 40000);
    let err = icmp4(CLIENT, NODE, 3, 3, [0; 4], &quoted);
    let (verdict, out) = plane.dp().run_tc(true, &err).expect("test run");
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        read_icmp4(&out),
        (
            CLIENT.into(),
            "10.244.1.5".into(),
            "10.244.1.5".into(),
            5353,
            CLIENT.into(),
            40000,
            [0; 4]
        )
    );

    // An error about a flow we never translated, and a ping, pass as they are.
    let other = icmp4(
        "10.244.1.5",
        CLIENT,
        3,
        3,
        [0; 4],
        &quoted4(CLIENT, 40999, "10.244.1.5", 5353),
    );
    let ping = icmp4(CLIENT, NODE, 8, 0, [0, 1, 0, 1], b"ping-payload");
    for p in [&other, &ping] {
        let (verdict, out) = plane.dp().run_tc(false, p).expect("test run");
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(&out, p);
    }
}

/// A remote backend (flow SNATed to the node): "fragmentation needed" from
/// its side arrives at the node and must reach the client about the NodePort,
/// with the next-hop MTU intact.
#[test]
fn frag_needed_for_a_snated_flow_reaches_the_client() {
    let mut plane = synced(
        "icmps",
        &map_of(&[NODE], vec![dns("10.244.2.9", false, 30054)]),
    );
    let q = udp_packet(CLIENT, 41000, NODE, 30054);
    let (_, out) = plane.dp().run_tc(true, &q).expect("test run");
    // The node's source port towards the backend (the client's, unless taken).
    let nat_port = u16::from_be_bytes([out[34], out[35]]);
    assert_eq!(&out[26..30], &[192, 168, 50, 2], "SNATed to the node");

    let quoted = quoted4(NODE, nat_port, "10.244.2.9", 5353);
    let mtu = [0, 0, 0x05, 0x78]; // unused, next-hop MTU 1400
    for (ty, code) in [(3, 4), (11, 0)] {
        let err = icmp4("10.244.2.9", NODE, ty, code, mtu, &quoted);
        let (verdict, out) = plane.dp().run_tc(true, &err).expect("test run");
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(
            read_icmp4(&out),
            (
                NODE.into(),
                CLIENT.into(),
                CLIENT.into(),
                41000,
                NODE.into(),
                30054,
                mtu
            ),
            "ICMP type {ty} code {code}"
        );
    }
}

/// An IPv6 header: payload `len` bytes, first next header `next`.
fn ipv6(src: &str, dst: &str, next: u8, len: usize) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (ip(src), ip(dst)) else {
        panic!("IPv6 addresses expected");
    };
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(len as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    h
}

fn octets6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().expect("IPv6 address").octets()
}

/// A TCP SYN (`proto` 6) or UDP datagram over IPv6 behind the extension
/// headers `ext` (each given as (its own next-header code, bytes); the
/// next-header fields are filled in), without Ethernet.
fn ipv6_l4(
    proto: u8,
    src: &str,
    sport: u16,
    dst: &str,
    dport: u16,
    ext: &[(u8, Vec<u8>)],
) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    if proto == 6 {
        l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        l4.extend_from_slice(&13u16.to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(b"hello");
    let c = csum6(&octets6(src), &octets6(dst), proto, &l4);
    put_csum(&mut l4, if proto == 6 { 16 } else { 6 }, c);
    let mut chain = Vec::new();
    for (i, (_, bytes)) in ext.iter().enumerate() {
        let mut b = bytes.clone();
        b[0] = ext.get(i + 1).map_or(proto, |(code, _)| *code);
        chain.extend_from_slice(&b);
    }
    let first = ext.first().map_or(proto, |(code, _)| *code);
    let mut p = ipv6(src, dst, first, chain.len() + l4.len());
    p.extend_from_slice(&chain);
    p.extend_from_slice(&l4);
    p
}

/// (src, sport, dst, dport) of an IPv6 packet whose transport header is at
/// `l4` bytes after the IPv6 header, after checking its checksum.
fn read6(p: &[u8], ext_len: usize, proto: u8) -> (String, u16, String, u16) {
    let ip = &p[14..54];
    let l4 = &p[54 + ext_len..];
    assert_eq!(
        csum6(&ip[8..24], &ip[24..40], proto, l4),
        0,
        "L4 checksum broken"
    );
    let a = |o: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&ip[o..o + 16]).unwrap()).to_string();
    let port = |o: usize| u16::from_be_bytes([l4[o], l4[o + 1]]);
    (a(8), port(0), a(24), port(2))
}

/// Hop-by-hop or destination options: 8 bytes of padding options.
fn options() -> Vec<u8> {
    vec![0, 0, 1, 4, 0, 0, 0, 0]
}

/// A fragment header with fragment offset `offset` (8-octet units).
fn fragment(offset: u16, more: bool) -> Vec<u8> {
    let mut b = vec![0, 0];
    b.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, 7]);
    b
}

fn web6(label: &str) -> Plane {
    let mut web = service(
        "web",
        "fd00:96::20",
        80,
        Protocol::Tcp,
        vec![endpoint("fd00:244:1::5", 8080, true)],
    );
    web.node_port = Some(30080);
    let mut dns = service(
        "dns",
        "fd00:96::10",
        53,
        Protocol::Udp,
        vec![endpoint("fd00:244:1::5", 5353, true)],
    );
    dns.node_port = Some(30053);
    synced(label, &map_of(&[NODE, NODE6], vec![web, dns]))
}

/// TCP and UDP behind hop-by-hop, destination-options and (first) fragment
/// headers are DNATed with valid checksums, and the replies restored; a
/// later fragment, which carries no ports, passes untouched.
#[test]
fn ipv6_extension_headers_are_skipped_to_the_ports() {
    let mut plane = web6("icmpx");
    let chains: Vec<Vec<(u8, Vec<u8>)>> = vec![
        vec![(0, options())],
        vec![(0, options()), (60, options())],
        vec![(44, fragment(0, true))],
        vec![(0, options()), (44, fragment(0, false)), (60, options())],
    ];
    for (i, ext) in chains.iter().enumerate() {
        let ext_len: usize = ext.iter().map(|(_, b)| b.len()).sum();
        let sport = 42000 + i as u16;
        for (proto, port, backend_port) in [(6u8, 30080u16, 8080u16), (17, 30053, 5353)] {
            let p = eth(0x86dd, &ipv6_l4(proto, CLIENT6, sport, NODE6, port, ext));
            let (verdict, out) = plane.dp().run_tc(true, &p).expect("test run");
            assert_eq!(verdict, TC_ACT_OK);
            assert_eq!(
                read6(&out, ext_len, proto),
                (CLIENT6.into(), sport, "fd00:244:1::5".into(), backend_port),
                "proto {proto} behind {ext:?}"
            );
            assert_eq!(&out[54..54 + ext_len], &p[54..54 + ext_len], "headers kept");
            let reply = eth(
                0x86dd,
                &ipv6_l4(proto, "fd00:244:1::5", backend_port, CLIENT6, sport, ext),
            );
            let (_, out) = plane.dp().run_tc(false, &reply).expect("test run");
            assert_eq!(
                read6(&out, ext_len, proto),
                (NODE6.into(), port, CLIENT6.into(), sport)
            );
        }
    }
    // A later fragment of the same datagram: no ports in it, left alone.
    let mut later = ipv6(CLIENT6, NODE6, 44, 8 + 16);
    let mut frag = fragment(2, false);
    frag[0] = 17;
    later.extend_from_slice(&frag);
    later.extend_from_slice(&[0x75, 0x30, 0x75, 0x45, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    let later = eth(0x86dd, &later);
    let (verdict, out) = plane.dp().run_tc(true, &later).expect("test run");
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, later);
}

/// ICMPv6 "packet too big" from a local backend about a NodePort flow: the
/// client learns the MTU for the NodePort address it used; the ICMPv6
/// checksum (pseudo header included) stays valid.
#[test]
fn ipv6_packet_too_big_names_the_node_port() {
    let mut plane = web6("icmp6");
    let syn = eth(0x86dd, &ipv6_l4(6, CLIENT6, 43000, NODE6, 30080, &[]));
    let (_, out) = plane.dp().run_tc(true, &syn).expect("test run");
    assert_eq!(read6(&out, 0, 6).2, "fd00:244:1::5");

    let quoted = ipv6_l4(6, CLIENT6, 43000, "fd00:244:1::5", 8080, &[]);
    let mut m = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00]; // packet too big, MTU 1280
    m.extend_from_slice(&quoted);
    let c = csum6(&octets6("fd00:244:1::5"), &octets6(CLIENT6), 58, &m);
    put_csum(&mut m, 2, c);
    let mut err = ipv6("fd00:244:1::5", CLIENT6, 58, m.len());
    err.extend_from_slice(&m);
    let err = eth(0x86dd, &err);
    let (verdict, out) = plane.dp().run_tc(false, &err).expect("test run");
    assert_eq!(verdict, TC_ACT_OK);
    let ip6 = &out[14..54];
    let m = &out[54..];
    assert_eq!(
        csum6(&ip6[8..24], &ip6[24..40], 58, m),
        0,
        "ICMPv6 checksum broken"
    );
    let a = |b: &[u8], o: usize| {
        Ipv6Addr::from(<[u8; 16]>::try_from(&b[o..o + 16]).unwrap()).to_string()
    };
    assert_eq!((a(ip6, 8), a(ip6, 24)), (NODE6.into(), CLIENT6.into()));
    assert_eq!(&m[4..8], &[0, 0, 0x05, 0x00], "MTU kept");
    let quoted = &m[8..];
    let port = |o: usize| u16::from_be_bytes([quoted[40 + o], quoted[41 + o]]);
    assert_eq!(
        (a(quoted, 8), port(0), a(quoted, 24), port(2)),
        (CLIENT6.into(), 43000, NODE6.into(), 30080)
    );
}
