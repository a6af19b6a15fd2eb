//! Keeps the [`Index`] equal to the cluster: one task watches Services,
//! EndpointSlices (discovery.k8s.io/v1) and Pods with kube-rs watchers and
//! rewrites the records of exactly the Service or Pod an event touched.
//!
//! It owns the last seen slices and the headless Services (only their records
//! depend on slices; other Services' records are computed from the event and
//! not kept); it never answers queries and holds the index lock only to swap
//! one object's records.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch as signal;

use crate::index::{Index, Source};
use crate::records::{pod_records, service_records, slice_service, SERVICE_NAME_LABEL};
use crate::slim::Slim;

/// Errors of the watch task.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// All watch streams ended, which kube-rs watchers never do on their own.
    #[error("the Service/EndpointSlice/Pod watches ended unexpectedly")]
    Ended,
}

/// One event of any watched kind, boxed: the objects are hundreds of bytes
/// to kilobytes and every event moves through the merged stream.
enum Change {
    Service(Box<Event<Service>>),
    Slice(Box<Event<EndpointSlice>>),
    Pod(Box<Event<Pod>>),
}

type Key = (String, String);

fn key_of<K: ResourceExt>(obj: &K) -> Key {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

/// `namespace/name`: a key in one allocation.
fn path(namespace: &str, name: &str) -> Box<str> {
    format!("{namespace}/{name}").into_boxed_str()
}

/// One port of a [`ServiceFacts`].
struct PortFacts {
    name: Option<Box<str>>,
    port: i32,
    protocol: Option<Box<str>>,
}

/// The parts of a Service its records depend on, compactly: a k8s-openapi
/// Service is 824 bytes of mostly empty fields before any string, and with
/// 10k Services those shells (and the hash table holding them) were the
/// largest part of our memory. Rebuilt into a Service only to compute records.
struct ServiceFacts {
    type_: Option<Box<str>>,
    cluster_ip: Option<Box<str>>,
    cluster_ips: Box<[Box<str>]>,
    external_name: Option<Box<str>>,
    publish_not_ready: bool,
    ports: Box<[PortFacts]>,
}

fn boxed(s: Option<String>) -> Option<Box<str>> {
    s.map(String::into_boxed_str)
}

impl ServiceFacts {
    fn of(svc: Service) -> ServiceFacts {
        let spec = svc.spec.unwrap_or_default();
        ServiceFacts {
            type_: boxed(spec.type_),
            cluster_ip: boxed(spec.cluster_ip),
            cluster_ips: spec
                .cluster_ips
                .into_iter()
                .flatten()
                .map(String::into_boxed_str)
                .collect(),
            external_name: boxed(spec.external_name),
            publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
            ports: spec
                .ports
                .into_iter()
                .flatten()
                .map(|p| PortFacts {
                    name: boxed(p.name),
                    port: p.port,
                    protocol: boxed(p.protocol),
                })
                .collect(),
        }
    }

    /// Whether the records depend on EndpointSlices (headless Services).
    fn uses_slices(&self) -> bool {
        self.cluster_ip
            .as_deref()
            .is_some_and(|ip| ip.eq_ignore_ascii_case("none"))
    }

    /// The Service `records` computes from: `key`'s name and these facts.
    fn service(&self, key: &Key) -> Service {
        let text = |s: &Option<Box<str>>| s.as_deref().map(str::to_string);
        Service {
            metadata: ObjectMeta {
                namespace: Some(key.0.clone()),
                name: Some(key.1.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                type_: text(&self.type_),
                cluster_ip: text(&self.cluster_ip),
                cluster_ips: (!self.cluster_ips.is_empty())
                    .then(|| self.cluster_ips.iter().map(|ip| ip.to_string()).collect()),
                external_name: text(&self.external_name),
                publish_not_ready_addresses: Some(self.publish_not_ready),
                ports: Some(
                    self.ports
                        .iter()
                        .map(|p| ServicePort {
                            name: text(&p.name),
                            port: p.port,
                            protocol: text(&p.protocol),
                            ..ServicePort::default()
                        })
                        .collect(),
                ),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }
}

/// The watch-side state: the objects the records are computed from.
struct Tracker {
    index: Arc<RwLock<Index>>,
    /// Headless Services only: with 10k ClusterIP Services, keeping them all
    /// cost 5 MB for nothing a slice change can alter.
    services: HashMap<Key, ServiceFacts>,
    /// (namespace, service) → slice name → slice.
    slices: HashMap<Key, HashMap<String, EndpointSlice>>,
    /// (namespace, slice name) → the service it was filed under.
    slice_owner: HashMap<Key, String>,
    /// Services seen in the current (re)list; the others are dropped at its end.
    /// (`namespace/name`, one allocation each: with 10k Services the
    /// pairs of `String`s were the peak of a re-list's memory.)
    service_buf: Option<HashSet<Box<str>>>,
    slice_buf: Option<Vec<EndpointSlice>>,
    pod_buf: Option<HashSet<Box<str>>>,
    synced: [bool; 3],
}

impl Tracker {
    fn new(index: Arc<RwLock<Index>>) -> Tracker {
        Tracker {
            index,
            services: HashMap::new(),
            slices: HashMap::new(),
            slice_owner: HashMap::new(),
            service_buf: None,
            slice_buf: None,
            pod_buf: None,
            synced: [false; 3],
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the records of Service `key` from `facts` (`None`: deleted).
    fn set_service(&self, key: &Key, facts: Option<&ServiceFacts>) {
        let mut index = self.write();
        let records = match facts {
            Some(facts) => {
                let slices = self.slices.get(key).into_iter().flat_map(|m| m.values());
                service_records(index.zone(), &facts.service(key), slices)
            }
            None => Vec::new(),
        };
        index.set(
            Source::Service {
                namespace: key.0.clone(),
                name: key.1.clone(),
            },
            records,
        );
    }

    /// A slice of Service `key` changed: recompute it if its records use slices.
    fn slices_changed(&self, key: &Key) {
        if let Some(facts) = self.services.get(key) {
            self.set_service(key, Some(facts));
        }
    }

    /// Keeps `facts` if the records of `key` depend on slices.
    fn keep(&mut self, key: Key, facts: ServiceFacts) {
        if facts.uses_slices() {
            self.services.insert(key, facts);
        } else {
            self.services.remove(&key);
        }
    }

    fn set_pod(&self, pod: &Pod) {
        let (namespace, name) = key_of(pod);
        let mut index = self.write();
        let records = pod_records(index.zone(), pod);
        index.set(Source::Pod { namespace, name }, records);
    }

    fn file_slice(&mut self, slice: EndpointSlice) -> Vec<Key> {
        let (ns, name) = key_of(&slice);
        let mut touched = Vec::new();
        let owner = slice_service(&slice).map(str::to_string);
        let previous = match &owner {
            Some(svc) => self
                .slice_owner
                .insert((ns.clone(), name.clone()), svc.clone()),
            None => self.slice_owner.remove(&(ns.clone(), name.clone())),
        };
        if let Some(prev) = previous.filter(|p| Some(p) != owner.as_ref()) {
            let prev_key = (ns.clone(), prev);
            if let Some(map) = self.slices.get_mut(&prev_key) {
                map.remove(&name);
            }
            touched.push(prev_key);
        }
        if let Some(svc) = owner {
            let key = (ns, svc);
            self.slices
                .entry(key.clone())
                .or_default()
                .insert(name, slice);
            touched.push(key);
        }
        touched
    }

    fn unfile_slice(&mut self, slice: &EndpointSlice) -> Vec<Key> {
        let (ns, name) = key_of(slice);
        let Some(svc) = self.slice_owner.remove(&(ns.clone(), name.clone())) else {
            return Vec::new();
        };
        let key = (ns, svc);
        if let Some(map) = self.slices.get_mut(&key) {
            map.remove(&name);
            if map.is_empty() {
                self.slices.remove(&key);
            }
        }
        vec![key]
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Service(event) => self.on_service(*event),
            Change::Slice(event) => self.on_slice(*event),
            Change::Pod(event) => self.on_pod(*event),
        }
    }

    fn on_service(&mut self, event: Event<Service>) {
        match event {
            Event::Apply(svc) => {
                let key = key_of(&svc);
                let facts = ServiceFacts::of(svc);
                self.set_service(&key, Some(&facts));
                self.keep(key, facts);
            }
            Event::Delete(svc) => {
                let key = key_of(&svc);
                self.services.remove(&key);
                self.set_service(&key, None);
            }
            Event::Init => self.service_buf = Some(HashSet::new()),
            // Indexed as they are listed, like Pods: buffering whole lists
            // made the list the peak of our memory.
            Event::InitApply(svc) => {
                let key = key_of(&svc);
                let facts = ServiceFacts::of(svc);
                self.set_service(&key, Some(&facts));
                self.keep(key.clone(), facts);
                self.service_buf
                    .get_or_insert_default()
                    .insert(path(&key.0, &key.1));
            }
            Event::InitDone => {
                let keys = self.service_buf.take().unwrap_or_default();
                self.services
                    .retain(|key, _| keys.contains(&path(&key.0, &key.1)));
                self.write().retain_sources(|s| match s {
                    Source::Service { namespace, name } => keys.contains(&path(namespace, name)),
                    Source::Pod { .. } => true,
                });
                self.synced[0] = true;
            }
        }
    }

    fn on_slice(&mut self, event: Event<EndpointSlice>) {
        match event {
            Event::Apply(slice) => {
                for key in self.file_slice(slice) {
                    self.slices_changed(&key);
                }
            }
            Event::Delete(slice) => {
                for key in self.unfile_slice(&slice) {
                    self.slices_changed(&key);
                }
            }
            Event::Init => self.slice_buf = Some(Vec::new()),
            Event::InitApply(slice) => self.slice_buf.get_or_insert_default().push(slice),
            Event::InitDone => {
                self.slices.clear();
                self.slice_owner.clear();
                for slice in self.slice_buf.take().unwrap_or_default() {
                    self.file_slice(slice);
                }
                for (key, facts) in &self.services {
                    self.set_service(key, Some(facts));
                }
                self.synced[1] = true;
            }
        }
    }

    fn on_pod(&mut self, event: Event<Pod>) {
        match event {
            Event::Apply(pod) => self.set_pod(&pod),
            Event::Delete(pod) => {
                let (namespace, name) = key_of(&pod);
                self.write()
                    .set(Source::Pod { namespace, name }, Vec::new());
            }
            Event::Init => self.pod_buf = Some(HashSet::new()),
            // Pods are indexed as they are listed (their records depend on
            // nothing else); only their keys are kept to drop the vanished.
            Event::InitApply(pod) => {
                self.set_pod(&pod);
                let (namespace, name) = key_of(&pod);
                self.pod_buf
                    .get_or_insert_default()
                    .insert(path(&namespace, &name));
            }
            Event::InitDone => {
                let keys = self.pod_buf.take().unwrap_or_default();
                self.write().retain_sources(|s| match s {
                    Source::Pod { namespace, name } => keys.contains(&path(namespace, name)),
                    Source::Service { .. } => true,
                });
                self.synced[2] = true;
            }
        }
    }
}

/// Objects per page of the initial lists: the page is decoded at once, so
/// it bounds the list's short-lived memory (kube's default is 500).
const LIST_PAGE: u32 = 100;

/// The event with its object taken out of [`Slim`].
fn unslim<K>(event: Event<Slim<K>>) -> Event<K> {
    match event {
        Event::Apply(Slim(k)) => Event::Apply(k),
        Event::Delete(Slim(k)) => Event::Delete(k),
        Event::Init => Event::Init,
        Event::InitApply(Slim(k)) => Event::InitApply(k),
        Event::InitDone => Event::InitDone,
    }
}

/// Watches the cluster and keeps `index` current until the streams end.
/// `synced` turns true once the first full list of every kind is in the index.
pub async fn run(
    client: Client,
    index: Arc<RwLock<Index>>,
    synced: signal::Sender<bool>,
) -> Result<(), WatchError> {
    let config = watcher::Config::default().page_size(LIST_PAGE);
    let services = watcher::watcher(Api::<Slim<Service>>::all(client.clone()), config.clone())
        .default_backoff()
        .map(|e| e.map(|s| Change::Service(Box::new(unslim(s)))));
    let slices = watcher::watcher(
        Api::<Slim<EndpointSlice>>::all(client.clone()),
        config.clone().labels(SERVICE_NAME_LABEL),
    )
    .default_backoff()
    .map(|e| e.map(|s| Change::Slice(Box::new(unslim(s)))));
    let pods = watcher::watcher(Api::<Slim<Pod>>::all(client), config)
        .default_backoff()
        .map(|e| e.map(|p| Change::Pod(Box::new(unslim(p)))));
    let mut changes = stream::select_all([services.boxed(), slices.boxed(), pods.boxed()]);
    let mut tracker = Tracker::new(index);
    while let Some(change) = changes.next().await {
        match change {
            Ok(change) => tracker.apply(change),
            // The backoff retries; a failing watch keeps serving the last state.
            Err(error) => tracing::warn!(%error, "watch failed, retrying"),
        }
        if tracker.synced.iter().all(|s| *s) && !*synced.borrow() {
            let _ = synced.send(true);
        }
    }
    Err(WatchError::Ended)
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::{Name, RecordType};
    use serde_json::json;

    use super::*;
    use crate::index::Resolution;
    use crate::records::Zone;

    fn tracker() -> Tracker {
        let zone = Zone::new("cluster.local", 5).unwrap();
        Tracker::new(Arc::new(RwLock::new(Index::new(zone))))
    }

    fn service(cluster_ip: &str) -> Box<Event<Service>> {
        let svc = json!({"metadata": {"name": "db", "namespace": "a"},
                         "spec": {"clusterIP": cluster_ip, "ports": [{"port": 80}]}});
        Box::new(Event::Apply(serde_json::from_value(svc).unwrap()))
    }

    fn slice(ip: &str) -> Box<Event<EndpointSlice>> {
        let slice = json!({"metadata": {"name": "db-1", "namespace": "a",
                                        "labels": {SERVICE_NAME_LABEL: "db"}},
                           "addressType": "IPv4",
                           "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}]});
        Box::new(Event::Apply(serde_json::from_value(slice).unwrap()))
    }

    fn addresses(t: &Tracker) -> Vec<String> {
        let name = Name::from_ascii("db.a.svc.cluster.local.").unwrap();
        match t.index.read().unwrap().resolve(&name, RecordType::A) {
            Resolution::Authoritative { answers, .. } => {
                answers.iter().map(|r| r.data.to_string()).collect()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn headless_services_follow_slices_and_cluster_ips_ignore_them() {
        let mut t = tracker();
        // The slice comes first; the headless Service uses it when it arrives.
        t.apply(Change::Slice(slice("10.244.0.5")));
        t.apply(Change::Service(service("None")));
        assert_eq!(addresses(&t), ["10.244.0.5"]);
        t.apply(Change::Slice(slice("10.244.0.6")));
        assert_eq!(addresses(&t), ["10.244.0.6"]);
        // Now a ClusterIP Service: not kept, and slice changes leave it be.
        t.apply(Change::Service(service("10.96.0.20")));
        assert!(t.services.is_empty());
        t.apply(Change::Slice(slice("10.244.0.7")));
        assert_eq!(addresses(&t), ["10.96.0.20"]);
        // Back to headless: the slices kept meanwhile are used.
        t.apply(Change::Service(service("None")));
        assert_eq!(addresses(&t), ["10.244.0.7"]);
    }
}
