//! Pod state as the workload controllers read it (active, ready, available)
//! and the order in which a ReplicaSet deletes surplus pods, as upstream's
//! `ActivePodsWithRanks`: unscheduled before scheduled, Pending before
//! Unknown before Running, not ready before ready, lower
//! `controller.kubernetes.io/pod-deletion-cost` first, pods doubled up on a
//! node first, ready for a shorter time first (in logarithmic buckets), more
//! container restarts first, newer first (logarithmic buckets, then UID).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use jiff::Timestamp;

use crate::controllers::pods::{CachedPod, Phase};

/// Annotation that lowers (or raises) a pod's priority for deletion.
pub(crate) const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";

/// Not Succeeded, not Failed and not being deleted.
pub(crate) fn is_active(pod: &CachedPod) -> bool {
    pod.deleted.is_none() && !is_terminal(pod)
}

/// Phase Succeeded or Failed.
pub(crate) fn is_terminal(pod: &CachedPod) -> bool {
    pod.phase.is_terminal()
}

/// The pod's Ready condition is True.
pub(crate) fn is_ready(pod: &CachedPod) -> bool {
    pod.is_ready()
}

/// When a ready pod became ready (the Ready condition's last transition).
fn ready_since(pod: &CachedPod) -> Option<Timestamp> {
    pod.ready.filter(|r| r.is_true)?.since
}

/// Ready for at least `min_ready_seconds` at `now`.
pub(crate) fn is_available(pod: &CachedPod, min_ready_seconds: i32, now: Timestamp) -> bool {
    if !is_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    ready_since(pod).is_some_and(|since| {
        since + jiff::SignedDuration::from_secs(min_ready_seconds.into()) < now
    })
}

/// When a ready pod that is not yet available becomes available.
pub(crate) fn available_at(pod: &CachedPod, min_ready_seconds: i32) -> Option<Timestamp> {
    if min_ready_seconds <= 0 {
        return None;
    }
    ready_since(pod).map(|since| since + jiff::SignedDuration::from_secs(min_ready_seconds.into()))
}

fn node_name(pod: &CachedPod) -> &str {
    pod.node_name.as_deref().unwrap_or_default()
}

fn phase_ordinal(pod: &CachedPod) -> u8 {
    match pod.phase {
        Phase::Unknown => 1,
        Phase::Running => 2,
        _ => 0,
    }
}

