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
use k8s_openapi::api::core::v1::{Pod, PodCondition};

/// Annotation that lowers (or raises) a pod's priority for deletion.
pub(crate) const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";

/// Not Succeeded, not Failed and not being deleted.
pub(crate) fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !is_terminal(pod)
}

/// Phase Succeeded or Failed.
pub(crate) fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn ready_condition(pod: &Pod) -> Option<&PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// The pod's Ready condition is True.
pub(crate) fn is_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

/// When a ready pod became ready (the Ready condition's last transition).
fn ready_since(pod: &Pod) -> Option<Timestamp> {
    ready_condition(pod)
        .filter(|c| c.status == "True")?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

/// Ready for at least `min_ready_seconds` at `now`.
pub(crate) fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
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
pub(crate) fn available_at(pod: &Pod, min_ready_seconds: i32) -> Option<Timestamp> {
    if min_ready_seconds <= 0 {
        return None;
    }
    ready_since(pod).map(|since| since + jiff::SignedDuration::from_secs(min_ready_seconds.into()))
}

fn node_name(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

fn phase_ordinal(pod: &Pod) -> u8 {
    match phase(pod) {
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    }
}

fn deletion_cost(pod: &Pod) -> i32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DELETION_COST_ANNOTATION))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Highest restart count of regular containers and of restartable (sidecar) init containers.
fn max_restarts(pod: &Pod) -> (i32, i32) {
    let Some(status) = pod.status.as_ref() else {
        return (0, 0);
    };
    let regular = status
        .container_statuses
        .iter()
        .flatten()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0);
    let sidecars: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| c.name.as_str())
        .collect();
    let sidecar = status
        .init_container_statuses
        .iter()
        .flatten()
        .filter(|c| sidecars.contains(&c.name.as_str()))
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0);
    (regular, sidecar)
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
    pa: &Pod,
    pb: &Pod,
    now: Timestamp,
) -> Option<Ordering> {
    match (a, b) {
        (None, None) => None,
        (None, Some(_)) => Some(Ordering::Less),
        (Some(_), None) => Some(Ordering::Greater),
        (Some(a), Some(b)) if a == b => None,
        (Some(a), Some(b)) => match log_rank(a, now).cmp(&log_rank(b, now)) {
            Ordering::Equal => Some(pa.metadata.uid.cmp(&pb.metadata.uid)),
            other => Some(other),
        },
    }
}

/// Orders `a` before `b` when `a` should be deleted first. `rank_*` count
/// the active related pods on each pod's node.
fn compare(a: &Pod, rank_a: usize, b: &Pod, rank_b: usize, now: Timestamp) -> Ordering {
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
    let (ra, rb) = (max_restarts(a), max_restarts(b));
    if ra != rb {
        return rb.cmp(&ra);
    }
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    newer_first(created(a), created(b), a, b, now).unwrap_or(Ordering::Equal)
}

/// Picks `count` of `pods` to delete, in upstream's preference order.
/// `related` are the active pods of this ReplicaSet and its siblings (same
/// controller); pods sharing a node with more of them go first.
pub(crate) fn pods_to_delete(
    mut pods: Vec<Arc<Pod>>,
    related: &[Arc<Pod>],
    count: usize,
    now: Timestamp,
) -> Vec<Arc<Pod>> {
    if count < pods.len() {
        let mut on_node: HashMap<&str, usize> = HashMap::new();
        for pod in related.iter().filter(|p| is_active(p)) {
            *on_node.entry(node_name(pod)).or_default() += 1;
        }
        let rank = |p: &Pod| on_node.get(node_name(p)).copied().unwrap_or(0);
        let mut ranked: Vec<(usize, Arc<Pod>)> = pods.drain(..).map(|p| (rank(&p), p)).collect();
        ranked.sort_by(|(ra, a), (rb, b)| compare(a, *ra, b, *rb, now));
        pods = ranked.into_iter().map(|(_, p)| p).collect();
    }
    pods.truncate(count);
    pods
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerStatus, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("valid time")
    }

    fn pod(name: &str, node: &str, phase: &str, ready_at: Option<i64>, created: i64) -> Arc<Pod> {
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
        Arc::new(p)
    }

    fn names(pods: &[Arc<Pod>]) -> Vec<&str> {
        pods.iter()
            .map(|p| p.metadata.name.as_deref().unwrap_or_default())
            .collect()
    }

    #[test]
    fn trimmed_pods_rank_the_same() {
        let mut full = (*pod("sidecar", "n1", "Running", Some(10), 0)).clone();
        let container = |name: &str, restart: Option<&str>| Container {
            name: name.into(),
            image: Some("busybox:1".into()),
            restart_policy: restart.map(str::to_string),
            ..Default::default()
        };
        if let Some(spec) = full.spec.as_mut() {
            spec.containers = vec![container("main", None)];
            spec.init_containers = Some(vec![container("proxy", Some("Always"))]);
        }
        if let Some(s) = full.status.as_mut() {
            s.init_container_statuses = Some(vec![ContainerStatus {
                name: "proxy".into(),
                restart_count: 4,
                ..Default::default()
            }]);
        }
        // As the shared pod cache holds them.
        let mut trimmed = full.clone();
        crate::controllers::pods::trim(&mut trimmed);
        let spec = trimmed.spec.as_ref().expect("spec kept");
        assert_eq!(spec.containers[0].image, None);
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(node_name(&trimmed), "n1");
        assert_eq!(max_restarts(&trimmed), max_restarts(&full));
        assert_eq!(max_restarts(&trimmed), (0, 4));
        assert_eq!(trimmed.status, full.status);
        assert_eq!(trimmed.metadata, full.metadata);
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
        let mut restarted = (*pod("restarted", "n1", "Running", None, 0)).clone();
        if let Some(s) = restarted.status.as_mut() {
            s.container_statuses = Some(vec![ContainerStatus {
                name: "c".into(),
                restart_count: 3,
                ..Default::default()
            }]);
        }
        let pods = vec![pod("calm", "n1", "Running", None, 0), Arc::new(restarted)];
        assert_eq!(names(&pods_to_delete(pods, &[], 1, now)), ["restarted"]);

        let mut cheap = (*pod("cheap", "n1", "Running", None, 0)).clone();
        cheap.metadata.annotations =
            Some([(DELETION_COST_ANNOTATION.to_string(), "-5".to_string())].into());
        let pods = vec![pod("dear", "n1", "Running", None, 0), Arc::new(cheap)];
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
