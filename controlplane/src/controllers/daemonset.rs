//! The DaemonSet controller: one pod per eligible node ([`eligibility`]),
//! following nodes as they come, go or change labels and taints, replacing
//! pods of an old template within `maxUnavailable` ([`rollout`]), and the
//! status `kubectl rollout status ds` reads.
//!
//! Daemon pods are pinned to their node through a required node affinity on
//! `metadata.name`, so the scheduler binds them, as upstream. A pod whose
//! node is deleted is force-deleted: no kubelet is left to confirm it, and
//! skiff has no pod garbage collector to do it later.
//!
//! Revisions: each template is recorded in a ControllerRevision
//! `<ds>-<hash>` ([`workload::history`]), which `kubectl rollout history` and
//! `rollout undo` read; pods carry the hash in `controller-revision-hash`.

mod eligibility;
mod rollout;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::{stream, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::events::{reference, EventType, Recorder};
use super::pods::PodInformer;
use super::workload::history::{self, HistoryError};
use super::workload::{self, SelectorError};
use super::Context;
use rollout::{DaemonPod, NodeState};

/// Pod creations and deletions in flight at once for one DaemonSet.
const PARALLEL_WRITES: usize = 16;
/// How soon after an error a DaemonSet is synced again.
const RETRY: Duration = Duration::from_secs(5);
/// Resync period when nothing else happens.
const RESYNC: Duration = Duration::from_secs(300);

/// Errors syncing one DaemonSet; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum DaemonSetError {
    /// Reading the DaemonSet failed.
    #[error("cannot read daemonset {name}: {source}")]
    Get {
        /// namespace/name.
        name: String,
        /// What the API said.
        source: kube::Error,
    },
    /// The selector cannot be used.
    #[error("daemonset {name}: {source}")]
    Selector {
        /// namespace/name.
        name: String,
        /// What is wrong.
        source: SelectorError,
    },
    /// Listing its pods failed.
    #[error("cannot list the pods of daemonset {name}: {source}")]
    ListPods {
        /// namespace/name.
        name: String,
        /// What the API said.
        source: kube::Error,
    },
    /// Creating or deleting pods failed.
    #[error("daemonset {name}: {failed} pod changes failed, first: {first}")]
    Pods {
        /// namespace/name.
        name: String,
        /// How many failed.
        failed: usize,
        /// The first failure.
        first: String,
    },
    /// Recording the template's ControllerRevision failed.
    #[error("daemonset {name}: {source}")]
    History {
        /// namespace/name.
        name: String,
        /// What failed.
        source: HistoryError,
    },
    /// Writing the status failed.
    #[error("cannot update the status of daemonset {name}: {source}")]
    Status {
        /// namespace/name.
        name: String,
        /// What the API said.
        source: kube::Error,
    },
}

/// What the reconciler gets.
struct DsContext {
    client: kube::Client,
    nodes: Store<Node>,
    recorder: Recorder,
}

/// Runs the controller until the process ends; its pods' changes come
/// from the shared pod informer.
pub async fn run(ctx: Arc<Context>, pods: Arc<PodInformer>) {
    let client = ctx.client.clone();
    let (nodes, writer) = reflector::store();
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(watch_nodes(Api::all(client.clone()), writer, tx));
    if nodes.wait_until_ready().await.is_err() {
        tracing::warn!("daemonset controller: the node watch ended before its first list");
        return;
    }
    let dctx = Arc::new(DsContext {
        client: client.clone(),
        nodes,
        recorder: Recorder::new(client.clone(), "daemonset-controller"),
    });
    Controller::new(
        Api::<DaemonSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .reconcile_on(pods.owners::<DaemonSet>())
    .reconcile_all_on(ReceiverStream::new(rx))
    .run(reconcile, error_policy, dctx)
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!("daemonset controller: {e}");
        }
    })
    .await;
}

/// Keeps the node store and wakes every DaemonSet when a node comes, goes,
/// or changes what eligibility depends on (not on heartbeats).
async fn watch_nodes(api: Api<Node>, writer: reflector::store::Writer<Node>, tx: mpsc::Sender<()>) {
    let mut seen: HashMap<String, String> = HashMap::new();
    let events = reflector::reflector(writer, watcher::watcher(api, watcher::Config::default()))
        .default_backoff();
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let changed = match event {
            Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) => {
                let print = fingerprint(&node);
                seen.insert(node.name_any(), print.clone()) != Some(print)
            }
            Ok(watcher::Event::Delete(node)) => seen.remove(&node.name_any()).is_some(),
            Ok(watcher::Event::InitDone) => true,
            Ok(watcher::Event::Init) => false,
            Err(e) => {
                tracing::warn!("daemonset controller: watching nodes failed, retrying: {e}");
                false
            }
        };
        // A full channel already holds a wake-up that will read the newest store.
        if changed && tx.try_send(()).is_err() && tx.is_closed() {
            return;
        }
    }
}

