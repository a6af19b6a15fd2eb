//! ReplicaSet status from the pods it owns, as upstream's `calculateStatus`:
//! replicas (active pods), fullyLabeledReplicas (pods carrying every
//! template label), readyReplicas, availableReplicas (ready for
//! `minReadySeconds`), terminatingReplicas, and the ReplicaFailure condition
//! while creating or deleting pods fails.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::ranking;
use crate::controllers::pods::CachedPod;

/// Why managing replicas failed, for the ReplicaFailure condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Creating pods failed.
    Create,
    /// Deleting pods failed.
    Delete,
}

/// The status `rs` should have given its active `pods`, the number of its
/// terminating pods and the error of this sync's create/delete, if any.
pub(crate) fn calculate(
    rs: &ReplicaSet,
    pods: &[Arc<CachedPod>],
    terminating: usize,
    failure: Option<(Failure, String)>,
    now: Timestamp,
) -> ReplicaSetStatus {
    let mut status = rs.status.clone().unwrap_or_default();
    let template_labels = rs
        .spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.as_ref());
    let min_ready = rs.spec.min_ready_seconds.unwrap_or(0);
    let fully_labeled = pods
        .iter()
        .filter(|p| template_labels.is_none_or(|want| p.labels.contains_all(want)))
        .count();
    let ready = pods.iter().filter(|p| ranking::is_ready(p)).count();
    let available = pods
        .iter()
        .filter(|p| ranking::is_available(p, min_ready, now))
        .count();
    let has_failure = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_.as_deref() == Some("ReplicaFailure"));
    match failure {
        Some((kind, message)) if !has_failure => {
            let reason = match kind {
                Failure::Create => "FailedCreate",
                Failure::Delete => "FailedDelete",
            };
            status
                .conditions
                .get_or_insert_with(Vec::new)
                .push(ReplicaSetCondition {
                    type_: Some("ReplicaFailure".into()),
                    status: Some("True".into()),
                    reason: Some(reason.into()),
                    message: Some(message),
                    last_transition_time: Some(Time(now)),
                });
        }
        None if has_failure => {
            if let Some(conditions) = status.conditions.as_mut() {
                conditions.retain(|c| c.type_.as_deref() != Some("ReplicaFailure"));
            }
            if status.conditions.as_ref().is_some_and(Vec::is_empty) {
                status.conditions = None;
            }
        }
        _ => {}
    }
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    status.replicas = count(pods.len());
    status.fully_labeled_replicas = Some(count(fully_labeled));
    status.ready_replicas = Some(count(ready));
    status.available_replicas = Some(count(available));
    status.terminating_replicas = Some(count(terminating));
    status
}

/// True when `new` differs from what `rs` reports or `rs`'s generation is unobserved.
pub(crate) fn needs_update(rs: &ReplicaSet, new: &ReplicaSetStatus) -> bool {
    let Some(old) = rs.status.as_ref() else {
        return true;
    };
    let n = |v: Option<i32>| v.unwrap_or(0);
    old.replicas != new.replicas
        || n(old.fully_labeled_replicas) != n(new.fully_labeled_replicas)
        || n(old.ready_replicas) != n(new.ready_replicas)
        || n(old.available_replicas) != n(new.available_replicas)
        || old.terminating_replicas != new.terminating_replicas
        || old.conditions != new.conditions
        || rs.metadata.generation != old.observed_generation
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("valid time")
    }

    fn pod(labels: &[(&str, &str)], ready_at: Option<i64>) -> Arc<CachedPod> {
        let mut p = Pod::default();
        p.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        p.status = Some(PodStatus {
            conditions: ready_at.map(|t| {
                vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(at(t))),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        });
        Arc::new(CachedPod::from(&p))
    }

    fn rs(min_ready: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                generation: Some(2),
                ..Default::default()
            },
            spec: ReplicaSetSpec {
                min_ready_seconds: Some(min_ready),
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(
                            [
                                ("app".to_string(), "web".to_string()),
                                ("tier".to_string(), "fe".to_string()),
                            ]
                            .into(),
                        ),
                        ..Default::default()
                    }),
                    spec: None,
                }),
                ..Default::default()
            },
            status: None,
        }
    }

    #[test]
    fn counts_pods() {
        let pods = vec![
            pod(&[("app", "web"), ("tier", "fe")], Some(0)),
            pod(&[("app", "web")], Some(95)),
            pod(&[("app", "web"), ("tier", "fe"), ("x", "y")], None),
        ];
        let s = calculate(&rs(10), &pods, 1, None, at(100));
        assert_eq!(s.replicas, 3);
        assert_eq!(s.fully_labeled_replicas, Some(2));
        assert_eq!(s.ready_replicas, Some(2));
        assert_eq!(
            s.available_replicas,
            Some(1),
            "one pod has been ready for only 5 of 10 seconds"
        );
        assert_eq!(s.terminating_replicas, Some(1));
    }

    #[test]
    fn failure_condition_comes_and_goes() {
        let mut set = rs(0);
        let s = calculate(&set, &[], 0, Some((Failure::Create, "quota".into())), at(0));
        let c = &s.conditions.as_ref().expect("condition set")[0];
        assert_eq!(
            (c.type_.as_deref(), c.reason.as_deref()),
            (Some("ReplicaFailure"), Some("FailedCreate"))
        );
        set.status = Some(s);
        assert!(needs_update(&set, &calculate(&set, &[], 0, None, at(1))));
        assert_eq!(calculate(&set, &[], 0, None, at(1)).conditions, None);
    }

    #[test]
    fn observed_generation_drives_updates() {
        let mut set = rs(0);
        let s = calculate(&set, &[], 0, None, at(0));
        assert!(needs_update(&set, &s));
        set.status = Some(ReplicaSetStatus {
            observed_generation: Some(2),
            ..s.clone()
        });
        assert!(!needs_update(&set, &s));
    }
}
