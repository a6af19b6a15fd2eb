//! What a DaemonSet sync does, as pure functions of one snapshot: which
//! nodes get a pod, which pods go (upstream's `podsShouldBeOnNode`), which
//! old-revision pods a RollingUpdate replaces within `maxUnavailable`
//! (upstream's `rollingUpdate` without surge), and the status counts.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// One daemon pod, as the plan needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonPod {
    /// Pod name.
    pub name: String,
    /// Its template revision hash.
    pub hash: String,
    /// Bound to its node.
    pub bound: bool,
    /// Creation time, seconds since the epoch (for ordering).
    pub created: i64,
    /// Ready condition True.
    pub ready: bool,
    /// Ready for `minReadySeconds`.
    pub available: bool,
    /// Phase Failed or Succeeded: daemons must keep running.
    pub finished: bool,
    /// Being deleted.
    pub terminating: bool,
}

/// One node with its daemon pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// Node name.
    pub name: String,
    /// A pod should be created here.
    pub should_run: bool,
    /// A pod here may stay.
    pub should_continue: bool,
    /// Daemon pods for this node.
    pub pods: Vec<DaemonPod>,
}

/// What one sync changes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Nodes to create a pod for.
    pub create_on: Vec<String>,
    /// Pods to delete.
    pub delete: Vec<String>,
}

/// Upstream's `podByCreationTimestampAndPhase`: bound pods first, then oldest first.
pub fn sort_pods(pods: &mut [DaemonPod]) {
    pods.sort_by(|a, b| {
        b.bound
            .cmp(&a.bound)
            .then(a.created.cmp(&b.created))
            .then(a.name.cmp(&b.name))
    });
}

/// Creations and deletions that give every eligible node exactly one
/// running daemon pod and no other node any (pods sorted by [`sort_pods`]).
pub fn manage(nodes: &[NodeState]) -> Plan {
    let mut plan = Plan::default();
    for node in nodes {
        if node.should_run && node.pods.is_empty() {
            plan.create_on.push(node.name.clone());
        } else if node.should_continue {
            let mut running = Vec::new();
            for pod in node.pods.iter().filter(|p| !p.terminating) {
                if pod.finished {
                    plan.delete.push(pod.name.clone());
                } else {
                    running.push(pod);
                }
            }
            // More than one: keep the first (bound, oldest).
            plan.delete
                .extend(running.iter().skip(1).map(|p| p.name.clone()));
        } else {
            plan.delete.extend(
                node.pods
                    .iter()
                    .filter(|p| !p.terminating)
                    .map(|p| p.name.clone()),
            );
        }
    }
    plan
}

/// `maxUnavailable` as a pod count of `desired` (percentages round up);
/// never 0 for a non-empty set, as upstream without surge.
pub fn max_unavailable(value: Option<&IntOrString>, desired: usize) -> usize {
    let count = match value {
        None => 1,
        Some(IntOrString::Int(n)) => usize::try_from(*n).unwrap_or(0),
        Some(IntOrString::String(s)) => match s
            .strip_suffix('%')
            .and_then(|p| p.trim().parse::<usize>().ok())
        {
            Some(percent) => (desired * percent).div_ceil(100),
            None => s.trim().parse().unwrap_or(1),
        },
    };
    if desired > 0 && count == 0 {
        1
    } else {
        count
    }
}

/// Old-revision pods a RollingUpdate deletes now: unavailable old pods
/// always, available ones while fewer than `max_unavailable` nodes lack an
/// available pod.
pub fn rolling_update(nodes: &[NodeState], hash: &str, max_unavailable: usize) -> Vec<String> {
    let mut unavailable = 0;
    let mut replace_now = Vec::new();
    let mut candidates = Vec::new();
    for node in nodes.iter().filter(|n| n.should_run) {
        let live: Vec<&DaemonPod> = node.pods.iter().filter(|p| !p.terminating).collect();
        let new: Vec<&&DaemonPod> = live.iter().filter(|p| p.hash == hash).collect();
        let old: Vec<&&DaemonPod> = live.iter().filter(|p| p.hash != hash).collect();
        match (new.as_slice(), old.as_slice()) {
            ([new], []) => {
                if !new.available {
                    unavailable += 1;
                }
            }
            ([], [old]) => {
                if !old.available {
                    replace_now.push(old.name.clone());
                } else if unavailable < max_unavailable {
                    candidates.push(old.name.clone());
                }
            }
            // No pod, or one of each, or duplicates: being sorted out by manage.
            _ => unavailable += 1,
        }
    }
    let room = max_unavailable
        .saturating_sub(unavailable)
        .min(candidates.len());
    replace_now.extend(candidates.into_iter().take(room));
    replace_now
}

