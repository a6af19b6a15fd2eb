//! The controller manager's one Pod informer, as client-go's shared
//! informer factory gives kube-controller-manager: a single list + watch of
//! every pod, each event decoded once, one cache of trimmed pods ([`trim`])
//! shared by every controller, and a fan-out of each change to the
//! controllers that subscribed. Without it each pod-watching controller
//! decoded every pod event itself and kept its own cache of every pod.
//! The scheduler, which reads whole pending pods, gets each watch event
//! with the whole pod before it is trimmed ([`PodInformer::with_full_events`]).
//!
//! A subscriber first gets the cached pods as additions (client-go replays
//! the cache to a handler added late the same way), then every change in
//! order, always after the cache has applied it. After a relist (a watch
//! that expired with 410 Gone) pods that were cached but are not in the new
//! list are reported as deleted, then [`PodChange::Resynced`].
//!
//! This module owns the pod watch of the controllers; it never writes pods.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};

/// One change of the shared pod cache.
#[derive(Debug, Clone)]
pub enum PodChange {
    /// A pod was added (`old` is `None`) or updated.
    Applied {
        /// The cached state before this change.
        old: Option<Arc<Pod>>,
        /// The new (trimmed) state.
        new: Arc<Pod>,
    },
    /// A pod was deleted; its last known state.
    Deleted(Arc<Pod>),
    /// A (re)list finished: the cache now holds exactly the listed pods.
    Resynced,
}

/// The shared pod informer. The watch starts with the first subscription.
pub struct PodInformer {
    client: kube::Client,
    store: Store<Pod>,
    ready: watch::Receiver<bool>,
    shared: Arc<Shared>,
}

/// What the watch task and the subscribers share.
struct Shared {
    /// Subscribers, and the writer until the watch task takes it.
    inner: Mutex<Inner>,
    ready: watch::Sender<bool>,
}