/// What of a node daemon placement depends on.
fn fingerprint(node: &Node) -> String {
    json!([
        node.metadata.labels,
        node.spec.as_ref().map(|s| (&s.taints, s.unschedulable))
    ])
    .to_string()
}

fn error_policy(ds: Arc<DaemonSet>, error: &DaemonSetError, _ctx: Arc<DsContext>) -> Action {
    tracing::warn!(
        "daemonset controller: {error}; retrying {} in {RETRY:?}",
        ds.name_any()
    );
    Action::requeue(RETRY)
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<DsContext>) -> Result<Action, DaemonSetError> {
    let namespace = ds.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", ds.name_any());
    let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(ds) = api
        .get_opt(&ds.name_any())
        .await
        .map_err(|source| DaemonSetError::Get {
            name: key.clone(),
            source,
        })?
    else {
        return Ok(Action::await_change());
    };
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let uid = ds.uid().unwrap_or_default();
    let (query, _) =
        workload::selector_query(&ds.spec.selector).map_err(|source| DaemonSetError::Selector {
            name: key.clone(),
            source,
        })?;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods = pods_api
        .list(&ListParams::default().labels(&query))
        .await
        .map_err(|source| DaemonSetError::ListPods {
            name: key.clone(),
            source,
        })?;
    let pods: Vec<Pod> = pods
        .items
        .into_iter()
        .filter(|p| workload::is_controlled_by(p, &uid))
        .collect();

    let in_use: Vec<String> = pods
        .iter()
        .map(|p| format!("{}-{}", ds.name_any(), workload::revision(p)))
        .collect();
    let owner = history::Owner {
        object: &ds,
        template: &ds.spec.template,
        limit: ds.spec.revision_history_limit,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
    };
    let synced = history::sync(&ctx.client, owner, &in_use)
        .await
        .map_err(|source| DaemonSetError::History {
            name: key.clone(),
            source,
        })?;
    // The current revision's hash, salted if its plain name was taken.
    let hash = synced.hash;
    let mut spec = ds.spec.template.spec.clone().unwrap_or_default();
    eligibility::add_daemon_tolerations(&mut spec);
    let min_ready = ds.spec.min_ready_seconds.unwrap_or(0);
    let now = jiff::Timestamp::now();

    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for pod in &pods {
        by_node
            .entry(eligibility::target_node(pod).unwrap_or_default())
            .or_default()
            .push(pod);
    }
    let mut states = Vec::new();
    for node in ctx.nodes.state() {
        let name = node.name_any();
        let e = eligibility::eligibility(&node, &spec);
        let mut daemon_pods: Vec<DaemonPod> = by_node
            .remove(&name)
            .unwrap_or_default()
            .into_iter()
            .map(|p| daemon_pod(p, min_ready, now))
            .collect();
        rollout::sort_pods(&mut daemon_pods);
        states.push(NodeState {
            name,
            should_run: e.should_run,
            should_continue: e.should_continue,
            pods: daemon_pods,
        });
    }
    // What is left in by_node belongs to nodes that no longer exist.
    let orphaned: Vec<String> = by_node
        .into_values()
        .flatten()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(ResourceExt::name_any)
        .collect();

    let mut plan = rollout::manage(&states);
    let rolling = ds
        .spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate");
    if rolling {
        let desired = states.iter().filter(|s| s.should_run).count();
        let max = ds
            .spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.max_unavailable.as_ref());
        for pod in rollout::rolling_update(&states, &hash, rollout::max_unavailable(max, desired)) {
            if !plan.delete.contains(&pod) {
                plan.delete.push(pod);
            }
        }
    }

    let mut failures = Vec::new();
    let creates = plan
        .create_on
        .iter()
        .map(|node| create_pod(&ctx, &ds, &spec, &hash, node, &pods_api));
    let deletes = plan
        .delete
        .iter()
        .map(|pod| delete_pod(&ctx, &ds, &pods_api, pod, None));
    let forced = orphaned
        .iter()
        .map(|pod| delete_pod(&ctx, &ds, &pods_api, pod, Some(0)));
    let writes: Vec<_> = creates
        .map(futures::FutureExt::boxed)
        .chain(deletes.map(futures::FutureExt::boxed))
        .chain(forced.map(futures::FutureExt::boxed))
        .collect();
    let mut results = stream::iter(writes).buffer_unordered(PARALLEL_WRITES);
    while let Some(result) = results.next().await {
        if let Err(e) = result {
            failures.push(e);
        }
    }

    update_status(&api, &ds, &states, &hash, synced.collision_count)
        .await
        .map_err(|source| DaemonSetError::Status {
            name: key.clone(),
            source,
        })?;
    if let Some(first) = failures.first() {
        return Err(DaemonSetError::Pods {
            name: key,
            failed: failures.len(),
            first: first.clone(),
        });
    }
    // A ready pod becomes available after minReadySeconds: look again then.
    let soonest = pods
        .iter()
        .filter_map(|p| workload::until_available(p, min_ready, now))
        .filter(|d| !d.is_zero())
        .min();
    Ok(Action::requeue(
        soonest.map_or(RESYNC, |d| d + Duration::from_millis(100)),
    ))
}

