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
        .find_map(|l| {
            l.trim()
                .strip_prefix("0.0.0.0:30081/tcp NodePort connections=")
        })
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

/// The value of the series `name{labels}` in a Prometheus text exposition.
fn series(metrics: &str, name: &str, labels: &str) -> Option<u64> {
    let prefix = format!("{name}{{{labels}}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str())?.trim().parse().ok())
}

/// Per-service counters: connections through a ClusterIP (socket path) and
/// flows, packets and bytes through a NodePort (tc path) raise that service's
/// series on the proxy's /metrics, labelled with its namespace, name and
/// port; `skiff proxy status` lists the frontends under the service's name.
#[test]
fn per_service_counters_on_metrics_and_status() {
    let server = common::TestServer::start(common::StoreKind::Redb);
    let mut lab = lab::Lab::new("ctr");
    lab.add_node("n1", 1);
    let a = lab.node("n1").add_pod("a", 2);
    let client = lab.node("n1").add_pod("client", 9);
    let outside = lab.add_client("out", 201);
    let _srv = tcp_server(&a.ns, 8080, "a");
    for (name, ip, node_port) in [
        ("web", "10.96.10.31", 30091),
        ("other", "10.96.10.32", 30092),
    ] {
        apply(
            &server,
            &service(
                name,
                ip,
                &[("http", "TCP", 80, Some(node_port))],
                json!({"type": "NodePort"}),
            ),
        );
        apply(
            &server,
            &endpoint_slice(name, &[("http", "TCP", 8080)], &[Ep::ready(a.ip, "n1")]),
        );
    }
    let _proxy = ProxyProcess::start(&server, lab.node("n1"), MODE);
    let n1 = lab.node("n1").ip().to_string();
    eventually(Duration::from_secs(20), "the ClusterIP from a pod", || {
        tcp_request(&client.ns, addr("10.96.10.31", 80)).ok()
    });
    eventually(Duration::from_secs(20), "the NodePort from outside", || {
        tcp_request(&outside.ns, addr(&n1, 30091)).ok()
    });
    for _ in 0..3 {
        tcp_request(&client.ns, addr("10.96.10.31", 80)).expect("ClusterIP");
        tcp_request(&outside.ns, addr(&n1, 30091)).expect("NodePort");
    }

    let metrics = ProxyProcess::metrics(lab.node("n1"));
    let web = |metric: &str, kind: &str| {
        series(
            &metrics,
            metric,
            &format!(
                "namespace=\"default\",name=\"web\",port=\"http\",protocol=\"TCP\",type=\"{kind}\""
            ),
        )
        .unwrap_or_else(|| panic!("no {metric} series for web's {kind}: {metrics}"))
    };
    assert!(
        web("skiff_proxy_service_connections_total", "ClusterIP") >= 4,
        "{metrics}"
    );
    assert!(
        web("skiff_proxy_service_connections_total", "NodePort") >= 4,
        "{metrics}"
    );
    // A TCP request is at least a handshake, a request and a close each way.
    let packets = web("skiff_proxy_service_packets_total", "NodePort");
    assert!(packets >= 4 * 6, "{metrics}");
    assert!(
        web("skiff_proxy_service_bytes_total", "NodePort") >= packets * 54,
        "{metrics}"
    );
    // The socket path rewrites no packets; the untouched service counts nothing.
    assert_eq!(web("skiff_proxy_service_packets_total", "ClusterIP"), 0);
    let other = series(
        &metrics,
        "skiff_proxy_service_connections_total",
        "namespace=\"default\",name=\"other\",port=\"http\",protocol=\"TCP\",type=\"NodePort\"",
    );
    assert_eq!(other, Some(0), "{metrics}");
    let frontends = series(
        &metrics,
        "skiff_proxy_ebpf_map_entries",
        "map=\"SKIFF_FRONTENDS\"",
    );
    assert!(
        frontends >= Some(4),
        "two ClusterIPs and two NodePorts at least: {metrics}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["proxy", "status", "--ebpf-pin-dir"])
        .arg(lab::ebpf::pin_dir(lab.node("n1")))
        .output()
        .expect("skiff proxy status");
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{status}");
    let (_, web_section) = status
        .split_once("  default/web:http\n")
        .unwrap_or_else(|| panic!("web not listed by name: {status}"));
    let web_lines: Vec<&str> = web_section
        .lines()
        .take_while(|l| l.starts_with("    "))
        .collect();
    assert_eq!(web_lines.len(), 2, "{status}");
    assert!(
        web_lines[0].starts_with("    10.96.10.31:80/tcp ClusterIP connections="),
        "{status}"
    );
    assert!(
        web_lines[1].starts_with("    0.0.0.0:30091/tcp NodePort connections="),
        "{status}"
    );
    assert!(status.contains("  default/other:http\n"), "{status}");
}

/// UDP to a NodePort whose backend has nothing listening: the backend's
/// "port unreachable" names the backend, which the client never talked to,
/// until the tc programs translate it back to the NodePort — then the
/// client's connected socket sees ECONNREFUSED at once instead of waiting
/// out a timeout. Both for a local backend and for a remote one (SNAT).
#[test]
fn udp_to_a_closed_backend_port_is_refused_through_the_node_port() {
    let server = common::TestServer::start(common::StoreKind::Redb);
    let mut lab = lab::Lab::new("ref");
    lab.add_node("n1", 1);
    lab.add_node("n2", 2);
    let a = lab.node("n1").add_pod("a", 2);
    let b = lab.node("n2").add_pod("b", 2);
    let outside = lab.add_client("out", 201);
    for (name, node_port, pod, node) in [("near", 30061, &a, "n1"), ("far", 30062, &b, "n2")] {
        apply(
            &server,
            &service(
                name,
                if name == "near" {
                    "10.96.10.51"
                } else {
                    "10.96.10.52"
                },
                &[("dns", "UDP", 53, Some(node_port))],
                json!({"type": "NodePort"}),
            ),
        );
        apply(
            &server,
            &endpoint_slice(name, &[("dns", "UDP", 5353)], &[Ep::ready(pod.ip, node)]),
        );
    }
    let _proxy = ProxyProcess::start(&server, lab.node("n1"), MODE);
    let n1 = lab.node("n1").ip().to_string();
    for port in [30061, 30062] {
        let to = addr(&n1, port);
        let last = eventually(Duration::from_secs(20), "a refusal", || {
            let r = outside.ns.run(|| -> std::io::Result<usize> {
                let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
                s.connect(to)?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.send(b"ping")?;
                s.recv(&mut [0u8; 64])
            });
            match r {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(e),
                _ => None,
            }
        });
        assert_eq!(last.kind(), std::io::ErrorKind::ConnectionRefused, "{to}");
    }
}
