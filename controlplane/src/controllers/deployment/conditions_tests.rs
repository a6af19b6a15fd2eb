//! Unit tests of Deployment status and conditions.

use super::*;
use k8s_openapi::api::apps::v1::{DeploymentSpec, ReplicaSetSpec, ReplicaSetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).expect("valid time")
}

fn deployment(replicas: i32) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some("web".into()),
            generation: Some(1),
            ..Default::default()
        },
        spec: DeploymentSpec {
            replicas: Some(replicas),
            progress_deadline_seconds: Some(600),
            ..Default::default()
        },
        status: None,
    }
}

fn rs(name: &str, spec: i32, status: i32, available: i32) -> ReplicaSet {
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: ReplicaSetSpec {
            replicas: Some(spec),
            ..Default::default()
        },
        status: Some(ReplicaSetStatus {
            replicas: status,
            ready_replicas: Some(available),
            available_replicas: Some(available),
            ..Default::default()
        }),
    }
}

fn reason(status: &DeploymentStatus, type_: &str) -> Option<String> {
    get(status, type_).and_then(|c| c.reason.clone())
}

#[test]
fn counts_and_availability() {
    // 25%/25% defaults on 4 replicas: maxUnavailable 1.
    let d = deployment(4);
    let (old, new) = (rs("old", 2, 2, 2), rs("new", 3, 3, 1));
    let s = calculate(&d, &[&old, &new], Some(&new), at(0));
    assert_eq!(s.replicas, Some(5));
    assert_eq!(s.updated_replicas, Some(3));
    assert_eq!(s.available_replicas, Some(3));
    assert_eq!(s.unavailable_replicas, Some(2));
    assert_eq!(s.observed_generation, Some(1));
    assert_eq!(
        reason(&s, AVAILABLE).as_deref(),
        Some("MinimumReplicasAvailable")
    );
    let starved = rs("new", 4, 4, 2);
    let s = calculate(&d, &[&starved], Some(&starved), at(0));
    assert_eq!(
        reason(&s, AVAILABLE).as_deref(),
        Some("MinimumReplicasUnavailable")
    );
}

#[test]
fn set_keeps_transition_time_for_same_status() {
    let mut s = DeploymentStatus::default();
    set(
        &mut s,
        new_condition(PROGRESSING, "True", NEW_RS_CREATED, "a".into(), at(0)),
    );
    set(
        &mut s,
        new_condition(PROGRESSING, "True", RS_UPDATED, "b".into(), at(5)),
    );
    let c = get(&s, PROGRESSING).expect("condition");
    assert_eq!(c.last_transition_time, Some(Time(at(0))));
    assert_eq!(c.last_update_time, Some(Time(at(5))));
    set(
        &mut s,
        new_condition(PROGRESSING, "False", TIMED_OUT, "c".into(), at(9)),
    );
    assert_eq!(
        get(&s, PROGRESSING).and_then(|c| c.last_transition_time.clone()),
        Some(Time(at(9)))
    );
    assert_eq!(s.conditions.as_ref().map(Vec::len), Some(1));
}

#[test]
fn rollout_progresses_completes_and_times_out() {
    let mut d = deployment(2);
    let mut status = DeploymentStatus::default();
    set(
        &mut status,
        new_condition(PROGRESSING, "True", NEW_RS_CREATED, "created".into(), at(0)),
    );
    status.replicas = Some(2);
    d.status = Some(status);

    let (old, new) = (rs("old", 1, 1, 1), rs("new", 2, 2, 1));
    let s = rollout_status(&d, &[&old, &new], Some(&new), at(10));
    assert_eq!(reason(&s, PROGRESSING).as_deref(), Some(RS_UPDATED));
    assert_eq!(
        get(&s, PROGRESSING)
            .and_then(|c| c.message.clone())
            .as_deref(),
        Some("ReplicaSet \"new\" is progressing.")
    );

    let done = rs("new", 2, 2, 2);
    let s = rollout_status(&d, &[&done], Some(&done), at(20));
    assert_eq!(reason(&s, PROGRESSING).as_deref(), Some(NEW_RS_AVAILABLE));
    assert!(is_complete(&d, &s));
    assert_eq!(recheck_after(&d, &s, at(20)), None);

    // No progress at all for longer than the deadline.
    let mut stuck = d.clone();
    stuck.status = Some(calculate(&d, &[&old, &new], Some(&new), at(0)));
    if let Some(s) = stuck.status.as_mut() {
        set(
            s,
            new_condition(PROGRESSING, "True", RS_UPDATED, "x".into(), at(0)),
        );
    }
    assert_eq!(
        recheck_after(&stuck, &DeploymentStatus::default(), at(100)),
        Some(Duration::from_secs(500))
    );
    let s = rollout_status(&stuck, &[&old, &new], Some(&new), at(601));
    assert_eq!(reason(&s, PROGRESSING).as_deref(), Some(TIMED_OUT));
    assert!(timed_out(&stuck, &s, at(601)));
}

#[test]
fn paused_and_resumed() {
    let mut d = deployment(1);
    d.spec.paused = Some(true);
    let mut s = DeploymentStatus::default();
    assert!(update_paused(&d, &mut s, at(0)));
    assert_eq!(reason(&s, PROGRESSING).as_deref(), Some(PAUSED));
    assert!(!update_paused(&d, &mut s, at(1)), "already shown");
    d.spec.paused = Some(false);
    assert!(update_paused(&d, &mut s, at(2)));
    assert_eq!(reason(&s, PROGRESSING).as_deref(), Some(RESUMED));
    d.spec.progress_deadline_seconds = None;
    assert!(!update_paused(&d, &mut s, at(3)));
}

#[test]
fn replica_failures_are_copied() {
    let d = deployment(1);
    let mut failing = rs("new", 1, 0, 0);
    if let Some(s) = failing.status.as_mut() {
        s.conditions = Some(vec![k8s_openapi::api::apps::v1::ReplicaSetCondition {
            type_: Some(REPLICA_FAILURE.into()),
            status: Some("True".into()),
            reason: Some("FailedCreate".into()),
            message: Some("quota".into()),
            last_transition_time: Some(Time(at(0))),
        }]);
    }
    let s = rollout_status(&d, &[&failing], Some(&failing), at(1));
    assert_eq!(reason(&s, REPLICA_FAILURE).as_deref(), Some("FailedCreate"));
}
