//! The watch side: kube-rs reflectors for Services, EndpointSlices and this
//! node's Node object. Every event pokes a [`Notify`] (and Service and
//! EndpointSlice changes count in [`ChangeCounters`], with the trigger time
//! of each EndpointSlice update kept for the programming latency); the sync
//! loop then
//! rebuilds the service map from the stores (works against any Kubernetes
//! API server: only list/watch with a label and a field selector are used).

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use prometheus_client::metrics::counter::Counter;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::model::{self, BuildInput, NodeInfo, ServiceMap};

/// What the watches record about changes: counters of objects received
/// (added, modified or deleted, including those of every relist), as
/// kube-proxy's `..._service_changes_total` / `..._endpoint_changes_total`,
/// and the trigger times of EndpointSlice updates.
#[derive(Debug, Clone, Default)]
pub struct ChangeCounters {
    /// Service changes.
    pub services: Counter,
    /// EndpointSlice changes.
    pub endpoints: Counter,
    /// Trigger times of EndpointSlice updates not programmed yet.
    pub triggers: TriggerTimes,
}

/// The annotation an EndpointSlice controller sets to when the change
/// behind the slice's last update happened (upstream's network programming
/// latency SLI starts there).
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Trigger times waiting to be programmed at most; more are dropped, so a
/// proxy that cannot sync does not grow without bound.
const MAX_PENDING_TRIGGERS: usize = 10_000;

/// Trigger times (Unix seconds) of EndpointSlice updates seen by the watch
/// and not yet in a successful sync.
#[derive(Debug, Clone, Default)]
pub struct TriggerTimes(Arc<Mutex<Vec<f64>>>);

impl TriggerTimes {
    fn push(&self, unix_seconds: f64) {
        if let Ok(mut v) = self.0.lock() {
            if v.len() < MAX_PENDING_TRIGGERS {
                v.push(unix_seconds);
            }
        }
    }

    /// Takes the pending times: the changes the next map build includes.
    pub fn take(&self) -> Vec<f64> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    /// Puts back times whose sync failed (programmed by a later one).
    pub fn restore(&self, times: Vec<f64>) {
        if let Ok(mut v) = self.0.lock() {
            v.extend(times);
            v.truncate(MAX_PENDING_TRIGGERS);
        }
    }
}

/// The trigger time annotation of an object, in Unix seconds.
fn trigger_time(meta: &kube::api::ObjectMeta) -> Option<f64> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let text = meta.annotations.as_ref()?.get(TRIGGER_TIME_ANNOTATION)?;
    let time: Time = serde_json::from_value(serde_json::Value::String(text.clone())).ok()?;
    Some(time.0.as_millisecond() as f64 / 1000.0)
}

/// Reflector stores of everything the model is built from.
pub struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    tasks: Vec<JoinHandle<()>>,
}

fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    notify: Arc<Notify>,
    changes: Option<Counter>,
    triggers: Option<TriggerTimes>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    let object = matches!(
                        event,
                        watcher::Event::Apply(_)
                            | watcher::Event::Delete(_)
                            | watcher::Event::InitApply(_)
                    );
                    if let Some(c) = changes.as_ref().filter(|_| object) {
                        c.inc();
                    }
                    // Updates only: the initial list carries old changes.
                    if let (Some(t), watcher::Event::Apply(obj)) = (&triggers, &event) {
                        if let Some(at) = trigger_time(obj.meta()) {
                            t.push(at);
                        }
                    }
                    notify.notify_one();
                }
                // The backoff retries; the store keeps the last state meanwhile.
                Err(error) => {
                    tracing::warn!(%error, kind = K::kind(&()).as_ref(), "watch failed, retrying")
                }
            }
        }
    });
    (reader, task)
}

impl Stores {
    /// Starts the watches; `notify` is poked on every change, `changes` counts them.
    pub fn start(
        client: Client,
        node_name: &str,
        notify: Arc<Notify>,
        changes: ChangeCounters,
    ) -> Stores {
        let (services, t1) = reflect(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
            notify.clone(),
            Some(changes.services),
            None,
        );
        let (slices, t2) = reflect(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(model::SERVICE_NAME_LABEL),
            notify.clone(),
            Some(changes.endpoints),
            Some(changes.triggers),
        );
        let (nodes, t3) = reflect(
            Api::<Node>::all(client),
            watcher::Config::default().fields(&format!("metadata.name={node_name}")),
            notify,
            None,
            None,
        );
        Stores {
            services,
            slices,
            nodes,
            tasks: vec![t1, t2, t3],
        }
    }

    /// Waits until every store holds its first full list.
    pub async fn ready(&self) {
        let _ = self.services.wait_until_ready().await;
        let _ = self.slices.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
    }

    /// The service map for `node_name` from the current store contents. A
    /// node without a Node object (a standalone proxy) is known by name only.
    pub fn build(&self, node_name: &str) -> ServiceMap {
        let node = self
            .nodes
            .state()
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(node_name))
            .map(|n| model::node_info(n))
            .unwrap_or_else(|| NodeInfo {
                name: node_name.to_string(),
                ..NodeInfo::default()
            });
        let services = self.services.state();
        let slices = self.slices.state();
        model::build(&BuildInput {
            services: services.iter().map(|s| s.as_ref()).collect(),
            slices: slices.iter().map(|s| s.as_ref()).collect(),
            node: &node,
        })
    }
}

impl Drop for Stores {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(annotation: Option<&str>) -> kube::api::ObjectMeta {
        kube::api::ObjectMeta {
            annotations: annotation
                .map(|a| [(TRIGGER_TIME_ANNOTATION.to_string(), a.to_string())].into()),
            ..Default::default()
        }
    }

    #[test]
    fn reads_the_trigger_time_annotation() {
        assert_eq!(
            trigger_time(&meta(Some("2026-11-24T04:00:00.5Z"))),
            Some(1_795_492_800.5)
        );
        assert_eq!(trigger_time(&meta(Some("yesterday"))), None);
        assert_eq!(trigger_time(&meta(None)), None);
    }

    #[test]
    fn pending_trigger_times_are_taken_once_and_bounded() {
        let t = TriggerTimes::default();
        t.push(1.0);
        t.push(2.0);
        assert_eq!(t.take(), vec![1.0, 2.0]);
        assert!(t.take().is_empty());
        t.restore(vec![0.0; MAX_PENDING_TRIGGERS + 5]);
        t.push(3.0);
        assert_eq!(t.take().len(), MAX_PENDING_TRIGGERS);
    }
}
