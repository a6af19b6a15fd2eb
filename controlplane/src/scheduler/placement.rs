//! One scheduling decision: run the filters over the cached nodes, score
//! the ones that fit and pick a node — or explain why none fits. Pure and
//! synchronous; the caller assumes and binds the result.
//!
//! Like upstream, large clusters are sampled: the search stops once
//! `num_feasible_nodes_to_find` nodes fit, and the next search starts where
//! this one stopped, so successive pods see different parts of the cluster.
//! A pod that fits nowhere has seen every node, so its message counts all.

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::cache::{Cache, NodeInfo};
use super::diagnosis::{Diagnosis, NO_NODES};
use super::filters::{self, Candidate, Reason};
use super::score;

/// Below this many nodes every node is evaluated (upstream's `minFeasibleNodesToFind`).
const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
/// Floor of the adaptive sampling percentage (upstream's `minFeasibleNodesPercentageToFind`).
const MIN_FEASIBLE_NODES_PERCENTAGE: usize = 5;

/// How many feasible nodes to look for among `all` nodes: upstream's
/// adaptive `percentageOfNodesToScore` (50% minus 1% per 125 nodes, at least 5%).
pub fn num_feasible_nodes_to_find(all: usize) -> usize {
    if all < MIN_FEASIBLE_NODES_TO_FIND {
        return all;
    }
    let percentage = 50usize
        .saturating_sub(all / 125)
        .max(MIN_FEASIBLE_NODES_PERCENTAGE);
    (all * percentage / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

/// Makes placement decisions; remembers where the last search stopped.
pub struct Placer {
    next_start: usize,
    rng: StdRng,
    reasons: Vec<Reason>,
}

impl Default for Placer {
    fn default() -> Self {
        Placer::new(StdRng::from_os_rng())
    }
}

impl Placer {
    /// A placer drawing tie-breaks from `rng`.
    pub fn new(rng: StdRng) -> Placer {
        Placer {
            next_start: 0,
            rng,
            reasons: Vec::new(),
        }
    }

    /// The node for `pod`, or the FailedScheduling message if none fits.
    pub fn place(&mut self, pod: Candidate<'_>, cache: &Cache) -> Result<String, String> {
        let total = cache.node_count();
        if total == 0 {
            return Err(NO_NODES.to_string());
        }
        let nodes = cache.nodes();
        let wanted = num_feasible_nodes_to_find(total);
        let mut feasible: Vec<&NodeInfo> = Vec::with_capacity(wanted.min(nodes.len()));
        let mut diagnosis = Diagnosis::default();
        let mut processed = 0;
        for k in 0..nodes.len() {
            let node = &nodes[(self.next_start + k) % nodes.len()];
            processed = k + 1;
            if node.facts.is_none() {
                continue;
            }
            if filters::fits(pod, node, &mut self.reasons) {
                feasible.push(node);
                if feasible.len() >= wanted {
                    break;
                }
            } else {
                diagnosis.record(&self.reasons);
            }
        }
        self.next_start = (self.next_start + processed) % nodes.len();
        if feasible.is_empty() {
            return Err(diagnosis.message(total));
        }
        let owner = pod.demand.owner.as_deref().and_then(|o| cache.owner_id(o));
        let best = score::select(pod, owner, &feasible, &mut self.rng);
        Ok(feasible[best].name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::resources::PodDemand;
    use k8s_openapi::api::core::v1::{Node, PodSpec};

    fn node(name: &str, cpu: &str, taint: bool) -> Node {
        let taints = if taint {
            serde_json::json!([{"key": "key", "value": "value", "effect": "NoSchedule"}])
        } else {
            serde_json::json!([])
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"taints": taints},
            "status": {
                "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }))
        .expect("valid node")
    }

    fn demand(cpu: i64) -> PodDemand {
        let mut d = PodDemand::default();
        d.requests.milli_cpu = cpu;
        d.non_zero.milli_cpu = cpu;
        d.non_zero.memory = 1;
        d
    }

    fn placer() -> Placer {
        Placer::new(StdRng::seed_from_u64(1))
    }

    #[test]
    fn sampling_sizes() {
        assert_eq!(num_feasible_nodes_to_find(3), 3);
        assert_eq!(num_feasible_nodes_to_find(100), 100);
        assert_eq!(num_feasible_nodes_to_find(1000), 420);
        assert_eq!(num_feasible_nodes_to_find(5000), 500);
        assert_eq!(num_feasible_nodes_to_find(10000), 500);
    }

    #[test]
    fn explains_a_pod_that_fits_nowhere() {
        let mut cache = Cache::new();
        cache.upsert_node(&node("a", "1", true));
        cache.upsert_node(&node("b", "1", false));
        cache.upsert_node(&node("c", "1", false));
        let spec = PodSpec::default();
        let d = demand(2000);
        let err = placer()
            .place(
                Candidate {
                    spec: &spec,
                    demand: &d,
                },
                &cache,
            )
            .expect_err("unschedulable");
        assert_eq!(
            err,
            "0/3 nodes are available: 1 node(s) had untolerated taint {key: value}, 2 Insufficient cpu."
        );
        assert_eq!(
            placer().place(
                Candidate {
                    spec: &spec,
                    demand: &d
                },
                &Cache::new()
            ),
            Err(NO_NODES.to_string())
        );
    }

    #[test]
    fn places_on_the_one_that_fits() {
        let mut cache = Cache::new();
        cache.upsert_node(&node("small", "1", false));
        cache.upsert_node(&node("big", "8", false));
        let spec = PodSpec::default();
        let d = demand(2000);
        assert_eq!(
            placer().place(
                Candidate {
                    spec: &spec,
                    demand: &d
                },
                &cache
            ),
            Ok("big".to_string())
        );
    }

    #[test]
    fn round_robin_start_covers_large_clusters() {
        let mut cache = Cache::new();
        for i in 0..1000 {
            cache.upsert_node(&node(&format!("n{i}"), "4", false));
        }
        let spec = PodSpec::default();
        let mut p = placer();
        let mut used = std::collections::HashSet::new();
        for i in 0..3000 {
            let d = demand(100);
            let name = p
                .place(
                    Candidate {
                        spec: &spec,
                        demand: &d,
                    },
                    &cache,
                )
                .expect("fits");
            cache.assume(&format!("p{i}"), &name, std::sync::Arc::new(d));
            used.insert(name);
        }
        assert_eq!(used.len(), 1000);
    }
}
