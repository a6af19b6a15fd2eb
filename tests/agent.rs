//! The node agent end to end: a real `skiff server`, a node network namespace
//! with `skiff agent`, pods applied with kubectl and checked through the API
//! and from the node (wget to the pod IP).

mod agent_support;
mod common;

use std::time::Duration;

use agent_support::{pod_json, wait_for, wait_running, AgentNode, BUSYBOX};
use common::{StoreKind, TestServer};

fn node_name(test: &str) -> String {
    format!("sa{}-{test}", std::process::id() % 10_000)
}

#[test]
fn pod_runs_and_answers_on_its_ip_from_the_node() {
    let server = TestServer::start(StoreKind::Redb);
    let node = AgentNode::start(&server, &node_name("run"));
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  containers:
  - name: httpd
    image: {BUSYBOX}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"]
"#
    );
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &manifest);
    let pod = wait_running(&server, "web");
    let ip = pod["status"]["podIP"].as_str().expect("podIP").to_string();
    assert_eq!(pod["spec"]["nodeName"], node.name.as_str());
    let body = wait_for("httpd answering", Duration::from_secs(30), || {
        node.http_get(&format!("http://{ip}:8080/"))
    });
    assert_eq!(body.trim(), "hello from web");
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(status["name"], "httpd");
    assert!(status["state"]["running"]["startedAt"].is_string(), "{status}");
    assert_eq!(status["restartCount"], 0);
    assert!(status["containerID"].as_str().is_some_and(|c| c.starts_with("runc://")));
    assert!(status["imageID"].as_str().is_some_and(|c| c.contains("sha256:")), "{status}");
    let conds: Vec<(String, String)> = pod["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .map(|c| (c["type"].as_str().unwrap_or("").to_string(), c["status"].as_str().unwrap_or("").to_string()))
        .collect();
    for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert!(conds.contains(&(t.to_string(), "True".to_string())), "{t} not True: {conds:?}");
    }
    let table = server.kubectl_ok(&["get", "pod", "web"]);
    assert!(table.contains("Running") && table.contains("1/1"), "{table}");
}

#[test]
fn deleted_pod_leaves_nothing_behind() {
    let server = TestServer::start(StoreKind::Redb);
    let node = AgentNode::start(&server, &node_name("del"));
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: gone}}
spec:
  terminationGracePeriodSeconds: 5
  volumes: [{{name: scratch, emptyDir: {{}}}}]
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  - name: side
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sleep", "3600"]
"#
    );
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &manifest);
    wait_running(&server, "gone");
    assert_eq!(node.allocated_ips(), 1);
    assert_eq!(node.runc_containers().len(), 2);
    assert!(!node.mounts().is_empty());
    server.kubectl_ok(&["delete", "pod", "gone", "--wait=false"]);
    wait_for("pod object removed", Duration::from_secs(60), || {
        pod_json(&server, "gone").is_none().then_some(())
    });
    assert!(node.runc_containers().is_empty(), "runc state left: {:?}", node.runc_containers());
    assert!(node.mounts().is_empty(), "mounts left: {:?}", node.mounts());
    assert_eq!(node.allocated_ips(), 0, "the pod IP was not freed");
    assert!(node.entries("pods").is_empty(), "pod dirs left: {:?}", node.entries("pods"));
    assert!(node.entries("logs").is_empty(), "log dirs left: {:?}", node.entries("logs"));
    assert!(node.pod_cgroups().is_empty(), "cgroups left: {:?}", node.pod_cgroups());
    let links = node.netns.links();
    assert!(links.iter().all(|l| !l.starts_with("veth") && !l.starts_with("sk")), "{links:?}");
}
