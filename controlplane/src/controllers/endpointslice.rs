//! The EndpointSlice controller, with upstream's legacy Endpoints controller
//! folded in: for every Service with a selector it keeps
//! `discovery.k8s.io/v1` EndpointSlices (label
//! `endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io`,
//! owned by the Service) and one `v1` Endpoints object in step with the pods
//! the selector picks.
//!
//! Watches of Services, Pods, Nodes and of its own slices and Endpoints
//! feed a work queue of Service keys, so a burst of pod changes becomes one
//! reconcile per Service. Services without a selector, and slices other
//! managers own (the API server's `kubernetes` Service), are never touched.
//! What the objects should contain is computed in `desired.rs`, how
//! endpoints are packed into slices in `pack.rs`.

mod desired;
pub(crate) mod informer;
mod pack;
mod queue;
mod trigger;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;

use self::desired::{
    CONTROLLER_NAME, ENDPOINTS_CONTROLLER_NAME, ENDPOINTS_MANAGED_BY_LABEL, MANAGED_BY_LABEL,
    OVER_CAPACITY_ANNOTATION, SERVICE_NAME_LABEL, ZONE_LABEL,
};
use self::informer::Change;
use self::pack::{SliceTemplate, MAX_ENDPOINTS_PER_SLICE};
use self::queue::WorkQueue;
use super::events::{self, EventType, Recorder};
use super::pods::{CachedPod, PodChange, PodInformer, PodStore};
use super::Context;

/// Services reconciled concurrently (upstream's `--concurrent-service-endpoint-syncs`).
const WORKERS: usize = 5;
/// Own writes remembered to recognise their watch events; beyond this the
/// memory is reset (at worst a few redundant, no-op reconciles).
const MAX_OWN_WRITES: usize = 10_000;

/// A Service by namespace and name.
type ServiceKey = (String, String);

/// Errors reconciling one Service.
#[derive(Debug, thiserror::Error)]
pub enum EndpointSliceError {
    /// Listing the Service's slices failed.
    #[error("cannot list the EndpointSlices of service {service}: {source}")]
    List {
        /// `namespace/name` of the Service.
        service: String,
        /// The API error.
        source: kube::Error,
    },
    /// Creating, updating or deleting a slice failed.
    #[error("cannot {action} an EndpointSlice of service {service} (a conflict is retried; check the namespace is not terminating): {source}")]
    Slice {
        /// `create`, `update` or `delete`.
        action: &'static str,
        /// `namespace/name` of the Service.
        service: String,
        /// The API error.
        source: kube::Error,
    },
    /// Reading or writing the legacy Endpoints object failed.
    #[error("cannot {action} the Endpoints of service {service}: {source}")]
    Endpoints {
        /// `read`, `create`, `update` or `delete`.
        action: &'static str,
        /// `namespace/name` of the Service.
        service: String,
        /// The API error.
        source: kube::Error,
    },
}

impl EndpointSliceError {
    /// True for a 409: the write raced with another one.
    fn is_conflict(&self) -> bool {
        let source = match self {
            EndpointSliceError::List { source, .. }
            | EndpointSliceError::Slice { source, .. }
            | EndpointSliceError::Endpoints { source, .. } => source,
        };
        matches!(source, kube::Error::Api(s) if s.code == 409)
    }
}

/// Writes of this controller, so that their watch events do not queue work.
#[derive(Default)]
struct OwnWrites(Mutex<HashSet<String>>);

impl OwnWrites {
    fn key(kind: &str, meta: &ObjectMeta, deleted: bool) -> String {
        let ns = meta.namespace.as_deref().unwrap_or_default();
        let name = meta.name.as_deref().unwrap_or_default();
        let version = if deleted {
            "deleted"
        } else {
            meta.resource_version.as_deref().unwrap_or_default()
        };
        format!("{kind}/{ns}/{name}@{version}")
    }

    fn remember(&self, kind: &str, meta: &ObjectMeta, deleted: bool) {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_OWN_WRITES {
            seen.clear();
        }
        seen.insert(Self::key(kind, meta, deleted));
    }

    /// True (once) when this event is the echo of one of our writes.
    fn is_echo(&self, kind: &str, meta: &ObjectMeta, deleted: bool) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.remove(&Self::key(kind, meta, deleted))
    }
}

struct Controller {
    client: kube::Client,
    services: Store<Service>,
    pods: PodStore,
    nodes: Store<Node>,
    queue: Arc<WorkQueue<ServiceKey>>,
    own: OwnWrites,
    recorder: Recorder,
    triggers: trigger::TriggerTimes,
}

