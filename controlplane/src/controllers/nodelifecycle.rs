//! The node lifecycle controller: watches each node's Lease in
//! `kube-node-lease` and its Ready heartbeat; a node silent for
//! `--node-monitor-grace-period` gets its kubelet conditions set to Unknown
//! ("Kubelet stopped posting node status.") and its pods marked not ready.
//! It keeps the condition taints in step (`node.kubernetes.io/unreachable`
//! and `not-ready` as NoSchedule and NoExecute, the pressure and
//! unschedulable NoSchedule taints) and removes them once the node is
//! healthy again. As upstream's taint eviction controller it deletes pods
//! on nodes with NoExecute taints they do not tolerate, at once or after
//! their `tolerationSeconds`.
//!
//! It never sets a node Ready; only the node's kubelet does. Decisions are
//! made in `health.rs` and `eviction.rs`; this file does the I/O.

mod eviction;
mod health;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, PodCondition, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use tokio::sync::Notify;

use self::eviction::{Eviction, NO_EXECUTE};
use self::health::Probe;
use super::endpointslice::informer;
use super::events::{self, EventType, Recorder};
use super::pods::{CachedPod, PodChange, PodInformer, PodStore};
use super::Context;

/// Namespace of the node heartbeat Leases.
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Fewest time between two passes, so bursts of watch events coalesce.
const MIN_PASS_INTERVAL: Duration = Duration::from_millis(100);
/// How long an eviction is remembered before it may be sent again.
const EVICTION_MEMORY: Duration = Duration::from_secs(60);

/// Errors writing nodes and pods.
#[derive(Debug, thiserror::Error)]
pub enum NodeLifecycleError {
    /// Writing a node failed.
    #[error("cannot update the {what} of node {node} (retried on the next pass): {source}")]
    Node {
        /// `status` or `taints`.
        what: &'static str,
        /// The node.
        node: String,
        /// The API error.
        source: kube::Error,
    },
    /// Writing or deleting a pod failed.
    #[error("cannot {action} pod {pod} (retried on the next pass): {source}")]
    Pod {
        /// `evict` or `mark not ready`.
        action: &'static str,
        /// `namespace/name`.
        pod: String,
        /// The API error.
        source: kube::Error,
    },
}

impl NodeLifecycleError {
    /// Logs the error; a conflict (a write raced with another one, the next
    /// pass sees the newer object) is routine and logged at debug level.
    fn log(&self) {
        let source = match self {
            NodeLifecycleError::Node { source, .. } | NodeLifecycleError::Pod { source, .. } => {
                source
            }
        };
        if matches!(source, kube::Error::Api(s) if s.code == 409) {
            tracing::debug!("{self}");
        } else {
            tracing::warn!("{self}");
        }
    }
}

/// How often nodes are checked: a fifth of the grace period, within bounds.
fn monitor_period(grace: Duration) -> Duration {
    (grace / 5).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

struct Monitor {
    client: kube::Client,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: PodStore,
    grace: Duration,
    probes: HashMap<String, Probe>,
    /// First sight of NoExecute taints that carry no `timeAdded`.
    taint_seen: HashMap<(String, String), Timestamp>,
    /// Pods (by uid) whose eviction was sent, until the cache shows it.
    evicted: HashMap<String, Instant>,
    recorder: Recorder,
}

/// Runs the controller until the process ends.
pub async fn run(ctx: Arc<Context>, pod_informer: Arc<PodInformer>) {
    let client = ctx.client.clone();
    let (nodes, nodes_w) = reflector::store::<Node>();
    let (leases, leases_w) = reflector::store::<Lease>();
    let wake = Arc::new(Notify::new());
    let w = wake.clone();
    tokio::spawn(informer::run(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        nodes_w,
        move |_| w.notify_one(),
    ));
    let leases_api = Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE);
    tokio::spawn(informer::run(
        leases_api,
        watcher::Config::default(),
        leases_w,
        |_| {},
    ));
    let w = wake.clone();
    let node_cache = nodes.clone();
    let mut pod_changes = pod_informer.subscribe();
    tokio::spawn(async move {
        while let Some(change) = pod_changes.next().await {
            // A pod landing on a NoExecute-tainted node may have to go at once.
            if let PodChange::Applied { new, .. } = change {
                if on_no_execute_node(&new, &node_cache) {
                    w.notify_one();
                }
            }
        }
    });
    for ready in [
        nodes.wait_until_ready().await,
        leases.wait_until_ready().await,
    ] {
        if ready.is_err() {
            tracing::error!("node lifecycle controller stopped: a watch cache was dropped");
            return;
        }
    }
    pod_informer.wait_until_ready().await;
    let pods = pod_informer.store();
    let grace = ctx.settings.node_monitor_grace_period;
    let period = monitor_period(grace);
    tracing::info!(
        "node lifecycle controller running: grace period {grace:?}, checking every {period:?}"
    );
    let mut monitor = Monitor {
        client: client.clone(),
        nodes,
        leases,
        pods,
        grace,
        probes: HashMap::new(),
        taint_seen: HashMap::new(),
        evicted: HashMap::new(),
        recorder: Recorder::new(client, "node-controller"),
    };
    loop {
        let next_eviction = monitor.pass().await;
        let mut sleep = period;
        if let Some(at) = next_eviction {
            let ms = at
                .as_millisecond()
                .saturating_sub(Timestamp::now().as_millisecond());
            sleep = sleep.min(Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
        }
        tokio::select! {
            _ = tokio::time::sleep(sleep.max(MIN_PASS_INTERVAL)) => {}
            _ = wake.notified() => tokio::time::sleep(MIN_PASS_INTERVAL).await,
        }
    }
}

/// True when the pod's node carries a NoExecute taint.
fn on_no_execute_node(pod: &CachedPod, nodes: &Store<Node>) -> bool {
    let Some(node) = pod.node_name.as_deref() else {
        return false;
    };
    nodes.get(&ObjectRef::new(node)).is_some_and(|n| {
        let taints = n.spec.as_ref().and_then(|s| s.taints.as_ref());
        taints.into_iter().flatten().any(|t| t.effect == NO_EXECUTE)
    })
}

/// The status patch of upstream's `MarkPodsNotReady`: the Ready condition
/// turns False from now (its reason and message stay), written only over
/// the cached resourceVersion as upstream's UpdateStatus (a pod that
/// changed meanwhile gets a conflict and is looked at again next pass).
fn not_ready_patch(pod: &CachedPod, now: Timestamp) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"resourceVersion": &*pod.resource_version},
        "status": {"conditions": [{
            "type": "Ready",
            "status": "False",
            "lastTransitionTime": Time(now),
        }]},
    })
}

