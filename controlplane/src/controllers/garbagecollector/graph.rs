//! The garbage collector's view of the cluster: every watched object by uid
//! with its ownerReferences, an index from owner uid to dependents, and the
//! decisions upstream's `attemptToDeleteItem` makes from them. Pure data and
//! logic; the collector in the parent module does all I/O.

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// Finalizer of an owner deleted with `propagationPolicy: Foreground`.
pub const FOREGROUND: &str = "foregroundDeletion";
/// Finalizer of an owner deleted with `propagationPolicy: Orphan`.
pub const ORPHAN: &str = "orphan";

/// Where an object lives: which watched resource, namespace, name, uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectId {
    /// Index into the collector's list of watched resources.
    pub resource: usize,
    /// Namespace, None for cluster-scoped objects.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// uid.
    pub uid: String,
}

/// What the collector knows about one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Identity.
    pub id: ObjectId,
    /// `metadata.ownerReferences`.
    pub owners: Vec<OwnerReference>,
    /// `metadata.finalizers`.
    pub finalizers: Vec<String>,
    /// True when `metadata.deletionTimestamp` is set.
    pub deleting: bool,
}

impl Node {
    /// Deleted in the foreground: waiting for its dependents to go.
    pub fn deleting_dependents(&self) -> bool {
        self.deleting && self.finalizers.iter().any(|f| f == FOREGROUND)
    }

    /// Deleted with orphan propagation: its dependents must be released.
    pub fn orphaning(&self) -> bool {
        self.deleting && self.finalizers.iter().any(|f| f == ORPHAN)
    }

    /// The reference to `owner_uid`, if this object has one.
    pub fn reference_to(&self, owner_uid: &str) -> Option<&OwnerReference> {
        self.owners.iter().find(|r| r.uid == owner_uid)
    }

    fn owner_uids(&self) -> BTreeSet<&str> {
        self.owners.iter().map(|r| r.uid.as_str()).collect()
    }
}

/// The owner/dependent graph.
#[derive(Debug, Default)]
pub struct Graph {
    nodes: HashMap<String, Node>,
    /// Owner uid → uids of objects that reference it (the owner itself may
    /// be unknown: never observed, or already gone).
    dependents: HashMap<String, BTreeSet<String>>,
}

impl Graph {
    /// The object with `uid`, if it exists as far as the watches know.
    pub fn get(&self, uid: &str) -> Option<&Node> {
        self.nodes.get(uid)
    }

    /// True when any object references `uid` as an owner.
    pub fn has_dependents(&self, uid: &str) -> bool {
        self.dependents.get(uid).is_some_and(|d| !d.is_empty())
    }

    /// The known objects that reference `uid` as an owner.
    pub fn dependents_of<'a>(&'a self, uid: &str) -> impl Iterator<Item = &'a Node> + 'a {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.nodes.get(d))
    }

    /// Dependents of `uid` that block its foreground deletion.
    pub fn blocking_dependents<'a>(&'a self, uid: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.dependents_of(uid).filter(move |d| {
            d.reference_to(uid)
                .is_some_and(|r| r.block_owner_deletion == Some(true))
        })
    }

    /// Records an added or changed object; returns the uids to look at.
    pub fn upsert(&mut self, node: Node) -> Vec<String> {
        let uid = node.id.uid.clone();
        let old = self.nodes.remove(&uid);
        let mut work = Vec::new();
        let new_owners = node.owner_uids();
        let old_owners = old.as_ref().map(Node::owner_uids).unwrap_or_default();
        for gone in old_owners.difference(&new_owners) {
            self.unlink(gone, &uid);
            // An owner deleted in the foreground may have been waiting for this reference to go.
            work.push((*gone).to_string());
        }
        for added in new_owners.difference(&old_owners) {
            self.dependents
                .entry((*added).to_string())
                .or_default()
                .insert(uid.clone());
        }
        if !node.owners.is_empty() || node.deleting_dependents() || node.orphaning() {
            work.push(uid.clone());
        }
        let was_deleting_dependents = old.as_ref().is_some_and(Node::deleting_dependents);
        if node.deleting_dependents() && !was_deleting_dependents {
            work.extend(self.dependents.get(&uid).into_iter().flatten().cloned());
        }
        self.nodes.insert(uid, node);
        work
    }

    /// Records a deleted object; returns the uids to look at: its dependents
    /// (their owner is gone) and its owners (one may wait for it).
    pub fn remove(&mut self, uid: &str) -> Vec<String> {
        let Some(old) = self.nodes.remove(uid) else {
            return Vec::new();
        };
        let mut work: Vec<String> = self
            .dependents
            .get(uid)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for owner in old.owner_uids() {
            self.unlink(owner, uid);
            if self.nodes.contains_key(owner) {
                work.push(owner.to_string());
            }
        }
        work
    }

    /// uids of every known object of one watched resource.
    pub fn uids_of(&self, resource: usize) -> Vec<String> {
        self.nodes
            .values()
            .filter(|n| n.id.resource == resource)
            .map(|n| n.id.uid.clone())
            .collect()
    }

    /// Everything the periodic sweep looks at again: objects with owners,
    /// and owners waiting on the collector.
    pub fn sweep(&self) -> Vec<String> {
        self.nodes
            .values()
            .filter(|n| !n.owners.is_empty() || n.deleting_dependents() || n.orphaning())
            .map(|n| n.id.uid.clone())
            .collect()
    }

    fn unlink(&mut self, owner: &str, dependent: &str) {
        if let Some(set) = self.dependents.get_mut(owner) {
            set.remove(dependent);
            if set.is_empty() {
                self.dependents.remove(owner);
            }
        }
    }
}

