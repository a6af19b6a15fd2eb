//! The pod garbage collector, as upstream's `podgc` controller:
//! - terminated pods (phase Succeeded or Failed) beyond
//!   `--terminated-pod-gc-threshold` are deleted, oldest first (0 disables);
//! - pods bound to a node that no longer exists (for longer than the
//!   orphan quarantine, upstream's 40 s) are marked Failed with a
//!   `DisruptionTarget` condition (reason `DeletionByPodGC`) and deleted;
//! - terminating pods that were never scheduled are deleted at once.
//!
//! A pass runs when pods or nodes change (coalesced) and every
//! `GC_CHECK_PERIOD` as upstream does.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use tokio::sync::Notify;

use super::endpointslice;
use super::pods::{CachedPod, PodInformer, PodStore};
use super::Context;

/// Upstream's period between passes.
const GC_CHECK_PERIOD: Duration = Duration::from_secs(20);
/// Fewest time between two passes, so bursts of watch events coalesce.
const MIN_PASS_INTERVAL: Duration = Duration::from_millis(200);
/// The condition upstream adds to pods it deletes.
const DISRUPTION_TARGET: &str = "DisruptionTarget";
/// Its reason.
const REASON: &str = "DeletionByPodGC";
/// Its message for orphaned pods.
const ORPHAN_MESSAGE: &str = "PodGC: node no longer exists";

/// Errors writing pods (each is retried on the next pass).
#[derive(Debug, thiserror::Error)]
pub enum PodGcError {
    /// Writing or deleting a pod failed.
    #[error("cannot {action} pod {pod} (retried on the next pass): {source}")]
    Pod {
        /// What was attempted.
        action: &'static str,
        /// `namespace/name`.
        pod: String,
        /// The API error.
        source: kube::Error,
    },
}

/// Runs the controller until the process ends, on the shared pod cache.
pub async fn run(ctx: Arc<Context>, informer: Arc<PodInformer>) {
    let client = ctx.client.clone();
    let (nodes, nodes_w) = reflector::store::<Node>();
    let wake = Arc::new(Notify::new());
    let w = wake.clone();
    let mut changes = informer.subscribe();
    tokio::spawn(async move {
        while changes.next().await.is_some() {
            w.notify_one();
        }
    });
    let w = wake.clone();
    tokio::spawn(endpointslice::informer::run(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        nodes_w,
        move |_| w.notify_one(),
    ));
    informer.wait_until_ready().await;
    if nodes.wait_until_ready().await.is_err() {
        tracing::error!("pod garbage collector stopped: the node watch cache was dropped");
        return;
    }
    let pods = informer.store();
    let threshold = ctx.settings.terminated_pod_gc_threshold;
    let quarantine = ctx.settings.pod_gc_orphan_quarantine;
    tracing::info!(
        "pod garbage collector running: terminated-pod threshold {threshold}, orphan quarantine {quarantine:?}"
    );
    let mut gc = PodGc {
        client,
        pods,
        nodes,
        threshold,
        quarantine,
        orphans_seen: HashMap::new(),
    };
    loop {
        gc.pass().await;
        let sleep = if gc.orphans_seen.is_empty() {
            GC_CHECK_PERIOD
        } else {
            GC_CHECK_PERIOD.min(quarantine).max(MIN_PASS_INTERVAL)
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = wake.notified() => tokio::time::sleep(MIN_PASS_INTERVAL).await,
        }
    }
}

struct PodGc {
    client: kube::Client,
    pods: PodStore,
    nodes: Store<Node>,
    threshold: usize,
    /// How long a pod's node must be missing before the pod is collected.
    quarantine: Duration,
    /// Pods (by uid) first seen on a missing node, and when.
    orphans_seen: HashMap<String, Instant>,
}

fn pod_name(pod: &CachedPod) -> String {
    pod.key()
}

fn is_terminated(pod: &CachedPod) -> bool {
    pod.phase.is_terminal()
}

fn node_name(pod: &CachedPod) -> Option<&str> {
    pod.node_name.as_deref()
}

