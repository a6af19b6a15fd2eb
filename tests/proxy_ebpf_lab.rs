//! The service-proxy behaviour suite (tests/lab/services.rs) with
//! `skiff proxy --mode ebpf` — the same functions tests/proxy_iptables.rs runs
//! with iptables — plus the eBPF-only tc behaviours on live interfaces.
//! Clients inside the cluster run in the node's cgroup (tests/lab/ebpf.rs).

mod common;
mod lab;

use std::time::Duration;

use lab::proxy::{apply, endpoint_slice, service, Ep, ProxyProcess};
use lab::sockets::{eventually, tcp_request, tcp_server};
use serde_json::json;

const MODE: &str = "ebpf";

lab::services::behaviour_suite!("ebpf");

fn addr(ip: &str, port: u16) -> std::net::SocketAddr {
    format!("{ip}:{port}").parse().expect("socket address")
}

/// A NodePort whose only backend runs on another node: the flow is SNATed to
/// the receiving node (so the reply comes back to it for the reverse NAT), and
/// a pod on the receiving node reaches the same NodePort through the socket
/// load balancer.
#[test]
fn nodeport_to_a_remote_backend_is_snated() {
    let server = common::TestServer::start(common::StoreKind::Redb);
    let mut lab = lab::Lab::new("npr");
    lab.add_node("n1", 1);
    lab.add_node("n2", 2);
    let b = lab.node("n2").add_pod("b", 2);
    let client = lab.node("n1").add_pod("client", 9);
    let outside = lab.add_client("out", 201);
    let _srv = tcp_server(&b.ns, 8080, "b");
    apply(
        &server,
        &service(
            "web",
            "10.96.10.21",
            &[("http", "TCP", 80, Some(30081))],
            json!({"type": "NodePort"}),
        ),
    );
    apply(
        &server,
        &endpoint_slice("web", &[("http", "TCP", 8080)], &[Ep::ready(b.ip, "n2")]),
    );
    let proxy = ProxyProcess::start(&server, lab.node("n1"), MODE);
    let n1 = lab.node("n1").ip().to_string();
    let reply = eventually(Duration::from_secs(20), "the NodePort on n1", || {
        tcp_request(&outside.ns, addr(&n1, 30081)).ok()
    });
    assert_eq!(reply.backend, "b");
    assert_eq!(reply.peer, n1, "remote backend: source NATed to n1");
    for _ in 0..5 {
        let reply = tcp_request(&outside.ns, addr(&n1, 30081)).expect("NodePort again");
        assert_eq!(
            (reply.backend.as_str(), reply.peer.as_str()),
            ("b", n1.as_str())
        );
    }
    // From a pod on n1 (in n1's cgroup): the socket load balancer connects
    // straight to the backend, so the backend sees the pod.
    let reply = tcp_request(&client.ns, addr(&n1, 30081)).expect("NodePort from a pod");
    assert_eq!(reply.backend, "b");
    assert_eq!(reply.peer, client.ip.to_string());
    let log = proxy.log();
    assert!(log.contains("tc programs attached"), "{log}");

    // `skiff proxy status` reads the same story from the node's pins: the tc
    // links on the uplink, the flows in the connection table, and the
    // NodePort's counters (6+ flows from outside, 1 from the pod).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["proxy", "status", "--ebpf-pin-dir"])
        .arg(lab::ebpf::pin_dir(lab.node("n1")))
        .output()
        .expect("skiff proxy status");
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{status}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(status.contains("tc-eth0-ingress"), "{status}");
    assert!(status.contains("skiff_connect4"), "{status}");
    let ct_entries: u64 = status
        .lines()
        .find_map(|l| l.trim().strip_prefix("SKIFF_CT "))
        .and_then(|v| v.split('/').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no connection table line: {status}"));
    assert!(ct_entries >= 12, "two entries per flow: {status}");
    let connections: u64 = status
        .lines()
        .find_map(|l| l.trim().strip_prefix("0.0.0.0:30081/tcp connections="))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no NodePort line: {status}"));
    assert!(connections >= 7, "{status}");
}

/// Restarting the proxy under bounded request loops — a NodePort from
/// outside (tc path) and a ClusterIP from a pod (socket path) — fails no
/// request: programs, links and maps stay pinned while no proxy runs, and the
/// new process takes them over.
#[test]
fn proxy_restarts_under_load_fail_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};

    let server = common::TestServer::start(common::StoreKind::Redb);
    let mut lab = lab::Lab::new("rst");
    lab.add_node("n1", 1);
    lab.add_node("n2", 2);
    let a = lab.node("n1").add_pod("a", 2);
    let b = lab.node("n2").add_pod("b", 2);
    let client = lab.node("n1").add_pod("client", 9);
    let outside = lab.add_client("out", 201);
    let _servers = [tcp_server(&a.ns, 8080, "a"), tcp_server(&b.ns, 8080, "b")];
    apply(
        &server,
        &service(
            "web",
            "10.96.10.22",
            &[("http", "TCP", 80, Some(30082))],
            json!({"type": "NodePort"}),
        ),
    );
    apply(
        &server,
        &endpoint_slice(
            "web",
            &[("http", "TCP", 8080)],
            &[Ep::ready(a.ip, "n1"), Ep::ready(b.ip, "n2")],
        ),
    );
    let mut proxy = ProxyProcess::start(&server, lab.node("n1"), MODE);
    let node_port = addr(&lab.node("n1").ip().to_string(), 30082);
    let vip = addr("10.96.10.22", 80);
    eventually(Duration::from_secs(20), "the NodePort", || {
        tcp_request(&outside.ns, node_port).ok()
    });
    eventually(Duration::from_secs(20), "the ClusterIP", || {
        tcp_request(&client.ns, vip).ok()
    });
    let done = AtomicBool::new(false);
    let run = |ns: &lab::Ns, to: std::net::SocketAddr| {
        let (mut ok, mut failed) = (0, Vec::new());
        // At least 20 requests (pod clients are slow helper processes),
        // then until the restarts are over; never more than 400.
        for i in 0..400 {
            if i >= 20 && done.load(Ordering::Relaxed) {
                break;
            }
            match tcp_request(ns, to) {
                Ok(_) => ok += 1,
                Err(e) => failed.push(e.to_string()),
            }
        }
        (ok, failed)
    };
    let (outside_run, pod_run) = std::thread::scope(|s| {
        let o = s.spawn(|| run(&outside.ns, node_port));
        let p = s.spawn(|| run(&client.ns, vip));
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(300));
            proxy.restart(&server, lab.node("n1"));
        }
        std::thread::sleep(Duration::from_millis(300));
        done.store(true, Ordering::Relaxed);
        (o.join().expect("outside loop"), p.join().expect("pod loop"))
    });
    for (what, (ok, failed)) in [("NodePort", outside_run), ("ClusterIP", pod_run)] {
        assert!(
            failed.is_empty(),
            "{what}: {} failed: {failed:?}",
            failed.len()
        );
        assert!(ok >= 20, "{what}: only {ok} requests ran");
    }
}
