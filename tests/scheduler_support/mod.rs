//! Helpers of the scheduler tests: a `skiff server` running only the
//! scheduler (killed by its PID on drop, log printed when a test panics),
//! fake nodes and pods written through the API, and the events and
//! conditions the tests read back.

#![allow(dead_code)]

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::{json, Value};
use tempfile::TempDir;

/// How long anything the scheduler should do may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A `skiff server` running only the scheduler.
pub struct Server {
    child: Child,
    dir: TempDir,
}

impl Server {
    /// Starts the server and returns it with an admin client once it answers.
    pub async fn start() -> (Server, kube::Client) {
        let dir = tempfile::Builder::new()
            .prefix("skiff-scheduler-test-")
            .tempdir()
            .expect("create a temporary directory");
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("find a free port")
            .port();
        let disabled: Vec<&str> = skiff_controlplane::controllers::ALL
            .iter()
            .copied()
            .filter(|n| *n != "scheduler")
            .collect();
        let log = File::create(dir.path().join("server.log")).expect("create the server log");
        let child = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .arg("server")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--disable-controllers")
            .arg(disabled.join(","))
            .env(
                "SKIFF_LOG",
                std::env::var("SKIFF_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("run the skiff binary");
        let mut server = Server { child, dir };
        let client = server.wait_ready().await;
        (server, client)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("data").join("admin.kubeconfig")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub async fn wait_ready(&mut self) -> kube::Client {
        let deadline = Instant::now() + TIMEOUT;
        let mut last = String::from("no attempt yet");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("skiff server exited with {status}; log:\n{}", self.log());
            }
            if self.kubeconfig().exists() {
                match client(&self.kubeconfig()).await {
                    Ok(client) => match client.apiserver_version().await {
                        Ok(_) => return client,
                        Err(e) => last = e.to_string(),
                    },
                    Err(e) => last = e,
                }
            }
            assert!(
                Instant::now() < deadline,
                "skiff server not ready after {TIMEOUT:?}: {last}\nlog:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGKILL to this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- skiff server log -----\n{}\n----- end of server log -----",
                self.log()
            );
        }
    }
}

pub async fn client(kubeconfig: &std::path::Path) -> Result<kube::Client, String> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| e.to_string())?;
    let config =
        kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| e.to_string())?;
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// What a fake node looks like.
pub struct FakeNode<'a> {
    pub name: &'a str,
    pub cpu: &'a str,
    pub pods: &'a str,
    pub labels: Value,
    pub taints: Value,
    pub ready: bool,
    pub unschedulable: bool,
}

impl<'a> FakeNode<'a> {
    pub fn new(name: &'a str, cpu: &'a str) -> Self {
        FakeNode {
            name,
            cpu,
            pods: "110",
            labels: json!({}),
            taints: json!([]),
            ready: true,
            unschedulable: false,
        }
    }

    pub async fn create(self, client: &kube::Client) {
        let mut labels = self.labels.clone();
        labels["kubernetes.io/hostname"] = json!(self.name);
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "spec": {"taints": self.taints, "unschedulable": self.unschedulable},
            "status": {
                "capacity": {"cpu": self.cpu, "memory": "8Gi", "pods": self.pods},
                "allocatable": {"cpu": self.cpu, "memory": "8Gi", "pods": self.pods},
                "conditions": [{
                    "type": "Ready",
                    "status": if self.ready { "True" } else { "False" },
                    "reason": if self.ready { "KubeletReady" } else { "KubeletNotReady" },
                }],
            },
        }))
        .expect("valid node");
        Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &node)
            .await
            .unwrap_or_else(|e| panic!("create node {}: {e}", self.name));
    }
}

/// Creates a pod in `default` with one container requesting `cpu`; `extra`
/// is merged into the pod spec.
pub async fn create_pod(client: &kube::Client, name: &str, cpu: &str, extra: Value) {
    create_pod_with_meta(client, name, cpu, json!({}), extra).await;
}

pub async fn create_pod_with_meta(
    client: &kube::Client,
    name: &str,
    cpu: &str,
    meta: Value,
    extra: Value,
) {
    let mut spec = json!({"containers": [{
        "name": "app",
        "image": "registry.local/app:1",
        "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}},
    }]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let mut metadata = json!({"name": name, "namespace": "default"});
    if let (Some(m), Some(extra)) = (metadata.as_object_mut(), meta.as_object()) {
        m.extend(extra.clone());
    }
    let pod: Pod = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}),
    )
    .expect("valid pod");
    pods(client)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
}

pub fn pods(client: &kube::Client) -> Api<Pod> {
    Api::namespaced(client.clone(), "default")
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {TIMEOUT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn node_of(client: &kube::Client, pod: &str) -> Option<String> {
    pods(client)
        .get(pod)
        .await
        .ok()?
        .spec?
        .node_name
        .filter(|n| !n.is_empty())
}

/// Waits until `pod` is bound and returns its node.
pub async fn bound_node(client: &kube::Client, pod: &str) -> String {
    eventually(&format!("pod {pod} to be bound"), || node_of(client, pod)).await
}

/// Events about `pod` with `reason`.
pub async fn events(client: &kube::Client, pod: &str, reason: &str) -> Vec<Event> {
    let list = Api::<Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default().fields(&format!("involvedObject.name={pod}")))
        .await
        .expect("list events");
    list.items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

/// Waits for a FailedScheduling event on `pod` and returns its message.
pub async fn failed_scheduling(client: &kube::Client, pod: &str) -> String {
    eventually(&format!("a FailedScheduling event on {pod}"), || async {
        let events = events(client, pod, "FailedScheduling").await;
        let event = events.last()?;
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        event.message.clone()
    })
    .await
}

/// The pod's PodScheduled condition as (status, reason, message).
pub async fn scheduled_condition(
    client: &kube::Client,
    pod: &str,
) -> Option<(String, String, String)> {
    let pod = pods(client).get(pod).await.ok()?;
    let condition = pod
        .status?
        .conditions?
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")?;
    Some((
        condition.status,
        condition.reason.unwrap_or_default(),
        condition.message.unwrap_or_default(),
    ))
}
