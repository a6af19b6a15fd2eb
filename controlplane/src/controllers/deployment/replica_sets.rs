//! A Deployment's ReplicaSets as upstream's deployment util sees them: which
//! one is new (its template equals the Deployment's, ignoring the hash
//! label), which are old, orderings (by age, by size, by revision), and the
//! proportional-scaling plan that spreads a resize of a Deployment over its
//! active ReplicaSets in the middle of a rollout.

use std::cmp::Ordering;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};

use super::conditions::{available_replicas, spec_replicas};
use super::{hash, revision, surge};

/// Oldest first, ties by name (upstream's `ReplicaSetsByCreationTimestamp`).
pub fn by_age(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    let created = |rs: &ReplicaSet| rs.metadata.creation_timestamp.as_ref().map(|t| t.0);
    created(a)
        .cmp(&created(b))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// Lowest revision first, ties by age (upstream's `ReplicaSetsByRevision`).
pub fn by_revision(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    revision::revision_of(a)
        .cmp(&revision::revision_of(b))
        .then_with(|| by_age(a, b))
}

/// Largest first; ties oldest first (`ReplicaSetsBySizeOlder`) or newest
/// first (`ReplicaSetsBySizeNewer`).
fn by_size(a: &ReplicaSet, b: &ReplicaSet, newer_first: bool) -> Ordering {
    spec_replicas(b).cmp(&spec_replicas(a)).then_with(|| {
        if newer_first {
            by_age(b, a)
        } else {
            by_age(a, b)
        }
    })
}

/// Upstream's `FindNewReplicaSet`: the oldest ReplicaSet whose template
/// equals the Deployment's. Returns its index in `sets`.
pub fn find_new(d: &Deployment, sets: &[ReplicaSet]) -> Option<usize> {
    let mut order: Vec<usize> = (0..sets.len()).collect();
    order.sort_by(|&a, &b| by_age(&sets[a], &sets[b]));
    order.into_iter().find(|&i| {
        sets[i]
            .spec
            .template
            .as_ref()
            .is_some_and(|t| hash::equal_ignore_hash(t, &d.spec.template))
    })
}

/// `spec.replicas > 0`.
pub fn is_active(rs: &ReplicaSet) -> bool {
    spec_replicas(rs) > 0
}

/// Upstream's `FindActiveOrLatest`: the only active ReplicaSet, or the
/// newest one when none is active; `None` when several are active.
pub fn find_active_or_latest<'a>(
    new: Option<&'a ReplicaSet>,
    old: &'a [ReplicaSet],
) -> Option<&'a ReplicaSet> {
    let mut olds: Vec<&ReplicaSet> = old.iter().collect();
    olds.sort_by(|a, b| by_age(b, a));
    let active: Vec<&ReplicaSet> = olds
        .iter()
        .copied()
        .chain(new)
        .filter(|rs| is_active(rs))
        .collect();
    match active.len() {
        0 => new.or_else(|| olds.first().copied()),
        1 => Some(active[0]),
        _ => None,
    }
}

/// Upstream's `IsSaturated`: the new ReplicaSet has all desired pods available.
pub fn is_saturated(d: &Deployment, rs: &ReplicaSet) -> bool {
    let want = surge::desired(d);
    spec_replicas(rs) == want
        && revision::desired_replicas(rs) == Some(want)
        && available_replicas(rs) == want
}