/// Runs the controller until the process ends.
pub async fn run(ctx: Arc<Context>, pod_informer: Arc<PodInformer>) {
    let client = ctx.client.clone();
    let (services, services_w) = reflector::store::<Service>();
    let pods = pod_informer.store();
    let (nodes, nodes_w) = reflector::store::<Node>();
    let (_, slices_w) = reflector::store::<EndpointSlice>();
    let (_, endpoints_w) = reflector::store::<Endpoints>();
    let ctrl = Arc::new(Controller {
        client: client.clone(),
        services: services.clone(),
        pods: pods.clone(),
        nodes: nodes.clone(),
        queue: WorkQueue::new(),
        own: OwnWrites::default(),
        recorder: Recorder::new(client.clone(), "endpointslice-controller"),
        triggers: trigger::TriggerTimes::default(),
    });

    let c = ctrl.clone();
    tokio::spawn(informer::run(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        services_w,
        move |change| c.on_service(change),
    ));
    let c = ctrl.clone();
    tokio::spawn(informer::run(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        nodes_w,
        move |change| c.on_node(change),
    ));
    let c = ctrl.clone();
    let managed =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={CONTROLLER_NAME}"));
    let slices_reader = slices_w.as_reader();
    tokio::spawn(informer::run(
        Api::<EndpointSlice>::all(client.clone()),
        managed,
        slices_w,
        move |change| {
            c.on_owned(
                "EndpointSlice",
                change,
                &slices_reader,
                |s: &EndpointSlice| s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL).cloned(),
            )
        },
    ));
    let c = ctrl.clone();
    let managed = watcher::Config::default().labels(&format!(
        "{ENDPOINTS_MANAGED_BY_LABEL}={ENDPOINTS_CONTROLLER_NAME}"
    ));
    let endpoints_reader = endpoints_w.as_reader();
    tokio::spawn(informer::run(
        Api::<Endpoints>::all(client.clone()),
        managed,
        endpoints_w,
        move |change| {
            c.on_owned("Endpoints", change, &endpoints_reader, |e: &Endpoints| {
                e.metadata.name.clone()
            })
        },
    ));

    // Pod changes are mapped to Services through the Service cache, so pods
    // are watched once it is filled. (Each store is awaited by one task
    // only: kube's readiness signal wakes a single waiter.)
    if services.wait_until_ready().await.is_err() {
        tracing::error!("endpointslice controller stopped: the Service watch cache was dropped");
        return;
    }
    let c = ctrl.clone();
    let mut pod_changes = pod_informer.subscribe();
    tokio::spawn(async move {
        while let Some(change) = pod_changes.next().await {
            c.on_pod(change);
        }
    });
    pod_informer.wait_until_ready().await;
    if nodes.wait_until_ready().await.is_err() {
        tracing::error!("endpointslice controller stopped: a watch cache was dropped");
        return;
    }
    ctrl.queue_all_services();
    tracing::info!("endpointslice controller synced its caches; {WORKERS} workers running");
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| tokio::spawn(ctrl.clone().work()))
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
}

fn service_key(meta: &ObjectMeta) -> Option<ServiceKey> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

impl Controller {
    fn queue_all_services(&self) {
        for svc in self.services.state() {
            if let Some(key) = service_key(&svc.metadata) {
                self.queue.add(key);
            }
        }
    }

    fn on_service(&self, change: Change<'_, Service>) {
        match change {
            Change::Applied { new, .. } => service_key(&new.metadata)
                .into_iter()
                .for_each(|k| self.queue.add(k)),
            Change::Deleted(old) => service_key(&old.metadata)
                .into_iter()
                .for_each(|k| self.queue.add(k)),
            Change::Resynced => self.queue_all_services(),
        }
    }

    /// Queues the Services selecting `pod` (by its labels at that time).
    fn queue_services_of(&self, pod: &CachedPod) {
        let ns = &*pod.namespace;
        for svc in self.services.state() {
            if svc.metadata.namespace.as_deref() != Some(ns) {
                continue;
            }
            if desired::selector(&svc).is_some_and(|sel| desired::selects(sel, &pod.labels)) {
                if let Some(key) = service_key(&svc.metadata) {
                    self.queue.add(key);
                }
            }
        }
    }

    fn on_pod(&self, change: PodChange) {
        match change {
            PodChange::Applied { old, new } => {
                if let Some(old) = old {
                    if desired::same_for_endpoints(&old, &new) {
                        return;
                    }
                    self.queue_services_of(&old);
                }
                self.queue_services_of(&new);
            }
            PodChange::Deleted(old) => self.queue_services_of(&old),
            PodChange::Resynced => self.queue_all_services(),
        }
    }

