//! The StatefulSet controller: pods with stable names `<set>-<ordinal>`,
//! `hostname` = pod name and `subdomain` = `serviceName` (so the headless
//! Service gives each one a DNS name), created and deleted in ordinal order
//! under OrderedReady or all at once under Parallel, and replaced from the
//! highest ordinal down to the partition on a RollingUpdate ([`plan`]).
//!
//! Revisions: each template is recorded in a ControllerRevision
//! `<set>-<hash>` ([`workload::history`]), which `kubectl rollout history`
//! and `rollout undo` read. As upstream's `newVersionedStatefulSetPod`, a
//! pod below a RollingUpdate partition that has to be (re)created gets the
//! current revision's template, read back from its ControllerRevision;
//! every other pod gets the update revision. PersistentVolumeClaims from
//! `volumeClaimTemplates` are not created (the API server does not serve
//! them yet).

mod plan;

use std::sync::Arc;
use std::time::Duration;

use futures::{stream, FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

use super::events::{reference, EventType, Recorder};
use super::pods::PodInformer;
use super::workload::history::{self, HistoryError};
use super::workload::{self, SelectorError};
use super::Context;
use plan::{Replica, SetSpec, Step};

/// Label naming the pod, so a Service can select exactly one member.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Label carrying the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// Pod changes in flight at once under the Parallel policy.
const PARALLEL_WRITES: usize = 16;
/// How soon after an error a StatefulSet is synced again.
const RETRY: Duration = Duration::from_secs(5);
/// Resync period when nothing else happens.
const RESYNC: Duration = Duration::from_secs(300);

/// Errors syncing one StatefulSet; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum StatefulSetError {
    /// Reading the StatefulSet failed.
    #[error("cannot read statefulset {name}: {source}")]
    Get {
        /// namespace/name.
        name: String,
        /// What the API said.
        source: kube::Error,
    },
    /// The selector cannot be used.
    #[error("statefulset {name}: {source}")]
    Selector {
        /// namespace/name.
        name: String,
        /// What is wrong.
        source: SelectorError,
    },
    /// Listing its pods failed.
    #[error("cannot list the pods of statefulset {name}: {source}")]
    ListPods {
        /// namespace/name.
        name: String,
        /// What the API said.
        source: kube::Error,
    },
    /// Creating or deleting a pod failed.
    #[error("statefulset {name}: {message}")]
    Pod {
        /// namespace/name.
        name: String,
        /// What failed.
        message: String,
    },
    /// Recording the template's ControllerRevision failed.
    #[error("statefulset {name}: {source}")]
    History {
        /// namespace/name.
        name: String,
        /// What failed.
        source: HistoryError,
    },
    /// Writing the status failed.
    #[error("cannot update the status of statefulset {name}: {source}")]
    Status {
        /// namespace/name.
        name: String,
        /// What the API said.
        source: kube::Error,
    },
}

struct StsContext {
    client: kube::Client,
    recorder: Recorder,
}

/// Runs the controller until the process ends; its pods' changes come
/// from the shared pod informer.
pub async fn run(ctx: Arc<Context>, pods: Arc<PodInformer>) {
    let client = ctx.client.clone();
    let sctx = Arc::new(StsContext {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), "statefulset-controller"),
    });
    Controller::new(
        Api::<StatefulSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .reconcile_on(pods.owners::<StatefulSet>())
    .run(reconcile, error_policy, sctx)
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!("statefulset controller: {e}");
        }
    })
    .await;
}

fn error_policy(set: Arc<StatefulSet>, error: &StatefulSetError, _ctx: Arc<StsContext>) -> Action {
    tracing::warn!(
        "statefulset controller: {error}; retrying {} in {RETRY:?}",
        set.name_any()
    );
    Action::requeue(RETRY)
}

