//! The scheduler's view of the cluster, kept in memory: every node with what
//! the pods bound to it (or assumed to be, while their binding is in flight)
//! take up — requested resources, pod count, host ports, pods per owner.
//!
//! Placement decisions read only this cache, never the API. A pod is
//! *assumed* on a node the moment the scheduler picks it (upstream's
//! "assume"), so the next decision already sees it; the pod watch later
//! *confirms* it, or a failed binding *forgets* it. Nodes deleted while pods
//! are still bound to them linger as ghosts (not schedulable) until those pods
//! go, so a node re-added under the same name keeps its accounting.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Taint};

use super::resources::{HostPort, PodDemand, Resources};

/// What the scheduler needs from a Node object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFacts {
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// Allocatable resources (capacity if allocatable is not reported).
    pub allocatable: Resources,
    /// Allocatable `pods`.
    pub allowed_pods: i64,
    /// Taints of the node.
    pub taints: Vec<Taint>,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// The `Ready` condition is `True`.
    pub ready: bool,
}

impl NodeFacts {
    /// Reads the facts of `node`; unreadable quantities count as zero (logged).
    pub fn of(node: &Node) -> NodeFacts {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let status = node.status.as_ref();
        let list = status
            .and_then(|s| s.allocatable.as_ref())
            .or_else(|| status.and_then(|s| s.capacity.as_ref()));
        let (allocatable, allowed_pods) = match list {
            Some(list) => {
                let allocatable = Resources::from_list(list).unwrap_or_else(|e| {
                    tracing::warn!("node {name}: {e}; treating its allocatable resources as zero");
                    Resources::default()
                });
                let pods = list
                    .get("pods")
                    .map_or(Ok(0), |q| super::quantity::value(&q.0));
                let allowed_pods = pods.unwrap_or_else(|e| {
                    tracing::warn!("node {name}: allocatable pods: {e}; treating it as zero");
                    0
                });
                (allocatable, allowed_pods)
            }
            None => (Resources::default(), 0),
        };
        let spec = node.spec.as_ref();
        NodeFacts {
            labels: node.metadata.labels.clone().unwrap_or_default(),
            allocatable,
            allowed_pods,
            taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
        }
    }
}

/// A node and the pods on it, as the filters and scores see it.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// The Node object's facts; `None` for a ghost (deleted, pods remain).
    pub facts: Option<NodeFacts>,
    /// Sum of the requests of the pods on the node.
    pub requested: Resources,
    /// Sum of the non-zero requests (scoring defaults) of the pods on the node.
    pub non_zero_requested: Resources,
    /// Number of pods on the node.
    pub pod_count: i64,
    /// Host ports in use, with how many pods use each.
    pub host_ports: HashMap<HostPort, u32>,
    /// Pods on the node per controller owner. A node has few owners, and
    /// scoring asks for one on every candidate node, where a short scan of
    /// interned ids beats hashing UIDs.
    pub owners: Vec<(OwnerId, u32)>,
}

/// A controller owner's UID, interned by the [`Cache`] while it has pods there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnerId(pub u32);

impl NodeInfo {
    fn add(&mut self, demand: &PodDemand, owner: Option<OwnerId>) {
        self.requested.add(&demand.requests);
        self.non_zero_requested.add(&demand.non_zero);
        self.pod_count += 1;
        for port in &demand.host_ports {
            *self.host_ports.entry(port.clone()).or_insert(0) += 1;
        }
        if let Some(owner) = owner {
            match self.owners.iter_mut().find(|(o, _)| *o == owner) {
                Some((_, n)) => *n += 1,
                None => self.owners.push((owner, 1)),
            }
        }
    }

    fn remove(&mut self, demand: &PodDemand, owner: Option<OwnerId>) {
        self.requested.sub(&demand.requests);
        self.non_zero_requested.sub(&demand.non_zero);
        self.pod_count -= 1;
        for port in &demand.host_ports {
            decrement(&mut self.host_ports, port);
        }
        if let Some(owner) = owner {
            if let Some(i) = self.owners.iter().position(|(o, _)| *o == owner) {
                self.owners[i].1 -= 1;
                if self.owners[i].1 == 0 {
                    self.owners.swap_remove(i);
                }
            }
        }
    }