/// The counts of a DaemonSetStatus.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Nodes that should run the daemon.
    pub desired: i32,
    /// Of those, nodes with a daemon pod.
    pub current: i32,
    /// Nodes with a daemon pod that should not have one.
    pub misscheduled: i32,
    /// Nodes whose daemon pod is ready.
    pub ready: i32,
    /// Nodes whose daemon pod is available.
    pub available: i32,
    /// Nodes whose daemon pod has the current template.
    pub updated: i32,
}

/// Upstream's `updateDaemonSetStatus` counts (each node judged by its first pod).
pub fn counts(nodes: &[NodeState], hash: &str) -> Counts {
    let mut c = Counts::default();
    for node in nodes {
        let first = node.pods.iter().find(|p| !(p.terminating && p.finished));
        if !node.should_run {
            if first.is_some() {
                c.misscheduled += 1;
            }
            continue;
        }
        c.desired += 1;
        let Some(pod) = first else {
            continue;
        };
        c.current += 1;
        if pod.ready {
            c.ready += 1;
            if pod.available {
                c.available += 1;
            }
        }
        if pod.hash == hash {
            c.updated += 1;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, hash: &str, available: bool) -> DaemonPod {
        DaemonPod {
            name: name.into(),
            hash: hash.into(),
            bound: true,
            created: 0,
            ready: available,
            available,
            finished: false,
            terminating: false,
        }
    }

    fn node(name: &str, pods: Vec<DaemonPod>) -> NodeState {
        NodeState {
            name: name.into(),
            should_run: true,
            should_continue: true,
            pods,
        }
    }

    #[test]
    fn one_pod_per_eligible_node() {
        let mut gone = node("c", vec![pod("c1", "h", true)]);
        gone.should_run = false;
        gone.should_continue = false;
        let mut failed = pod("d1", "h", false);
        failed.finished = true;
        let nodes = vec![
            node("a", vec![]),
            node("b", vec![pod("b1", "h", true), pod("b2", "h", true)]),
            gone,
            node("d", vec![failed]),
        ];
        let plan = manage(&nodes);
        assert_eq!(plan.create_on, vec!["a".to_string()]);
        assert_eq!(
            plan.delete,
            vec!["b2".to_string(), "c1".to_string(), "d1".to_string()]
        );
    }

    #[test]
    fn terminating_pods_block_a_new_one() {
        let mut t = pod("a1", "h", true);
        t.terminating = true;
        assert_eq!(manage(&[node("a", vec![t])]), Plan::default());
    }

    #[test]
    fn sorting_prefers_bound_then_old() {
        let mut pods = vec![
            pod("b", "h", true),
            pod("a", "h", true),
            pod("c", "h", true),
        ];
        pods[0].created = 5;
        pods[1].created = 9;
        pods[2].bound = false;
        pods[2].created = 1;
        sort_pods(&mut pods);
        let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["b", "a", "c"]);
    }

    #[test]
    fn rolling_update_respects_max_unavailable() {
        let nodes: Vec<NodeState> = (0..4)
            .map(|i| node(&format!("n{i}"), vec![pod(&format!("p{i}"), "old", true)]))
            .collect();
        assert_eq!(rolling_update(&nodes, "new", 1), vec!["p0".to_string()]);
        assert_eq!(rolling_update(&nodes, "new", 2).len(), 2);
        // A new pod that is not available yet uses up the budget.
        let mut nodes = nodes;
        nodes[0].pods = vec![pod("q0", "new", false)];
        assert!(rolling_update(&nodes, "new", 1).is_empty());
        // Unavailable old pods are replaced regardless.
        nodes[1].pods = vec![pod("p1", "old", false)];
        assert_eq!(rolling_update(&nodes, "new", 1), vec!["p1".to_string()]);
        // Once the new one is available, the next old one goes.
        nodes[0].pods = vec![pod("q0", "new", true)];
        nodes[1].pods = vec![pod("q1", "new", true)];
        assert_eq!(rolling_update(&nodes, "new", 1), vec!["p2".to_string()]);
    }

    #[test]
    fn max_unavailable_scales_percentages_up() {
        assert_eq!(max_unavailable(None, 5), 1);
        assert_eq!(max_unavailable(Some(&IntOrString::Int(2)), 5), 2);
        assert_eq!(
            max_unavailable(Some(&IntOrString::String("25%".into())), 5),
            2
        );
        assert_eq!(max_unavailable(Some(&IntOrString::Int(0)), 5), 1);
        assert_eq!(max_unavailable(Some(&IntOrString::Int(0)), 0), 0);
    }

    #[test]
    fn status_counts_nodes() {
        let mut off = node("x", vec![pod("x1", "h", true)]);
        off.should_run = false;
        let nodes = vec![
            node("a", vec![pod("a1", "h", true)]),
            node("b", vec![pod("b1", "old", false)]),
            node("c", vec![]),
            off,
        ];
        let c = counts(&nodes, "h");
        assert_eq!(
            c,
            Counts {
                desired: 3,
                current: 2,
                misscheduled: 1,
                ready: 1,
                available: 1,
                updated: 1
            }
        );
    }
}
