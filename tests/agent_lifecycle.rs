//! Container lifecycle on a real node: the order of graceful termination
//! (preStop hook, SIGTERM, terminationGracePeriodSeconds, SIGKILL) seen through
//! a hostPath file the container writes, an out-of-memory kill reported as
//! OOMKilled, and a hostNetwork pod that runs in the node's namespace.

mod agent_support;
mod common;

use std::time::{Duration, Instant};

use agent_support::{pod_json, wait_for, wait_running, AgentNode, BUSYBOX};
use common::{StoreKind, TestServer};

fn node_name(test: &str) -> String {
    format!("lc{}-{test}", std::process::id() % 10_000)
}

#[test]
fn graceful_termination_runs_pre_stop_then_sigterm_then_sigkill_after_the_grace_period() {
    let server = TestServer::start(StoreKind::Redb);
    let _node = AgentNode::start(&server, &node_name("grace"));
    let out = tempfile::Builder::new()
        .prefix("skiff-grace-")
        .tempdir()
        .expect("hostPath dir");
    let trace = out.path().join("trace");
    // The main process ignores SIGTERM after noting it, so only SIGKILL ends it.
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: slow-stop}}
spec:
  terminationGracePeriodSeconds: 4
  volumes: [{{name: out, hostPath: {{path: {dir}, type: Directory}}}}]
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "trap 'echo term $(date +%s) >> /out/trace; while true; do echo alive-after-term >> /out/trace; sleep 0.5; done' TERM; echo started >> /out/trace; while true; do sleep 0.2; done"]
    volumeMounts: [{{name: out, mountPath: /out}}]
    lifecycle:
      preStop:
        exec:
          command: ["sh", "-c", "echo prestop $(date +%s) >> /out/trace; sleep 1; echo prestop-done >> /out/trace"]
"#,
        dir = out.path().display()
    );
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &manifest);
    wait_running(&server, "slow-stop");
    wait_for(
        "the container's first line",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&trace)
                .ok()
                .filter(|t| t.contains("started"))
        },
    );
    let deleted_at = Instant::now();
    server.kubectl_ok(&["delete", "pod", "slow-stop", "--wait=false"]);
    wait_for("pod object removed", Duration::from_secs(60), || {
        pod_json(&server, "slow-stop").is_none().then_some(())
    });
    let took = deleted_at.elapsed();
    let text = std::fs::read_to_string(&trace).expect("trace file");
    let lines: Vec<&str> = text.lines().collect();
    let pos = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in trace:\n{text}"))
    };
    let (started, prestop, prestop_done, term) = (
        pos("started"),
        pos("prestop "),
        pos("prestop-done"),
        pos("term "),
    );
    assert!(
        started < prestop && prestop < prestop_done && prestop_done < term,
        "order must be started, preStop (to completion), SIGTERM:\n{text}"
    );
    // The container kept running after SIGTERM until the grace period ran out.
    assert!(
        lines[term..].contains(&"alive-after-term"),
        "the container was not left running after SIGTERM:\n{text}"
    );
    let stamp = |i: usize| -> u64 {
        lines[i]
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no timestamp in {:?}", lines[i]))
    };
    assert!(
        stamp(term) > stamp(prestop),
        "SIGTERM came before the preStop hook finished:\n{text}"
    );
    // SIGKILL only after terminationGracePeriodSeconds (4 s, counted from the deletion).
    assert!(
        took >= Duration::from_secs(3),
        "the pod was gone after {took:?}, before its grace period ended:\n{text}"
    );
    // After SIGKILL nothing writes any more.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        std::fs::read_to_string(&trace).expect("trace file"),
        text,
        "the container is still running after the pod was removed"
    );
}

#[test]
fn a_container_over_its_memory_limit_is_reported_oom_killed() {
    let server = TestServer::start(StoreKind::Redb);
    let _node = AgentNode::start(&server, &node_name("oom"));
    // The shell itself (the container's init) reads 200 MB into a variable.
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: hungry}}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "echo eating; x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"]
    resources:
      limits: {{memory: 32Mi}}
"#
    );
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &manifest);
    let pod = wait_for("pod hungry Failed", Duration::from_secs(120), || {
        pod_json(&server, "hungry").filter(|p| p["status"]["phase"] == "Failed")
    });
    let term = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(term["reason"], "OOMKilled", "{}", pod["status"]);
    assert_eq!(term["exitCode"], 137, "{term}");
    let table = server.kubectl_ok(&["get", "pod", "hungry"]);
    assert!(table.contains("OOMKilled"), "{table}");
    let logs = server.kubectl_ok(&["logs", "hungry"]);
    assert!(
        logs.contains("eating") && !logs.contains("survived"),
        "{logs}"
    );

    // With restarts the OOM kill is the lastState of the next run.
    let again = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: hungry-again}}
spec:
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a)"]
    resources:
      limits: {{memory: 32Mi}}
"#
    );
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &again);
    let status = wait_for(
        "a restart after the OOM kill",
        Duration::from_secs(120),
        || {
            let p = pod_json(&server, "hungry-again")?;
            let s = p["status"]["containerStatuses"][0].clone();
            (s["restartCount"].as_i64() >= Some(1)
                && s["lastState"]["terminated"]["reason"].is_string())
            .then_some(s)
        },
    );
    assert_eq!(
        status["lastState"]["terminated"]["reason"], "OOMKilled",
        "{status}"
    );
}

#[test]
fn host_network_pod_runs_in_the_node_namespace_with_the_node_ip() {
    let server = TestServer::start(StoreKind::Redb);
    let node = AgentNode::start(&server, &node_name("hostnet"));
    let node_json: serde_json::Value =
        serde_json::from_str(&server.kubectl_ok(&["get", "node", &node.name, "-o", "json"]))
            .expect("node JSON");
    let node_ip = node_json["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .expect("node InternalIP")
        .to_string();
    let links_before = {
        let mut l = node.netns.links();
        l.sort();
        l
    };
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: on-host}}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /www && ip -o -4 addr > /www/index.html && exec httpd -f -p 18080 -h /www"]
"#
    );
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &manifest);
    let pod = wait_running(&server, "on-host");
    assert_eq!(
        pod["status"]["podIP"],
        node_ip.as_str(),
        "{}",
        pod["status"]
    );
    assert_eq!(pod["status"]["hostIP"], node_ip.as_str());
    assert_eq!(node.allocated_ips(), 0, "a hostNetwork pod took a pod IP");
    // The server listens in the node's namespace: reachable on the node's loopback.
    let body = wait_for("httpd on the node", Duration::from_secs(30), || {
        node.http_get("http://127.0.0.1:18080/")
    });
    // and it saw the node's interfaces, with the node IP.
    assert!(body.contains(&format!("inet {node_ip}/")), "{body}");
    let mut links = node.netns.links();
    links.sort();
    assert_eq!(links, links_before, "a hostNetwork pod must not add a veth");

    server.kubectl_ok(&["delete", "pod", "on-host", "--wait=false"]);
    wait_for("pod removed", Duration::from_secs(60), || {
        pod_json(&server, "on-host").is_none().then_some(())
    });
    assert!(node.runc_containers().is_empty());
    assert!(node.mounts().is_empty(), "mounts left: {:?}", node.mounts());
    assert!(
        node.http_get("http://127.0.0.1:18080/").is_none(),
        "the server outlived its pod"
    );
    let mut after = node.netns.links();
    after.sort();
    assert_eq!(after, links_before, "the node's links changed");
}
