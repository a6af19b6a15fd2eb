//! `kubectl top` end to end: the agent reads its pods' cgroups, the API
//! server serves them as `metrics.k8s.io/v1beta1` PodMetrics/NodeMetrics.

mod agent_support;
mod common;

use std::time::Duration;

use agent_support::{wait_for, wait_running, AgentNode, BUSYBOX};
use common::{StoreKind, TestServer};

fn node_name(test: &str) -> String {
    format!("sm{}-{test}", std::process::id() % 10_000)
}

/// A pod whose one container runs `script` once, on at most 0.3 cores.
fn pod(name: &str, script: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {name}}}}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "{script}"]
    resources: {{limits: {{cpu: 300m}}}}
"#
    )
}

/// Millicores of a `kubectl top` CPU column (`250m`, `1`).
fn millicores(cell: &str) -> Option<u64> {
    match cell.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => cell.parse::<u64>().ok().map(|c| c * 1000),
    }
}

/// CPU (millicores) and memory (MiB) of `name`'s row in a `kubectl top` table.
fn column(table: &str, name: &str) -> Option<(u64, u64)> {
    let cols: Vec<&str> = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&name))?;
    // `top pods`: NAME CPU MEMORY; `top nodes`: NAME CPU CPU% MEMORY MEMORY%.
    let memory = cols[1..]
        .iter()
        .find_map(|c| c.strip_suffix("Mi")?.parse().ok())?;
    Some((millicores(cols.get(1)?)?, memory))
}

#[test]
fn kubectl_top_shows_a_busy_pods_cpu_and_the_node() {
    let server = TestServer::start(StoreKind::Redb);
    let node = AgentNode::start(&server, &node_name("top"));
    // Bounded: the loop ends by itself after two minutes and is not restarted.
    server.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &pod("busy", "timeout 120 sh -c 'while :; do :; done'"),
    );
    // Idle, holding 20 MB in a shell variable.
    server.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &pod(
            "idle",
            "x=$(head -c 20000000 /dev/zero | tr '\\\\0' a); sleep 120; echo ${#x}",
        ),
    );
    wait_running(&server, "busy");
    wait_running(&server, "idle");

    let (busy, idle) = wait_for(
        "kubectl top pods showing the busy loop and the memory held",
        Duration::from_secs(60),
        || {
            let out = server.kubectl(&["top", "pods"]);
            let table = String::from_utf8_lossy(&out.stdout).into_owned();
            // Shown if the wait times out.
            eprintln!("{table}{}", String::from_utf8_lossy(&out.stderr));
            let busy = column(&table, "busy")?;
            let idle = column(&table, "idle")?;
            (busy.0 >= 100 && idle.1 >= 15).then_some((busy, idle))
        },
    );
    assert!(busy.0 > idle.0, "busy {busy:?} vs idle {idle:?}");

    // Per container, and selected by label.
    let containers = server.kubectl_ok(&["top", "pod", "-l", "app=busy", "--containers"]);
    let row: Vec<&str> = containers
        .lines()
        .find(|l| l.starts_with("busy"))
        .unwrap_or_else(|| panic!("no busy row in\n{containers}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[1], "main", "{containers}");
    assert!(!containers.contains("idle"), "{containers}");

    // The node's usage covers its pods.
    let nodes = server.kubectl_ok(&["top", "nodes"]);
    let (node_cpu, node_memory) = column(&nodes, &node.name).unwrap_or_else(|| panic!("{nodes}"));
    assert!(node_cpu >= 100 && node_memory >= 15, "{nodes}");

    // The objects themselves, as metrics-server serves them.
    let m = server
        .get("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/busy")
        .json();
    assert_eq!(m["kind"], "PodMetrics", "{m}");
    assert_eq!(m["apiVersion"], "metrics.k8s.io/v1beta1");
    assert_eq!(m["metadata"]["labels"]["app"], "busy");
    assert!(m["containers"][0]["usage"]["memory"]
        .as_str()
        .is_some_and(|q| q.ends_with("Ki")));
    let missing = server.get("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/nosuch");
    assert_eq!(missing.status, 404, "{}", missing.body);
}

#[test]
fn hpa_scales_a_deployment_on_cpu() {
    let server = TestServer::start(StoreKind::Redb);
    let _node = AgentNode::start(&server, &node_name("hpa"));
    // Each replica burns its 200m limit (twice its request) for 150 s, then idles.
    let manifest = format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: burner}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: burner}}}}
  template:
    metadata: {{labels: {{app: burner}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: burn
        image: {BUSYBOX}
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "timeout 150 sh -c 'while :; do :; done'; sleep 3600"]
        resources:
          requests: {{cpu: 100m}}
          limits: {{cpu: 200m}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: burner}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: burner}}
  minReplicas: 1
  maxReplicas: 3
  metrics:
  - type: Resource
    resource:
      name: cpu
      target: {{type: Utilization, averageUtilization: 50}}
"#
    );
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &manifest);

    let hpa = wait_for(
        "the HPA to scale burner to its maximum",
        Duration::from_secs(120),
        || {
            let out = server.kubectl(&["get", "hpa", "burner", "-o", "json"]);
            let hpa: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (hpa["status"]["desiredReplicas"] == 3).then_some(hpa)
        },
    );
    let utilization = hpa["status"]["currentMetrics"][0]["resource"]["current"]
        ["averageUtilization"]
        .as_i64()
        .unwrap_or_else(|| panic!("{hpa}"));
    assert!(utilization > 50, "{hpa}");
    assert!(hpa["status"]["lastScaleTime"].is_string(), "{hpa}");
    let replicas = server.kubectl_ok(&[
        "get",
        "deployment",
        "burner",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas.trim(), "3");
    wait_for("three burner pods running", Duration::from_secs(90), || {
        let out = server.kubectl_ok(&["get", "pods", "-l", "app=burner", "--no-headers"]);
        (out.lines().filter(|l| l.contains("Running")).count() == 3).then_some(())
    });
}
