//! IPv6 NodePorts through the tc programs on live interfaces: an outside
//! client, a node whose interfaces carry the programs, a pod on that node and
//! a pod behind a second node.
//!
//! ```text
//!  client eth0 fd00:77::2 ── eth0 fd00:77::1  node n1  pod0 fd00:244:1::1 ── pod a fd00:244:1::5
//!                                              eth1 fd00:78::1
//!                                               │
//!                                  n2 eth0 fd00:78::2  pod0 fd00:244:2::1 ── pod b fd00:244:2::5
//! ```
//!
//! A local backend sees the client's own address; a remote one sees n1's
//! (SNAT), and its replies come back through n1's eth1 for the reverse NAT.
//! A process on n1 outside the node's cgroup reaches IPv6 ClusterIPs through
//! the same programs (socket LB does not see it).

mod proxy_ebpf_support;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use proxy_ebpf_support::{endpoint, map_of, service, unique, wait_until, Netns, Plane};
use skiff_proxy::model::{Changes, Protocol};
use skiff_proxy::Dataplane;

const CLIENT: &str = "fd00:77::2";
const NODE: &str = "fd00:77::1";

fn netns_path(ns: &Netns) -> PathBuf {
    PathBuf::from("/var/run/netns").join(ns.name())
}

fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    skiff_cni::Netns::open(netns_path(ns))
        .expect("open netns")
        .run(f)
        .expect("enter netns")
}

/// Links `a`'s `a_if` (address `a_ip`/64) with `b`'s `b_if` (`b_ip`/64).
fn link(a: &Netns, a_if: &str, a_ip: &str, b: &Netns, b_if: &str, b_ip: &str) {
    a.exec(&[
        "ip",
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]);
    for (ns, dev, ip) in [(a, a_if, a_ip), (b, b_if, b_ip)] {
        // nodad: usable at once instead of after duplicate address detection.
        let cidr = format!("{ip}/64");
        ns.exec(&["ip", "-6", "addr", "add", &cidr, "dev", dev, "nodad"]);
        ns.exec(&["ip", "link", "set", dev, "up"]);
    }
}

/// Serves TCP on [::]:8080 in `ns`: each connection gets "<name> <peer ip>".
fn tcp_server(ns: &Netns, name: &'static str) {
    let listener = in_ns(ns, || TcpListener::bind("[::]:8080")).expect("bind TCP");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            if let Ok(peer) = conn.peer_addr() {
                let _ = std::io::Write::write_all(
                    &mut conn,
                    format!("{name} {}\n", peer.ip()).as_bytes(),
                );
            }
        }
    });
}

/// Serves UDP on [::]:5353 in `ns`: each datagram gets "<name> <peer ip>".
fn udp_server(ns: &Netns, name: &'static str) {
    let socket = in_ns(ns, || UdpSocket::bind("[::]:5353")).expect("bind UDP");
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, peer)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(format!("{name} {}", peer.ip()).as_bytes(), peer);
        }
    });
}

fn tcp_request(ns: &Netns, to: SocketAddr) -> std::io::Result<String> {
    let mut conn = in_ns(ns, || {
        TcpStream::connect_timeout(&to, Duration::from_secs(2))
    })?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    Ok(text.trim().to_string())
}

/// The reply text and the address it came from.
fn udp_request(ns: &Netns, to: SocketAddr) -> std::io::Result<(String, SocketAddr)> {
    let socket = in_ns(ns, || UdpSocket::bind("[::]:0"))?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    socket.send_to(b"ping", to)?;
    let mut buf = [0u8; 512];
    let (n, from) = socket.recv_from(&mut buf)?;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

/// The namespaces of the lab (see the module docs), linked and routed.
struct Topology {
    client: Netns,
    n1: Netns,
    n2: Netns,
    a: Netns,
    b: Netns,
}

fn topology(label: &str) -> Topology {
    let p = unique(label);
    let client = Netns::new(&format!("{p}-c"));
    let n1 = Netns::new(&format!("{p}-n1"));
    let n2 = Netns::new(&format!("{p}-n2"));
    let a = Netns::new(&format!("{p}-a"));
    let b = Netns::new(&format!("{p}-b"));
    link(&client, "eth0", CLIENT, &n1, "eth0", NODE);
    link(&n1, "pod0", "fd00:244:1::1", &a, "eth0", "fd00:244:1::5");
    link(&n1, "eth1", "fd00:78::1", &n2, "eth0", "fd00:78::2");
    link(&n2, "pod0", "fd00:244:2::1", &b, "eth0", "fd00:244:2::5");
    for (ns, via) in [
        (&a, "fd00:244:1::1"),
        (&b, "fd00:244:2::1"),
        (&n2, "fd00:78::1"),
    ] {
        ns.exec(&["ip", "-6", "route", "add", "default", "via", via]);
    }
    n1.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "fd00:244:2::/64",
        "via",
        "fd00:78::2",
    ]);
    for ns in [&n1, &n2] {
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    }
    Topology {
        client,
        n1,
        n2,
        a,
        b,
    }
}

