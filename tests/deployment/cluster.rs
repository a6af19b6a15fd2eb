//! A `skiff server` for the Deployment / ReplicaSet tests, with the
//! scheduler disabled: no nodes exist, so the tests play kubelet themselves
//! by writing pod status (phase Running, Ready condition) through
//! `pods/status`. The guard kills the server by its PID, also when a test
//! panics (and prints the server log then).

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use tempfile::TempDir;

use crate::common;

/// How long the server may take to start, and anything the controllers should do.
pub const TIMEOUT: Duration = Duration::from_secs(45);
/// Upper bound for one kubectl run.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(120);

/// The server process and its directory; killed by PID when dropped.
struct Process {
    child: Child,
    dir: TempDir,
}

/// A running server and an admin client of it.
pub struct Cluster {
    server: Process,
    pub client: kube::Client,
}

impl Cluster {
    /// Starts a server on a free port and waits until it answers.
    pub async fn start() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("skiff-deployment-test-")
            .tempdir()
            .expect("create a temporary directory");
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("find a free port")
            .port();
        let log = File::create(dir.path().join("server.log")).expect("create the server log");
        let child = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .arg("server")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--disable-controllers")
            .arg("scheduler")
            .env(
                "SKIFF_LOG",
                std::env::var("SKIFF_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("run the skiff binary");
        let mut server = Process { child, dir };
        let client = server.wait_ready().await;
        Cluster { server, client }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.server.kubeconfig()
    }

    /// Runs the real kubectl against this server (off the async runtime, so
    /// the test's kubelet task keeps running while kubectl waits).
    pub async fn kubectl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(common::tools::kubectl());
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.server.dir.path().join("kube-cache"))
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

    /// Applies a manifest with kubectl.
    pub async fn apply(&self, manifest: &serde_json::Value) {
        let path = self
            .server
            .dir
            .path()
            .join(format!("manifest-{}.json", rand_suffix()));
        std::fs::write(&path, manifest.to_string()).expect("write the manifest");
        let path = path.to_string_lossy().into_owned();
        self.kubectl_ok(&["apply", "-f", &path]).await;
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    pub fn sets(&self) -> Api<ReplicaSet> {
        Api::namespaced(self.client.clone(), "default")
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// Active (not terminating) pods matching `selector`, by name.
    pub async fn active_pods(&self, selector: &str) -> Vec<Pod> {
        let list = self
            .pods()
            .list(&ListParams::default().labels(selector))
            .await
            .expect("list pods");
        let mut pods: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        pods
    }

    /// ReplicaSets matching `selector`, oldest first.
    pub async fn replica_sets(&self, selector: &str) -> Vec<ReplicaSet> {
        let list = self
            .sets()
            .list(&ListParams::default().labels(selector))
            .await
            .expect("list replica sets");
        let mut sets = list.items;
        sets.sort_by(|a, b| {
            // Revisions order replica sets; creation timestamps have only
            // second precision, so two sets made in one second would tie.
            let key = |rs: &ReplicaSet| {
                let revision = rs
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("deployment.kubernetes.io/revision"))
                    .and_then(|r| r.parse::<u64>().ok());
                (
                    revision,
                    rs.metadata.creation_timestamp.clone().map(|t| t.0),
                    rs.metadata.name.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        sets
    }

    /// Plays kubelet: the pod is Running and Ready.
    pub async fn mark_ready(&self, name: &str) {
        let now = k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let status = json!({"status": {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            ],
        }});
        self.pods()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_or_else(|e| panic!("mark pod {name} ready: {e}"));
    }

    /// Plays kubelet for every pod in the namespace until dropped: each
    /// pod becomes Running and Ready shortly after it appears.
    pub fn kubelet(&self) -> Kubelet {
        let pods = self.pods();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(list) = pods.list(&ListParams::default()).await {
                    for pod in list
                        .items
                        .iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none() && !is_ready(p))
                    {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        let now = k8s_openapi::jiff::Timestamp::now()
                            .strftime("%Y-%m-%dT%H:%M:%SZ")
                            .to_string();
                        let status = json!({"status": {"phase": "Running", "conditions": [
                            {"type": "Ready", "status": "True", "lastTransitionTime": now},
                        ]}});
                        // A pod deleted meanwhile is fine.
                        let _ = pods
                            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                            .await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Kubelet(task)
    }
}

impl Process {
    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("data").join("admin.kubeconfig")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) -> kube::Client {
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

impl Drop for Process {
    fn drop(&mut self) {
        // SIGKILL to this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(300)..].join("\n");
            eprintln!("----- skiff server log (tail) -----\n{tail}\n----- end of server log -----");
        }
    }
}

/// The test's kubelet task; stopped when dropped.
pub struct Kubelet(tokio::task::JoinHandle<()>);

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Polls `check` every 100 ms until it returns `Some`; panics after
/// [`TIMEOUT`] with the last description `check` gave.
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(state) if Instant::now() >= deadline => {
                panic!("timed out after {TIMEOUT:?} waiting for {what}; last state: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn rand_suffix() -> String {
    format!("{:x}", k8s_openapi::jiff::Timestamp::now().as_nanosecond())
}

async fn client(kubeconfig: &std::path::Path) -> Result<kube::Client, String> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| e.to_string())?;
    let config =
        kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| e.to_string())?;
    kube::Client::try_from(config).map_err(|e| e.to_string())
}
