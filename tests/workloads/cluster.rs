//! A `skiff server` for the namespace, garbage-collector and workload
//! tests, started with some controllers disabled (`common::TestServer`
//! takes no server flags), plus the parts of a cluster those tests play
//! themselves: fake nodes, the scheduler's binding and the kubelet's pod
//! status and final deletion. The guard kills the server by its PID, also
//! when a test panics (and prints the end of the server log then).

// Each test binary includes this module and uses a different subset of it.
#![allow(dead_code)]

use std::fs::File;
use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::common;

/// How long the server may take to start, and the controllers to act.
pub const TIMEOUT: Duration = Duration::from_secs(45);
/// Upper bound for one kubectl run.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(120);
/// Lines of server log printed when a test fails.
const LOG_TAIL_LINES: usize = 200;

/// The server process and its directory: killed by PID when dropped, and
/// its log printed if a test is failing.
struct Process {
    child: Child,
    dir: TempDir,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "----- skiff server log (last {} lines) -----\n{}\n----- end -----",
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

impl Process {
    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("data").join("admin.kubeconfig")
    }

    /// Waits until the server answers and its namespaces exist.
    async fn wait_ready(&mut self) -> kube::Client {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("skiff server exited with {status} before it was ready");
            }
            let last = match self.try_client().await {
                Ok(client) => {
                    let namespaces: Api<Namespace> = Api::all(client.clone());
                    match namespaces.get_opt("default").await {
                        Ok(Some(_)) => return client,
                        Ok(None) => "namespace default does not exist yet".to_string(),
                        Err(e) => e.to_string(),
                    }
                }
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "skiff server not ready after {TIMEOUT:?}: {last}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn try_client(&self) -> Result<kube::Client, String> {
        let kubeconfig =
            kube::config::Kubeconfig::read_from(self.kubeconfig()).map_err(|e| e.to_string())?;
        let options = kube::config::KubeConfigOptions::default();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| e.to_string())?;
        kube::Client::try_from(config).map_err(|e| e.to_string())
    }
}

/// A running server and an admin client of it.
pub struct Cluster {
    process: Process,
    /// Admin client.
    pub client: kube::Client,
}

