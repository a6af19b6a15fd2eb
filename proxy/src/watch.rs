//! The watch side: kube-rs reflectors for Services, EndpointSlices and this
//! node's Node object. Every event pokes a [`Notify`] (and Service and
//! EndpointSlice changes count in [`ChangeCounters`]); the sync loop then
//! rebuilds the service map from the stores (works against any Kubernetes
//! API server: only list/watch with a label and a field selector are used).

use std::sync::Arc;

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

/// Counters of object changes received (added, modified or deleted,
/// including those of every relist), as kube-proxy's
/// `..._service_changes_total` / `..._endpoint_changes_total`.
#[derive(Debug, Clone, Default)]
pub struct ChangeCounters {
    /// Service changes.
    pub services: Counter,
    /// EndpointSlice changes.
    pub endpoints: Counter,
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
        );
        let (slices, t2) = reflect(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(model::SERVICE_NAME_LABEL),
            notify.clone(),
            Some(changes.endpoints),
        );
        let (nodes, t3) = reflect(
            Api::<Node>::all(client),
            watcher::Config::default().fields(&format!("metadata.name={node_name}")),
            notify,
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
