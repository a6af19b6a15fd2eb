//! The Job controller: runs pods until `completions` of them succeed, at
//! most `parallelism` at a time, replacing failed ones after an exponential
//! backoff until more than `backoffLimit` failed, and within
//! `activeDeadlineSeconds` ([`accounting`] holds the arithmetic).
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

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{stream, FutureExt, StreamExt};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

use super::daemonset::workload::{self, SelectorError};
use super::events::{reference, EventType, Recorder};
use super::Context;
use accounting::{Failure, JobPod, Limits};

/// Annotation and label with an Indexed Job pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// `spec.managedBy` value of this controller (other values are left alone).
const MANAGED_BY: &str = "kubernetes.io/job-controller";
/// Pod changes in flight at once for one Job.
const PARALLEL_WRITES: usize = 16;
/// How soon after an error a Job is synced again.
const RETRY: Duration = Duration::from_secs(5);
/// How soon a Job whose status write lost a race is synced again.
const CONFLICT_RETRY: Duration = Duration::from_millis(200);
/// Message of the success conditions.
const COMPLETIONS_REACHED: &str = "Reached expected number of succeeded pods";

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

/// Runs the controller until the process ends.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let jctx = Arc::new(JobContext {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), "job-controller"),
    });
    Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Pod>::all(client), watcher::Config::default())
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

fn condition_true<'a>(conditions: &'a [JobCondition], type_: &str) -> Option<&'a JobCondition> {
    conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Sets a condition, keeping its transition time when its status is unchanged.
fn set_condition(
    conditions: &mut Vec<JobCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: jiff::Timestamp,
) {
    let fresh = JobCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) if c.status == status => {
            c.reason = fresh.reason;
            c.message = fresh.message;
        }
        Some(c) => *c = fresh,
        None => conditions.push(fresh),
    }
}

/// When a finished pod finished: its last container's end, else its last
/// condition change, else its creation.
fn finished_at(pod: &Pod) -> Option<i64> {
    if !workload::is_terminal(pod) {
        return None;
    }
    let status = pod.status.as_ref();
    let containers = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0.as_second())
        .max();
    let conditions = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.last_transition_time.as_ref())
        .map(|t| t.0.as_second())
        .max();
    containers.or(conditions).or(pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second()))
}

fn job_pod(pod: &Pod) -> JobPod {
    let phase = workload::phase(pod);
    let status = pod.status.as_ref();
    let restarts = status
        .into_iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum();
    JobPod {
        name: pod.name_any(),
        succeeded: phase == "Succeeded",
        failed: phase == "Failed",
        terminating: workload::is_terminating(pod) && !workload::is_terminal(pod),
        ready: workload::is_ready(pod),
        created: pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
        finished_at: finished_at(pod),
        index: pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(COMPLETION_INDEX))
            .and_then(|i| i.parse().ok()),
        restarts,
    }
}