impl Monitor {
    /// One look at every node; returns the earliest pending eviction.
    async fn pass(&mut self) -> Option<Timestamp> {
        let now_instant = Instant::now();
        let now = Timestamp::now();
        let mut nodes: Vec<Arc<Node>> = self.nodes.state();
        let names: HashSet<String> = nodes
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        self.probes.retain(|name, _| names.contains(name));

        for node in &mut nodes {
            if let Err(e) = self.check_health(node, now_instant, now).await {
                e.log();
            }
        }
        let zones = health::zone_states(nodes.iter().map(AsRef::as_ref));
        for node in &nodes {
            let policy = health::no_execute_policy(&zones, &health::zone_of(node));
            if let Some(taints) = health::reconcile_taints(node, policy, now) {
                if let Err(e) = self.write_taints(node, taints).await {
                    e.log();
                }
            }
        }
        self.mark_pods_not_ready(&nodes, now).await;
        self.evict(now).await
    }

    /// Marks a node whose kubelet went silent Unknown (updating `node`).
    async fn check_health(
        &mut self,
        node: &mut Arc<Node>,
        now_instant: Instant,
        now: Timestamp,
    ) -> Result<(), NodeLifecycleError> {
        let Some(name) = node.metadata.name.clone() else {
            return Ok(());
        };
        let lease = self
            .leases
            .get(&ObjectRef::new(&name).within(LEASE_NAMESPACE));
        let renewed = lease.and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0));
        let heartbeat = health::condition(node, "Ready")
            .and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0));
        let probe = self
            .probes
            .entry(name.clone())
            .or_insert_with(|| Probe::new(now_instant, renewed, heartbeat));
        probe.observe(now_instant, renewed, heartbeat);
        if !probe.silent(now_instant, self.grace) {
            return Ok(());
        }
        let mut status = node.status.clone().unwrap_or_default();
        let was_ready = health::ready_status(node) == Some("True");
        if !health::mark_unknown(&mut status, now, node.metadata.creation_timestamp.clone()) {
            return Ok(());
        }
        let mut updated = node.as_ref().clone();
        updated.status = Some(status);
        let api: Api<Node> = Api::all(self.client.clone());
        let written = api
            .replace_status(&name, &PostParams::default(), &updated)
            .await
            .map_err(|source| NodeLifecycleError::Node {
                what: "status",
                node: name.clone(),
                source,
            })?;
        tracing::info!(
            "node {name}: no Lease renewal or status for {:?}; marked NotReady (Unknown)",
            self.grace
        );
        if was_ready {
            let message = format!("Node {name} status is now: NodeNotReady");
            self.recorder
                .record(
                    &events::reference(&written),
                    EventType::Normal,
                    "NodeNotReady",
                    &message,
                )
                .await;
        }
        *node = Arc::new(written);
        Ok(())
    }

    async fn write_taints(
        &self,
        node: &Node,
        taints: Vec<Taint>,
    ) -> Result<(), NodeLifecycleError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut updated = node.clone();
        let summary: Vec<String> = taints
            .iter()
            .map(|t| format!("{}:{}", t.key, t.effect))
            .collect();
        updated.spec.get_or_insert_with(Default::default).taints = Some(taints);
        let api: Api<Node> = Api::all(self.client.clone());
        api.replace(&name, &PostParams::default(), &updated)
            .await
            .map_err(|source| NodeLifecycleError::Node {
                what: "taints",
                node: name.clone(),
                source,
            })?;
        tracing::info!("node {name}: taints now [{}]", summary.join(", "));
        Ok(())
    }

    /// Pods on nodes whose kubelet is gone can no longer be trusted to serve:
    /// their Ready condition turns False, so Services stop sending them traffic.
    async fn mark_pods_not_ready(&self, nodes: &[Arc<Node>], now: Timestamp) {
        let silent: HashSet<&str> = nodes
            .iter()
            .filter(|n| health::ready_status(n) == Some("Unknown"))
            .filter_map(|n| n.metadata.name.as_deref())
            .collect();
        if silent.is_empty() {
            return;
        }
        for pod in self.pods.state() {
            let on_silent = pod.node_name.as_deref().is_some_and(|n| silent.contains(n));
            if !on_silent || !pod.is_ready() || pod.deleted.is_some() {
                continue;
            }
            if let Err(e) = self
                .patch_pod_status(&pod, not_ready_patch(&pod, now), "mark not ready")
                .await
            {
                e.log();
                continue;
            }
            self.recorder
                .record(
                    &pod.reference(),
                    EventType::Warning,
                    "NodeNotReady",
                    "Node is not ready",
                )
                .await;
        }
    }

    /// Writes a strategic merge patch to the pod's status (its conditions
    /// merge by type, so the pod's other conditions stay).
    async fn patch_pod_status(
        &self,
        pod: &CachedPod,
        patch: serde_json::Value,
        action: &'static str,
    ) -> Result<(), NodeLifecycleError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let params = PatchParams::default();
        match api
            .patch_status(&pod.name, &params, &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(source) => Err(NodeLifecycleError::Pod {
                action,
                pod: pod.key(),
                source,
            }),
        }
    }

    /// Evicts pods that must go now; returns when the next one is due.
    async fn evict(&mut self, now: Timestamp) -> Option<Timestamp> {
        self.evicted.retain(|_, at| at.elapsed() < EVICTION_MEMORY);
        let mut tainted: HashMap<String, Vec<(Taint, Timestamp)>> = HashMap::new();
        let mut seen = HashSet::new();
        for node in self.nodes.state() {
            let Some(name) = node.metadata.name.clone() else {
                continue;
            };
            let taints = node.spec.as_ref().and_then(|s| s.taints.as_ref());
            let no_execute: Vec<(Taint, Timestamp)> = taints
                .into_iter()
                .flatten()
                .filter(|t| t.effect == NO_EXECUTE)
                .map(|t| {
                    let key = (name.clone(), t.key.clone());
                    seen.insert(key.clone());
                    let since = match &t.time_added {
                        Some(added) => added.0,
                        None => *self.taint_seen.entry(key).or_insert(now),
                    };
                    (t.clone(), since)
                })
                .collect();
            if !no_execute.is_empty() {
                tainted.insert(name, no_execute);
            }
        }
        self.taint_seen.retain(|key, _| seen.contains(key));
        if tainted.is_empty() {
            return None;
        }
        let mut next: Option<Timestamp> = None;
        for pod in self.pods.state() {
            let Some(taints) = pod.node_name.as_deref().and_then(|n| tainted.get(n)) else {
                continue;
            };
            let uid = pod.uid.to_string();
            if pod.deleted.is_some() || self.evicted.contains_key(&uid) {
                continue;
            }
            match eviction::decide(taints, &pod.tolerations, pod.created, now) {
                Eviction::Never => {}
                Eviction::At(at) => next = Some(next.map_or(at, |n| n.min(at))),
                Eviction::Now => match self.evict_pod(&pod, now).await {
                    Ok(()) => {
                        self.evicted.insert(uid, Instant::now());
                    }
                    Err(e) => e.log(),
                },
            }
        }
        next
    }

    /// Deletes a pod for a NoExecute taint, marking why first (as upstream).
    async fn evict_pod(&self, pod: &CachedPod, now: Timestamp) -> Result<(), NodeLifecycleError> {
        let name = pod.key();
        let condition = PodCondition {
            type_: "DisruptionTarget".to_string(),
            status: "True".to_string(),
            reason: Some("DeletionByTaintManager".to_string()),
            message: Some("Taint manager: deleting due to NoExecute taint".to_string()),
            last_transition_time: Some(Time(now)),
            ..Default::default()
        };
        let patch = serde_json::json!({"status": {"conditions": [condition]}});
        if let Err(e) = self.patch_pod_status(pod, patch, "mark for eviction").await {
            tracing::debug!("{e}");
        }
        let message = format!("Marking for deletion Pod {name}");
        self.recorder
            .record(
                &pod.reference(),
                EventType::Normal,
                "TaintManagerEviction",
                &message,
            )
            .await;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        match api.delete(&pod.name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!("evicted pod {name}: its node has a NoExecute taint it does not tolerate (any longer)");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(source) => Err(NodeLifecycleError::Pod {
                action: "evict",
                pod: name,
                source,
            }),
        }
    }
}
