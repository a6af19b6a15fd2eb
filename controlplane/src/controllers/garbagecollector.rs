//! The garbage collector, as kube-controller-manager's: it watches every
//! resource the server serves (but Events), keeps an owner/dependent
//! [`graph`] keyed by uid, and
//!
//! - deletes objects none of whose owners exist any more (background
//!   cascading: the API server deleted the owner at once);
//! - for an owner deleted with `propagationPolicy: Foreground` (finalizer
//!   `foregroundDeletion`), deletes its dependents and removes the finalizer
//!   once no dependent with `blockOwnerDeletion` is left;
//! - for an owner deleted with `propagationPolicy: Orphan` (finalizer
//!   `orphan`), removes the ownerReference from each dependent, then the
//!   finalizer.
//!
//! One task owns the graph: watchers feed it through a channel, work items
//! are uids, processed in small concurrent batches, retried after errors, and
//! every object with owners is looked at again by a periodic sweep. An owner
//! absent from the graph is looked up through the API before a dependent is
//! deleted, so a watch that lags never costs data.

mod graph;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions,
    PropagationPolicy,
};
use kube::core::TypeMeta;
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use serde_json::json;
use tokio::sync::mpsc;

use super::pods::{CachedPod, PodChange, PodInformer};
use super::Context;
use crate::apiserver::registry::{self, Resource, RESOURCES};
use graph::{decide, Decision, Graph, Node, ObjectId, OwnerState, Propagation, FOREGROUND, ORPHAN};

/// Storage names not watched: Events are the busiest resource, never
/// owners, and carry no ownerReferences.
const NOT_WATCHED: &[&str] = &["events"];
/// How often every object with owners is looked at again.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// How long after a failed attempt an object is tried again.
const RETRY_DELAY: Duration = Duration::from_secs(2);
/// Work items processed concurrently.
const BATCH: usize = 32;
/// Capacity of the channel from the watchers.
const CHANNEL_CAPACITY: usize = 4096;

/// Errors acting on one object; the object is retried.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// An owner the watches have not seen could not be looked up.
    #[error("cannot look up {kind} {name}, an owner of {dependent}: {source}")]
    OwnerLookup {
        /// Owner kind.
        kind: String,
        /// Owner name.
        name: String,
        /// The dependent, as `resource namespace/name`.
        dependent: String,
        /// What the API said.
        source: kube::Error,
    },
    /// Deleting an object whose owners are gone failed.
    #[error("cannot delete {object}, whose owners are gone: {source}")]
    Delete {
        /// The object.
        object: String,
        /// What the API said.
        source: kube::Error,
    },
    /// Removing ownerReferences (orphaning) failed.
    #[error("cannot remove ownerReferences from {object}: {source}")]
    Orphan {
        /// The object.
        object: String,
        /// What the API said.
        source: kube::Error,
    },
    /// Removing a finalizer from an owner failed.
    #[error("cannot remove finalizer {finalizer:?} from {object}: {source}")]
    Finalizer {
        /// The finalizer.
        finalizer: &'static str,
        /// The object.
        object: String,
        /// What the API said.
        source: kube::Error,
    },
}

/// A watch event of one watched resource.
struct Message {
    resource: usize,
    event: watcher::Event<DynamicObject>,
}

/// Runs the controller until the process ends. Pods come from the shared
/// pod informer (it has their metadata already); every other resource is
/// watched here.
pub async fn run(ctx: Arc<Context>, pods: Arc<PodInformer>) {
    let watched: Vec<&'static Resource> = RESOURCES
        .iter()
        .filter(|r| registry::storage_resource(r.storage).is_some_and(|s| std::ptr::eq(s, *r)))
        .filter(|r| !NOT_WATCHED.contains(&r.storage))
        .collect();
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    for (index, resource) in watched.iter().enumerate() {
        if resource.group.is_empty() && resource.storage == "pods" {
            tokio::spawn(feed_pods(pods.subscribe(), index, resource, tx.clone()));
        } else {
            spawn_watch(ctx.client.clone(), index, resource, tx.clone());
        }
    }
    drop(tx);
    let collector = Collector {
        client: ctx.client.clone(),
        synced: vec![false; watched.len()],
        watched,
        graph: Graph::default(),
        queue: VecDeque::new(),
        queued: HashSet::new(),
        retries: HashMap::new(),
        relisting: HashMap::new(),
    };
    collector.run(rx).await;
}