/// What one sync decided.
#[derive(Default)]
struct Changes {
    delete: Vec<String>,
    /// One entry per pod to create: its completion index for Indexed Jobs.
    create: Vec<Option<i32>>,
    requeue: Option<Duration>,
    events: Vec<(EventType, &'static str, String)>,
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
    let mut conditions = old.conditions.clone().unwrap_or_default();
    let finished = condition_true(&conditions, "Complete").is_some()
        || condition_true(&conditions, "Failed").is_some();
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
        .map(job_pod)
        .collect();

    let now_ts = jiff::Timestamp::now();
    let now = now_ts.as_second();
    let limits = Limits {
        completions: spec.completions,
        parallelism: spec.parallelism.unwrap_or(1).max(0),
        backoff_limit: spec.backoff_limit.unwrap_or(6),
        active_deadline: spec.active_deadline_seconds,
    };
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = limits.completions.unwrap_or(0);
    let mut done: BTreeSet<i32> =
        accounting::parse_indexes(old.completed_indexes.as_deref().unwrap_or_default());
    done.extend(pods.iter().filter(|p| p.succeeded).filter_map(|p| p.index));
    done.retain(|i| (0..completions).contains(i));
    let observed_succeeded =
        i32::try_from(pods.iter().filter(|p| p.succeeded).count()).unwrap_or(i32::MAX);
    let succeeded = if indexed {
        i32::try_from(done.len()).unwrap_or(i32::MAX)
    } else {
        observed_succeeded.max(old.succeeded.unwrap_or(0))
    };
    let failed = i32::try_from(pods.iter().filter(|p| p.failed).count())
        .unwrap_or(i32::MAX)
        .max(old.failed.unwrap_or(0));
    let active: Vec<&JobPod> = pods.iter().filter(|p| p.active()).collect();
    let terminating = pods.iter().filter(|p| p.terminating).count();
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    let restarts = on_failure.then(|| active.iter().map(|p| p.restarts).sum());

    let mut start_time = old.start_time.clone();
    let mut completion_time = old.completion_time.clone();
    let mut changes = Changes::default();
    if spec.suspend == Some(true) {
        changes.delete = active.iter().map(|p| p.name.clone()).collect();
        set_condition(
            &mut conditions,
            "Suspended",
            "True",
            "JobSuspended",
            "Job suspended",
            now_ts,
        );
    } else {
        if condition_true(&conditions, "Suspended").is_some() {
            set_condition(
                &mut conditions,
                "Suspended",
                "False",
                "JobResumed",
                "Job resumed",
                now_ts,
            );
            // The deadline counts from the resumption, as upstream.
            start_time = Some(Time(now_ts));
        }
        let started = start_time.get_or_insert(Time(now_ts)).0.as_second();
        let failing = condition_true(&conditions, "FailureTarget")
            .map(|c| (c.reason.clone(), c.message.clone()));
        let succeeding = condition_true(&conditions, "SuccessCriteriaMet").is_some();
        let mut failing = failing;
        if failing.is_none() && !succeeding {
            if let Some(Failure { reason, message }) =
                accounting::failure(&limits, failed, restarts, Some(started), now)
            {
                set_condition(
                    &mut conditions,
                    "FailureTarget",
                    "True",
                    reason,
                    message,
                    now_ts,
                );
                changes
                    .events
                    .push((EventType::Warning, reason, message.to_string()));
                failing = Some((Some(reason.to_string()), Some(message.to_string())));
            }
        }
        let mut succeeding = succeeding;
        if failing.is_none()
            && !succeeding
            && accounting::succeeded(&limits, succeeded, active.len())
        {
            set_condition(
                &mut conditions,
                "SuccessCriteriaMet",
                "True",
                "CompletionsReached",
                COMPLETIONS_REACHED,
                now_ts,
            );
            succeeding = true;
        }
        if failing.is_some() || succeeding {
            changes.delete = active.iter().map(|p| p.name.clone()).collect();
            if active.is_empty() && terminating == 0 {
                match failing {
                    Some((reason, message)) => {
                        let (reason, message) =
                            (reason.unwrap_or_default(), message.unwrap_or_default());
                        set_condition(&mut conditions, "Failed", "True", &reason, &message, now_ts);
                    }
                    None => {
                        set_condition(
                            &mut conditions,
                            "Complete",
                            "True",
                            "CompletionsReached",
                            COMPLETIONS_REACHED,
                            now_ts,
                        );
                        completion_time = Some(Time(now_ts));
                        changes.events.push((
                            EventType::Normal,
                            "Completed",
                            "Job completed".to_string(),
                        ));
                    }
                }
            }
        } else {
            plan_running(
                &limits,
                indexed,
                &done,
                succeeded,
                &pods,
                &active,
                now,
                &mut changes,
            );
            changes.requeue = [
                changes.requeue,
                accounting::deadline_in(&limits, Some(started), now),
            ]
            .into_iter()
            .flatten()
            .min();
        }
    }

    let failures = apply(&ctx, &job, &pods_api, &changes).await;
    let deleted_active = changes.delete.len();
    let status = JobStatus {
        active: Some(
            i32::try_from(active.len().saturating_sub(deleted_active) + changes.create.len())
                .unwrap_or(i32::MAX),
        ),
        ready: Some(
            i32::try_from(
                active
                    .iter()
                    .filter(|p| p.ready && !changes.delete.contains(&p.name))
                    .count(),
            )
            .unwrap_or(0),
        ),
        terminating: Some(i32::try_from(terminating + deleted_active).unwrap_or(i32::MAX)),
        succeeded: Some(succeeded),
        failed: Some(failed),
        start_time,
        completion_time,
        completed_indexes: if indexed {
            Some(accounting::format_indexes(&done))
        } else {
            old.completed_indexes.clone()
        },
        conditions: Some(conditions).filter(|c| !c.is_empty()),
        ..old.clone()
    };
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

/// Pods to create or delete while the Job runs.
#[allow(clippy::too_many_arguments)]
fn plan_running(
    limits: &Limits,
    indexed: bool,
    done: &BTreeSet<i32>,
    succeeded: i32,
    pods: &[JobPod],
    active: &[&JobPod],
    now: i64,
    changes: &mut Changes,
) {
    let mut live: Vec<&JobPod> = Vec::new();
    if indexed {
        // One pod per index that is still to do; the rest go.
        let mut seen = BTreeSet::new();
        for p in active {
            match p.index {
                Some(i)
                    if !done.contains(&i)
                        && (0..limits.completions.unwrap_or(0)).contains(&i)
                        && seen.insert(i) =>
                {
                    live.push(p)
                }
                _ => changes.delete.push(p.name.clone()),
            }
        }
    } else {
        live.extend(active.iter().copied());
    }
    let want = accounting::wanted_active(limits, succeeded, live.len());
    if live.len() > want {
        changes.delete.extend(accounting::excess(&live, want));
        return;
    }
    let room = want - live.len();
    if room == 0 {
        return;
    }
    if let Some(wait) = accounting::backoff_remaining(pods, now) {
        changes.requeue = Some(wait);
        return;
    }
    if indexed {
        let running: BTreeSet<i32> = live.iter().filter_map(|p| p.index).collect();
        let start =
            accounting::indexes_to_start(limits.completions.unwrap_or(0), done, &running, room);
        changes.create = start.into_iter().map(Some).collect();
    } else {
        changes.create = vec![None; room];
    }
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
                let Some(pod) = new_pod(job, *index) else {
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

/// A pod from the Job's template; Indexed Jobs' pods carry their index
/// (annotation, label, `JOB_COMPLETION_INDEX`, hostname `<job>-<index>`).
fn new_pod(job: &Job, index: Option<i32>) -> Option<Pod> {
    let spec = job.spec.as_ref()?;
    let owner = workload::controller_ref(job)?;
    let name = job.name_any();
    let mut pod =
        workload::pod_from_template(&spec.template, owner, &job.namespace().unwrap_or_default());
    pod.metadata.generate_name = Some(format!("{name}-"));
    if let Some(index) = index {
        let index = index.to_string();
        pod.metadata.generate_name = Some(format!("{name}-{index}-"));
        pod.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(COMPLETION_INDEX.to_string(), index.clone());
        workload::set_label(&mut pod, COMPLETION_INDEX, &index);
        let pod_spec = pod.spec.get_or_insert_with(Default::default);
        pod_spec
            .hostname
            .get_or_insert_with(|| format!("{name}-{index}"));
        let env = EnvVar {
            name: "JOB_COMPLETION_INDEX".to_string(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                }),
                ..EnvVarSource::default()
            }),
        };
        let containers = pod_spec
            .containers
            .iter_mut()
            .chain(pod_spec.init_containers.iter_mut().flatten());
        for container in containers {
            container.env.get_or_insert_with(Vec::new).push(env.clone());
        }
    }
    Some(pod)
}
