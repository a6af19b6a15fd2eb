//! The node agent with its embedded proxy in eBPF mode (`--proxy-mode ebpf`):
//! pods live in the node's cgroup v2 subtree under the socket load balancer,
//! so a pod reaches a ClusterIP service backed by pods, and the tc programs
//! on the node's interfaces serve a NodePort to a machine outside the node.

mod agent_support;
mod common;

use std::path::PathBuf;
use std::time::Duration;

use agent_support::{run_web_backend, wait_for, wait_running, AgentNode, NetnsGuard, BUSYBOX};
use common::{StoreKind, TestServer};

/// The node's pinned eBPF maps and links, detached and removed on drop (after
/// the agent, which is declared later and so dropped first).
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = skiff_proxy::ebpf::detach_and_unpin(&self.0);
    }
}

const NODE_IP: &str = "192.168.97.1";
const OUTSIDE_IP: &str = "192.168.97.2";

#[test]
fn pods_reach_a_cluster_ip_and_the_node_port_answers_outside() {
    let server = TestServer::start(StoreKind::Redb);
    let name = format!("se{}-np", std::process::id() % 10_000);
    let _pins = Pins(skiff_proxy::ebpf::EbpfConfig::default_pin_dir(&name));
    let node = AgentNode::start_with(
        &server,
        &name,
        &["--proxy-mode", "ebpf", "--cluster-cidr", "10.244.0.0/16"],
    );
    // A machine outside the node on a link of its own (the node's uplink).
    let outside = NetnsGuard::new(&format!("{name}-out"));
    outside.exec(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "up0", "netns", &name,
    ]);
    outside.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{OUTSIDE_IP}/24"),
        "dev",
        "eth0",
    ]);
    outside.exec(&["ip", "link", "set", "eth0", "up"]);
    node.netns
        .exec(&["ip", "addr", "add", &format!("{NODE_IP}/24"), "dev", "up0"]);
    node.netns.exec(&["ip", "link", "set", "up0", "up"]);

    let cluster_ip = run_web_backend(&server, "web", "NodePort", "hello");
    let jsonpath = |path: &str| {
        server
            .kubectl_ok(&["get", "service", "web", "-o", &format!("jsonpath={path}")])
            .trim()
            .to_string()
    };
    let node_port = jsonpath("{.spec.ports[0].nodePort}");

    // A client pod fetching the ClusterIP in a loop; its log shows the answers.
    let client = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: fetch
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "while true; do wget -q -O - http://{cluster_ip}/ || echo FAILED; sleep 1; done"]
"#
    );
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &client);
    wait_running(&server, "client");
    wait_for(
        "the client pod's answer through the ClusterIP",
        Duration::from_secs(60),
        || {
            let out = server.kubectl(&["logs", "client"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("hello from backend")
                .then_some(())
        },
    );

    // NodePort from outside the node, through the tc programs on up0.
    let url = format!("http://{NODE_IP}:{node_port}/");
    let body = wait_for(
        "the NodePort from outside the node",
        Duration::from_secs(60),
        || {
            let out = outside.try_exec(&["curl", "-sf", "-m", "3", &url]);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        },
    );
    assert_eq!(body.trim(), "hello from backend");
    // No iptables rules did it: the node's nat table has no service chains.
    let nat = node.netns.nat_rules();
    assert!(!nat.contains("KUBE-SERVICES"), "{nat}");
    let log = node.log();
    assert!(log.contains("tc programs attached"), "{log}");
}
