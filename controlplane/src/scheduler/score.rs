//! Scores: which of the nodes that fit is best? Each plugin rates every
//! feasible node 0..=100 (normalised over the candidates as upstream's
//! `DefaultNormalizeScore` does), the ratings are weighted with upstream's
//! default weights and summed, and the best total wins; ties are broken at
//! random (reservoir sampling, as upstream's `selectHost`).
//!
//! - least-allocated (NodeResourcesFit, weight 1): free cpu and memory left
//!   after placing the pod, using the non-zero requests;
//! - PreferNoSchedule taints (TaintToleration, weight 3): fewer untolerated is better;
//! - preferred node affinity (NodeAffinity, weight 2): more matching weight is better;
//! - owner spreading (weight 2, the role of PodTopologySpread's default
//!   constraints): fewer pods of the same controller owner is better.

use rand::Rng;

use super::affinity;
use super::cache::{NodeInfo, OwnerId};
use super::filters::Candidate;
use super::taints;

/// The top of every plugin's scale.
pub const MAX_NODE_SCORE: i64 = 100;

const LEAST_ALLOCATED_WEIGHT: i64 = 1;
const TAINT_TOLERATION_WEIGHT: i64 = 3;
const NODE_AFFINITY_WEIGHT: i64 = 2;
const SPREAD_WEIGHT: i64 = 2;

/// Picks the best of `feasible` (non-empty) for `pod`, whose controller
/// owner is `owner` as the cache interned it, and returns its position.
pub fn select<R: Rng>(
    pod: Candidate<'_>,
    owner: Option<OwnerId>,
    feasible: &[&NodeInfo],
    rng: &mut R,
) -> usize {
    if feasible.len() <= 1 {
        return 0;
    }
    let totals = total_scores(pod, owner, feasible);
    let mut best = 0;
    let mut ties = 0u32;
    for (i, score) in totals.iter().enumerate() {
        if *score > totals[best] {
            best = i;
            ties = 1;
        } else if *score == totals[best] {
            ties += 1;
            if rng.random_range(0..ties) == 0 {
                best = i;
            }
        }
    }
    best
}

/// Weighted sum of every plugin's normalised score per node.
pub fn total_scores(
    pod: Candidate<'_>,
    owner: Option<OwnerId>,
    feasible: &[&NodeInfo],
) -> Vec<i64> {
    let mut totals: Vec<i64> = feasible
        .iter()
        .map(|n| LEAST_ALLOCATED_WEIGHT * least_allocated(pod, n))
        .collect();

    let tolerations = pod.spec.tolerations.as_deref().unwrap_or_default();
    let mut taint_counts: Vec<i64> = feasible
        .iter()
        .map(|n| {
            let node_taints = n
                .facts
                .as_ref()
                .map(|f| f.taints.as_slice())
                .unwrap_or_default();
            i64::try_from(taints::untolerated_preferences(node_taints, tolerations))
                .unwrap_or(i64::MAX)
        })
        .collect();
    normalize(&mut taint_counts, true);
    add_weighted(&mut totals, &taint_counts, TAINT_TOLERATION_WEIGHT);

    if affinity::has_preferences(pod.spec) {
        let mut weights: Vec<i64> = feasible
            .iter()
            .map(|n| {
                n.facts
                    .as_ref()
                    .map_or(0, |f| affinity::preferred_weight(pod.spec, &n.name, f))
            })
            .collect();
        normalize(&mut weights, false);
        add_weighted(&mut totals, &weights, NODE_AFFINITY_WEIGHT);
    }

    if let Some(owner) = owner {
        let mut counts: Vec<i64> = feasible
            .iter()
            .map(|n| i64::from(n.owner_count(owner)))
            .collect();
        normalize(&mut counts, true);
        add_weighted(&mut totals, &counts, SPREAD_WEIGHT);
    }
    totals
}

fn add_weighted(totals: &mut [i64], scores: &[i64], weight: i64) {
    for (t, s) in totals.iter_mut().zip(scores) {
        *t += weight * s;
    }
}

/// Upstream's `DefaultNormalizeScore`: scales to 0..=100 by the maximum;
/// `reverse` turns "more is worse" counts into scores. All zero stays zero,
/// or becomes 100 when reversed.
pub fn normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    for s in scores.iter_mut() {
        if max == 0 {
            *s = if reverse { MAX_NODE_SCORE } else { 0 };
            continue;
        }
        let scaled = MAX_NODE_SCORE * *s / max;
        *s = if reverse {
            MAX_NODE_SCORE - scaled
        } else {
            scaled
        };
    }
}

/// NodeResourcesFit's LeastAllocated: the mean over cpu and memory of the
/// share left free once the pod is placed, scaled to 0..=100.
pub fn least_allocated(pod: Candidate<'_>, node: &NodeInfo) -> i64 {
    let Some(facts) = &node.facts else {
        return 0;
    };
    let want = &pod.demand.non_zero;
    let used = &node.non_zero_requested;
    let cpu = least_requested(
        used.milli_cpu.saturating_add(want.milli_cpu),
        facts.allocatable.milli_cpu,
    );
    let memory = least_requested(
        used.memory.saturating_add(want.memory),
        facts.allocatable.memory,
    );
    (cpu + memory) / 2
}