/// The proportional-scaling plan of upstream's `scale` for a RollingUpdate
/// Deployment with several active ReplicaSets: `(index into active, new
/// size)` for every active ReplicaSet, largest (and, on ties, newest when
/// growing, oldest when shrinking) first.
pub fn proportional_plan(d: &Deployment, active: &[&ReplicaSet]) -> Vec<(usize, i32)> {
    let current: i32 = active.iter().map(|rs| spec_replicas(rs)).sum();
    let allowed = if surge::desired(d) > 0 {
        surge::desired(d) + surge::max_surge(d)
    } else {
        0
    };
    let to_add = allowed - current;
    let mut order: Vec<usize> = (0..active.len()).collect();
    order.sort_by(|&a, &b| by_size(active[a], active[b], to_add > 0));
    let mut added = 0;
    let mut plan: Vec<(usize, i32)> = order
        .iter()
        .map(|&i| {
            let rs = active[i];
            if to_add == 0 {
                return (i, spec_replicas(rs));
            }
            let share = surge::proportion(
                spec_replicas(rs),
                revision::max_replicas(rs),
                d,
                to_add,
                added,
            );
            added += share;
            (i, spec_replicas(rs) + share)
        })
        .collect();
    // Leftovers from rounding go to (or come from) the largest ReplicaSet.
    if let Some(first) = plan.first_mut() {
        if to_add != 0 {
            first.1 = (first.1 + to_add - added).max(0);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{
        DeploymentSpec, DeploymentStrategy, ReplicaSetSpec, RollingUpdateDeployment,
    };
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: None,
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    fn rs(name: &str, age: i64, replicas: i32, max: i32, image: &str) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(
                    jiff::Timestamp::from_second(1_700_000_000 + age).expect("time"),
                )),
                annotations: Some([(revision::MAX_REPLICAS.to_string(), max.to_string())].into()),
                ..Default::default()
            },
            spec: ReplicaSetSpec {
                replicas: Some(replicas),
                template: Some(template(image)),
                ..Default::default()
            },
            status: None,
        }
    }

    fn deployment(replicas: i32, image: &str) -> Deployment {
        Deployment {
            spec: DeploymentSpec {
                replicas: Some(replicas),
                template: template(image),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(IntOrString::Int(3)),
                        max_unavailable: Some(IntOrString::Int(2)),
                    }),
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn new_and_latest() {
        let sets = vec![
            rs("b", 2, 0, 0, "v2"),
            rs("a", 1, 3, 3, "v1"),
            rs("c", 3, 0, 0, "v2"),
        ];
        assert_eq!(
            find_new(&deployment(3, "v2"), &sets),
            Some(0),
            "oldest of the matching ones"
        );
        assert_eq!(find_new(&deployment(3, "v3"), &sets), None);
        let (new, old) = (&sets[0], &sets[1..]);
        assert_eq!(
            find_active_or_latest(Some(new), old).and_then(|r| r.metadata.name.as_deref()),
            Some("a")
        );
        let idle = [rs("x", 1, 0, 0, "v1"), rs("y", 2, 0, 0, "v1")];
        assert_eq!(
            find_active_or_latest(None, &idle).and_then(|r| r.metadata.name.as_deref()),
            Some("y")
        );
        let busy = [rs("x", 1, 1, 1, "v1"), rs("y", 2, 1, 1, "v1")];
        assert!(find_active_or_latest(None, &busy).is_none());
    }

    #[test]
    fn proportional_scaling_mid_rollout() {
        // Upstream's example: 10 replicas, maxSurge 3, mid-rollout with 8 old
        // and 5 new (13 = 10 + 3); scaled to 15 (+3 surge = 18): the 5 extra
        // pods are split 8:5 -> +3 old, +2 new.
        let d = deployment(15, "v2");
        let (old, new) = (rs("old", 1, 8, 13, "v1"), rs("new", 2, 5, 13, "v2"));
        let plan = proportional_plan(&d, &[&old, &new]);
        assert_eq!(plan, vec![(0, 11), (1, 7)]);
        // Scaling down to 5 (+3 = 8) from 13: -5 split, the largest first.
        let d = deployment(5, "v2");
        let plan = proportional_plan(&d, &[&old, &new]);
        let total: i32 = plan.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 8);
        assert_eq!(plan[0].0, 0, "the largest ReplicaSet comes first");
        // To zero: everything goes.
        let plan = proportional_plan(&deployment(0, "v2"), &[&old, &new]);
        assert_eq!(plan.iter().map(|(_, n)| *n).sum::<i32>(), 0);
    }

    #[test]
    fn orderings() {
        let mut a = rs("a", 5, 1, 1, "v1");
        let b = rs("b", 1, 1, 1, "v1");
        assert_eq!(by_age(&a, &b), Ordering::Greater);
        a.metadata.annotations = Some([(revision::REVISION.to_string(), "1".to_string())].into());
        assert_eq!(
            by_revision(&b, &a),
            Ordering::Less,
            "no revision sorts as 0"
        );
    }
}