fn daemon_pod(pod: &Pod, min_ready: i32, now: jiff::Timestamp) -> DaemonPod {
    DaemonPod {
        name: pod.name_any(),
        hash: workload::revision(pod).to_string(),
        bound: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty()),
        created: pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
        ready: workload::is_ready(pod),
        available: workload::is_available(pod, min_ready, now),
        finished: workload::is_terminal(pod),
        terminating: workload::is_terminating(pod),
    }
}

async fn create_pod(
    ctx: &DsContext,
    ds: &DaemonSet,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    hash: &str,
    node: &str,
    api: &Api<Pod>,
) -> Result<(), String> {
    let Some(owner) = workload::controller_ref(ds) else {
        return Err("the daemonset has no uid yet".to_string());
    };
    let mut pod = workload::pod_from_template(
        &ds.spec.template,
        owner,
        &ds.namespace().unwrap_or_default(),
    );
    pod.metadata.generate_name = Some(format!("{}-", ds.name_any()));
    workload::set_label(&mut pod, workload::REVISION_LABEL, hash);
    let mut spec = spec.clone();
    eligibility::pin_to_node(&mut spec, node);
    pod.spec = Some(spec);
    match api.create(&PostParams::default(), &pod).await {
        Ok(created) => {
            ctx.recorder
                .record(
                    &reference(ds),
                    EventType::Normal,
                    "SuccessfulCreate",
                    &format!("Created pod: {}", created.name_any()),
                )
                .await;
            Ok(())
        }
        Err(e) => {
            let message = format!("Error creating: {e}");
            ctx.recorder
                .record(&reference(ds), EventType::Warning, "FailedCreate", &message)
                .await;
            Err(format!("creating a pod for node {node}: {e}"))
        }
    }
}

async fn delete_pod(
    ctx: &DsContext,
    ds: &DaemonSet,
    api: &Api<Pod>,
    name: &str,
    grace: Option<u32>,
) -> Result<(), String> {
    let params = DeleteParams {
        grace_period_seconds: grace,
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => {
            ctx.recorder
                .record(
                    &reference(ds),
                    EventType::Normal,
                    "SuccessfulDelete",
                    &format!("Deleted pod: {name}"),
                )
                .await;
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(format!("deleting pod {name}: {e}")),
    }
}

async fn update_status(
    api: &Api<DaemonSet>,
    ds: &DaemonSet,
    states: &[NodeState],
    hash: &str,
    collision_count: Option<i32>,
) -> Result<(), kube::Error> {
    let c = rollout::counts(states, hash);
    let old = ds.status.clone().unwrap_or_default();
    let status = DaemonSetStatus {
        collision_count: collision_count.or(old.collision_count),
        desired_number_scheduled: c.desired,
        current_number_scheduled: c.current,
        number_misscheduled: c.misscheduled,
        number_ready: c.ready,
        number_available: Some(c.available),
        number_unavailable: Some((c.desired - c.available).max(0)),
        updated_number_scheduled: Some(c.updated),
        observed_generation: ds.metadata.generation,
        ..old.clone()
    };
    if status == old {
        return Ok(());
    }
    let patch = json!({"status": status});
    api.patch_status(
        &ds.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
}