fn deletion_cost(pod: &CachedPod) -> i32 {
    pod.annotations
        .get(DELETION_COST_ANNOTATION)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `floor(log2(now - t))` in nanoseconds, or -1 for a time not in the past.
fn log_rank(t: Timestamp, now: Timestamp) -> i64 {
    let nanos = now.as_nanosecond() - t.as_nanosecond();
    if nanos <= 0 {
        -1
    } else {
        // The bucket index is at most 127, so the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        let rank = (nanos as f64).log2().floor() as i64;
        rank
    }
}

/// Upstream's LogarithmicScaleDown comparison of two times, more recent
/// first: by `floor(log2(age))` bucket, equal buckets by pod UID; a missing
/// time first; `None` when the times are equal.
fn newer_first(
    a: Option<Timestamp>,
    b: Option<Timestamp>,
    pa: &CachedPod,
    pb: &CachedPod,
    now: Timestamp,
) -> Option<Ordering> {
    match (a, b) {
        (None, None) => None,
        (None, Some(_)) => Some(Ordering::Less),
        (Some(_), None) => Some(Ordering::Greater),
        (Some(a), Some(b)) if a == b => None,
        (Some(a), Some(b)) => match log_rank(a, now).cmp(&log_rank(b, now)) {
            Ordering::Equal => Some(pa.uid.cmp(&pb.uid)),
            other => Some(other),
        },
    }
}

/// Orders `a` before `b` when `a` should be deleted first. `rank_*` count
/// the active related pods on each pod's node.
fn compare(a: &CachedPod, rank_a: usize, b: &CachedPod, rank_b: usize, now: Timestamp) -> Ordering {
    let (node_a, node_b) = (node_name(a), node_name(b));
    if node_a != node_b && (node_a.is_empty() || node_b.is_empty()) {
        return if node_a.is_empty() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    let by_phase = phase_ordinal(a).cmp(&phase_ordinal(b));
    if by_phase != Ordering::Equal {
        return by_phase;
    }
    if is_ready(a) != is_ready(b) {
        return if is_ready(a) {
            Ordering::Greater
        } else {
            Ordering::Less
        };
    }
    let by_cost = deletion_cost(a).cmp(&deletion_cost(b));
    if by_cost != Ordering::Equal {
        return by_cost;
    }
    if rank_a != rank_b {
        return rank_b.cmp(&rank_a);
    }
    if is_ready(a) && is_ready(b) {
        if let Some(o) = newer_first(ready_since(a), ready_since(b), a, b, now) {
            return o;
        }
    }
    // Highest restarts of regular containers, then of sidecar init containers.
    let (ra, rb) = (a.restarts, b.restarts);
    if ra != rb {
        return rb.cmp(&ra);
    }
    newer_first(a.created, b.created, a, b, now).unwrap_or(Ordering::Equal)
}

/// Picks `count` of `pods` to delete, in upstream's preference order.
/// `related` are the active pods of this ReplicaSet and its siblings (same
/// controller); pods sharing a node with more of them go first.
pub(crate) fn pods_to_delete(
    mut pods: Vec<Arc<CachedPod>>,
    related: &[Arc<CachedPod>],
    count: usize,
    now: Timestamp,
) -> Vec<Arc<CachedPod>> {
    if count < pods.len() {
        let mut on_node: HashMap<&str, usize> = HashMap::new();
        for pod in related.iter().filter(|p| is_active(p)) {
            *on_node.entry(node_name(pod)).or_default() += 1;
        }
        let rank = |p: &CachedPod| on_node.get(node_name(p)).copied().unwrap_or(0);
        let mut ranked: Vec<(usize, Arc<CachedPod>)> =
            pods.drain(..).map(|p| (rank(&p), p)).collect();
        ranked.sort_by(|(ra, a), (rb, b)| compare(a, *ra, b, *rb, now));
        pods = ranked.into_iter().map(|(_, p)| p).collect();
    }
    pods.truncate(count);
    pods
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerStatus, Pod, PodCondition, PodSpec, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("valid time")
    }

    fn pod(
        name: &str,
        node: &str,
        phase: &str,
        ready_at: Option<i64>,
        created: i64,
    ) -> Arc<CachedPod> {
        cached(full(name, node, phase, ready_at, created))
    }

    fn cached(pod: Pod) -> Arc<CachedPod> {
        Arc::new(CachedPod::from(&pod))
    }

    fn full(name: &str, node: &str, phase: &str, ready_at: Option<i64>, created: i64) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.uid = Some(format!("uid-{name}"));
        p.metadata.creation_timestamp = Some(Time(at(created)));
        p.spec = Some(PodSpec {
            node_name: (!node.is_empty()).then(|| node.to_string()),
            ..Default::default()
        });
        let conditions = ready_at.map(|t| {
            vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(Time(at(t))),
                ..Default::default()
            }]
        });
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            conditions,
            ..Default::default()
        });
        p
    }

    fn names(pods: &[Arc<CachedPod>]) -> Vec<&str> {
        pods.iter().map(|p| &*p.name).collect()
    }

    #[test]
    fn sidecar_restarts_rank_after_regular_ones() {
        let container = |name: &str, restart: Option<&str>| Container {
            name: name.into(),
            image: Some("busybox:1".into()),
            restart_policy: restart.map(str::to_string),
            ..Default::default()
        };
        let with_restarts = |name: &str, regular: i32, sidecar: i32| {
            let mut p = full(name, "n1", "Running", None, 0);
            if let Some(spec) = p.spec.as_mut() {
                spec.containers = vec![container("main", None)];
                spec.init_containers = Some(vec![container("proxy", Some("Always"))]);
            }
            if let Some(s) = p.status.as_mut() {
                let status = |name: &str, restart_count| ContainerStatus {
                    name: name.into(),
                    restart_count,
                    ..Default::default()
                };
                s.container_statuses = Some(vec![status("main", regular)]);
                s.init_container_statuses = Some(vec![status("proxy", sidecar)]);
            }
            cached(p)
        };
        let now = at(100_000);
        let pods = vec![
            with_restarts("calm", 1, 0),
            with_restarts("flaky-sidecar", 1, 4),
        ];
        assert_eq!(names(&pods_to_delete(pods, &[], 1, now)), ["flaky-sidecar"]);
        let pods = vec![
            with_restarts("flaky-sidecar", 1, 4),
            with_restarts("flaky", 2, 0),
        ];
        assert_eq!(names(&pods_to_delete(pods, &[], 1, now)), ["flaky"]);
    }

    #[test]
    fn unscheduled_pending_unready_go_first() {
        let now = at(100_000);
        let pods = vec![
            pod("ready", "n1", "Running", Some(10), 0),
            pod("running-unready", "n1", "Running", None, 0),
            pod("pending", "n1", "Pending", None, 0),
            pod("unscheduled", "", "Pending", None, 0),
        ];
        let order = pods_to_delete(pods, &[], 3, now);
        assert_eq!(names(&order), ["unscheduled", "pending", "running-unready"]);
    }

    #[test]
    fn restarts_cost_and_doubling_up() {
        let now = at(100_000);
        let mut restarted = full("restarted", "n1", "Running", None, 0);
        if let Some(s) = restarted.status.as_mut() {
            s.container_statuses = Some(vec![ContainerStatus {
                name: "c".into(),
                restart_count: 3,
                ..Default::default()
            }]);
        }
        let pods = vec![pod("calm", "n1", "Running", None, 0), cached(restarted)];
        assert_eq!(names(&pods_to_delete(pods, &[], 1, now)), ["restarted"]);

        let mut cheap = full("cheap", "n1", "Running", None, 0);
        cheap.metadata.annotations =
            Some([(DELETION_COST_ANNOTATION.to_string(), "-5".to_string())].into());
        let pods = vec![pod("dear", "n1", "Running", None, 0), cached(cheap)];
        assert_eq!(names(&pods_to_delete(pods, &[], 1, now)), ["cheap"]);

        let alone = pod("alone", "n1", "Running", None, 0);
        let crowded = pod("crowded", "n2", "Running", None, 0);
        let related = vec![
            alone.clone(),
            crowded.clone(),
            pod("other", "n2", "Running", None, 0),
        ];
        assert_eq!(
            names(&pods_to_delete(vec![alone, crowded], &related, 1, now)),
            ["crowded"]
        );
    }

    #[test]
    fn newer_first_in_logarithmic_buckets() {
        let now = at(100_000);
        // Created ~27 h and ~1 min ago: different buckets, the newer goes first.
        let pods = vec![
            pod("old", "n1", "Running", None, 0),
            pod("new", "n1", "Running", None, 99_940),
        ];
        assert_eq!(names(&pods_to_delete(pods, &[], 1, now)), ["new"]);
        // Ready for ~27 h vs ~1 min: the recently ready one goes first.
        let pods = vec![
            pod("long", "n1", "Running", Some(0), 0),
            pod("short", "n1", "Running", Some(99_940), 0),
        ];
        assert_eq!(names(&pods_to_delete(pods, &[], 1, now)), ["short"]);
    }

    #[test]
    fn all_pods_when_count_covers_them() {
        let pods = vec![
            pod("a", "n1", "Running", Some(0), 0),
            pod("b", "", "Pending", None, 0),
        ];
        assert_eq!(pods_to_delete(pods, &[], 5, at(10)).len(), 2);
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let p = pod("a", "n1", "Running", Some(0), 0);
        assert!(is_available(&p, 0, at(0)));
        assert!(!is_available(&p, 10, at(10)));
        assert!(is_available(&p, 10, at(11)));
        assert_eq!(available_at(&p, 10), Some(at(10)));
        let unready = pod("b", "n1", "Running", None, 0);
        assert!(!is_available(&unready, 0, at(0)));
        assert!(is_active(&unready));
    }
}