    /// Pods of `owner` on this node.
    pub fn owner_count(&self, owner: OwnerId) -> u32 {
        self.owners
            .iter()
            .find(|(o, _)| *o == owner)
            .map_or(0, |(_, n)| *n)
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// How a node update relates to scheduling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeChange {
    /// A node the cache did not know.
    Added,
    /// Labels, allocatable, taints, readiness or cordon changed: pods that did
    /// not fit before may fit now.
    Updated,
    /// Nothing the scheduler looks at changed (e.g. a heartbeat).
    Unchanged,
}

#[derive(Debug, Clone)]
struct CachedPod {
    node: String,
    demand: Arc<PodDemand>,
    owner: Option<OwnerId>,
    assumed: bool,
}

/// Nodes and the pods bound or assumed on them.
#[derive(Debug, Default)]
pub struct Cache {
    /// Nodes in a stable order (for round-robin sampling), ghosts included.
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    pods: HashMap<String, CachedPod>,
    real_nodes: usize,
    /// Owner UID → interned id and the number of cached pods it owns.
    owner_ids: HashMap<String, (OwnerId, usize)>,
    /// Owner UID by id (`None` once released, for reuse).
    owner_uids: Vec<Option<String>>,
    free_owner_ids: Vec<OwnerId>,
}

impl Cache {
    /// An empty cache.
    pub fn new() -> Cache {
        Cache::default()
    }

    /// All nodes in a stable order; ghosts have `facts == None`.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// Number of nodes that exist (ghosts excluded).
    pub fn node_count(&self) -> usize {
        self.real_nodes
    }

    /// Names of the nodes that exist.
    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.nodes
            .iter()
            .filter(|n| n.facts.is_some())
            .map(|n| n.name.as_str())
    }

    /// UIDs of the pods bound (not merely assumed) in the cache.
    pub fn bound_pod_uids(&self) -> impl Iterator<Item = &str> {
        self.pods
            .iter()
            .filter(|(_, p)| !p.assumed)
            .map(|(uid, _)| uid.as_str())
    }

    /// Adds or updates a node from its object.
    pub fn upsert_node(&mut self, node: &Node) -> NodeChange {
        let Some(name) = node.metadata.name.as_deref() else {
            return NodeChange::Unchanged;
        };
        let facts = NodeFacts::of(node);
        let info = self.entry(name);
        let change = match &info.facts {
            None => NodeChange::Added,
            Some(old) if *old != facts => NodeChange::Updated,
            Some(_) => NodeChange::Unchanged,
        };
        if change == NodeChange::Added {
            self.real_nodes += 1;
        }
        if change != NodeChange::Unchanged {
            self.entry(name).facts = Some(facts);
        }
        change
    }

    /// Removes a node; its pods' accounting stays until they are gone.
    pub fn remove_node(&mut self, name: &str) {
        let Some(&i) = self.index.get(name) else {
            return;
        };
        if self.nodes[i].facts.take().is_some() {
            self.real_nodes -= 1;
        }
        self.drop_if_empty_ghost(name);
    }

    /// Records a pod bound to `node` (from the pod watch); confirms it if it
    /// was assumed, and moves it if it was assumed or known elsewhere.
    pub fn add_pod(&mut self, uid: &str, node: &str, demand: PodDemand) {
        if let Some(old) = self.pods.get(uid) {
            if old.node == node && *old.demand == demand {
                if let Some(p) = self.pods.get_mut(uid) {
                    p.assumed = false;
                }
                return;
            }
            self.remove_pod(uid);
        }
        self.insert(uid, node, Arc::new(demand), false);
    }

    /// Removes a pod (deleted or terminal); true if it was in the cache.
    pub fn remove_pod(&mut self, uid: &str) -> bool {
        let Some(pod) = self.pods.remove(uid) else {
            return false;
        };
        if let Some(&i) = self.index.get(&pod.node) {
            self.nodes[i].remove(&pod.demand, pod.owner);
        }
        if let Some(owner) = pod.owner {
            self.release_owner(owner);
        }
        self.drop_if_empty_ghost(&pod.node);
        true
    }

