//! The controller manager's one Pod informer, as client-go's shared
//! informer factory gives kube-controller-manager: a single list + watch of
//! every pod, each event decoded once, one cache of compact pods
//! ([`CachedPod`]: only what controllers read) shared by every controller,
//! and a fan-out of each change to the controllers that subscribed. Without
//! it each pod-watching controller decoded every pod event itself and kept
//! its own cache of every pod. The scheduler, which reads whole pending
//! pods, gets each watch event with the whole pod
//! ([`PodInformer::with_full_events`]).
//!
//! A subscriber first gets the cached pods as additions (client-go replays
//! the cache to a handler added late the same way), then every change in
//! order, always after the cache has applied it. After a relist (a watch
//! that expired with 410 Gone) pods that were cached but are not in the new
//! list are reported as deleted, then [`PodChange::Resynced`].
//!
//! This module owns the pod watch of the controllers; it never writes pods.

mod cached;
mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Toleration};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};

pub use cached::{CachedPod, LabelQuery, Labels, NamedPort, Owner, Phase, Readiness};
use store::PodKey;
pub use store::PodStore;

/// One change of the shared pod cache.
#[derive(Debug, Clone)]
pub enum PodChange {
    /// A pod was added (`old` is `None`) or updated.
    Applied {
        /// The cached state before this change.
        old: Option<Arc<CachedPod>>,
        /// The new state.
        new: Arc<CachedPod>,
    },
    /// A pod was deleted; its last known state.
    Deleted(Arc<CachedPod>),
    /// A (re)list finished: the cache now holds exactly the listed pods.
    Resynced,
}

/// The shared pod informer. The watch starts with the first subscription.
pub struct PodInformer {
    client: kube::Client,
    store: PodStore,
    ready: watch::Receiver<bool>,
    shared: Arc<Shared>,
}

/// What the watch task and the subscribers share.
struct Shared {
    /// Subscribers, and the channel of whole-pod events until the watch
    /// task takes it.
    inner: Mutex<Inner>,
    ready: watch::Sender<bool>,
}

struct Inner {
    subscribers: Vec<mpsc::UnboundedSender<PodChange>>,
    /// Until the watch task starts: the channel of whole-pod events, if
    /// someone wants them.
    unstarted: Option<Option<mpsc::Sender<FullEvent>>>,
}

/// A watch event carrying the whole pod (only field ownership dropped).
pub type FullEvent = Event<Pod>;