/// Oldest first: by creationTimestamp, then name (timestamps have seconds).
fn older(a: &CachedPod, b: &CachedPod) -> Ordering {
    a.created
        .cmp(&b.created)
        .then_with(|| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
}

/// The terminated pods beyond `threshold`, oldest first (none when 0).
fn terminated_excess(pods: &[Arc<CachedPod>], threshold: usize) -> Vec<Arc<CachedPod>> {
    if threshold == 0 {
        return Vec::new();
    }
    let mut terminated: Vec<Arc<CachedPod>> = pods
        .iter()
        .filter(|p| is_terminated(p) && p.deleted.is_none())
        .cloned()
        .collect();
    let excess = terminated.len().saturating_sub(threshold);
    terminated.sort_by(|a, b| older(a, b));
    terminated.truncate(excess);
    terminated
}

/// The strategic merge patch of the status that marks an orphaned pod
/// Failed with upstream's condition (conditions merge by type, so the
/// pod's other conditions stay).
fn failed_status(pod: &CachedPod, now: Time) -> serde_json::Value {
    let conditions = [PodCondition {
        type_: DISRUPTION_TARGET.to_string(),
        status: "True".to_string(),
        reason: Some(REASON.to_string()),
        message: Some(ORPHAN_MESSAGE.to_string()),
        last_transition_time: Some(now),
        ..Default::default()
    }];
    let mut status = serde_json::json!({"conditions": conditions});
    if !is_terminated(pod) {
        status["phase"] = serde_json::json!("Failed");
    }
    serde_json::json!({ "status": status })
}

impl PodGc {
    async fn pass(&mut self) {
        let pods = self.pods.state();
        for pod in terminated_excess(&pods, self.threshold) {
            tracing::info!("deleting terminated pod {}", pod_name(&pod));
            self.log(self.delete(&pod, "delete terminated").await);
        }
        let nodes: HashSet<String> = self
            .nodes
            .state()
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let now = Instant::now();
        let mut orphans = HashMap::new();
        for pod in &pods {
            match node_name(pod) {
                Some(node) if !nodes.contains(node) => {
                    let uid = pod.uid.to_string();
                    let seen = self.orphans_seen.get(&uid).copied().unwrap_or(now);
                    orphans.insert(uid, seen);
                    if now.duration_since(seen) >= self.quarantine {
                        let result = self.collect_orphan(pod, node).await;
                        self.log(result);
                    }
                }
                None if pod.deleted.is_some() => {
                    tracing::info!("deleting unscheduled terminating pod {}", pod_name(pod));
                    self.log(self.delete(pod, "delete unscheduled terminating").await);
                }
                _ => {}
            }
        }
        self.orphans_seen = orphans;
    }

    fn log(&self, result: Result<(), PodGcError>) {
        if let Err(e) = result {
            tracing::warn!("{e}");
        }
    }

    fn api(&self, pod: &CachedPod) -> Api<Pod> {
        let ns = Some(&*pod.namespace).filter(|ns| !ns.is_empty());
        Api::namespaced(self.client.clone(), ns.unwrap_or("default"))
    }

    /// Marks a pod on a vanished node Failed and deletes it; the node is
    /// looked up on the server first, as the cache may lag behind.
    async fn collect_orphan(&self, pod: &CachedPod, node: &str) -> Result<(), PodGcError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        match nodes.get_opt(node).await {
            Ok(None) => {}
            Ok(Some(_)) => return Ok(()),
            Err(e) => {
                tracing::debug!("cannot look up node {node} of pod {}: {e}", pod_name(pod));
                return Ok(());
            }
        }
        let name = &*pod.name;
        let already_marked = pod.disruption.as_deref() == Some(REASON);
        if !already_marked {
            tracing::info!(
                "found orphaned pod {} assigned to node {node}, which no longer exists; deleting",
                pod_name(pod)
            );
            let patch = failed_status(pod, Time(jiff::Timestamp::now()));
            if let Err(source) = self
                .api(pod)
                .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
            {
                if matches!(&source, kube::Error::Api(s) if s.code == 404) {
                    return Ok(());
                }
                return Err(PodGcError::Pod {
                    action: "mark failed",
                    pod: pod_name(pod),
                    source,
                });
            }
        }
        if pod.deleted.is_some() && already_marked {
            return Ok(());
        }
        self.delete(pod, "delete orphaned").await
    }

    /// Deletes a pod at once (grace period 0); a pod already gone is fine.
    async fn delete(&self, pod: &CachedPod, action: &'static str) -> Result<(), PodGcError> {
        let name = &*pod.name;
        let mut params = DeleteParams::default().grace_period(0);
        if !pod.uid.is_empty() {
            params = params.preconditions(kube::api::Preconditions {
                uid: Some(pod.uid.to_string()),
                resource_version: None,
            });
        }
        match self.api(pod).delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(source) => Err(PodGcError::Pod {
                action,
                pod: pod_name(pod),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str, created_s: i64, phase: &str) -> Arc<CachedPod> {
        Arc::new(CachedPod::from(&Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                creation_timestamp: Some(Time(
                    jiff::Timestamp::from_second(1_700_000_000 + created_s).unwrap(),
                )),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    fn names(pods: &[Arc<CachedPod>]) -> Vec<String> {
        pods.iter().map(|p| p.name.to_string()).collect()
    }

    #[test]
    fn oldest_terminated_pods_beyond_threshold_go() {
        let pods = vec![
            pod("c", 3, "Succeeded"),
            pod("a", 1, "Failed"),
            pod("run", 0, "Running"),
            pod("b", 2, "Succeeded"),
            pod("d", 4, "Failed"),
        ];
        assert_eq!(names(&terminated_excess(&pods, 2)), ["a", "b"]);
        assert!(terminated_excess(&pods, 4).is_empty());
        assert!(terminated_excess(&pods, 0).is_empty());
    }

    #[test]
    fn orphan_is_marked_failed_with_disruption_condition() {
        let p = pod("x", 0, "Running");
        let patch = failed_status(&p, Time(jiff::Timestamp::now()));
        assert_eq!(patch["status"]["phase"], "Failed");
        let cond = &patch["status"]["conditions"][0];
        assert_eq!(cond["type"], DISRUPTION_TARGET);
        assert_eq!(cond["reason"], REASON);
        let done = pod("y", 0, "Succeeded");
        assert!(failed_status(&done, Time(jiff::Timestamp::now()))["status"]
            .get("phase")
            .is_none());
    }
}