/// The kube view of a served resource.
fn api_resource(r: &Resource) -> ApiResource {
    ApiResource {
        group: r.group.to_string(),
        version: r.version.to_string(),
        api_version: r.api_version(),
        kind: r.kind.to_string(),
        plural: r.plural.to_string(),
    }
}

/// Forwards one resource's watch (list, watch, relist, with backoff).
fn spawn_watch(
    client: kube::Client,
    index: usize,
    resource: &'static Resource,
    tx: mpsc::Sender<Message>,
) {
    tokio::spawn(async move {
        let api: Api<DynamicObject> = Api::all_with(client, &api_resource(resource));
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    if tx
                        .send(Message {
                            resource: index,
                            event,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => tracing::warn!(
                    "garbage collector: watching {} failed, retrying: {e}",
                    resource.qualified()
                ),
            }
        }
    });
}

/// Forwards the shared pod informer's changes as watch events of pod
/// metadata: its first replay and list as a list (`Init` … `InitDone`),
/// then changes. Deletions missed during a relist arrive as deletions.
async fn feed_pods(
    mut changes: impl futures::Stream<Item = PodChange> + Unpin,
    index: usize,
    resource: &'static Resource,
    tx: mpsc::Sender<Message>,
) {
    let types = TypeMeta {
        api_version: resource.api_version(),
        kind: resource.kind.to_string(),
    };
    let meta_only = |pod: &CachedPod| DynamicObject {
        types: Some(types.clone()),
        metadata: pod.meta(),
        data: serde_json::Value::Null,
    };
    let mut listing = true;
    let send = |event| {
        tx.send(Message {
            resource: index,
            event,
        })
    };
    if send(watcher::Event::Init).await.is_err() {
        return;
    }
    while let Some(change) = changes.next().await {
        let event = match change {
            PodChange::Applied { new, .. } if listing => watcher::Event::InitApply(meta_only(&new)),
            PodChange::Applied { new, .. } => watcher::Event::Apply(meta_only(&new)),
            PodChange::Deleted(pod) => watcher::Event::Delete(meta_only(&pod)),
            PodChange::Resynced if listing => {
                listing = false;
                watcher::Event::InitDone
            }
            PodChange::Resynced => continue,
        };
        if send(event).await.is_err() {
            return;
        }
    }
}

struct Collector {
    client: kube::Client,
    watched: Vec<&'static Resource>,
    graph: Graph,
    queue: VecDeque<String>,
    queued: HashSet<String>,
    /// uid → when to try it again.
    retries: HashMap<String, Instant>,
    /// Per resource: whether its first list has been seen.
    synced: Vec<bool>,
    /// Per resource being relisted: the uids seen so far.
    relisting: HashMap<usize, HashSet<String>>,
}