/// Whole-pod events buffered for their consumer before the watch waits
/// for it (as the consumer's own watch used to wait).
const FULL_EVENTS_CAPACITY: usize = 1024;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl PodInformer {
    /// An informer of every pod through `client`; nothing is watched until
    /// a controller subscribes.
    pub fn new(client: kube::Client) -> Arc<Self> {
        Self::build(client, None)
    }

    /// An informer that also passes every watch event with the whole pod
    /// to one consumer: the scheduler, which reads all of a pending pod's
    /// spec. Its watch starts at once (inside the Tokio runtime), so the
    /// consumer sees the first list.
    pub fn with_full_events(
        client: kube::Client,
    ) -> (
        Arc<Self>,
        impl Stream<Item = FullEvent> + Send + Unpin + 'static,
    ) {
        let (tx, rx) = mpsc::channel(FULL_EVENTS_CAPACITY);
        let informer = Self::build(client, Some(tx));
        informer.start();
        (informer, ReceiverStream::new(rx))
    }

    fn build(client: kube::Client, full: Option<mpsc::Sender<FullEvent>>) -> Arc<Self> {
        let (ready_tx, ready) = watch::channel(false);
        Arc::new(PodInformer {
            client,
            store: PodStore::default(),
            ready,
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    subscribers: Vec::new(),
                    unstarted: Some(full),
                }),
                ready: ready_tx,
            }),
        })
    }

    /// The shared cache of compact pods.
    pub fn store(&self) -> PodStore {
        self.store.clone()
    }

    /// Waits until the first list is in the cache (any number of waiters).
    pub async fn wait_until_ready(&self) {
        let mut ready = self.ready.clone();
        // The sender lives in `self`, so this only ends once ready.
        let _ = ready.wait_for(|r| *r).await;
    }

    /// Every change from now on, after the pods already cached as additions.
    /// Must be called inside the Tokio runtime (the first call starts the watch).
    pub fn subscribe(&self) -> impl Stream<Item = PodChange> + Send + Unpin + 'static {
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut inner = self.shared.lock();
            // Under the lock no change is applied, so the replay and the
            // changes that follow it neither overlap nor leave a gap.
            for pod in self.store.state() {
                let _ = tx.send(PodChange::Applied {
                    old: None,
                    new: pod,
                });
            }
            if *self.ready.borrow() {
                let _ = tx.send(PodChange::Resynced);
            }
            inner.subscribers.push(tx);
        }
        self.start();
        UnboundedReceiverStream::new(rx)
    }

    /// Starts the watch task unless it runs already.
    fn start(&self) {
        let unstarted = self.shared.lock().unstarted.take();
        if let Some(full) = unstarted {
            tokio::spawn(run(
                Api::<Pod>::all(self.client.clone()),
                Cache::new(self.store.clone()),
                full,
                self.shared.clone(),
            ));
        }
    }

    /// Controllers of kind `K` whose pods changed (by the pods' controller
    /// owner references, before and after the change), as kube's
    /// `Controller::owns` triggers: feed to `Controller::reconcile_on`.
    pub fn owners<K>(&self) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
    where
        K: Resource<DynamicType = ()> + 'static,
    {
        self.subscribe().flat_map(|change| {
            let pods: Vec<Arc<CachedPod>> = match change {
                PodChange::Applied { old, new } => old.into_iter().chain([new]).collect(),
                PodChange::Deleted(pod) => vec![pod],
                PodChange::Resynced => Vec::new(),
            };
            let mut owners: Vec<ObjectRef<K>> = pods.iter().filter_map(|p| owner_of(p)).collect();
            owners.dedup();
            futures::stream::iter(owners)
        })
    }
}

/// The object of kind `K` that controls `pod`, if any.
fn owner_of<K: Resource<DynamicType = ()>>(pod: &CachedPod) -> Option<ObjectRef<K>> {
    let owner = pod.controller()?;
    let group = K::group(&());
    let api_group = owner.api_version.rsplit_once('/').map_or("", |(g, _)| g);
    if *owner.kind != *K::kind(&()) || api_group != group {
        return None;
    }
    let mut key = ObjectRef::new(&owner.name);
    if !pod.namespace.is_empty() {
        key = key.within(&pod.namespace);
    }
    Some(key)
}

/// The watch task: list + watch with backoff, relist on expiry, until the
/// process ends.
async fn run(
    api: Api<Pod>,
    mut cache: Cache,
    mut full: Option<mpsc::Sender<FullEvent>>,
    shared: Arc<Shared>,
) {
    // No reader of pods in the controller manager needs field ownership.
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|pod| pod.metadata.managed_fields = None);
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(
                    "pod informer: watch failed, retrying with backoff (is the API server reachable?): {e}"
                );
                continue;
            }
        };
        {
            let mut inner = shared.lock();
            let out = cache.apply(&event);
            if matches!(event, Event::InitDone) {
                shared.ready.send_replace(true);
            }
            // A subscriber that is gone (its controller stopped) is dropped;
            // the cache stays current for the others.
            inner
                .subscribers
                .retain(|tx| out.iter().all(|c| tx.send(c.clone()).is_ok()));
        }
        if let Some(tx) = &full {
            if tx.send(event).await.is_err() {
                full = None;
            }
        }
    }
}

/// Distinct toleration lists kept for sharing; pods almost always carry
/// one of very few (the API server's two defaults, a DaemonSet's own).
const SHARED_TOLERATION_LISTS: usize = 16;

/// The cache and the changes each watch event makes to it.
struct Cache {
    store: PodStore,
    /// During a (re)list: the pods listed so far.
    relisted: Option<HashMap<PodKey, Arc<CachedPod>>>,
    /// Toleration lists seen, shared by the pods that carry them.
    tolerations: Vec<Arc<[Toleration]>>,
}

