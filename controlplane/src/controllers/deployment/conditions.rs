//! Deployment status and conditions, as upstream's `calculateStatus` and
//! `syncRolloutStatus`: replica counts summed over the ReplicaSets,
//! `Available` (MinimumReplicasAvailable while at most maxUnavailable pods
//! are missing) and `Progressing` (NewReplicaSetCreated,
//! FoundNewReplicaSet, ReplicaSetUpdated, NewReplicaSetAvailable,
//! ProgressDeadlineExceeded after `progressDeadlineSeconds` without
//! progress, DeploymentPaused / DeploymentResumed), plus ReplicaFailure
//! copied from the ReplicaSets.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::surge;

/// Condition type: enough pods are available.
pub const AVAILABLE: &str = "Available";
/// Condition type: the rollout is making progress (or finished, or stalled).
pub const PROGRESSING: &str = "Progressing";
/// Condition type: creating or deleting pods fails.
pub const REPLICA_FAILURE: &str = "ReplicaFailure";
/// Progressing reason: a new ReplicaSet was created.
pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
/// Progressing reason: the new ReplicaSet already existed.
pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
/// Progressing reason: pods were added or replaced.
pub const RS_UPDATED: &str = "ReplicaSetUpdated";
/// Progressing reason: the rollout is complete.
pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
/// Progressing reason: no progress within `progressDeadlineSeconds`.
pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
/// Progressing reason: the Deployment is paused.
pub const PAUSED: &str = "DeploymentPaused";
/// Progressing reason: the Deployment was resumed.
pub const RESUMED: &str = "DeploymentResumed";
/// Progressing reason: creating the new ReplicaSet failed.
pub const FAILED_RS_CREATE: &str = "ReplicaSetCreateError";

/// A condition stamped `now`.
pub fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: Some(type_.into()),
        status: Some(status.into()),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// The condition of `type_`, if present.
pub fn get<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_.as_deref() == Some(type_))
}

/// Upstream's `SetDeploymentCondition`: no-op when status and reason are
/// unchanged; keeps lastTransitionTime when only the reason changes.
pub fn set(status: &mut DeploymentStatus, mut condition: DeploymentCondition) {
    let type_ = condition.type_.clone().unwrap_or_default();
    if let Some(current) = get(status, &type_) {
        if current.status == condition.status && current.reason == condition.reason {
            return;
        }
        if current.status == condition.status {
            condition.last_transition_time = current.last_transition_time.clone();
        }
    }
    remove(status, &type_);
    status
        .conditions
        .get_or_insert_with(Vec::new)
        .push(condition);
}

/// Removes the condition of `type_`.
pub fn remove(status: &mut DeploymentStatus, type_: &str) {
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.retain(|c| c.type_.as_deref() != Some(type_));
    }
}

/// `progressDeadlineSeconds` is set (and not the "no deadline" maximum).
pub fn has_progress_deadline(d: &Deployment) -> bool {
    d.spec
        .progress_deadline_seconds
        .is_some_and(|s| s != i32::MAX)
}

/// The status fields of one or more ReplicaSets.
fn sum<'a>(sets: impl IntoIterator<Item = &'a ReplicaSet>, field: fn(&ReplicaSet) -> i32) -> i32 {
    sets.into_iter().map(field).sum()
}

/// `spec.replicas` of a ReplicaSet.
pub fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(1)
}

/// `status.replicas` of a ReplicaSet.
pub fn status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas)
}

/// `status.availableReplicas` of a ReplicaSet.
pub fn available_replicas(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

fn ready_replicas(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

fn terminating_replicas(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.terminating_replicas)
        .unwrap_or(0)
}

/// Upstream's `calculateStatus`: counts over `all` (which includes `new`)
/// and the Available condition.
pub fn calculate(
    d: &Deployment,
    all: &[&ReplicaSet],
    new: Option<&ReplicaSet>,
    now: Timestamp,
) -> DeploymentStatus {
    let old = d.status.clone().unwrap_or_default();
    let available = sum(all.iter().copied(), available_replicas);
    let total = sum(all.iter().copied(), spec_replicas);
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(sum(all.iter().copied(), status_replicas)),
        updated_replicas: Some(new.map_or(0, status_replicas)),
        ready_replicas: Some(sum(all.iter().copied(), ready_replicas)),
        available_replicas: Some(available),
        unavailable_replicas: Some((total - available).max(0)),
        terminating_replicas: Some(sum(all.iter().copied(), terminating_replicas)),
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
    };
    let condition = if available >= surge::desired(d) - surge::max_unavailable(d) {
        new_condition(
            AVAILABLE,
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            now,
        )
    } else {
        new_condition(
            AVAILABLE,
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            now,
        )
    };
    set(&mut status, condition);
    status
}

/// Upstream's `DeploymentComplete`: every replica updated and available, generation observed.
pub fn is_complete(d: &Deployment, status: &DeploymentStatus) -> bool {
    let want = surge::desired(d);
    status.updated_replicas.unwrap_or(0) == want
        && status.replicas.unwrap_or(0) == want
        && status.available_replicas.unwrap_or(0) == want
        && status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// Upstream's `DeploymentProgressing`: `new` shows more updated, ready or
/// available pods, or fewer old ones, than the Deployment's current status.
pub fn is_progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let n = |v: Option<i32>| v.unwrap_or(0);
    let old_old = n(old.replicas) - n(old.updated_replicas);
    let new_old = n(new.replicas) - n(new.updated_replicas);
    n(new.updated_replicas) > n(old.updated_replicas)
        || new_old < old_old
        || n(new.ready_replicas) > n(old.ready_replicas)
        || n(new.available_replicas) > n(old.available_replicas)
}