    /// Accounts a pod on `node` before its binding is confirmed.
    pub fn assume(&mut self, uid: &str, node: &str, demand: Arc<PodDemand>) {
        self.remove_pod(uid);
        self.insert(uid, node, demand, true);
    }

    /// The interned id of an owner UID, if any cached pod has that owner
    /// (otherwise no node has pods of it).
    pub fn owner_id(&self, owner: &str) -> Option<OwnerId> {
        self.owner_ids.get(owner).map(|(id, _)| *id)
    }

    fn insert(&mut self, uid: &str, node: &str, demand: Arc<PodDemand>, assumed: bool) {
        let owner = demand.owner.as_deref().map(|o| self.intern_owner(o));
        self.entry(node).add(&demand, owner);
        self.pods.insert(
            uid.to_string(),
            CachedPod {
                node: node.to_string(),
                demand,
                owner,
                assumed,
            },
        );
    }

    fn intern_owner(&mut self, owner: &str) -> OwnerId {
        if let Some((id, pods)) = self.owner_ids.get_mut(owner) {
            *pods += 1;
            return *id;
        }
        let id = match self.free_owner_ids.pop() {
            Some(id) => id,
            None => {
                self.owner_uids.push(None);
                OwnerId(u32::try_from(self.owner_uids.len() - 1).unwrap_or(u32::MAX))
            }
        };
        if let Some(slot) = self.owner_uids.get_mut(id.0 as usize) {
            *slot = Some(owner.to_string());
        }
        self.owner_ids.insert(owner.to_string(), (id, 1));
        id
    }

    fn release_owner(&mut self, id: OwnerId) {
        let Some(uid) = self.owner_uids.get(id.0 as usize).cloned().flatten() else {
            return;
        };
        let gone = match self.owner_ids.get_mut(&uid) {
            Some((_, pods)) => {
                *pods -= 1;
                *pods == 0
            }
            None => false,
        };
        if gone {
            self.owner_ids.remove(&uid);
            self.owner_uids[id.0 as usize] = None;
            self.free_owner_ids.push(id);
        }
    }

    /// Undoes [`assume`](Self::assume) after a failed binding; a pod the watch
    /// has confirmed meanwhile stays.
    pub fn forget(&mut self, uid: &str) {
        if self.is_assumed(uid) {
            self.remove_pod(uid);
        }
    }

    /// True while the pod is assumed and not yet confirmed by the watch.
    pub fn is_assumed(&self, uid: &str) -> bool {
        self.pods.get(uid).is_some_and(|p| p.assumed)
    }

    /// The node a pod is bound or assumed on.
    pub fn node_of(&self, uid: &str) -> Option<&str> {
        self.pods.get(uid).map(|p| p.node.as_str())
    }

    fn entry(&mut self, name: &str) -> &mut NodeInfo {
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.nodes.push(NodeInfo {
                    name: name.to_string(),
                    ..NodeInfo::default()
                });
                self.index.insert(name.to_string(), self.nodes.len() - 1);
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[i]
    }