async fn reconcile(
    set: Arc<StatefulSet>,
    ctx: Arc<StsContext>,
) -> Result<Action, StatefulSetError> {
    let namespace = set.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", set.name_any());
    let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(set) = api
        .get_opt(&set.name_any())
        .await
        .map_err(|source| StatefulSetError::Get {
            name: key.clone(),
            source,
        })?
    else {
        return Ok(Action::await_change());
    };
    let name = set.name_any();
    let uid = set.uid().unwrap_or_default();
    let (query, _) = workload::selector_query(&set.spec.selector).map_err(|source| {
        StatefulSetError::Selector {
            name: key.clone(),
            source,
        }
    })?;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let listed = pods_api
        .list(&ListParams::default().labels(&query))
        .await
        .map_err(|source| StatefulSetError::ListPods {
            name: key.clone(),
            source,
        })?;
    let min_ready = set.spec.min_ready_seconds.unwrap_or(0);
    let now = jiff::Timestamp::now();
    let pods: Vec<&Pod> = listed
        .items
        .iter()
        .filter(|p| workload::is_controlled_by(p, &uid))
        .collect();
    let replicas: Vec<Replica> = pods
        .iter()
        .filter_map(|p| {
            let ordinal = plan::ordinal_of(&name, &p.name_any())?;
            let running_ready = workload::is_running_and_ready(p);
            Some(Replica {
                ordinal,
                name: p.name_any(),
                revision: workload::revision(p).to_string(),
                running_ready,
                available: running_ready && workload::is_available(p, min_ready, now),
                finished: workload::is_terminal(p),
                terminating: workload::is_terminating(p),
            })
        })
        .collect();

    let current = set
        .status
        .as_ref()
        .and_then(|s| s.current_revision.as_deref())
        .filter(|r| !r.is_empty());
    let collision_count = set.status.as_ref().and_then(|s| s.collision_count);
    let (update_revision, collision_count, old_template) =
        if set.metadata.deletion_timestamp.is_some() {
            let update = set.status.as_ref().and_then(|s| s.update_revision.clone());
            let update =
                update.unwrap_or_else(|| history::revision_name(&name, &set.spec.template));
            (update, collision_count, None)
        } else {
            let mut in_use: Vec<String> = replicas.iter().map(|r| r.revision.clone()).collect();
            in_use.extend(current.map(str::to_string));
            let owner = history::Owner {
                object: &set,
                template: &set.spec.template,
                limit: set.spec.revision_history_limit,
                collision_count,
            };
            let synced = history::sync(&ctx.client, owner, &in_use)
                .await
                .map_err(|source| StatefulSetError::History {
                    name: key.clone(),
                    source,
                })?;
            // The template pods below the partition are (re)created from.
            let old_template = current
                .filter(|c| *c != synced.name)
                .and_then(|c| synced.revisions.iter().find(|r| r.name_any() == c))
                .and_then(history::template_of)
                .map(|t| (current.unwrap_or_default().to_string(), t));
            (synced.name, synced.collision_count, old_template)
        };
    let strategy = set.spec.update_strategy.as_ref();
    let rolling = strategy
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate");
    let spec = SetSpec {
        replicas: set.spec.replicas.unwrap_or(1),
        start: set
            .spec
            .ordinals
            .as_ref()
            .and_then(|o| o.start)
            .unwrap_or(0),
        ordered: set.spec.pod_management_policy.as_deref() != Some("Parallel"),
        partition: rolling.then(|| {
            strategy
                .and_then(|s| s.rolling_update.as_ref())
                .and_then(|r| r.partition)
                .unwrap_or(0)
        }),
        update_revision: update_revision.clone(),
    };
    // Upstream leaves the pods of a set being deleted to the garbage collector.
    let steps = if set.metadata.deletion_timestamp.is_some() {
        Vec::new()
    } else {
        plan::plan(&spec, &replicas)
    };
    let writes: Vec<_> = steps
        .iter()
        .map(|step| {
            let (revision, template) = match (step, &old_template, spec.partition) {
                (Step::Create(ordinal), Some((revision, template)), Some(partition))
                    if *ordinal < spec.start + partition =>
                {
                    (revision.as_str(), template)
                }
                _ => (update_revision.as_str(), &set.spec.template),
            };
            apply(&ctx, &set, &pods_api, (revision, template), step).boxed()
        })
        .collect();
    let mut results = stream::iter(writes).buffer_unordered(PARALLEL_WRITES);
    let mut failures = Vec::new();
    while let Some(result) = results.next().await {
        if let Err(e) = result {
            failures.push(e);
        }
    }
    drop(results);

    let c = plan::counts(&replicas, current, &update_revision, rolling);
    update_status(&api, &set, &c, collision_count)
        .await
        .map_err(|source| StatefulSetError::Status {
            name: key.clone(),
            source,
        })?;
    if let Some(message) = failures.into_iter().next() {
        return Err(StatefulSetError::Pod { name: key, message });
    }
    let soonest = pods
        .iter()
        .filter_map(|p| workload::until_available(p, min_ready, now))
        .filter(|d| !d.is_zero())
        .min();
    Ok(Action::requeue(
        soonest.map_or(RESYNC, |d| d + Duration::from_millis(100)),
    ))
}