fn deadline(d: &Deployment) -> Duration {
    Duration::from_secs(u64::try_from(d.spec.progress_deadline_seconds.unwrap_or(0)).unwrap_or(0))
}

/// Upstream's `DeploymentTimedOut`: no progress reported for longer than the deadline.
pub fn timed_out(d: &Deployment, status: &DeploymentStatus, now: Timestamp) -> bool {
    if !has_progress_deadline(d) {
        return false;
    }
    let Some(c) = get(status, PROGRESSING) else {
        return false;
    };
    match c.reason.as_deref() {
        Some(NEW_RS_AVAILABLE) => false,
        Some(TIMED_OUT) => true,
        _ => c.last_update_time.as_ref().is_some_and(|t| {
            let limit =
                jiff::SignedDuration::try_from(deadline(d)).unwrap_or(jiff::SignedDuration::MAX);
            t.0.checked_add(limit).is_ok_and(|end| end < now)
        }),
    }
}

/// Upstream's `syncRolloutStatus` computation: the status to write after a
/// rollout step, with Progressing and ReplicaFailure updated.
pub fn rollout_status(
    d: &Deployment,
    all: &[&ReplicaSet],
    new: Option<&ReplicaSet>,
    now: Timestamp,
) -> DeploymentStatus {
    let mut status = calculate(d, all, new, now);
    if !has_progress_deadline(d) {
        remove(&mut status, PROGRESSING);
    }
    let current = d.status.as_ref().and_then(|s| get(s, PROGRESSING));
    let completed_before = status.replicas == status.updated_replicas
        && current.is_some_and(|c| c.reason.as_deref() == Some(NEW_RS_AVAILABLE));
    let name = d.metadata.name.as_deref().unwrap_or_default();
    let subject = |what: &str| match new.and_then(|rs| rs.metadata.name.as_deref()) {
        Some(rs) => format!("ReplicaSet \"{rs}\" {what}."),
        None => format!("Deployment \"{name}\" {what}."),
    };
    if has_progress_deadline(d) && !completed_before {
        if is_complete(d, &status) {
            set(
                &mut status,
                new_condition(
                    PROGRESSING,
                    "True",
                    NEW_RS_AVAILABLE,
                    subject("has successfully progressed"),
                    now,
                ),
            );
        } else if is_progressing(d, &status) {
            let mut c = new_condition(
                PROGRESSING,
                "True",
                RS_UPDATED,
                subject("is progressing"),
                now,
            );
            if let Some(current) = current {
                if current.status.as_deref() == Some("True") {
                    c.last_transition_time = current.last_transition_time.clone();
                }
                remove(&mut status, PROGRESSING);
            }
            set(&mut status, c);
        } else if timed_out(d, &status, now) {
            set(
                &mut status,
                new_condition(
                    PROGRESSING,
                    "False",
                    TIMED_OUT,
                    subject("has timed out progressing"),
                    now,
                ),
            );
        }
    }
    match replica_failure(all, new) {
        Some(c) => set(&mut status, c),
        None => remove(&mut status, REPLICA_FAILURE),
    }
    status
}

/// The ReplicaFailure condition of the new ReplicaSet, else of any other.
fn replica_failure(all: &[&ReplicaSet], new: Option<&ReplicaSet>) -> Option<DeploymentCondition> {
    let failure = |rs: &ReplicaSet| {
        rs.status
            .as_ref()?
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_.as_deref() == Some(REPLICA_FAILURE))
            .map(|c| DeploymentCondition {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                last_update_time: c.last_transition_time.clone(),
                last_transition_time: c.last_transition_time.clone(),
            })
    };
    new.and_then(failure)
        .or_else(|| all.iter().find_map(|rs| failure(rs)))
}

/// Upstream's `requeueStuckDeployment`: when to look again so a stalled
/// rollout is marked ProgressDeadlineExceeded on time.
pub fn recheck_after(d: &Deployment, new: &DeploymentStatus, now: Timestamp) -> Option<Duration> {
    let current = d.status.as_ref().and_then(|s| get(s, PROGRESSING))?;
    if !has_progress_deadline(d)
        || is_complete(d, new)
        || current.reason.as_deref() == Some(TIMED_OUT)
    {
        return None;
    }
    let updated = current.last_update_time.as_ref()?.0;
    let end = updated
        .checked_add(jiff::SignedDuration::try_from(deadline(d)).ok()?)
        .ok()?;
    let after = Duration::try_from(end.duration_since(now)).unwrap_or(Duration::ZERO);
    Some(after.max(Duration::from_millis(100)))
}

/// Upstream's `checkPausedConditions`: sets Progressing to
/// DeploymentPaused / DeploymentResumed when `spec.paused` flips. Returns
/// whether the status changed.
pub fn update_paused(d: &Deployment, status: &mut DeploymentStatus, now: Timestamp) -> bool {
    if !has_progress_deadline(d) {
        return false;
    }
    let reason = get(status, PROGRESSING).and_then(|c| c.reason.clone());
    if reason.as_deref() == Some(TIMED_OUT) {
        return false;
    }
    let paused_shown = reason.as_deref() == Some(PAUSED);
    let paused = d.spec.paused.unwrap_or(false);
    if paused && !paused_shown {
        set(
            status,
            new_condition(
                PROGRESSING,
                "Unknown",
                PAUSED,
                "Deployment is paused".into(),
                now,
            ),
        );
        true
    } else if !paused && paused_shown {
        set(
            status,
            new_condition(
                PROGRESSING,
                "Unknown",
                RESUMED,
                "Deployment is resumed".into(),
                now,
            ),
        );
        true
    } else {
        false
    }
}

#[cfg(test)]
#[path = "conditions_tests.rs"]
mod tests;
