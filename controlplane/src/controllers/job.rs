//! The Job controller: runs pods until `completions` of them succeed, at
//! most `parallelism` at a time, replacing failed ones after an exponential
//! backoff until more than `backoffLimit` failed, and within
//! `activeDeadlineSeconds`. [`accounting`] holds the arithmetic, [`sync`] the
//! decisions of one sync, [`pods`] how pods are read and made; this module
//! does the I/O.
//!
//! As upstream (1.31+), a Job that meets its success or failure criterion
//! first gets `SuccessCriteriaMet` / `FailureTarget`, its remaining pods are
//! deleted, and `Complete` / `Failed` follow once no pod is left running or
//! terminating. Indexed Jobs get one pod per completion index.
//!
//! Succeeded and failed pods are counted from the pods that exist (the
//! counts in the status never go down); skiff does not put upstream's
//! `batch.kubernetes.io/job-tracking` finalizer on pods, so a pod deleted
//! before it finished is replaced without counting as a failure.

mod accounting;
mod pods;
mod sync;

use std::sync::Arc;
use std::time::Duration;

use futures::{stream, FutureExt, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

use super::events::{reference, EventType, Recorder};
use super::pods::PodInformer;
use super::workload::{self, SelectorError};
use super::Context;
use accounting::JobPod;
use sync::Changes;

/// `spec.managedBy` value of this controller (other values are left alone).
const MANAGED_BY: &str = "kubernetes.io/job-controller";
/// Pod changes in flight at once for one Job.
const PARALLEL_WRITES: usize = 16;
/// How soon after an error a Job is synced again.
const RETRY: Duration = Duration::from_secs(5);
/// How soon a Job whose status write lost a race is synced again.
const CONFLICT_RETRY: Duration = Duration::from_millis(200);

/// Errors syncing one Job; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Reading the Job failed.
    #[error("cannot read job {name}: {source}")]
    Get {
        /// namespace/name.
        name: String,
        /// What the API said.
        source: kube::Error,
    },
    /// The selector cannot be used.
    #[error("job {name}: {source}")]
    Selector {
        /// namespace/name.
        name: String,
        /// What is wrong.
        source: SelectorError,
    },
    /// Listing its pods failed.
    #[error("cannot list the pods of job {name}: {source}")]
    ListPods {
        /// namespace/name.
        name: String,
        /// What the API said.
        source: kube::Error,
    },
    /// Creating or deleting pods failed.
    #[error("job {name}: {failed} pod changes failed, first: {first}")]
    Pods {
        /// namespace/name.
        name: String,
        /// How many failed.
        failed: usize,
        /// The first failure.
        first: String,
    },
    /// Writing the status failed.
    #[error("cannot update the status of job {name}: {source}")]
    Status {
        /// namespace/name.
        name: String,
        /// What the API said.
        source: kube::Error,
    },
}

struct JobContext {
    client: kube::Client,
    recorder: Recorder,
}

/// Runs the controller until the process ends; its pods' changes come
/// from the shared pod informer.
pub async fn run(ctx: Arc<Context>, pods: Arc<PodInformer>) {
    let client = ctx.client.clone();
    let jctx = Arc::new(JobContext {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), "job-controller"),
    });
    Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default())
        .reconcile_on(pods.owners::<Job>())
        .run(reconcile, error_policy, jctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!("job controller: {e}");
            }
        })
        .await;
}

fn error_policy(job: Arc<Job>, error: &JobError, _ctx: Arc<JobContext>) -> Action {
    tracing::warn!(
        "job controller: {error}; retrying {} in {RETRY:?}",
        job.name_any()
    );
    Action::requeue(RETRY)
}