    fn drop_if_empty_ghost(&mut self, name: &str) {
        let Some(&i) = self.index.get(name) else {
            return;
        };
        if self.nodes[i].facts.is_some() || self.nodes[i].pod_count > 0 {
            return;
        }
        self.index.remove(name);
        self.nodes.swap_remove(i);
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name.clone(), i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpu: &str, ready: bool) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"zone": "a"}},
            "status": {
                "allocatable": {"cpu": cpu, "memory": "1Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            },
        }))
        .expect("valid node")
    }

    fn demand(cpu: i64, owner: &str) -> PodDemand {
        PodDemand {
            requests: Resources {
                milli_cpu: cpu,
                ..Resources::default()
            },
            non_zero: Resources {
                milli_cpu: cpu,
                memory: 1,
                ..Resources::default()
            },
            host_ports: vec![HostPort {
                ip: "0.0.0.0".into(),
                protocol: "TCP".into(),
                port: 80,
            }],
            owner: Some(owner.into()),
        }
    }

    fn info<'a>(cache: &'a Cache, name: &str) -> &'a NodeInfo {
        cache
            .nodes()
            .iter()
            .find(|n| n.name == name)
            .expect("node in cache")
    }

    #[test]
    fn node_facts_and_changes() {
        let mut cache = Cache::new();
        assert_eq!(cache.upsert_node(&node("n1", "2", true)), NodeChange::Added);
        assert_eq!(
            cache.upsert_node(&node("n1", "2", true)),
            NodeChange::Unchanged
        );
        assert_eq!(
            cache.upsert_node(&node("n1", "4", true)),
            NodeChange::Updated
        );
        assert_eq!(
            cache.upsert_node(&node("n1", "4", false)),
            NodeChange::Updated
        );
        let facts = info(&cache, "n1").facts.clone().expect("facts");
        assert_eq!(facts.allocatable.milli_cpu, 4000);
        assert_eq!(facts.allowed_pods, 110);
        assert!(!facts.ready);
        assert_eq!(cache.node_count(), 1);
    }

    #[test]
    fn assume_confirm_forget() {
        let mut cache = Cache::new();
        cache.upsert_node(&node("n1", "2", true));
        cache.assume("p1", "n1", Arc::new(demand(500, "rs")));
        assert!(cache.is_assumed("p1"));
        assert_eq!(info(&cache, "n1").requested.milli_cpu, 500);
        let rs = cache.owner_id("rs").expect("owner interned");
        assert_eq!(info(&cache, "n1").owner_count(rs), 1);
        cache.add_pod("p1", "n1", demand(500, "rs"));
        assert!(!cache.is_assumed("p1"));
        assert_eq!(info(&cache, "n1").pod_count, 1);
        // A confirmed pod is not forgotten by a late failure report.
        cache.forget("p1");
        assert_eq!(info(&cache, "n1").pod_count, 1);

        cache.assume("p2", "n1", Arc::new(demand(100, "rs")));
        cache.forget("p2");
        let n1 = info(&cache, "n1");
        assert_eq!(
            (n1.pod_count, n1.requested.milli_cpu, n1.owner_count(rs)),
            (1, 500, 1)
        );
        assert_eq!(n1.host_ports.len(), 1);
        assert!(cache.remove_pod("p1"));
        let n1 = info(&cache, "n1");
        assert_eq!((n1.pod_count, n1.requested.milli_cpu), (0, 0));
        assert!(n1.host_ports.is_empty() && n1.owners.is_empty());
        assert_eq!(
            cache.owner_id("rs"),
            None,
            "owner released with its last pod"
        );
    }

    #[test]
    fn assumed_on_one_node_bound_on_another_moves() {
        let mut cache = Cache::new();
        cache.upsert_node(&node("n1", "2", true));
        cache.upsert_node(&node("n2", "2", true));
        cache.assume("p1", "n1", Arc::new(demand(500, "rs")));
        cache.add_pod("p1", "n2", demand(500, "rs"));
        assert_eq!(info(&cache, "n1").pod_count, 0);
        assert_eq!(info(&cache, "n2").pod_count, 1);
        assert_eq!(cache.node_of("p1"), Some("n2"));
    }

    #[test]
    fn deleted_node_lingers_as_ghost_until_its_pods_go() {
        let mut cache = Cache::new();
        cache.upsert_node(&node("n1", "2", true));
        cache.upsert_node(&node("n2", "2", true));
        cache.add_pod("p1", "n1", demand(500, "rs"));
        cache.remove_node("n1");
        assert_eq!(cache.node_count(), 1);
        assert!(info(&cache, "n1").facts.is_none());
        assert_eq!(cache.upsert_node(&node("n1", "2", true)), NodeChange::Added);
        assert_eq!(info(&cache, "n1").requested.milli_cpu, 500);
        cache.remove_node("n1");
        cache.remove_pod("p1");
        assert_eq!(cache.nodes().len(), 1);
        assert_eq!(cache.node_names().collect::<Vec<_>>(), vec!["n2"]);
        // A pod bound to a node not seen yet makes a ghost.
        cache.add_pod("p2", "n9", demand(1, "rs"));
        assert_eq!(cache.node_count(), 1);
        assert_eq!(cache.nodes().len(), 2);
    }
}