async fn apply(
    ctx: &StsContext,
    set: &StatefulSet,
    api: &Api<Pod>,
    (revision, template): (&str, &PodTemplateSpec),
    step: &Step,
) -> Result<(), String> {
    let set_name = set.name_any();
    match step {
        Step::Create(ordinal) => {
            let Some(pod) = new_pod(set, template, *ordinal, revision) else {
                return Err("the statefulset has no uid yet".to_string());
            };
            let pod_name = pod.name_any();
            match api.create(&PostParams::default(), &pod).await {
                Ok(_) => {
                    let message =
                        format!("create Pod {pod_name} in StatefulSet {set_name} successful");
                    ctx.recorder
                        .record(
                            &reference(set),
                            EventType::Normal,
                            "SuccessfulCreate",
                            &message,
                        )
                        .await;
                    Ok(())
                }
                Err(e) => {
                    let message = format!(
                        "create Pod {pod_name} in StatefulSet {set_name} failed error: {e}"
                    );
                    ctx.recorder
                        .record(
                            &reference(set),
                            EventType::Warning,
                            "FailedCreate",
                            &message,
                        )
                        .await;
                    Err(message)
                }
            }
        }
        Step::Delete(pod_name) => match api.delete(pod_name, &DeleteParams::default()).await {
            Ok(_) => {
                let message = format!("delete Pod {pod_name} in StatefulSet {set_name} successful");
                ctx.recorder
                    .record(
                        &reference(set),
                        EventType::Normal,
                        "SuccessfulDelete",
                        &message,
                    )
                    .await;
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(format!(
                "delete Pod {pod_name} in StatefulSet {set_name} failed error: {e}"
            )),
        },
    }
}

/// The pod for `ordinal`: `template` (of `revision`) with the member's identity.
fn new_pod(
    set: &StatefulSet,
    template: &PodTemplateSpec,
    ordinal: i32,
    revision: &str,
) -> Option<Pod> {
    let owner = workload::controller_ref(set)?;
    let name = format!("{}-{ordinal}", set.name_any());
    let mut pod =
        workload::pod_from_template(template, owner, &set.namespace().unwrap_or_default());
    pod.metadata.name = Some(name.clone());
    workload::set_label(&mut pod, POD_NAME_LABEL, &name);
    workload::set_label(&mut pod, POD_INDEX_LABEL, &ordinal.to_string());
    workload::set_label(&mut pod, workload::REVISION_LABEL, revision);
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.hostname = Some(name);
    if let Some(service) = set.spec.service_name.as_deref().filter(|s| !s.is_empty()) {
        spec.subdomain = Some(service.to_string());
    }
    Some(pod)
}

async fn update_status(
    api: &Api<StatefulSet>,
    set: &StatefulSet,
    c: &plan::Counts,
    collision_count: Option<i32>,
) -> Result<(), kube::Error> {
    let old = set.status.clone().unwrap_or_default();
    let status = StatefulSetStatus {
        collision_count,
        replicas: c.replicas,
        ready_replicas: Some(c.ready),
        available_replicas: Some(c.available),
        current_replicas: Some(c.current),
        updated_replicas: Some(c.updated),
        current_revision: Some(c.current_revision.clone()),
        update_revision: Some(c.update_revision.clone()),
        observed_generation: set.metadata.generation,
        ..old.clone()
    };
    if status == old {
        return Ok(());
    }
    let patch = json!({"status": status});
    api.patch_status(
        &set.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
}