impl Collector {
    async fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            while let Ok(message) = rx.try_recv() {
                self.handle(message);
            }
            let synced = self.synced.iter().all(|s| *s);
            if synced && !self.queue.is_empty() {
                self.process_batch().await;
                continue;
            }
            tokio::select! {
                message = rx.recv() => match message {
                    Some(message) => self.handle(message),
                    None => return,
                },
                _ = tick.tick() => self.requeue_due(),
                _ = sweep.tick(), if synced => {
                    for uid in self.graph.sweep() {
                        self.enqueue(uid);
                    }
                }
            }
        }
    }

    fn enqueue(&mut self, uid: String) {
        if self.queued.insert(uid.clone()) {
            self.queue.push_back(uid);
        }
    }

    fn enqueue_all(&mut self, uids: Vec<String>) {
        for uid in uids {
            self.enqueue(uid);
        }
    }

    fn requeue_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .retries
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in due {
            self.retries.remove(&uid);
            self.enqueue(uid);
        }
    }

    fn handle(&mut self, Message { resource, event }: Message) {
        match event {
            watcher::Event::Init => {
                self.relisting.insert(resource, HashSet::new());
            }
            watcher::Event::InitApply(obj) => {
                if let (Some(seen), Some(uid)) =
                    (self.relisting.get_mut(&resource), obj.metadata.uid.as_ref())
                {
                    seen.insert(uid.clone());
                }
                self.apply(resource, &obj);
            }
            watcher::Event::InitDone => {
                let seen = self.relisting.remove(&resource).unwrap_or_default();
                for uid in self.graph.uids_of(resource) {
                    if !seen.contains(&uid) {
                        let work = self.graph.remove(&uid);
                        self.enqueue_all(work);
                    }
                }
                if let Some(synced) = self.synced.get_mut(resource) {
                    if !*synced {
                        tracing::debug!(
                            "garbage collector: {} synced",
                            self.watched[resource].qualified()
                        );
                    }
                    *synced = true;
                }
            }
            watcher::Event::Apply(obj) => self.apply(resource, &obj),
            watcher::Event::Delete(obj) => {
                if let Some(uid) = obj.metadata.uid.as_deref() {
                    let work = self.graph.remove(uid);
                    self.enqueue_all(work);
                }
            }
        }
    }

    fn apply(&mut self, resource: usize, obj: &DynamicObject) {
        let meta = &obj.metadata;
        let (Some(uid), Some(name)) = (meta.uid.clone(), meta.name.clone()) else {
            return;
        };
        let node = Node {
            id: ObjectId {
                resource,
                namespace: meta.namespace.clone(),
                name,
                uid,
            },
            owners: meta.owner_references.clone().unwrap_or_default(),
            finalizers: meta.finalizers.clone().unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
        };
        let work = self.graph.upsert(node);
        self.enqueue_all(work);
    }

    async fn process_batch(&mut self) {
        let mut batch = Vec::with_capacity(BATCH);
        while batch.len() < BATCH {
            let Some(uid) = self.queue.pop_front() else {
                break;
            };
            self.queued.remove(&uid);
            batch.push(uid);
        }
        let results = futures::future::join_all(batch.iter().map(|uid| self.process(uid))).await;
        for (uid, result) in batch.into_iter().zip(results) {
            match result {
                Ok(more) => self.enqueue_all(more),
                Err(e) => {
                    tracing::warn!("garbage collector: {e}; retrying in {RETRY_DELAY:?}");
                    self.retries.insert(uid, Instant::now() + RETRY_DELAY);
                }
            }
        }
    }

    /// Looks at one object; returns more uids to look at.
    async fn process(&self, uid: &str) -> Result<Vec<String>, GcError> {
        let Some(node) = self.graph.get(uid) else {
            return Ok(Vec::new());
        };
        if node.deleting_dependents() {
            return self.finish_foreground(node).await;
        }
        if node.orphaning() {
            return self.orphan_dependents(node).await;
        }
        if node.deleting || node.owners.is_empty() {
            return Ok(Vec::new());
        }
        let mut owners = Vec::with_capacity(node.owners.len());
        for reference in &node.owners {
            owners.push((
                reference.uid.clone(),
                self.owner_state(node, reference).await?,
            ));
        }
        match decide(node, &owners, self.graph.has_dependents(uid)) {
            Decision::Keep => {}
            Decision::RemoveOwnerRefs(uids) => self.remove_owner_refs(node, &uids).await?,
            Decision::Delete(policy) => self.delete(node, policy).await?,
        }
        Ok(Vec::new())
    }

    /// Classifies one owner: from the graph, or else from the API.
    async fn owner_state(
        &self,
        dependent: &Node,
        reference: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    ) -> Result<OwnerState, GcError> {
        if let Some(owner) = self.graph.get(&reference.uid) {
            return Ok(if owner.deleting_dependents() {
                OwnerState::Waiting
            } else {
                OwnerState::Solid
            });
        }
        let Some(kind) = registry::find_kind(&reference.api_version, &reference.kind) else {
            // Upstream retries unknown kinds forever; an owner of a kind this
            // server does not serve cannot be judged, so the dependent stays.
            tracing::debug!(
                "garbage collector: {} is owned by a {} {} of an unserved kind; leaving it",
                self.describe(dependent),
                reference.api_version,
                reference.kind
            );
            return Ok(OwnerState::Solid);
        };
        let api: Api<DynamicObject> = match (&dependent.id.namespace, kind.namespaced) {
            (_, false) => Api::all_with(self.client.clone(), &api_resource(kind)),
            (Some(ns), true) => Api::namespaced_with(self.client.clone(), ns, &api_resource(kind)),
            // A cluster-scoped object cannot have a namespaced owner.
            (None, true) => return Ok(OwnerState::Dangling),
        };
        let found = api
            .get_opt(&reference.name)
            .await
            .map_err(|source| GcError::OwnerLookup {
                kind: reference.kind.clone(),
                name: reference.name.clone(),
                dependent: self.describe(dependent),
                source,
            })?;
        Ok(match found {
            Some(owner) if owner.metadata.uid.as_deref() == Some(reference.uid.as_str()) => {
                let foreground = owner
                    .metadata
                    .finalizers
                    .iter()
                    .flatten()
                    .any(|f| f == FOREGROUND);
                if owner.metadata.deletion_timestamp.is_some() && foreground {
                    OwnerState::Waiting
                } else {
                    OwnerState::Solid
                }
            }
            _ => OwnerState::Dangling,
        })
    }

    /// An owner deleted in the foreground: its finalizer goes once no
    /// blocking dependent is left; until then its dependents are deleted.
    async fn finish_foreground(&self, owner: &Node) -> Result<Vec<String>, GcError> {
        if self
            .graph
            .blocking_dependents(&owner.id.uid)
            .next()
            .is_none()
        {
            self.remove_finalizer(owner, FOREGROUND).await?;
            return Ok(Vec::new());
        }
        Ok(self
            .graph
            .dependents_of(&owner.id.uid)
            .filter(|d| !d.deleting)
            .map(|d| d.id.uid.clone())
            .collect())
    }

    /// An owner deleted with orphan propagation: release every dependent,
    /// then let the owner go.
    async fn orphan_dependents(&self, owner: &Node) -> Result<Vec<String>, GcError> {
        let uid = owner.id.uid.clone();
        for dependent in self.graph.dependents_of(&uid) {
            self.remove_owner_refs(dependent, std::slice::from_ref(&uid))
                .await?;
        }
        self.remove_finalizer(owner, ORPHAN).await?;
        Ok(Vec::new())
    }

    fn api(&self, id: &ObjectId) -> Api<DynamicObject> {
        let resource = api_resource(self.watched[id.resource]);
        match &id.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        }
    }

    fn describe(&self, node: &Node) -> String {
        let resource = self.watched[node.id.resource].qualified();
        match &node.id.namespace {
            Some(ns) => format!("{resource} {ns}/{}", node.id.name),
            None => format!("{resource} {}", node.id.name),
        }
    }

    async fn delete(&self, node: &Node, policy: Propagation) -> Result<(), GcError> {
        let policy = match policy {
            Propagation::Background => PropagationPolicy::Background,
            Propagation::Foreground => PropagationPolicy::Foreground,
            Propagation::Orphan => PropagationPolicy::Orphan,
        };
        tracing::debug!(
            "garbage collector: deleting {} ({policy:?})",
            self.describe(node)
        );
        let params = DeleteParams {
            propagation_policy: Some(policy),
            // Never a newer object that took the same name.
            preconditions: Some(Preconditions {
                uid: Some(node.id.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.api(&node.id).delete(&node.id.name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(source) => Err(GcError::Delete {
                object: self.describe(node),
                source,
            }),
        }
    }

    /// Upstream's `deleteOwnerRefStrategicMergePatch`; the dependent's uid
    /// in the patch makes it fail on a different object of the same name.
    async fn remove_owner_refs(&self, node: &Node, owner_uids: &[String]) -> Result<(), GcError> {
        let deletes: Vec<_> = owner_uids
            .iter()
            .map(|u| json!({"$patch": "delete", "uid": u}))
            .collect();
        let patch = json!({"metadata": {"ownerReferences": deletes, "uid": node.id.uid}});
        match self
            .api(&node.id)
            .patch(
                &node.id.name,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(source) => Err(GcError::Orphan {
                object: self.describe(node),
                source,
            }),
        }
    }

    async fn remove_finalizer(&self, node: &Node, finalizer: &'static str) -> Result<(), GcError> {
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [finalizer], "uid": node.id.uid}});
        match self
            .api(&node.id)
            .patch(
                &node.id.name,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(source) => Err(GcError::Finalizer {
                finalizer,
                object: self.describe(node),
                source,
            }),
        }
    }
}
