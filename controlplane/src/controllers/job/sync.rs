//! One Job sync as a pure function: from the spec, the last status and the
//! pods, the next status (counts, conditions, start and completion time)
//! and the pod changes, following upstream's condition sequence —
//! `FailureTarget` / `SuccessCriteriaMet` first, then `Failed` / `Complete`
//! once no pod is left running or terminating; `Suspended` while
//! `spec.suspend` holds.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{JobCondition, JobSpec, JobStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::accounting::{self, Failure, JobPod, Limits};
use crate::controllers::events::EventType;

/// Message of the success conditions.
const COMPLETIONS_REACHED: &str = "Reached expected number of succeeded pods";

/// What one sync changes besides the status.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Pods to delete.
    pub delete: Vec<String>,
    /// One entry per pod to create: its completion index for Indexed Jobs.
    pub create: Vec<Option<i32>>,
    /// When to look at the Job again (backoff, deadline).
    pub requeue: Option<Duration>,
    /// Events to record about the Job.
    pub events: Vec<(EventType, &'static str, String)>,
}

/// The condition of `type_` if it is True.
pub fn condition_true<'a>(conditions: &'a [JobCondition], type_: &str) -> Option<&'a JobCondition> {
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

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The next status of a running (not finished) Job and the pod changes.
pub fn next(
    spec: &JobSpec,
    old: &JobStatus,
    pods: &[JobPod],
    now_ts: jiff::Timestamp,
) -> (JobStatus, Changes) {
    let now = now_ts.as_second();
    let limits = Limits {
        completions: spec.completions,
        parallelism: spec.parallelism.unwrap_or(1).max(0),
        backoff_limit: spec.backoff_limit.unwrap_or(6),
        active_deadline: spec.active_deadline_seconds,
    };
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let mut done = accounting::parse_indexes(old.completed_indexes.as_deref().unwrap_or_default());
    done.extend(pods.iter().filter(|p| p.succeeded).filter_map(|p| p.index));
    done.retain(|i| (0..limits.completions.unwrap_or(0)).contains(i));
    // Counts never go down, even when finished pods are deleted.
    let succeeded = if indexed {
        count(done.len())
    } else {
        count(pods.iter().filter(|p| p.succeeded).count()).max(old.succeeded.unwrap_or(0))
    };
    let failed = count(pods.iter().filter(|p| p.failed).count()).max(old.failed.unwrap_or(0));
    let active: Vec<&JobPod> = pods.iter().filter(|p| p.active()).collect();
    let terminating = pods.iter().filter(|p| p.terminating).count();
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    let restarts = on_failure.then(|| active.iter().map(|p| p.restarts).sum());

    let mut conditions = old.conditions.clone().unwrap_or_default();
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
        let mut failing = condition_true(&conditions, "FailureTarget")
            .map(|c| (c.reason.clone(), c.message.clone()));
        let mut succeeding = condition_true(&conditions, "SuccessCriteriaMet").is_some();
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
            } else if accounting::succeeded(&limits, succeeded, active.len()) {
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
        }
        if failing.is_some() || succeeding {
            changes.delete = active.iter().map(|p| p.name.clone()).collect();
            if active.is_empty() && terminating == 0 {
                if let Some((reason, message)) = failing {
                    let (reason, message) =
                        (reason.unwrap_or_default(), message.unwrap_or_default());
                    set_condition(&mut conditions, "Failed", "True", &reason, &message, now_ts);
                } else {
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
        } else {
            plan_running(
                &limits,
                indexed,
                &done,
                succeeded,
                pods,
                &active,
                now,
                &mut changes,
            );
            let deadline = accounting::deadline_in(&limits, Some(started), now);
            changes.requeue = [changes.requeue, deadline].into_iter().flatten().min();
        }
    }

    let deleted = changes.delete.len();
    let ready = active
        .iter()
        .filter(|p| p.ready && !changes.delete.contains(&p.name))
        .count();
    let status = JobStatus {
        active: Some(count(
            active.len().saturating_sub(deleted) + changes.create.len(),
        )),
        ready: Some(count(ready)),
        terminating: Some(count(terminating + deleted)),
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
    (status, changes)
}

/// Pods to create or delete while the Job runs.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename these
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> JobSpec {
        let mut v = v;
        v["template"] = serde_json::json!({"spec": {"restartPolicy": "Never", "containers": []}});
        serde_json::from_value(v).expect("a job spec")
    }

    fn pod(name: &str, phase: &str) -> JobPod {
        JobPod {
            name: name.into(),
            succeeded: phase == "Succeeded",
            failed: phase == "Failed",
            terminating: false,
            ready: phase == "Running",
            created: 0,
            finished_at: matches!(phase, "Succeeded" | "Failed").then_some(0),
            index: None,
            restarts: 0,
        }
    }

    fn at(second: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(second).unwrap_or_default()
    }

    fn has(status: &JobStatus, type_: &str) -> Option<String> {
        condition_true(status.conditions.as_deref().unwrap_or_default(), type_)
            .and_then(|c| c.reason.clone())
    }

    #[test]
    fn a_new_job_starts_parallelism_pods() {
        let s = spec(serde_json::json!({"completions": 3, "parallelism": 2}));
        let (status, changes) = next(&s, &JobStatus::default(), &[], at(100));
        assert_eq!(changes.create, vec![None, None]);
        assert_eq!((status.active, status.succeeded), (Some(2), Some(0)));
        assert_eq!(status.start_time, Some(Time(at(100))));
    }

    #[test]
    fn success_then_complete() {
        let s = spec(serde_json::json!({"completions": 2, "parallelism": 2}));
        let pods = [pod("a", "Succeeded"), pod("b", "Succeeded")];
        let (status, changes) = next(&s, &JobStatus::default(), &pods, at(100));
        assert_eq!(
            has(&status, "SuccessCriteriaMet").as_deref(),
            Some("CompletionsReached")
        );
        assert_eq!(
            has(&status, "Complete").as_deref(),
            Some("CompletionsReached")
        );
        assert!(status.completion_time.is_some() && changes.create.is_empty());
    }

    #[test]
    fn failure_waits_for_pods_to_terminate() {
        let s = spec(serde_json::json!({"completions": 1, "parallelism": 2, "backoffLimit": 0}));
        let pods = [pod("a", "Failed"), pod("b", "Running")];
        let (status, changes) = next(&s, &JobStatus::default(), &pods, at(100));
        assert_eq!(
            has(&status, "FailureTarget").as_deref(),
            Some("BackoffLimitExceeded")
        );
        assert_eq!(has(&status, "Failed"), None);
        assert_eq!(changes.delete, vec!["b".to_string()]);
        // Once b is gone, the Job has failed.
        let (status, changes) = next(&s, &status, &pods[..1], at(101));
        assert_eq!(
            has(&status, "Failed").as_deref(),
            Some("BackoffLimitExceeded")
        );
        assert!(changes.delete.is_empty() && changes.create.is_empty());
    }

    #[test]
    fn failed_pods_are_replaced_after_a_backoff() {
        let s = spec(serde_json::json!({"completions": 1, "parallelism": 1, "backoffLimit": 3}));
        let (_, changes) = next(&s, &JobStatus::default(), &[pod("a", "Failed")], at(5));
        assert!(changes.create.is_empty());
        assert_eq!(changes.requeue, Some(Duration::from_secs(5)));
        let (_, changes) = next(&s, &JobStatus::default(), &[pod("a", "Failed")], at(10));
        assert_eq!(changes.create, vec![None]);
    }

    #[test]
    fn suspension_deletes_pods_and_resumption_restarts_the_clock() {
        let mut s = spec(serde_json::json!({"completions": 1, "suspend": true}));
        let (status, changes) = next(&s, &JobStatus::default(), &[pod("a", "Running")], at(100));
        assert_eq!(changes.delete, vec!["a".to_string()]);
        assert_eq!(has(&status, "Suspended").as_deref(), Some("JobSuspended"));
        s.suspend = Some(false);
        let (status, changes) = next(&s, &status, &[], at(200));
        assert_eq!(changes.create, vec![None]);
        assert_eq!(status.start_time, Some(Time(at(200))));
    }

    #[test]
    fn indexed_jobs_start_missing_indexes() {
        let s = spec(
            serde_json::json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed"}),
        );
        let mut done = pod("x", "Succeeded");
        done.index = Some(1);
        let (status, changes) = next(&s, &JobStatus::default(), &[done], at(0));
        assert_eq!(changes.create, vec![Some(0), Some(2)]);
        assert_eq!(status.completed_indexes.as_deref(), Some("1"));
        assert_eq!(status.succeeded, Some(1));
    }
}
