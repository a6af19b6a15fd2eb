//! Workload helpers of the end-to-end tests: the example app's pods and its
//! Service's endpoints as kubectl shows them, probe pods pinned to nodes to
//! run clients from (`kubectl exec`), and the host-side view of a pod's
//! processes (its cgroups) to kill one the way a crash would.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Cluster;

/// A Ready pod of a Deployment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReadyPod {
    pub name: String,
    pub ip: String,
    pub node: String,
    pub uid: String,
}

/// Waits until `f` returns `Some`, polling every 500 ms, or panics with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(500));
    }
}

fn is_ready(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["podIP"].is_string()
        && pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Pods matching `selector`, as JSON.
pub fn pods(cluster: &Cluster, selector: &str) -> Vec<Value> {
    let list = cluster.kubectl_json(&["get", "pods", "-l", selector]);
    list["items"].as_array().cloned().unwrap_or_default()
}

/// The Ready, not terminating, pods matching `selector`.
pub fn ready_pods(cluster: &Cluster, selector: &str) -> Vec<ReadyPod> {
    let mut found: Vec<ReadyPod> = pods(cluster, selector)
        .iter()
        .filter(|p| is_ready(p))
        .map(|p| ReadyPod {
            name: p["metadata"]["name"].as_str().unwrap_or_default().into(),
            ip: p["status"]["podIP"].as_str().unwrap_or_default().into(),
            node: p["spec"]["nodeName"].as_str().unwrap_or_default().into(),
            uid: p["metadata"]["uid"].as_str().unwrap_or_default().into(),
        })
        .collect();
    found.sort();
    found
}

/// The ready endpoint addresses of Service `svc` (from its EndpointSlices).
pub fn ready_endpoints(cluster: &Cluster, svc: &str) -> BTreeSet<String> {
    let selector = format!("kubernetes.io/service-name={svc}");
    let slices = cluster.kubectl_json(&["get", "endpointslices", "-l", &selector]);
    slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["conditions"]["ready"] != false)
        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect()
}

/// Waits until exactly `n` pods of `selector` are Ready and the Service's
/// ready endpoints are exactly their IPs; returns the pods.
pub fn wait_service_follows(
    cluster: &Cluster,
    selector: &str,
    svc: &str,
    n: usize,
) -> Vec<ReadyPod> {
    wait_for(
        &format!("{n} ready pods of {selector} as the endpoints of {svc}"),
        Duration::from_secs(180),
        || {
            let pods = ready_pods(cluster, selector);
            let ips: BTreeSet<String> = pods.iter().map(|p| p.ip.clone()).collect();
            (pods.len() == n && ready_endpoints(cluster, svc) == ips).then_some(pods)
        },
    )
}

/// The ClusterIP of Service `svc`.
pub fn cluster_ip(cluster: &Cluster, svc: &str) -> String {
    let out = cluster.kubectl_ok(&["get", "svc", svc, "-o", "jsonpath={.spec.clusterIP}"]);
    out.trim().to_string()
}

/// One sleeping busybox pod pinned to each node (`probe-<i>`), Running.
/// Returns `(pod, node)` pairs.
pub fn start_probes(cluster: &Cluster) -> Vec<(String, String)> {
    let mut probes = Vec::new();
    for (i, node) in cluster.node_names().into_iter().enumerate() {
        let name = format!("probe-{}", i + 1);
        let manifest = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "probe"}},
            "spec": {
                "nodeName": node,
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "probe",
                    "image": "localhost/busybox:latest",
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sleep", "1000000"],
                }],
            },
        });
        cluster.kubectl_stdin_ok(&["apply", "-f", "-"], &manifest.to_string());
        probes.push((name, node));
    }
    wait_for("the probe pods Ready", Duration::from_secs(120), || {
        (ready_pods(cluster, "app=probe").len() == probes.len()).then_some(())
    });
    probes
}

/// `kubectl exec POD -- sh -c SCRIPT`.
pub fn exec(cluster: &Cluster, pod: &str, script: &str) -> Output {
    cluster.kubectl(&["exec", pod, "--", "sh", "-c", script])
}

/// Lines a pod printed fetching `url` `count` times with busybox wget (each
/// fetch bounded by `timeout`, as busybox's own -T is unusable here).
pub fn fetch_from_pod(cluster: &Cluster, pod: &str, url: &str, count: u32) -> Vec<String> {
    let script = format!(
        "i=0; while [ $i -lt {count} ]; do timeout 5 wget -q -O - {url} || echo FAILED; \
         i=$((i+1)); done"
    );
    let out = exec(cluster, pod, &script);
    assert!(
        out.status.success(),
        "kubectl exec {pod} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The page a `web` pod serves.
pub fn page_of(pod: &ReadyPod) -> String {
    format!("hello from {} on {}", pod.name, pod.node)
}

/// PIDs in the cgroups of pod `uid` on `node`, in every hierarchy.
pub fn pod_pids(node: &str, uid: &str) -> BTreeSet<u32> {
    let mut pids = BTreeSet::new();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2") {
            let dir = Path::new(f[1])
                .join(format!("skiff-{node}"))
                .join(format!("pod-{uid}"));
            collect_procs(&dir, &mut pids);
        }
    }
    pids
}

fn collect_procs(dir: &Path, pids: &mut BTreeSet<u32>) {
    let procs: PathBuf = dir.join("cgroup.procs");
    for l in std::fs::read_to_string(procs).unwrap_or_default().lines() {
        if let Ok(pid) = l.trim().parse() {
            pids.insert(pid);
        }
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_procs(&e.path(), pids);
        }
    }
}