/// What an ownerReference points at, as upstream classifies owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerState {
    /// The owner exists and is not being deleted in the foreground.
    Solid,
    /// No object with the owner's uid exists.
    Dangling,
    /// The owner is being deleted in the foreground (waits for dependents).
    Waiting,
}

/// How to delete an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Delete now; the collector removes dependents afterwards.
    Background,
    /// Delete dependents first.
    Foreground,
    /// Keep dependents, releasing them.
    Orphan,
}

/// What to do with an object that has owners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It has an owner that stays.
    Keep,
    /// It keeps a live owner; drop the references to these uids (gone or
    /// being deleted in the foreground), so they stop holding anything up.
    RemoveOwnerRefs(Vec<String>),
    /// No owner stays: delete it.
    Delete(Propagation),
}

/// Upstream's `attemptToDeleteItem` for an object that is not being deleted.
pub fn decide(item: &Node, owners: &[(String, OwnerState)], has_dependents: bool) -> Decision {
    let solid = owners.iter().any(|(_, s)| *s == OwnerState::Solid);
    let waiting = owners.iter().any(|(_, s)| *s == OwnerState::Waiting);
    if solid {
        let drop: Vec<String> = owners
            .iter()
            .filter(|(_, s)| *s != OwnerState::Solid)
            .map(|(uid, _)| uid.clone())
            .collect();
        return if drop.is_empty() {
            Decision::Keep
        } else {
            Decision::RemoveOwnerRefs(drop)
        };
    }
    if waiting && has_dependents {
        // Its owner waits for it, and it has dependents of its own: they go first.
        return Decision::Delete(Propagation::Foreground);
    }
    let has = |f: &str| item.finalizers.iter().any(|x| x == f);
    let policy = if has(ORPHAN) {
        Propagation::Orphan
    } else if has(FOREGROUND) {
        Propagation::Foreground
    } else {
        Propagation::Background
    };
    Decision::Delete(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner_ref(uid: &str, block: bool) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: format!("rs-{uid}"),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(block),
        }
    }

    fn node(uid: &str, owners: Vec<OwnerReference>) -> Node {
        Node {
            id: ObjectId {
                resource: 0,
                namespace: Some("default".into()),
                name: uid.into(),
                uid: uid.into(),
            },
            owners,
            finalizers: Vec::new(),
            deleting: false,
        }
    }

    #[test]
    fn index_follows_owner_references() {
        let mut g = Graph::default();
        g.upsert(node("rs", vec![]));
        let work = g.upsert(node("p1", vec![owner_ref("rs", true)]));
        assert_eq!(work, vec!["p1".to_string()]);
        g.upsert(node("p2", vec![owner_ref("rs", false)]));
        assert!(g.has_dependents("rs"));
        assert_eq!(g.blocking_dependents("rs").count(), 1);
        // Orphaning p1 (reference removed) tells the owner.
        let work = g.upsert(node("p1", vec![]));
        assert!(work.contains(&"rs".to_string()));
        assert_eq!(g.dependents_of("rs").count(), 1);
        // The owner goes: its dependents are looked at.
        let work = g.remove("rs");
        assert_eq!(work, vec!["p2".to_string()]);
        // Removing the last dependent clears the index.
        g.remove("p2");
        assert!(!g.has_dependents("rs"));
    }

    #[test]
    fn foreground_deletion_wakes_dependents() {
        let mut g = Graph::default();
        g.upsert(node("rs", vec![]));
        g.upsert(node("p1", vec![owner_ref("rs", true)]));
        let mut deleting = node("rs", vec![]);
        deleting.deleting = true;
        deleting.finalizers = vec![FOREGROUND.into()];
        let work = g.upsert(deleting.clone());
        assert!(work.contains(&"rs".to_string()) && work.contains(&"p1".to_string()));
        // Seen again in the same state: only the owner itself.
        let work = g.upsert(deleting);
        assert_eq!(work, vec!["rs".to_string()]);
        let swept: BTreeSet<String> = g.sweep().into_iter().collect();
        assert_eq!(swept, ["p1".to_string(), "rs".to_string()].into());
    }

    #[test]
    fn decisions_follow_upstream() {
        let item = node("p", vec![owner_ref("a", true), owner_ref("b", true)]);
        let s = |a: OwnerState, b: OwnerState| vec![("a".to_string(), a), ("b".to_string(), b)];
        use OwnerState::*;
        assert_eq!(decide(&item, &s(Solid, Solid), false), Decision::Keep);
        assert_eq!(
            decide(&item, &s(Solid, Dangling), false),
            Decision::RemoveOwnerRefs(vec!["b".into()])
        );
        assert_eq!(
            decide(&item, &s(Waiting, Solid), true),
            Decision::RemoveOwnerRefs(vec!["a".into()])
        );
        assert_eq!(
            decide(&item, &s(Dangling, Dangling), false),
            Decision::Delete(Propagation::Background)
        );
        assert_eq!(
            decide(&item, &s(Waiting, Dangling), false),
            Decision::Delete(Propagation::Background)
        );
        assert_eq!(
            decide(&item, &s(Waiting, Dangling), true),
            Decision::Delete(Propagation::Foreground)
        );
        let mut orphaning = item.clone();
        orphaning.finalizers = vec![ORPHAN.into()];
        assert_eq!(
            decide(&orphaning, &s(Dangling, Dangling), true),
            Decision::Delete(Propagation::Orphan)
        );
    }
}