impl Cluster {
    /// Starts a server on a free port with `disabled` controllers and waits
    /// until it answers.
    pub async fn start(disabled: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("skiff-workloads-test-")
            .tempdir()
            .expect("create a temporary directory");
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("find a free port")
            .port();
        let log = File::create(dir.path().join("server.log")).expect("create the server log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
        cmd.arg("server")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"));
        if !disabled.is_empty() {
            cmd.arg("--disable-controllers").arg(disabled.join(","));
        }
        let child = cmd
            .env(
                "SKIFF_LOG",
                std::env::var("SKIFF_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("run the skiff binary");
        let mut process = Process { child, dir };
        let client = process.wait_ready().await;
        Cluster { process, client }
    }

    /// Runs the real kubectl (off the async runtime, so background tasks
    /// such as a kubelet keep running while kubectl waits).
    pub async fn kubectl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(common::tools::kubectl());
        cmd.arg("--kubeconfig")
            .arg(self.process.kubeconfig())
            .arg("--cache-dir")
            .arg(self.process.dir.path().join("kube-cache"))
            .args(args);
        tokio::task::spawn_blocking(move || common::process::run(cmd, None, KUBECTL_TIMEOUT))
            .await
            .expect("kubectl runner thread")
    }

    /// Runs kubectl and returns its stdout; panics with both streams if it fails.
    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        common::expect_success(&format!("kubectl {}", args.join(" ")), out)
    }

    /// `kubectl apply` of JSON manifests; what kubectl did.
    pub async fn try_apply(&self, manifests: &[Value]) -> Output {
        // One YAML document per object (JSON is YAML): validating a `List`
        // would send kubectl to the protobuf OpenAPI v2 document.
        let documents: Vec<String> = manifests.iter().map(Value::to_string).collect();
        let path = self
            .process
            .dir
            .path()
            .join(format!("manifest-{}.yaml", unique()));
        std::fs::write(&path, documents.join("\n---\n")).expect("write the manifest");
        let path = path.to_string_lossy().into_owned();
        self.kubectl(&["apply", "-f", &path]).await
    }

    /// `kubectl apply` of JSON manifests, which must succeed; its output.
    pub async fn apply(&self, manifests: &[Value]) -> String {
        common::expect_success("kubectl apply", self.try_apply(manifests).await)
    }

    /// Pods of `namespace`.
    pub fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// A fake node that reports Ready (its kubelet is the test).
    pub async fn add_node(&self, name: &str, taints: Value) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {"taints": taints},
        }))
        .expect("a node");
        nodes
            .create(&PostParams::default(), &node)
            .await
            .unwrap_or_else(|e| panic!("create node {name}: {e}"));
        let status = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now(), "lastTransitionTime": now()},
        ]}});
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_or_else(|e| panic!("mark node {name} ready: {e}"));
    }

    /// Plays the scheduler: binds a pod to `node` through `pods/binding`.
    pub async fn bind(&self, namespace: &str, pod: &str, node: &str) {
        bind(&self.pods(namespace), pod, node).await;
    }

    /// Plays kubelet: sets the pod's phase (Ready follows Running).
    pub async fn set_phase(&self, namespace: &str, pod: &str, phase: &str) {
        set_phase(&self.pods(namespace), pod, phase).await;
    }

    /// Plays kubelet confirming a graceful deletion: deletes with grace 0.
    pub async fn finish_deletion(&self, namespace: &str, pod: &str) {
        finish_deletion(&self.pods(namespace), pod).await;
    }

    /// Plays scheduler and kubelet for every pod of `namespace` until
    /// dropped: binds pending pods (to the node a daemon pod is pinned to,
    /// else to `node`), makes bound pods Running and Ready, and confirms
    /// graceful deletions.
    pub fn kubelet(&self, namespace: &str, node: &str) -> Kubelet {
        let pods = self.pods(namespace);
        let node = node.to_string();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(list) = pods.list(&ListParams::default()).await {
                    for pod in list.items {
                        kubelet_pass(&pods, &pod, &node).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Kubelet { task }
    }
}

/// A background kubelet; stops when dropped.
pub struct Kubelet {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn kubelet_pass(pods: &Api<Pod>, pod: &Pod, default_node: &str) {
    let Some(name) = pod.metadata.name.as_deref() else {
        return;
    };
    if pod.metadata.deletion_timestamp.is_some() {
        finish_deletion(pods, name).await;
        return;
    }
    let bound = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    if !bound {
        let node = pinned_node(pod).unwrap_or_else(|| default_node.to_string());
        bind(pods, name, &node).await;
    }
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    if phase == "Pending" {
        set_phase(pods, name, "Running").await;
    }
}

/// The node a daemon pod's required node affinity names.
pub fn pinned_node(pod: &Pod) -> Option<String> {
    let terms = &pod
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

/// Binds a pod to `node` through `pods/binding`.
pub async fn bind(pods: &Api<Pod>, pod: &str, node: &str) {
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": pod},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    // The API answers with a Status, hence the untyped answer.
    match pods
        .create_subresource::<Value, Value>("binding", pod, &PostParams::default(), &binding)
        .await
    {
        Ok(_) => {}
        // Gone meanwhile, or bound already by an earlier pass.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => panic!("bind pod {pod} to {node}: {e}"),
    }
}

/// Sets the pod's phase as a kubelet would (Ready follows Running).
pub async fn set_phase(pods: &Api<Pod>, pod: &str, phase: &str) {
    let ready = if phase == "Running" { "True" } else { "False" };
    let mut status = json!({
        "phase": phase,
        "conditions": [
            {"type": "Ready", "status": ready, "lastTransitionTime": now()},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": now()},
        ],
    });
    if phase == "Succeeded" || phase == "Failed" {
        let code = if phase == "Succeeded" { 0 } else { 1 };
        status["containerStatuses"] = json!([{
            "name": "main", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "startedAt": now(), "finishedAt": now()}},
        }]);
    }
    match pods
        .patch_status(
            pod,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => panic!("set pod {pod} {phase}: {e}"),
    }
}

/// Confirms a graceful deletion: deletes with grace period 0.
pub async fn finish_deletion(pods: &Api<Pod>, pod: &str) {
    match pods
        .delete(pod, &DeleteParams::default().grace_period(0))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => panic!("delete pod {pod}: {e}"),
    }
}

/// Now, as the API writes timestamps.
pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn unique() -> String {
    format!("{:x}", k8s_openapi::jiff::Timestamp::now().as_nanosecond())
}

/// Polls `check` until it returns Some, panicking with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
