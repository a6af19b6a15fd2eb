//! A full node: 110 pods (the agent's max-pods) start on one agent, the 111th
//! is not placed, and when they are deleted nothing of them is left behind
//! (runc state, mounts, IP allocations, pod and log directories, cgroups,
//! veths).

mod agent_support;
mod common;

use std::time::Duration;

use agent_support::{wait_for, AgentNode, BUSYBOX};
use common::{StoreKind, TestServer};
use serde_json::Value;

const PODS: usize = 110;

fn pods_json(server: &TestServer) -> Vec<Value> {
    let out = server.kubectl(&["get", "pods", "-o", "json"]);
    if !out.status.success() {
        return Vec::new();
    }
    let list: Value = serde_json::from_slice(&out.stdout).expect("pod list JSON");
    list["items"].as_array().cloned().unwrap_or_default()
}

fn pod(name: &str) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sleep", "3600"]
"#
    )
}

#[test]
fn max_pods_start_and_stop_leaving_nothing_behind() {
    let server = TestServer::start(StoreKind::Redb);
    let node = AgentNode::start(&server, &format!("sc{}-full", std::process::id() % 10_000));
    let node_json: Value =
        serde_json::from_str(&server.kubectl_ok(&["get", "node", &node.name, "-o", "json"]))
            .expect("node JSON");
    assert_eq!(node_json["status"]["allocatable"]["pods"], "110");

    let manifest: String = (0..PODS).map(|i| pod(&format!("p{i:03}"))).collect();
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &manifest);
    let running = wait_for("110 pods Running", Duration::from_secs(600), || {
        let pods = pods_json(&server);
        let running = pods
            .iter()
            .filter(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
            .count();
        (running == PODS).then_some(pods)
    });
    let mut ips: Vec<&str> = running
        .iter()
        .filter_map(|p| p["status"]["podIP"].as_str())
        .collect();
    ips.sort_unstable();
    ips.dedup();
    assert_eq!(ips.len(), PODS, "pod IPs are not unique");
    assert_eq!(node.allocated_ips(), PODS);
    assert_eq!(node.runc_containers().len(), PODS);

    // The node is full: one more pod stays Pending, unscheduled.
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &pod("extra"));
    std::thread::sleep(Duration::from_secs(3));
    let extra: Value =
        serde_json::from_str(&server.kubectl_ok(&["get", "pod", "extra", "-o", "json"]))
            .expect("pod JSON");
    assert_eq!(extra["status"]["phase"], "Pending", "{}", extra["status"]);
    assert!(extra["spec"]["nodeName"].is_null(), "{}", extra["spec"]);

    server.kubectl_ok(&["delete", "pods", "--all", "--wait=false"]);
    wait_for("every pod removed", Duration::from_secs(300), || {
        pods_json(&server).is_empty().then_some(())
    });
    wait_for("runc state removed", Duration::from_secs(30), || {
        node.runc_containers().is_empty().then_some(())
    });
    node.assert_no_pod_leftovers();
}