fn least_requested(requested: i64, capacity: i64) -> i64 {
    if capacity <= 0 || requested > capacity {
        return 0;
    }
    let free = capacity - requested.max(0);
    match free.checked_mul(MAX_NODE_SCORE) {
        Some(scaled) => scaled / capacity,
        // Only for capacities near i64::MAX (exabytes): same result, slower.
        None => i64::try_from(i128::from(free) * i128::from(MAX_NODE_SCORE) / i128::from(capacity))
            .unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::cache::NodeFacts;
    use crate::scheduler::resources::{PodDemand, Resources};
    use k8s_openapi::api::core::v1::{PodSpec, Taint};
    use rand::SeedableRng;

    fn node(name: &str, used_cpu: i64) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            facts: Some(NodeFacts {
                allocatable: Resources {
                    milli_cpu: 4000,
                    memory: 4 << 30,
                    ..Resources::default()
                },
                allowed_pods: 110,
                ready: true,
                ..NodeFacts::default()
            }),
            non_zero_requested: Resources {
                milli_cpu: used_cpu,
                ..Resources::default()
            },
            ..NodeInfo::default()
        }
    }

    fn demand(owner: Option<&str>) -> PodDemand {
        PodDemand {
            non_zero: Resources {
                milli_cpu: 1000,
                memory: 1 << 30,
                ..Resources::default()
            },
            owner: owner.map(str::to_string),
            ..PodDemand::default()
        }
    }

    fn spec(v: serde_json::Value) -> PodSpec {
        let mut v = v;
        v["containers"] = serde_json::json!([]);
        serde_json::from_value(v).expect("valid spec")
    }

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    fn best(s: &PodSpec, d: &PodDemand, owner: Option<OwnerId>, nodes: &[&NodeInfo]) -> usize {
        select(Candidate { spec: s, demand: d }, owner, nodes, &mut rng())
    }

    #[test]
    fn least_allocated_prefers_the_emptier_node() {
        let s = spec(serde_json::json!({}));
        let d = demand(None);
        let pod = Candidate {
            spec: &s,
            demand: &d,
        };
        let busy = node("busy", 2000);
        let idle = node("idle", 0);
        // cpu (4000-1000)/4000 = 75, memory (4-1)/4 = 75
        assert_eq!(least_allocated(pod, &idle), 75);
        assert_eq!(least_allocated(pod, &busy), (25 + 75) / 2);
        assert_eq!(best(&s, &d, None, &[&busy, &idle]), 1);
        assert_eq!(least_requested(5, 4), 0);
        assert_eq!(least_requested(1, 0), 0);
        assert_eq!(least_requested(1, i64::MAX), 99);
    }

    #[test]
    fn prefer_no_schedule_is_avoided_unless_tolerated() {
        let d = demand(None);
        let mut tainted = node("tainted", 0);
        if let Some(f) = tainted.facts.as_mut() {
            f.taints = vec![Taint {
                key: "soft".into(),
                effect: "PreferNoSchedule".into(),
                value: None,
                time_added: None,
            }];
        }
        // The clean node is busier, but the taint weighs more.
        let clean = node("clean", 1000);
        let s = spec(serde_json::json!({}));
        assert_eq!(best(&s, &d, None, &[&tainted, &clean]), 1);
        let tolerant =
            spec(serde_json::json!({"tolerations": [{"key": "soft", "operator": "Exists"}]}));
        assert_eq!(best(&tolerant, &d, None, &[&tainted, &clean]), 0);
    }

    #[test]
    fn spreads_pods_of_one_owner() {
        let s = spec(serde_json::json!({}));
        let d = demand(Some("rs"));
        let (rs, other) = (OwnerId(0), OwnerId(1));
        let mut crowded = node("crowded", 0);
        crowded.owners.push((rs, 3));
        let slightly_busy = node("other", 500);
        assert_eq!(best(&s, &d, Some(rs), &[&crowded, &slightly_busy]), 1);
        // Pods of other owners do not count.
        assert_eq!(best(&s, &d, Some(other), &[&crowded, &slightly_busy]), 0);
    }

    #[test]
    fn preferred_affinity_counts() {
        let s = spec(
            serde_json::json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}}}),
        );
        let d = demand(None);
        let mut ssd = node("ssd", 1500);
        if let Some(f) = ssd.facts.as_mut() {
            f.labels.insert("disk".into(), "ssd".into());
        }
        let plain = node("plain", 0);
        assert_eq!(best(&s, &d, None, &[&plain, &ssd]), 1);
    }

    #[test]
    fn ties_are_broken_at_random() {
        let s = spec(serde_json::json!({}));
        let d = demand(None);
        let nodes: Vec<NodeInfo> = (0..4).map(|i| node(&format!("n{i}"), 0)).collect();
        let refs: Vec<&NodeInfo> = nodes.iter().collect();
        let mut r = rng();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(select(
                Candidate {
                    spec: &s,
                    demand: &d,
                },
                None,
                &refs,
                &mut r,
            ));
        }
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn normalisation() {
        let mut v = vec![0, 2, 4];
        normalize(&mut v, false);
        assert_eq!(v, vec![0, 50, 100]);
        let mut v = vec![0, 2, 4];
        normalize(&mut v, true);
        assert_eq!(v, vec![100, 50, 0]);
        let mut v = vec![0, 0];
        normalize(&mut v, true);
        assert_eq!(v, vec![100, 100]);
    }
}