impl Cache {
    fn new(store: PodStore) -> Self {
        Cache {
            store,
            relisted: None,
            tolerations: Vec::new(),
        }
    }

    /// The compact form of `pod`, its toleration list shared when seen before.
    fn compact(&mut self, pod: &Pod) -> (PodKey, Arc<CachedPod>) {
        let list = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default();
        let tolerations = match self.tolerations.iter().find(|t| ***t == *list) {
            Some(shared) => shared.clone(),
            None => {
                let new: Arc<[Toleration]> = list.into();
                if self.tolerations.len() < SHARED_TOLERATION_LISTS {
                    self.tolerations.push(new.clone());
                }
                new
            }
        };
        let cached = CachedPod::new(pod, tolerations);
        (PodKey::of(&cached), Arc::new(cached))
    }

    /// Applies `event` to the cache; returns the changes, in order.
    fn apply(&mut self, event: &Event<Pod>) -> Vec<PodChange> {
        match event {
            Event::Init => {
                self.relisted = Some(HashMap::new());
                Vec::new()
            }
            Event::InitApply(pod) => {
                // The cache keeps the previous list until InitDone.
                let (key, new) = self.compact(pod);
                let old = self.store.get(&key);
                self.relisted
                    .get_or_insert_with(HashMap::new)
                    .insert(key, new.clone());
                vec![PodChange::Applied { old, new }]
            }
            Event::Apply(pod) => {
                let (key, new) = self.compact(pod);
                let old = self.store.insert(key, new.clone());
                vec![PodChange::Applied { old, new }]
            }
            Event::Delete(pod) => {
                let (key, last) = self.compact(pod);
                self.store.remove(&key);
                vec![PodChange::Deleted(last)]
            }
            Event::InitDone => {
                // Pods cached before the relist but not listed again were
                // deleted while the watch was down.
                let listed = self.relisted.take().unwrap_or_default();
                let mut out: Vec<PodChange> = self
                    .store
                    .replace(listed)
                    .into_iter()
                    .map(PodChange::Deleted)
                    .collect();
                out.push(PodChange::Resynced);
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn owned_by(api_version: &str, kind: &str, controller: bool) -> CachedPod {
        CachedPod::from(&Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: api_version.into(),
                    kind: kind.into(),
                    name: "owner".into(),
                    uid: "u".into(),
                    controller: Some(controller),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        })
    }

    fn named(name: &str, rv: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    /// What a change says: kind, pod name, old and new resourceVersions.
    fn describe(change: &PodChange) -> String {
        let rv = |p: &CachedPod| p.resource_version.to_string();
        let name = |p: &CachedPod| p.name.to_string();
        match change {
            PodChange::Applied { old, new } => format!(
                "applied {} {}->{}",
                name(new),
                old.as_deref().map(rv).unwrap_or_default(),
                rv(new)
            ),
            PodChange::Deleted(p) => format!("deleted {}", name(p)),
            PodChange::Resynced => "resynced".to_string(),
        }
    }

    fn apply_all(cache: &mut Cache, events: Vec<Event<Pod>>) -> Vec<String> {
        events
            .iter()
            .flat_map(|e| cache.apply(e))
            .map(|c| describe(&c))
            .collect()
    }

    #[test]
    fn relist_reports_pods_deleted_while_the_watch_was_down() {
        let mut cache = Cache::new(PodStore::default());
        let first = apply_all(
            &mut cache,
            vec![
                Event::Init,
                Event::InitApply(named("a", "1")),
                Event::InitApply(named("b", "2")),
                Event::InitDone,
                Event::Apply(named("c", "3")),
                Event::Apply(named("a", "4")),
            ],
        );
        assert_eq!(
            first,
            [
                "applied a ->1",
                "applied b ->2",
                "resynced",
                "applied c ->3",
                "applied a 1->4"
            ]
        );
        // The watch expired (410); b and c went meanwhile, a changed.
        let relist = apply_all(
            &mut cache,
            vec![
                Event::Init,
                Event::InitApply(named("a", "9")),
                Event::InitDone,
            ],
        );
        assert_eq!(relist.first().map(String::as_str), Some("applied a 4->9"));
        assert_eq!(relist.last().map(String::as_str), Some("resynced"));
        // The missed deletions come in between, in the cache's (hash) order.
        let mut missed = relist[1..relist.len() - 1].to_vec();
        missed.sort();
        assert_eq!(missed, ["deleted b", "deleted c"]);
        let left: Vec<String> = cache
            .store
            .state()
            .iter()
            .map(|p| p.name.to_string())
            .collect();
        assert_eq!(left, ["a"]);
        let deleted = apply_all(&mut cache, vec![Event::Delete(named("a", "10"))]);
        assert_eq!(deleted, ["deleted a"]);
        assert!(cache.store.is_empty());
    }

    #[test]
    fn owner_is_the_controller_reference_of_the_kind() {
        let pod = owned_by("apps/v1", "StatefulSet", true);
        assert_eq!(
            owner_of::<StatefulSet>(&pod),
            Some(ObjectRef::new("owner").within("ns"))
        );
        assert_eq!(owner_of::<ReplicaSet>(&pod), None);
        assert_eq!(owner_of::<Job>(&pod), None);
        let job = owned_by("batch/v1", "Job", true);
        assert_eq!(
            owner_of::<Job>(&job),
            Some(ObjectRef::new("owner").within("ns"))
        );
        assert_eq!(owner_of::<Job>(&owned_by("batch/v1", "Job", false)), None);
        // Same kind name in another group is not ours.
        assert_eq!(
            owner_of::<StatefulSet>(&owned_by("example.com/v1", "StatefulSet", true)),
            None
        );
    }

    fn with_uid(name: &str, uid: &str, rv: &str) -> Pod {
        let mut pod = named(name, rv);
        pod.metadata.uid = Some(uid.into());
        pod
    }

    #[test]
    fn pods_are_cached_by_uid() {
        let mut cache = Cache::new(PodStore::default());
        let first = "6f2c1b8e-0d4a-4c55-9a57-3c1f1b0e8d21";
        let second = "0e9b6f1a-7c3d-4e2b-8f4a-9d5c6b7a8e90";
        let changes = apply_all(
            &mut cache,
            vec![
                Event::Init,
                Event::InitDone,
                Event::Apply(with_uid("a", first, "1")),
                Event::Apply(with_uid("a", first, "2")),
                // Deleted and made again under the same name: a new pod.
                Event::Delete(with_uid("a", first, "3")),
                Event::Apply(with_uid("a", second, "4")),
            ],
        );
        assert_eq!(
            changes,
            [
                "resynced",
                "applied a ->1",
                "applied a 1->2",
                "deleted a",
                "applied a ->4"
            ]
        );
        let left: Vec<(String, String)> = cache
            .store
            .state()
            .iter()
            .map(|p| (p.uid.to_string(), p.resource_version.to_string()))
            .collect();
        assert_eq!(left, [(second.to_string(), "4".to_string())]);
    }

    #[test]
    fn pods_with_equal_tolerations_share_one_list() {
        let tolerated = |name: &str, key: &str| {
            let mut pod = named(name, "1");
            pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
                tolerations: Some(vec![Toleration {
                    key: Some(key.into()),
                    operator: Some("Exists".into()),
                    effect: Some("NoExecute".into()),
                    toleration_seconds: Some(300),
                    ..Toleration::default()
                }]),
                ..Default::default()
            });
            pod
        };
        let mut cache = Cache::new(PodStore::default());
        let (_, a) = cache.compact(&tolerated("a", "node.kubernetes.io/not-ready"));
        let (_, b) = cache.compact(&tolerated("b", "node.kubernetes.io/not-ready"));
        let (_, c) = cache.compact(&tolerated("c", "example.com/other"));
        assert!(Arc::ptr_eq(&a.tolerations, &b.tolerations));
        assert!(!Arc::ptr_eq(&a.tolerations, &c.tolerations));
        assert_eq!(c.tolerations[0].key.as_deref(), Some("example.com/other"));
    }
}
