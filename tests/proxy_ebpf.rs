//! The eBPF socket load balancer in the lab: a client process in a network
//! namespace and in the data plane's cgroup subtree reaches a backend in
//! another namespace through a ClusterIP that exists nowhere but in the maps.

mod proxy_ebpf_support;

use std::collections::BTreeSet;

use proxy_ebpf_support::{
    endpoint, http_server, map_of, service, udp_server, unique, veth, wait_until, Netns, Plane,
};
use skiff_proxy::ebpf::EbpfDataplane;
use skiff_proxy::model::{Changes, Protocol, ServiceMap};
use skiff_proxy::Dataplane;

const CLIENT_IP: &str = "10.77.0.1";
const BACKEND_IP: &str = "10.77.0.2";

/// A client and a backend namespace on one veth.
struct Lab {
    client: Netns,
    backend: Netns,
}

fn lab(label: &str) -> Lab {
    let client = Netns::new(&unique(&format!("{label}c")));
    let backend = Netns::new(&unique(&format!("{label}b")));
    veth(&client, CLIENT_IP, &backend, BACKEND_IP);
    Lab { client, backend }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn wait_http(lab: &Lab, port: u16) {
    wait_until("the backend HTTP server", || {
        let out = lab.client.run_in_cgroup(
            None,
            &format!("timeout 2 busybox wget -qO- http://{BACKEND_IP}:{port}/"),
        );
        out.status.success()
    });
}

fn sync(plane: &mut Plane, map: &ServiceMap) {
    plane.dp().sync(map, &Changes::full(map)).expect("sync");
}

fn get(plane: &Plane, lab: &Lab, url: &str) -> std::process::Output {
    lab.client.run_in_cgroup(
        Some(&plane.cgroup),
        &format!("timeout 3 busybox wget -qO- {url}"),
    )
}

#[test]
fn cluster_ip_tcp_reaches_the_backend_only_from_the_cgroup() {
    let mut plane = Plane::new("tcp");
    let lab = lab("tcp");
    let _web = http_server(&lab.backend, 8080, "backend-a");
    wait_http(&lab, 8080);
    let web = service(
        "web",
        "10.96.0.10",
        80,
        Protocol::Tcp,
        vec![endpoint(BACKEND_IP, 8080, false)],
    );
    sync(&mut plane, &map_of(&["10.77.0.1"], vec![web]));

    let out = get(&plane, &lab, "http://10.96.0.10/");
    assert_eq!(text(&out), "backend-a", "through the ClusterIP");

    // The same request from outside the subtree finds no such address: the
    // socket programs see only the subtree, and this lab attaches no tc
    // programs (those balance node processes outside it, see
    // tests/proxy_ebpf_host.rs).
    let out = lab
        .client
        .run_in_cgroup(None, "timeout 3 busybox wget -qO- http://10.96.0.10/");
    assert!(!out.status.success(), "outside the cgroup: {}", text(&out));

    // The application sees the ClusterIP as its peer, never the backend.
    let script = "import socket\ns=socket.create_connection(('10.96.0.10',80),timeout=5)\nprint(s.getpeername())";
    let out = lab.client.run_in_cgroup(
        Some(&plane.cgroup),
        &format!("exec python3 -c \"{script}\""),
    );
    assert_eq!(text(&out).trim(), "('10.96.0.10', 80)");

    let status = plane.dp().status().expect("status").to_string();
    // Listed under the service's name, with the socket path's counters.
    assert!(
        status.contains("  default/web\n    10.96.0.10:80/tcp ClusterIP connections=2 packets=0"),
        "{status}"
    );
    assert_eq!(
        status.matches("skiff_").count(),
        8,
        "eight attached socket programs: {status}"
    );
}

#[test]
fn cluster_ip_udp_connected_and_unconnected_reply_from_the_cluster_ip() {
    let mut plane = Plane::new("udp");
    let lab = lab("udp");
    let _dns = udp_server(&lab.backend, 5353, "udp-a");
    let dns = service(
        "dns",
        "10.96.0.53",
        53,
        Protocol::Udp,
        vec![endpoint(BACKEND_IP, 5353, false)],
    );
    sync(&mut plane, &map_of(&[], vec![dns]));

    // Unconnected: sendto the ClusterIP; recvfrom must name the ClusterIP as
    // the sender, or resolvers would drop the answer.
    let unconnected = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(1)\n\
        for i in range(20):\n try:\n  s.sendto(b'q',('10.96.0.53',53)); d,a=s.recvfrom(100); print(d.decode(),a); break\n except socket.timeout: pass";
    let out = lab.client.run_in_cgroup(
        Some(&plane.cgroup),
        &format!("exec python3 -c \"{unconnected}\""),
    );
    assert_eq!(text(&out).trim(), "udp-a ('10.96.0.53', 53)");

    let connected =
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(2)\n\
        s.connect(('10.96.0.53',53)); s.send(b'q'); print(s.recv(100).decode(), s.getpeername())";
    let out = lab.client.run_in_cgroup(
        Some(&plane.cgroup),
        &format!("exec python3 -c \"{connected}\""),
    );
    assert_eq!(text(&out).trim(), "udp-a ('10.96.0.53', 53)");
}

fn two_backends(
    label: &str,
) -> (
    Plane,
    Lab,
    Vec<proxy_ebpf_support::Proc>,
    Vec<tempfile::TempDir>,
) {
    let plane = Plane::new(label);
    let lab = lab(label);
    let (a, da) = http_server(&lab.backend, 8080, "a");
    let (b, db) = http_server(&lab.backend, 8081, "b");
    wait_http(&lab, 8080);
    wait_http(&lab, 8081);
    (plane, lab, vec![a, b], vec![da, db])
}

fn web_ab(affinity: Option<u32>) -> ServiceMap {
    let mut web = service(
        "web",
        "10.96.0.80",
        80,
        Protocol::Tcp,
        vec![
            endpoint(BACKEND_IP, 8080, false),
            endpoint(BACKEND_IP, 8081, false),
        ],
    );
    web.affinity_timeout_secs = affinity;
    map_of(&[], vec![web])
}

fn answers(plane: &Plane, lab: &Lab, n: usize) -> Vec<String> {
    let script = format!(
        "for i in $(seq {n}); do timeout 3 busybox wget -qO- http://10.96.0.80/ || echo FAIL; echo; done"
    );
    let out = lab.client.run_in_cgroup(Some(&plane.cgroup), &script);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn connections_spread_over_backends_and_client_ip_affinity_sticks() {
    let (mut plane, lab, _servers, _dirs) = two_backends("aff");
    sync(&mut plane, &web_ab(None));
    let seen: BTreeSet<String> = answers(&plane, &lab, 30).into_iter().collect();
    // 30 random picks over two backends all landing on one: p = 2^-29.
    assert_eq!(seen, BTreeSet::from(["a".to_string(), "b".to_string()]));

    sync(&mut plane, &web_ab(Some(60)));
    let got = answers(&plane, &lab, 15);
    assert_eq!(got.len(), 15);
    let seen: BTreeSet<&String> = got.iter().collect();
    assert_eq!(
        seen.len(),
        1,
        "ClientIP affinity must keep one backend: {got:?}"
    );
}

#[test]
fn a_service_without_endpoints_refuses_at_once() {
    let mut plane = Plane::new("none");
    let lab = lab("none");
    let empty = service("empty", "10.96.0.99", 80, Protocol::Tcp, Vec::new());
    sync(&mut plane, &map_of(&[], vec![empty]));
    let script = "import socket\ntry:\n socket.create_connection(('10.96.0.99',80),timeout=10)\n print('connected')\n\
        except socket.timeout:\n print('timeout')\nexcept OSError as e:\n print('refused', e.errno)";
    let out = lab.client.run_in_cgroup(
        Some(&plane.cgroup),
        &format!("exec python3 -c \"{script}\""),
    );
    assert_eq!(
        text(&out).trim(),
        "refused 111",
        "ECONNREFUSED at connect(), no timeout"
    );
}

#[test]
fn restarts_and_backend_swaps_under_a_request_loop_fail_nothing() {
    let (mut plane, lab, _servers, _dirs) = two_backends("rst");
    let only = |port: u16| {
        let web = service(
            "web",
            "10.96.0.80",
            80,
            Protocol::Tcp,
            vec![endpoint(BACKEND_IP, port, false)],
        );
        map_of(&[], vec![web])
    };
    sync(&mut plane, &only(8080));
    // A bounded request loop, running while we restart the proxy and swap
    // the backend set back and forth.
    let client = lab
        .client
        .command_in_cgroup(
            Some(&plane.cgroup),
            "for i in $(seq 300); do timeout 3 busybox wget -qO- http://10.96.0.80/ || echo FAIL; echo; done",
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("client loop");
    let client = proxy_ebpf_support::Proc(client);
    for round in 0..6 {
        // Restart: the old process's maps and links stay pinned.
        plane.dp = None;
        std::thread::sleep(std::time::Duration::from_millis(50));
        plane.dp = Some(EbpfDataplane::new(plane.cfg.clone()).expect("restart"));
        sync(&mut plane, &only(if round % 2 == 0 { 8081 } else { 8080 }));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut client = client;
    let out = std::mem::replace(
        &mut client.0,
        std::process::Command::new("true").spawn().expect("true"),
    )
    .wait_with_output()
    .expect("client loop output");
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 300);
    assert!(
        !lines.iter().any(|l| l == "FAIL"),
        "failed requests: {lines:?}"
    );
    let seen: BTreeSet<&String> = lines.iter().collect();
    assert_eq!(seen.len(), 2, "both backend sets served: {seen:?}");
}

#[test]
fn cleanup_detaches_the_programs_and_removes_the_pins() {
    let mut plane = Plane::new("clean");
    let lab = lab("clean");
    let _web = http_server(&lab.backend, 8080, "backend-a");
    wait_http(&lab, 8080);
    let web = service(
        "web",
        "10.96.0.10",
        80,
        Protocol::Tcp,
        vec![endpoint(BACKEND_IP, 8080, false)],
    );
    sync(&mut plane, &map_of(&[], vec![web]));
    assert_eq!(text(&get(&plane, &lab, "http://10.96.0.10/")), "backend-a");
    plane.dp().cleanup().expect("cleanup");
    assert!(!plane.cfg.pin_dir.exists(), "pins left behind");
    assert!(!get(&plane, &lab, "http://10.96.0.10/").status.success());
}

/// Sockets connected through a ClusterIP to a backend that goes away are
/// destroyed: a long-lived TCP connection and a connected UDP socket see
/// ECONNABORTED at once instead of hanging, and reconnect to the live backend.
#[test]
fn sockets_of_a_removed_backend_are_destroyed() {
    use std::io::{BufRead, BufReader, Write};

    let (mut plane, lab, _servers, _dirs) = two_backends("sdes");
    let _udp = [
        udp_server(&lab.backend, 5353, "udp-a"),
        udp_server(&lab.backend, 5354, "udp-b"),
    ];
    let only = |port: u16| {
        let web = service(
            "web",
            "10.96.0.80",
            80,
            Protocol::Tcp,
            vec![endpoint(BACKEND_IP, port, false)],
        );
        let dns = service(
            "dns",
            "10.96.0.53",
            53,
            Protocol::Udp,
            vec![endpoint(BACKEND_IP, port - 8080 + 5353, false)],
        );
        map_of(&[], vec![web, dns])
    };
    sync(&mut plane, &only(8080));
    // TCP: connect and wait for data that never comes (httpd waits for the
    // request). UDP: one exchange on a connected socket, then a receive after
    // the test says "go" (the abort's error surfaces there), then a new
    // socket as a resolver would open after the error. (Exchanges retry
    // while the UDP servers start.)
    let script = "import socket, sys, time\n\
        def udp():\n\
        \x20u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)\n\
        \x20u.connect(('10.96.0.53', 53))\n\
        \x20for i in range(50):\n\
        \x20 try:\n   u.send(b'q'); print('udp', u.recv(100).decode(), flush=True); return u\n\
        \x20 except OSError:\n   time.sleep(0.1)\n\
        t = socket.create_connection(('10.96.0.80', 80), timeout=5)\n\
        u = udp()\n\
        t.settimeout(20)\n\
        try:\n d = t.recv(100); print('tcp eof' if not d else 'tcp data', flush=True)\n\
        except OSError as e:\n print('tcp err', e.errno, flush=True)\n\
        sys.stdin.readline()\n\
        try:\n print('udp', u.recv(100).decode(), flush=True)\n\
        except OSError as e:\n print('udp err', e.errno, flush=True)\n\
        udp()\n";
    let mut child = lab
        .client
        .command_in_cgroup(
            Some(&plane.cgroup),
            // Errors as lines, so a failed assertion shows the traceback.
            &format!("exec python3 -c \"{script}\" 2>&1"),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("client");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let client = proxy_ebpf_support::Proc(child);
    let mut next = || lines.next().expect("a line").expect("read");
    assert_eq!(next(), "udp udp-a");

    let started = std::time::Instant::now();
    sync(&mut plane, &only(8081));
    // ECONNABORTED (103) after the 1 s grace, long before the client's 20 s
    // timeout; the UDP socket was aborted at once.
    assert_eq!(next(), "tcp err 103");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    writeln!(stdin, "go").expect("go");
    assert_eq!(next(), "udp err 103");
    assert_eq!(
        next(),
        "udp udp-b",
        "the reconnected socket reaches the live backend"
    );
    drop(client);
}

/// IPv6 ClusterIPs through the connect6/sendmsg6/recvmsg6/getpeername6
/// programs: TCP and unconnected UDP reach the backend, and the application
/// sees the ClusterIP as its peer both times.
#[test]
fn ipv6_cluster_ip_tcp_and_udp() {
    let mut plane = Plane::new("v6");
    let client = Netns::new(&unique("v6c"));
    let backend = Netns::new(&unique("v6b"));
    client.exec(&[
        "ip",
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        backend.name(),
    ]);
    for (ns, ip) in [(&client, "fd00:77::1"), (&backend, "fd00:77::2")] {
        // nodad: usable at once instead of after duplicate address detection.
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{ip}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        ns.exec(&["ip", "link", "set", "eth0", "up"]);
    }
    let tcp = "import socket\ns=socket.socket(socket.AF_INET6,socket.SOCK_STREAM)\n\
        s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('::',8080))\ns.listen(16)\n\
        while True:\n c,a=s.accept(); c.sendall(('tcp6 '+a[0]).encode()); c.close()\n";
    let udp = "import socket\ns=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\n\
        s.bind(('::',5353))\nwhile True:\n d,a=s.recvfrom(100); s.sendto(b'udp6',a)\n";
    let _servers = [
        backend.spawn(&["python3", "-c", tcp]),
        backend.spawn(&["python3", "-c", udp]),
    ];
    let web = service(
        "web",
        "fd00:10:96::10",
        80,
        Protocol::Tcp,
        vec![endpoint("fd00:77::2", 8080, false)],
    );
    let dns = service(
        "dns",
        "fd00:10:96::53",
        53,
        Protocol::Udp,
        vec![endpoint("fd00:77::2", 5353, false)],
    );
    sync(&mut plane, &map_of(&[], vec![web, dns]));
    // Both retry while the servers start.
    let script = "import socket, time\n\
        for i in range(50):\n\
        \x20try:\n  s=socket.create_connection(('fd00:10:96::10',80),timeout=2); print(s.recv(100).decode(), s.getpeername()[:2]); break\n\
        \x20except OSError:\n  time.sleep(0.1)\n\
        u=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM); u.settimeout(0.5)\n\
        for i in range(50):\n\
        \x20try:\n  u.sendto(b'q',('fd00:10:96::53',53)); d,a=u.recvfrom(100); print(d.decode(), a[:2]); break\n\
        \x20except OSError:\n  time.sleep(0.1)\n";
    let out = client.run_in_cgroup(
        Some(&plane.cgroup),
        &format!("exec python3 -c \"{script}\" 2>&1"),
    );
    assert_eq!(
        text(&out).trim(),
        "tcp6 fd00:77::1 ('fd00:10:96::10', 80)\nudp6 ('fd00:10:96::53', 53)",
        "the backend sees the client, the client sees the ClusterIP"
    );
}