#[test]
fn ipv6_nodeports_reach_local_and_remote_backends() {
    let Topology {
        client,
        n1,
        n2: _n2,
        a,
        b,
    } = topology("l6");
    tcp_server(&a, "a");
    tcp_server(&b, "b");
    udp_server(&b, "b");
    let n1_path = netns_path(&n1);
    let mut plane = Plane::with("l6p", |cfg| {
        cfg.netns = Some(n1_path);
        cfg.interfaces = vec!["eth0".into(), "eth1".into()];
    });
    let mut web = service(
        "web",
        "fd00:96::21",
        80,
        Protocol::Tcp,
        vec![endpoint("fd00:244:1::5", 8080, true)],
    );
    web.node_port = Some(30101);
    let mut far = service(
        "far",
        "fd00:96::22",
        80,
        Protocol::Tcp,
        vec![endpoint("fd00:244:2::5", 8080, false)],
    );
    far.node_port = Some(30102);
    let mut dns = service(
        "dns",
        "fd00:96::23",
        53,
        Protocol::Udp,
        vec![endpoint("fd00:244:2::5", 5353, false)],
    );
    dns.node_port = Some(30103);
    let map = map_of(&[NODE], vec![web, far, dns]);
    plane.dp().sync(&map, &Changes::full(&map)).expect("sync");

    let at = |port: u16| SocketAddr::new(NODE.parse().expect("ip"), port);
    let mut reply = String::new();
    wait_until("the local NodePort", || {
        reply = tcp_request(&client, at(30101)).unwrap_or_default();
        !reply.is_empty()
    });
    assert_eq!(reply, format!("a {CLIENT}"), "local backend: client kept");
    for _ in 0..3 {
        let reply = tcp_request(&client, at(30102)).expect("remote NodePort");
        assert_eq!(reply, format!("b {NODE}"), "remote backend: SNAT to n1");
    }
    let (text, from) = udp_request(&client, at(30103)).expect("UDP NodePort");
    assert_eq!(text, format!("b {NODE}"));
    assert_eq!(from, at(30103), "the reply comes from the NodePort");

    let status = plane.dp().status().expect("status").to_string();
    let far_section = status
        .split_once("  default/far\n")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("far not listed: {status}"));
    let connections: u64 = far_section
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("[::]:30102/tcp NodePort connections=")
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no IPv6 NodePort line: {status}"));
    assert_eq!(connections, 3, "{status}");
    // One datagram each way, counted with their Ethernet, IPv6 and UDP
    // headers: 66 bytes of "ping", 74 of the 12-byte answer.
    assert!(
        status.contains("[::]:30103/udp NodePort connections=1 packets=2 bytes=140 dropped=0"),
        "{status}"
    );
}

/// A process on n1 in no node cgroup (this test process entering n1's
/// namespace) reaches IPv6 ClusterIPs with a backend on n1 and one behind
/// n2, TCP and UDP: the tc programs balance its flows on the way out.
#[test]
fn ipv6_cluster_ip_from_a_node_process_outside_the_cgroup() {
    let Topology {
        client: _client,
        n1,
        n2: _n2,
        a,
        b,
    } = topology("h6");
    // The node's way out, as a machine's default gateway: the service
    // addresses are routed nowhere else.
    n1.exec(&["ip", "-6", "route", "add", "default", "via", CLIENT]);
    tcp_server(&a, "a");
    tcp_server(&b, "b");
    udp_server(&a, "a");
    udp_server(&b, "b");
    let n1_path = netns_path(&n1);
    let mut plane = Plane::with("h6p", |cfg| {
        cfg.netns = Some(n1_path);
        cfg.interfaces = vec!["eth0".into(), "eth1".into(), "pod0".into()];
    });
    let ports = |name: &str, vip: &str, backend: &str, local: bool| {
        [(Protocol::Tcp, 80, 8080), (Protocol::Udp, 53, 5353)].map(|(proto, port, target)| {
            let mut s = service(
                name,
                vip,
                port,
                proto,
                vec![endpoint(backend, target, local)],
            );
            s.name.port = format!("{port}");
            s
        })
    };
    let mut all = Vec::new();
    all.extend(ports("near", "fd00:96::31", "fd00:244:1::5", true));
    all.extend(ports("far", "fd00:96::32", "fd00:244:2::5", false));
    let map = map_of(&[NODE], all);
    plane.dp().sync(&map, &Changes::full(&map)).expect("sync");

    for (vip, backend) in [("fd00:96::31", "a"), ("fd00:96::32", "b")] {
        let vip_at = |port: u16| SocketAddr::new(vip.parse().expect("ip"), port);
        // The node sends from its address on the route's interface (eth0).
        let want = format!("{backend} {NODE}");
        let mut reply = String::new();
        wait_until("the ClusterIP from the node", || {
            reply = tcp_request(&n1, vip_at(80)).unwrap_or_default();
            !reply.is_empty()
        });
        assert_eq!(reply, want, "{vip}");
        for _ in 0..3 {
            assert_eq!(tcp_request(&n1, vip_at(80)).expect("TCP"), want);
            let (text, from) = udp_request(&n1, vip_at(53)).expect("UDP");
            assert_eq!((text, from), (want.clone(), vip_at(53)), "{vip}");
        }
    }
}