struct Inner {
    subscribers: Vec<mpsc::UnboundedSender<PodChange>>,
    /// Until the watch task takes them: the cache's writer and the channel
    /// of whole-pod events, if someone wants them.
    unstarted: Option<(Writer<Pod>, Option<mpsc::Sender<FullEvent>>)>,
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
    /// (before [`trim`]) to one consumer: the scheduler, which reads all of
    /// a pending pod's spec. Its watch starts at once (inside the Tokio
    /// runtime), so the consumer sees the first list.
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
        let writer = Writer::<Pod>::default();
        let store = writer.as_reader();
        let (ready_tx, ready) = watch::channel(false);
        Arc::new(PodInformer {
            client,
            store,
            ready,
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    subscribers: Vec::new(),
                    unstarted: Some((writer, full)),
                }),
                ready: ready_tx,
            }),
        })
    }

    /// The shared cache of trimmed pods.
    pub fn store(&self) -> Store<Pod> {
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
        if let Some((writer, full)) = unstarted {
            tokio::spawn(run(
                Api::<Pod>::all(self.client.clone()),
                writer,
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
            let pods: Vec<Arc<Pod>> = match change {
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
fn owner_of<K: Resource<DynamicType = ()>>(pod: &Pod) -> Option<ObjectRef<K>> {
    let owner = pod
        .metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))?;
    let group = K::group(&());
    let api_group = owner.api_version.rsplit_once('/').map_or("", |(g, _)| g);
    if owner.kind != K::kind(&()) || api_group != group {
        return None;
    }
    let mut key = ObjectRef::new(&owner.name);
    if let Some(ns) = &pod.metadata.namespace {
        key = key.within(ns);
    }
    Some(key)
}

/// Drops what no controller reads from a cached pod, as client-go's
/// informer transforms: field ownership (often a third of a pod) and all of
/// the spec but `nodeName`, `hostname`, `subdomain`, `tolerations` and the
/// containers' and init containers' names, ports and restart policies.
/// Metadata and status stay whole (the node lifecycle controller writes a
/// cached status back). Readers: replicaset (node, sidecar restart
/// policies), endpointslice (node, hostname, subdomain, named ports),
/// nodelifecycle (node, tolerations), podgc (node).
pub fn trim(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    let slim = |containers: Vec<Container>| -> Vec<Container> {
        containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                ports: c.ports,
                restart_policy: c.restart_policy,
                ..Container::default()
            })
            .collect()
    };
    *spec = PodSpec {
        node_name: spec.node_name.take(),
        hostname: spec.hostname.take(),
        subdomain: spec.subdomain.take(),
        tolerations: spec.tolerations.take(),
        containers: slim(std::mem::take(&mut spec.containers)),
        init_containers: spec.init_containers.take().map(slim),
        ..PodSpec::default()
    };
}

/// The watch task: list + watch with backoff, relist on expiry, until the
/// process ends.
async fn run(
    api: Api<Pod>,
    writer: Writer<Pod>,
    mut full: Option<mpsc::Sender<FullEvent>>,
    shared: Arc<Shared>,
) {
    let mut cache = Cache::new(writer);
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
        if let Some(tx) = &full {
            if tx.send(event.clone()).await.is_err() {
                full = None;
            }
        }
        let event = event.modify(trim);
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
}

/// The cache and the changes each watch event makes to it.
struct Cache {
    writer: Writer<Pod>,
    reader: Store<Pod>,
    /// During a (re)list: the pods listed so far.
    relisted: Option<HashSet<ObjectRef<Pod>>>,
}

impl Cache {
    fn new(writer: Writer<Pod>) -> Self {
        let reader = writer.as_reader();
        Cache {
            writer,
            reader,
            relisted: None,
        }
    }

    /// Applies `event` to the cache; returns the changes, in order.
    fn apply(&mut self, event: &Event<Pod>) -> Vec<PodChange> {
        let mut out = Vec::new();
        match event {
            Event::Init => self.relisted = Some(HashSet::new()),
            Event::InitApply(pod) => {
                // Buffered by the writer until InitDone: the cache keeps the
                // previous list until then.
                let key = ObjectRef::from_obj(pod);
                let old = self.reader.get(&key);
                if let Some(seen) = self.relisted.as_mut() {
                    seen.insert(key);
                }
                out.push(PodChange::Applied {
                    old,
                    new: Arc::new(pod.clone()),
                });
            }
            Event::Apply(pod) => {
                let key = ObjectRef::from_obj(pod);
                let old = self.reader.get(&key);
                self.writer.apply_watcher_event(event);
                // The cache's own copy, so no second one is kept alive.
                let new = self
                    .reader
                    .get(&key)
                    .unwrap_or_else(|| Arc::new(pod.clone()));
                out.push(PodChange::Applied { old, new });
                return out;
            }
            Event::Delete(pod) => out.push(PodChange::Deleted(Arc::new(pod.clone()))),
            Event::InitDone => {
                // Pods cached before the relist but not listed again were
                // deleted while the watch was down.
                if let Some(seen) = self.relisted.take() {
                    out.extend(
                        self.reader
                            .state()
                            .into_iter()
                            .filter(|p| !seen.contains(&ObjectRef::from_obj(p.as_ref())))
                            .map(PodChange::Deleted),
                    );
                }
            }
        }
        self.writer.apply_watcher_event(event);
        if matches!(event, Event::InitDone) {
            out.push(PodChange::Resynced);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::{ContainerPort, PodStatus, Toleration};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        ManagedFieldsEntry, ObjectMeta, OwnerReference,
    };

    fn owned_by(api_version: &str, kind: &str, controller: bool) -> Pod {
        Pod {
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
        }
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
        let rv = |p: &Pod| p.metadata.resource_version.clone().unwrap_or_default();
        let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
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
        let mut cache = Cache::new(Writer::default());
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
            .reader
            .state()
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(left, ["a"]);
        let deleted = apply_all(&mut cache, vec![Event::Delete(named("a", "10"))]);
        assert_eq!(deleted, ["deleted a"]);
        assert!(cache.reader.state().is_empty());
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

    #[test]
    fn trim_keeps_what_controllers_read() {
        let port = ContainerPort {
            name: Some("http".into()),
            container_port: 8080,
            ..ContainerPort::default()
        };
        let container = |name: &str| Container {
            name: name.into(),
            image: Some("busybox".into()),
            command: Some(vec!["sleep".into(), "3600".into()]),
            ports: Some(vec![port.clone()]),
            restart_policy: Some("Always".into()),
            ..Container::default()
        };
        let mut pod = Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                labels: Some([("app".to_string(), "a".to_string())].into()),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                hostname: Some("h".into()),
                subdomain: Some("s".into()),
                tolerations: Some(vec![Toleration {
                    key: Some("k".into()),
                    ..Toleration::default()
                }]),
                containers: vec![container("app")],
                init_containers: Some(vec![container("sidecar")]),
                service_account_name: Some("default".into()),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..PodStatus::default()
            }),
        };
        let status = pod.status.clone();
        trim(&mut pod);
        assert_eq!(pod.metadata.managed_fields, None);
        assert!(pod.metadata.labels.is_some());
        assert_eq!(pod.status, status);
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.hostname.as_deref(), Some("h"));
        assert_eq!(spec.subdomain.as_deref(), Some("s"));
        assert_eq!(spec.tolerations.map(|t| t.len()), Some(1));
        assert_eq!(spec.service_account_name, None);
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            assert_eq!(c.ports.as_deref(), Some(&[port.clone()][..]));
            assert_eq!(c.restart_policy.as_deref(), Some("Always"));
            assert_eq!(c.image, None);
            assert_eq!(c.command, None);
        }
        assert_eq!(spec.init_containers.unwrap()[0].name, "sidecar");
    }
}