    fn on_node(&self, change: Change<'_, Node>) {
        let zone = |n: &Node| {
            n.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(ZONE_LABEL).cloned())
        };
        if let Change::Applied {
            old: Some(old),
            new,
        } = change
        {
            // Endpoints carry their node's zone; a relabelled node is rare.
            if zone(&old) != zone(new) {
                self.queue_all_services();
            }
        }
    }

    /// A change of one of our own slices or Endpoints made by someone else
    /// (or a leftover found at start) queues its Service.
    fn on_owned<K>(
        &self,
        kind: &str,
        change: Change<'_, K>,
        cache: &Store<K>,
        service: impl Fn(&K) -> Option<String>,
    ) where
        K: kube::Resource<DynamicType = ()> + Clone + 'static,
    {
        let queue = |obj: &K| {
            if let (Some(ns), Some(name)) = (obj.meta().namespace.clone(), service(obj)) {
                self.queue.add((ns, name));
            }
        };
        match change {
            Change::Applied { new, .. } if !self.own.is_echo(kind, new.meta(), false) => queue(new),
            Change::Deleted(old) if !self.own.is_echo(kind, old.meta(), true) => queue(old),
            Change::Resynced => cache.state().iter().for_each(|obj| queue(obj)),
            _ => {}
        }
    }

    async fn work(self: Arc<Self>) {
        loop {
            let key = self.queue.next().await;
            match self.sync(&key).await {
                Ok(()) => self.queue.forget(&key),
                Err(e) => self.failed(&key, e).await,
            }
            self.queue.done(&key);
        }
    }

    /// Schedules a retry; tells the operator unless it was a mere conflict
    /// (a write that raced with another one, the retry sees the newer object).
    async fn failed(self: &Arc<Self>, key: &ServiceKey, e: EndpointSliceError) {
        let delay = self.queue.retry(key.clone());
        if e.is_conflict() {
            tracing::debug!("{e}; retrying in {delay:?}");
            return;
        }
        tracing::warn!("{e}; retrying in {delay:?}");
        if let Some(svc) = self.services.get(&ObjectRef::new(&key.1).within(&key.0)) {
            let about = events::reference(svc.as_ref());
            let message = e.to_string();
            self.recorder
                .record(
                    &about,
                    EventType::Warning,
                    "FailedToUpdateEndpointSlices",
                    &message,
                )
                .await;
        }
    }

    /// Brings the slices and Endpoints of one Service to the desired state.
    async fn sync(&self, key: &ServiceKey) -> Result<(), EndpointSliceError> {
        let (ns, name) = key;
        let service = format!("{ns}/{name}");
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        let lp = ListParams::default().labels(&format!(
            "{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={CONTROLLER_NAME}"
        ));
        let existing = slices
            .list(&lp)
            .await
            .map_err(|source| EndpointSliceError::List {
                service: service.clone(),
                source,
            })?
            .items;
        let Some(svc) = self.services.get(&ObjectRef::new(name).within(ns)) else {
            tracing::debug!("service {service} is gone; removing its endpoints");
            self.triggers.forget(key);
            let plan = pack::Plan {
                delete: existing,
                ..Default::default()
            };
            self.apply(&slices, plan, &service).await?;
            return self.delete_endpoints(ns, name, &service).await;
        };
        if svc.metadata.deletion_timestamp.is_some() {
            // The garbage collector removes the slices with their owner.
            return Ok(());
        }
        let (Some(selector), Some(uid)) = (desired::selector(&svc), svc.metadata.uid.clone())
        else {
            // Endpoints of Services without a selector belong to users; slices
            // we made while it had one are stale.
            let plan = pack::Plan {
                delete: existing,
                ..Default::default()
            };
            return self.apply(&slices, plan, &service).await;
        };
        let pods: Vec<Arc<CachedPod>> = self
            .pods
            .filter(|p| *p.namespace == **ns && desired::selects(selector, &p.labels));
        let zone_of = |node: &str| {
            let node = self.nodes.get(&ObjectRef::new(node))?;
            node.metadata.labels.as_ref()?.get(ZONE_LABEL).cloned()
        };
        let groups = desired::desired_endpoints(&svc, pods.iter().map(AsRef::as_ref), zone_of);
        let template = SliceTemplate {
            namespace: ns.clone(),
            generate_name: format!("{name}-"),
            labels: desired::slice_labels(&svc),
            owner: OwnerReference {
                api_version: "v1".to_string(),
                kind: "Service".to_string(),
                name: name.clone(),
                uid,
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
            placeholder_type: desired::primary_address_type(&svc),
        };
        let mut plan = pack::plan(&template, existing, groups, MAX_ENDPOINTS_PER_SLICE);
        let triggered = self
            .triggers
            .compute(key, &svc, pods.iter().map(AsRef::as_ref));
        trigger::annotate(
            plan.create.iter_mut().chain(plan.update.iter_mut()),
            triggered,
        );
        self.apply(&slices, plan, &service).await?;
        self.sync_endpoints(&svc, &pods, &service).await
    }

    /// Creates, then updates, then deletes, so that no endpoint is missing
    /// from every slice in between.
    async fn apply(
        &self,
        api: &Api<EndpointSlice>,
        plan: pack::Plan,
        service: &str,
    ) -> Result<(), EndpointSliceError> {
        if plan.is_empty() {
            return Ok(());
        }
        tracing::debug!(
            "service {service}: creating {}, updating {}, deleting {} EndpointSlices",
            plan.create.len(),
            plan.update.len(),
            plan.delete.len()
        );
        let err = |action, source| EndpointSliceError::Slice {
            action,
            service: service.to_string(),
            source,
        };
        for slice in plan.create {
            let created = api
                .create(&PostParams::default(), &slice)
                .await
                .map_err(|e| err("create", e))?;
            self.own.remember("EndpointSlice", &created.metadata, false);
        }
        for slice in plan.update {
            let name = slice.metadata.name.clone().unwrap_or_default();
            let updated = api
                .replace(&name, &PostParams::default(), &slice)
                .await
                .map_err(|e| err("update", e))?;
            self.own.remember("EndpointSlice", &updated.metadata, false);
        }
        for slice in plan.delete {
            let name = slice.metadata.name.clone().unwrap_or_default();
            self.own.remember("EndpointSlice", &slice.metadata, true);
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(err("delete", e)),
            }
        }
        Ok(())
    }

    /// Keeps the legacy Endpoints object of the Service in step.
    async fn sync_endpoints(
        &self,
        svc: &Service,
        pods: &[Arc<CachedPod>],
        service: &str,
    ) -> Result<(), EndpointSliceError> {
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let api: Api<Endpoints> = Api::namespaced(self.client.clone(), &ns);
        let err = |action, source| EndpointSliceError::Endpoints {
            action,
            service: service.to_string(),
            source,
        };
        let (subsets, truncated) = desired::endpoints_subsets(svc, pods.iter().map(AsRef::as_ref));
        let labels = desired::endpoints_labels(svc);
        let current = api.get_opt(&name).await.map_err(|e| err("read", e))?;
        let mut object = current.clone().unwrap_or_else(|| Endpoints {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            subsets: None,
        });
        object.metadata.labels = Some(labels);
        let annotations = object
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        if truncated {
            annotations.insert(
                OVER_CAPACITY_ANNOTATION.to_string(),
                "truncated".to_string(),
            );
        } else {
            annotations.remove(OVER_CAPACITY_ANNOTATION);
        }
        if annotations.is_empty() {
            object.metadata.annotations = None;
        }
        object.subsets = Some(subsets).filter(|s| !s.is_empty());
        let written = match current {
            None => api
                .create(&PostParams::default(), &object)
                .await
                .map_err(|e| err("create", e))?,
            Some(current) if same_endpoints(&current, &object) => return Ok(()),
            Some(_) => api
                .replace(&name, &PostParams::default(), &object)
                .await
                .map_err(|e| err("update", e))?,
        };
        self.own.remember("Endpoints", &written.metadata, false);
        Ok(())
    }

    /// Deletes the Endpoints of a deleted Service, if this controller made them.
    async fn delete_endpoints(
        &self,
        ns: &str,
        name: &str,
        service: &str,
    ) -> Result<(), EndpointSliceError> {
        let api: Api<Endpoints> = Api::namespaced(self.client.clone(), ns);
        let err = |action, source| EndpointSliceError::Endpoints {
            action,
            service: service.to_string(),
            source,
        };
        let Some(current) = api.get_opt(name).await.map_err(|e| err("read", e))? else {
            return Ok(());
        };
        let ours = current
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ENDPOINTS_MANAGED_BY_LABEL))
            .map(String::as_str)
            == Some(ENDPOINTS_CONTROLLER_NAME);
        if !ours {
            return Ok(());
        }
        self.own.remember("Endpoints", &current.metadata, true);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(err("delete", e)),
        }
    }
}

/// True when the stored Endpoints already equal the desired ones.
fn same_endpoints(current: &Endpoints, desired: &Endpoints) -> bool {
    let subsets = |e: &Endpoints| e.subsets.clone().unwrap_or_default();
    let annotations = |e: &Endpoints| e.metadata.annotations.clone().unwrap_or_default();
    subsets(current) == subsets(desired)
        && current.metadata.labels == desired.metadata.labels
        && annotations(current) == annotations(desired)
}
