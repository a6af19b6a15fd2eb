//! The scheduler inside `skiff server`, seen from the API: fake Node objects
//! (Ready condition, allocatable, taints, labels) are written directly, pods
//! are created, and the tests check where they land, what events explain
//! them and that an unschedulable pod is retried when the cluster changes.
//!
//! Each test runs its own server with every controller but the scheduler
//! disabled (nothing else touches the fake nodes or pods), on a free
//! 127.0.0.1 port and a temporary data directory; the guard kills the server
//! by its PID, also when a test panics (and prints the server log then).

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{json, Value};
use tempfile::TempDir;

/// How long anything the scheduler should do may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A `skiff server` running only the scheduler.
struct Server {
    child: Child,
    dir: TempDir,
}

impl Server {
    /// Starts the server and returns it with an admin client once it answers.
    async fn start() -> (Server, kube::Client) {
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

async fn client(kubeconfig: &std::path::Path) -> Result<kube::Client, String> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| e.to_string())?;
    let config =
        kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| e.to_string())?;
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// What a fake node looks like.
struct FakeNode<'a> {
    name: &'a str,
    cpu: &'a str,
    pods: &'a str,
    labels: Value,
    taints: Value,
    ready: bool,
    unschedulable: bool,
}

impl<'a> FakeNode<'a> {
    fn new(name: &'a str, cpu: &'a str) -> Self {
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

    async fn create(self, client: &kube::Client) {
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
async fn create_pod(client: &kube::Client, name: &str, cpu: &str, extra: Value) {
    create_pod_with_meta(client, name, cpu, json!({}), extra).await;
}

async fn create_pod_with_meta(
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

fn pods(client: &kube::Client) -> Api<Pod> {
    Api::namespaced(client.clone(), "default")
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
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

async fn node_of(client: &kube::Client, pod: &str) -> Option<String> {
    pods(client)
        .get(pod)
        .await
        .ok()?
        .spec?
        .node_name
        .filter(|n| !n.is_empty())
}

/// Waits until `pod` is bound and returns its node.
async fn bound_node(client: &kube::Client, pod: &str) -> String {
    eventually(&format!("pod {pod} to be bound"), || node_of(client, pod)).await
}

/// Events about `pod` with `reason`.
async fn events(client: &kube::Client, pod: &str, reason: &str) -> Vec<Event> {
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
async fn failed_scheduling(client: &kube::Client, pod: &str) -> String {
    eventually(&format!("a FailedScheduling event on {pod}"), || async {
        let events = events(client, pod, "FailedScheduling").await;
        let event = events.last()?;
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        event.message.clone()
    })
    .await
}

/// The pod's PodScheduled condition as (status, reason, message).
async fn scheduled_condition(client: &kube::Client, pod: &str) -> Option<(String, String, String)> {
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

#[tokio::test]
async fn unschedulable_pod_is_explained_and_scheduled_once_a_node_fits() {
    let (server, client) = Server::start().await;
    FakeNode::new("small-1", "2").create(&client).await;
    FakeNode::new("small-2", "2").create(&client).await;

    create_pod(&client, "fits", "500m", json!({})).await;
    let node = bound_node(&client, "fits").await;
    assert!(node.starts_with("small-"), "bound to {node}");
    let message = eventually("the Scheduled event", || async {
        events(&client, "fits", "Scheduled")
            .await
            .first()?
            .message
            .clone()
    })
    .await;
    assert_eq!(
        message,
        format!("Successfully assigned default/fits to {node}")
    );

    create_pod(&client, "too-big", "4", json!({})).await;
    let message = failed_scheduling(&client, "too-big").await;
    assert_eq!(message, "0/2 nodes are available: 2 Insufficient cpu.");
    let condition = eventually("PodScheduled=False on too-big", || {
        scheduled_condition(&client, "too-big")
    })
    .await;
    assert_eq!(
        condition,
        (
            "False".to_string(),
            "Unschedulable".to_string(),
            "0/2 nodes are available: 2 Insufficient cpu.".to_string()
        )
    );
    assert_eq!(node_of(&client, "too-big").await, None, "stays Pending");
    // The scheduler's status write is owned by the controller manager, as
    // `kubectl get -o yaml --show-managed-fields` shows it.
    let pod = pods(&client).get("too-big").await.expect("get too-big");
    let managers: Vec<(String, String)> = pod
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            (
                m.manager.unwrap_or_default(),
                m.subresource.unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        managers.contains(&("skiff-controller-manager".to_string(), "status".to_string())),
        "managedFields of too-big: {managers:?}"
    );

    // kubectl describe shows the explanation as users read it.
    let describe = Command::new(common::tools::kubectl())
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args(["describe", "pod", "too-big"])
        .output()
        .expect("run kubectl describe");
    let text = String::from_utf8_lossy(&describe.stdout);
    assert!(
        describe.status.success(),
        "kubectl describe failed: {}",
        String::from_utf8_lossy(&describe.stderr)
    );
    assert!(
        text.contains("FailedScheduling"),
        "no FailedScheduling in:\n{text}"
    );
    assert!(
        text.contains("0/2 nodes are available: 2 Insufficient cpu."),
        "no reason in:\n{text}"
    );

    // A node big enough appears: the pod is retried without waiting for the periodic flush.
    FakeNode::new("big", "8").create(&client).await;
    assert_eq!(bound_node(&client, "too-big").await, "big");
    let condition = scheduled_condition(&client, "too-big").await;
    assert_eq!(condition.map(|c| c.0), Some("True".to_string()));
}

#[tokio::test]
async fn selectors_affinity_taints_and_host_ports_steer_placement() {
    let (_server, client) = Server::start().await;
    FakeNode {
        labels: json!({"zone": "a"}),
        ..FakeNode::new("plain", "4")
    }
    .create(&client)
    .await;
    FakeNode {
        labels: json!({"zone": "b", "disk": "ssd", "cores": "16"}),
        ..FakeNode::new("ssd", "4")
    }
    .create(&client)
    .await;
    FakeNode {
        labels: json!({"zone": "b", "gpu": "true"}),
        taints: json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
        ..FakeNode::new("gpu", "4")
    }
    .create(&client)
    .await;
    FakeNode {
        labels: json!({"zone": "c"}),
        unschedulable: true,
        ..FakeNode::new("cordoned", "4")
    }
    .create(&client)
    .await;
    FakeNode {
        labels: json!({"zone": "c"}),
        ready: false,
        ..FakeNode::new("down", "4")
    }
    .create(&client)
    .await;

    let in_zone = |values: Value| {
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": values}]}
        ]}}}})
    };
    create_pod(
        &client,
        "selector",
        "100m",
        json!({"nodeSelector": {"disk": "ssd"}}),
    )
    .await;
    create_pod(&client, "affinity-in", "100m", in_zone(json!(["a", "c"]))).await;
    create_pod(
        &client,
        "affinity-gt-or",
        "100m",
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["nowhere"]}]},
            {"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["8"]}, {"key": "gpu", "operator": "DoesNotExist"}]}
        ]}}}}),
    )
    .await;
    create_pod(
        &client,
        "affinity-name",
        "100m",
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["plain"]}]}
        ]}}}}),
    )
    .await;
    create_pod(
        &client,
        "tolerates-gpu",
        "100m",
        json!({"nodeSelector": {"gpu": "true"}, "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
    )
    .await;
    create_pod(
        &client,
        "wants-gpu",
        "100m",
        json!({"nodeSelector": {"gpu": "true"}}),
    )
    .await;

    assert_eq!(bound_node(&client, "selector").await, "ssd");
    assert_eq!(bound_node(&client, "affinity-in").await, "plain");
    assert_eq!(bound_node(&client, "affinity-gt-or").await, "ssd");
    assert_eq!(bound_node(&client, "affinity-name").await, "plain");
    assert_eq!(bound_node(&client, "tolerates-gpu").await, "gpu");
    assert_eq!(
        failed_scheduling(&client, "wants-gpu").await,
        "0/5 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were not ready, \
         1 node(s) were unschedulable, 2 node(s) didn't match Pod's node affinity/selector."
    );

    // Host ports: two pods cannot share 8080/TCP on one node; a third fits nowhere.
    let host_port = json!({"containers": [{
        "name": "app",
        "image": "registry.local/app:1",
        "ports": [{"containerPort": 80, "hostPort": 8080}],
    }]});
    create_pod(&client, "port-1", "100m", host_port.clone()).await;
    create_pod(&client, "port-2", "100m", host_port.clone()).await;
    let first = bound_node(&client, "port-1").await;
    let second = bound_node(&client, "port-2").await;
    assert_ne!(first, second, "two pods with hostPort 8080 on one node");
    create_pod(&client, "port-3", "100m", host_port).await;
    assert_eq!(
        failed_scheduling(&client, "port-3").await,
        "0/5 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were not ready, \
         1 node(s) were unschedulable, 2 node(s) didn't have free ports for the requested pod ports."
    );
}

#[tokio::test]
async fn pods_of_one_owner_spread_and_avoid_prefer_no_schedule() {
    let (_server, client) = Server::start().await;
    for name in ["n1", "n2", "n3"] {
        FakeNode::new(name, "4").create(&client).await;
    }
    FakeNode {
        taints: json!([{"key": "maintenance", "effect": "PreferNoSchedule"}]),
        ..FakeNode::new("soft", "4")
    }
    .create(&client)
    .await;
    let owner = json!({"ownerReferences": [{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9",
        "uid": "5f0c7a4e-2b1d-4c3e-9f8a-1a2b3c4d5e6f", "controller": true,
    }]});
    for i in 0..6 {
        create_pod_with_meta(
            &client,
            &format!("web-{i}"),
            "100m",
            owner.clone(),
            json!({}),
        )
        .await;
    }
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..6 {
        *per_node
            .entry(bound_node(&client, &format!("web-{i}")).await)
            .or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = [("n1", 2), ("n2", 2), ("n3", 2)]
        .into_iter()
        .map(|(n, c)| (n.to_string(), c))
        .collect();
    assert_eq!(per_node, expected);
}

#[tokio::test]
async fn pods_bound_elsewhere_count_and_their_deletion_frees_room() {
    let (_server, client) = Server::start().await;
    FakeNode {
        pods: "1",
        ..FakeNode::new("only", "4")
    }
    .create(&client)
    .await;

    // Bound by someone else: the scheduler leaves it alone but counts it.
    create_pod(&client, "manual", "100m", json!({"nodeName": "only"})).await;
    create_pod(&client, "waiting", "100m", json!({})).await;
    assert_eq!(
        failed_scheduling(&client, "waiting").await,
        "0/1 nodes are available: 1 Too many pods."
    );

    // Another scheduler's pod is not ours to bind or explain.
    create_pod(
        &client,
        "not-ours",
        "100m",
        json!({"schedulerName": "other-scheduler"}),
    )
    .await;

    pods(&client)
        .delete("manual", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete the manual pod");
    assert_eq!(bound_node(&client, "waiting").await, "only");
    assert_eq!(node_of(&client, "not-ours").await, None);
    assert!(events(&client, "not-ours", "FailedScheduling")
        .await
        .is_empty());
    assert!(events(&client, "not-ours", "Scheduled").await.is_empty());
}

#[tokio::test]
async fn retried_unschedulable_pod_keeps_one_event_with_a_count() {
    let (_server, client) = Server::start().await;
    FakeNode::new("only", "2").create(&client).await;
    // The node and pod watches are separate streams: a pod that overtakes
    // the node would first be told there are no nodes. A pod that fits
    // proves the scheduler knows the node.
    create_pod(&client, "probe", "10m", json!({})).await;
    eventually("the probe pod bound", || node_of(&client, "probe")).await;
    create_pod(&client, "too-big", "4", json!({})).await;
    let message = failed_scheduling(&client, "too-big").await;
    assert_eq!(message, "0/1 nodes are available: 1 Insufficient cpu.");

    // Pods bound by someone else come and go: each departure is a cluster
    // change that makes the scheduler try the pending pod again.
    let mut churn = 0;
    let event = eventually("FailedScheduling counted three times", || {
        churn += 1;
        let client = client.clone();
        async move {
            let name = format!("churn-{churn}");
            create_pod(&client, &name, "10m", json!({"nodeName": "only"})).await;
            pods(&client)
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await
                .expect("delete a churn pod");
            tokio::time::sleep(Duration::from_millis(400)).await;
            let events = events(&client, "too-big", "FailedScheduling").await;
            let event = events.first()?.clone();
            assert_eq!(events.len(), 1, "repeats become one Event: {events:?}");
            (event.count? >= 3).then_some(event)
        }
    })
    .await;
    assert_eq!(
        event.message.as_deref(),
        Some("0/1 nodes are available: 1 Insufficient cpu.")
    );
    let (first, last) = (
        event.first_timestamp.expect("first"),
        event.last_timestamp.expect("last"),
    );
    assert!(
        last.0 > first.0,
        "lastTimestamp {last:?} follows firstTimestamp {first:?}"
    );
    assert_eq!(node_of(&client, "too-big").await, None, "stays Pending");
}
