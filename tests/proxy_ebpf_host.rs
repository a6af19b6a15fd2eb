//! ClusterIPs for processes on a node that run outside the node's cgroup
//! subtree (`ip netns exec <node> …`, a host daemon): socket LB never sees
//! them, so the tc programs balance their flows on the way out of the node.
//! Backends on the same node and behind another node, TCP and UDP, and the
//! ICMP error of a closed backend port.

mod common;
mod lab;

use std::process::Command;
use std::time::Duration;

use lab::proxy::{apply, endpoint_slice, service, Ep, ProxyProcess};
use lab::sockets::{eventually, tcp_server, udp_server};
use serde_json::json;

/// Runs `script` with python3 in `ns` by `ip netns exec` from this test
/// process, which is in no node's cgroup; returns its output line.
fn outside_cgroup(ns: &lab::Ns, script: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "python3", "-c", script])
        .args(args)
        .output()
        .expect("ip netns exec python3");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// One TCP request: prints the reply line, or ERR <errno>.
const TCP: &str = concat!(
    "import socket, sys\n",
    "try:\n",
    " s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)\n",
    " s.settimeout(2)\n",
    " data = b''\n",
    " while True:\n",
    "  d = s.recv(512)\n",
    "  if not d: break\n",
    "  data += d\n",
    " print(data.decode().strip())\n",
    "except OSError as e:\n",
    " print('ERR %s' % e.errno)\n",
);

/// One datagram on an unconnected socket: prints "<reply> from <ip>:<port>".
const UDP: &str = concat!(
    "import socket, sys\n",
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n",
    "s.settimeout(1)\n",
    "try:\n",
    " s.sendto(b'ping', (sys.argv[1], int(sys.argv[2])))\n",
    " d, a = s.recvfrom(512)\n",
    " print('%s from %s:%d' % (d.decode().strip(), a[0], a[1]))\n",
    "except OSError as e:\n",
    " print('ERR %s' % e.errno)\n",
);

/// A datagram on a connected socket: prints the reply, or ERR <errno>.
const UDP_CONNECTED: &str = concat!(
    "import socket, sys\n",
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n",
    "s.settimeout(1)\n",
    "try:\n",
    " s.connect((sys.argv[1], int(sys.argv[2])))\n",
    " s.send(b'ping')\n",
    " print(s.recv(512).decode().strip())\n",
    "except OSError as e:\n",
    " print('ERR %s' % e.errno)\n",
);

#[test]
fn cluster_ip_from_a_node_process_outside_the_cgroup() {
    let server = common::TestServer::start(common::StoreKind::Redb);
    let mut lab = lab::Lab::new("hst");
    lab.add_node("n1", 1);
    lab.add_node("n2", 2);
    let a = lab.node("n1").add_pod("a", 2);
    let b = lab.node("n2").add_pod("b", 2);
    let _servers = [
        tcp_server(&a.ns, 8080, "a"),
        tcp_server(&b.ns, 8080, "b"),
        udp_server(&a.ns, 5353, "a"),
        udp_server(&b.ns, 5353, "b"),
    ];
    for (name, vip, pod, node) in [
        ("near", "10.96.10.41", &a, "n1"),
        ("far", "10.96.10.42", &b, "n2"),
    ] {
        apply(
            &server,
            &service(
                name,
                vip,
                &[("http", "TCP", 80, None), ("dns", "UDP", 53, None)],
                json!({}),
            ),
        );
        apply(
            &server,
            &endpoint_slice(
                name,
                &[("http", "TCP", 8080), ("dns", "UDP", 5353)],
                &[Ep::ready(pod.ip, node)],
            ),
        );
    }
    // Strict reverse-path filtering, as many distributions configure it:
    // the replies of a local backend come back from the service address on
    // the pod bridge, which is not where the service address is routed.
    lab.node("n1").ns.sysctl("net.ipv4.conf.all.rp_filter", "1");
    let _proxy = ProxyProcess::start(&server, lab.node("n1"), "ebpf");
    let n1 = lab.node("n1");
    let node_ip = n1.ip().to_string();
    for (vip, backend) in [("10.96.10.41", "a"), ("10.96.10.42", "b")] {
        // The backend answers with its name and the client address it saw:
        // the node's own address, as the process sent from it.
        let want = format!("{backend} {node_ip}");
        let mut last = String::new();
        let got = eventually(Duration::from_secs(20), "TCP to the ClusterIP", || {
            last = outside_cgroup(&n1.ns, TCP, &[vip, "80"]);
            eprintln!("{vip}: {last}");
            (last == want).then(|| last.clone())
        });
        assert_eq!(got, want);
        for _ in 0..3 {
            assert_eq!(outside_cgroup(&n1.ns, TCP, &[vip, "80"]), want, "{vip}");
        }
        // The reply comes from the address the process sent to.
        let want = format!("{backend} {node_ip} from {vip}:53");
        for _ in 0..3 {
            assert_eq!(outside_cgroup(&n1.ns, UDP, &[vip, "53"]), want, "{vip}");
        }
    }
    // A backend port where nothing listens: the backend's "port
    // unreachable" is translated back, so the connected socket is refused
    // (ECONNREFUSED, 111) instead of waiting out its timeout.
    apply(
        &server,
        &service(
            "shut",
            "10.96.10.43",
            &[("dns", "UDP", 53, None)],
            json!({}),
        ),
    );
    apply(
        &server,
        &endpoint_slice("shut", &[("dns", "UDP", 5399)], &[Ep::ready(a.ip, "n1")]),
    );
    let refused = eventually(Duration::from_secs(20), "a refusal", || {
        let r = outside_cgroup(&n1.ns, UDP_CONNECTED, &["10.96.10.43", "53"]);
        (r == "ERR 111").then_some(r)
    });
    assert_eq!(refused, "ERR 111");
}