async fn reconcile(job: Arc<Job>, ctx: Arc<JobContext>) -> Result<Action, JobError> {
    let namespace = job.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", job.name_any());
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(job) = api
        .get_opt(&job.name_any())
        .await
        .map_err(|source| JobError::Get {
            name: key.clone(),
            source,
        })?
    else {
        return Ok(Action::await_change());
    };
    let Some(spec) = job.spec.clone() else {
        return Ok(Action::await_change());
    };
    let old = job.status.clone().unwrap_or_default();
    let conditions = old.conditions.as_deref().unwrap_or_default();
    let finished = sync::condition_true(conditions, "Complete").is_some()
        || sync::condition_true(conditions, "Failed").is_some();
    let foreign = spec.managed_by.as_deref().is_some_and(|m| m != MANAGED_BY);
    if job.metadata.deletion_timestamp.is_some() || finished || foreign {
        return Ok(Action::await_change());
    }
    let selector = spec.selector.clone().unwrap_or_default();
    let (query, _) = workload::selector_query(&selector).map_err(|source| JobError::Selector {
        name: key.clone(),
        source,
    })?;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let listed = pods_api
        .list(&ListParams::default().labels(&query))
        .await
        .map_err(|source| JobError::ListPods {
            name: key.clone(),
            source,
        })?;
    let uid = job.uid().unwrap_or_default();
    let pods: Vec<JobPod> = listed
        .items
        .iter()
        .filter(|p| workload::is_controlled_by(p, &uid))
        .map(pods::view)
        .collect();
    let (status, changes) = sync::next(&spec, &old, &pods, jiff::Timestamp::now());
    let failures = apply(&ctx, &job, &pods_api, &changes).await;
    if status != old {
        // Pinning the resourceVersion makes a stale view lose instead of overwrite.
        let patch =
            json!({"metadata": {"resourceVersion": job.resource_version()}, "status": status});
        match api
            .patch_status(
                &job.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Ok(Action::requeue(CONFLICT_RETRY))
            }
            Err(source) => return Err(JobError::Status { name: key, source }),
        }
    }
    for (kind, reason, message) in &changes.events {
        ctx.recorder
            .record(&reference(&job), *kind, reason, message)
            .await;
    }
    if let Some(first) = failures.first() {
        return Err(JobError::Pods {
            name: key,
            failed: failures.len(),
            first: first.clone(),
        });
    }
    Ok(changes.requeue.map_or_else(Action::await_change, |d| {
        Action::requeue(d + Duration::from_millis(100))
    }))
}

/// Deletes then creates pods; returns what failed.
async fn apply(ctx: &JobContext, job: &Job, api: &Api<Pod>, changes: &Changes) -> Vec<String> {
    let mut failures = Vec::new();
    let deletes: Vec<_> = changes
        .delete
        .iter()
        .map(|name| {
            async move {
                match api.delete(name, &DeleteParams::background()).await {
                    Ok(_) => {
                        ctx.recorder
                            .record(
                                &reference(job),
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
            .boxed()
        })
        .collect();
    let mut results = stream::iter(deletes).buffer_unordered(PARALLEL_WRITES);
    while let Some(result) = results.next().await {
        failures.extend(result.err());
    }
    let creates: Vec<_> = changes
        .create
        .iter()
        .map(|index| {
            async move {
                let Some(pod) = pods::new_pod(job, *index) else {
                    return Err("the job has no uid yet".to_string());
                };
                match api.create(&PostParams::default(), &pod).await {
                    Ok(created) => {
                        let message = format!("Created pod: {}", created.name_any());
                        ctx.recorder
                            .record(
                                &reference(job),
                                EventType::Normal,
                                "SuccessfulCreate",
                                &message,
                            )
                            .await;
                        Ok(())
                    }
                    Err(e) => {
                        ctx.recorder
                            .record(
                                &reference(job),
                                EventType::Warning,
                                "FailedCreate",
                                &format!("Error creating: {e}"),
                            )
                            .await;
                        Err(format!("creating a pod: {e}"))
                    }
                }
            }
            .boxed()
        })
        .collect();
    let mut results = stream::iter(creates).buffer_unordered(PARALLEL_WRITES);
    while let Some(result) = results.next().await {
        failures.extend(result.err());
    }
    failures
}
