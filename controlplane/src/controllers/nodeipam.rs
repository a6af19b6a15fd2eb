//! The node IPAM controller (upstream's range allocator): gives every Node a
//! `spec.podCIDR` / `spec.podCIDRs` of `--node-cidr-mask-size` out of
//! `--cluster-cidr`, never the same one to two nodes, and takes it back
//! when the node is deleted. The allocation is rebuilt from the nodes
//! themselves after every (re)list, so it survives restarts without state
//! of its own. When the range is exhausted the node gets a
//! `CIDRNotAvailable` event and waits until a CIDR is released.
//!
//! It only ever writes `spec.podCIDR(s)` of nodes that have none.

mod cidrset;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;

use self::cidrset::{CidrError, CidrSet};
use super::events::{self, EventType, Recorder};
use super::Context;

/// Delay before nodes whose allocation failed are tried again.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Errors assigning a podCIDR.
#[derive(Debug, thiserror::Error)]
pub enum NodeIpamError {
    /// The allocator could not hand out a CIDR.
    #[error(transparent)]
    Cidr(#[from] CidrError),
    /// Writing the node failed.
    #[error("cannot set podCIDR {cidr} on node {node}: {source}")]
    Patch {
        /// The node.
        node: String,
        /// The CIDR.
        cidr: IpNetwork,
        /// The API error.
        source: kube::Error,
    },
}

/// The allocator and what it knows about nodes.
struct Allocator {
    set: CidrSet,
    mask: u8,
    /// podCIDR per node, as written by us or found on the node.
    assigned: HashMap<String, IpNetwork>,
    /// Nodes still waiting for a podCIDR.
    pending: BTreeSet<String>,
    /// Nodes listed during a relist, applied when it completes.
    listing: Option<Vec<Node>>,
    /// The range ran out; set until a CIDR is released.
    exhausted: bool,
    /// Nodes that got a `CIDRNotAvailable` event since they began waiting.
    told_exhausted: BTreeSet<String>,
}

/// The podCIDRs a node carries (`podCIDRs`, else `podCIDR`), parsed.
fn node_cidrs(node: &Node) -> Vec<IpNetwork> {
    let spec = node.spec.as_ref();
    let listed: Vec<&String> = spec
        .and_then(|s| s.pod_cidrs.as_ref())
        .into_iter()
        .flatten()
        .collect();
    let single = spec.and_then(|s| s.pod_cidr.as_ref());
    let raw: Vec<&String> = if listed.is_empty() {
        single.into_iter().collect()
    } else {
        listed
    };
    raw.into_iter()
        .filter_map(|c| match c.parse() {
            Ok(net) => Some(net),
            Err(e) => {
                let name = node.metadata.name.as_deref().unwrap_or_default();
                tracing::warn!("node {name} has an unparsable podCIDR {c:?}: {e}");
                None
            }
        })
        .collect()
}

impl Allocator {
    /// Records the CIDRs a node already has; false when it has none.
    fn observe(&mut self, node: &Node) -> bool {
        let Some(name) = node.metadata.name.clone() else {
            return false;
        };
        let cidrs = node_cidrs(node);
        let Some(primary) = cidrs
            .iter()
            .find(|c| c.is_ipv4() == self.set.cluster().is_ipv4())
            .copied()
        else {
            return !cidrs.is_empty();
        };
        if let Some(previous) = self.assigned.insert(name.clone(), primary) {
            if previous != primary {
                self.release_unless_shared(&previous);
            }
        }
        if let Err(e) = self.set.occupy(&primary) {
            tracing::warn!("node {name}: podCIDR left alone: {e}");
        }
        self.pending.remove(&name);
        true
    }

    fn release_unless_shared(&mut self, cidr: &IpNetwork) {
        if !self.assigned.values().any(|c| c == cidr) {
            // Only CIDRs inside the cluster CIDR were occupied.
            let _ = self.set.release(cidr);
        }
    }

    fn forget(&mut self, name: &str) {
        self.pending.remove(name);
        self.told_exhausted.remove(name);
        if let Some(cidr) = self.assigned.remove(name) {
            self.release_unless_shared(&cidr);
            self.exhausted = false;
            tracing::info!("node {name} deleted; podCIDR {cidr} released");
        }
    }

    /// Starts over from a complete list of nodes.
    fn rebuild(&mut self, nodes: Vec<Node>) {
        self.set = match CidrSet::new(self.set.cluster(), self.mask) {
            Ok(set) => set,
            Err(_) => return,
        };
        self.assigned.clear();
        self.pending.clear();
        self.exhausted = false;
        for node in &nodes {
            self.observe(node);
        }
        for node in &nodes {
            let Some(name) = node.metadata.name.clone() else {
                continue;
            };
            if !self.assigned.contains_key(&name) && node_cidrs(node).is_empty() {
                self.pending.insert(name);
            }
        }
        tracing::info!(
            "node IPAM: {} nodes hold {} podCIDRs of {}; {} waiting",
            nodes.len(),
            self.set.allocated(),
            self.set.cluster(),
            self.pending.len()
        );
    }
}

/// Runs the controller until the process ends.
pub async fn run(ctx: Arc<Context>) {
    let settings = &ctx.settings;
    let set = match CidrSet::new(settings.cluster_cidr, settings.node_cidr_mask_size) {
        Ok(set) => set,
        Err(e) => {
            tracing::error!("node IPAM controller not started: {e}");
            return;
        }
    };
    let mut alloc = Allocator {
        set,
        mask: settings.node_cidr_mask_size,
        assigned: HashMap::new(),
        pending: BTreeSet::new(),
        listing: None,
        exhausted: false,
        told_exhausted: BTreeSet::new(),
    };
    let api: Api<Node> = Api::all(ctx.client.clone());
    let recorder = Recorder::new(ctx.client.clone(), "cidrAllocator");
    let stream = watcher(api.clone(), watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    loop {
        let retry = tokio::time::sleep(RETRY_DELAY);
        let event = tokio::select! {
            event = stream.next() => match event {
                Some(event) => Some(event),
                None => return,
            },
            _ = retry, if !alloc.pending.is_empty() && alloc.listing.is_none() && !alloc.exhausted => None,
        };
        match event {
            None => {}
            Some(Err(e)) => {
                tracing::warn!("node IPAM: watch of nodes failed, retrying with backoff: {e}");
                continue;
            }
            Some(Ok(Event::Init)) => alloc.listing = Some(Vec::new()),
            Some(Ok(Event::InitApply(node))) => {
                alloc.listing.get_or_insert_with(Vec::new).push(node)
            }
            Some(Ok(Event::InitDone)) => {
                let nodes = alloc.listing.take().unwrap_or_default();
                alloc.rebuild(nodes);
            }
            Some(Ok(Event::Apply(node))) => {
                let Some(name) = node.metadata.name.clone() else {
                    continue;
                };
                // A node we already patched may still show up without a CIDR.
                if !alloc.observe(&node) && !alloc.assigned.contains_key(&name) {
                    alloc.pending.insert(name);
                }
            }
            Some(Ok(Event::Delete(node))) => {
                if let Some(name) = node.metadata.name.as_deref() {
                    alloc.forget(name);
                }
            }
        }
        if alloc.listing.is_none() {
            assign_pending(&mut alloc, &api, &recorder).await;
        }
    }
}

/// Gives every waiting node a podCIDR; failures stay pending for a retry.
async fn assign_pending(alloc: &mut Allocator, api: &Api<Node>, recorder: &Recorder) {
    let waiting: Vec<String> = alloc.pending.iter().cloned().collect();
    for name in waiting {
        match assign(alloc, api, &name).await {
            Ok(cidr) => {
                tracing::info!("node {name}: podCIDR {cidr}");
                alloc.pending.remove(&name);
                alloc.told_exhausted.remove(&name);
                alloc.assigned.insert(name, cidr);
            }
            Err(NodeIpamError::Patch {
                source: kube::Error::Api(s),
                ..
            }) if s.code == 404 => {
                alloc.pending.remove(&name);
            }
            Err(e @ NodeIpamError::Cidr(CidrError::Exhausted { .. })) => {
                // Nothing can succeed until a node goes away; tell each node once.
                alloc.exhausted = true;
                if alloc.told_exhausted.insert(name.clone()) {
                    tracing::warn!("node {name}: {e}");
                    if let Ok(node) = api.get(&name).await {
                        let about = events::reference(&node);
                        recorder
                            .record(
                                &about,
                                EventType::Warning,
                                "CIDRNotAvailable",
                                &e.to_string(),
                            )
                            .await;
                    }
                }
            }
            Err(e) => tracing::warn!("node {name}: {e}"),
        }
    }
}

/// Allocates a CIDR and writes it to the node; frees it again on failure.
async fn assign(
    alloc: &mut Allocator,
    api: &Api<Node>,
    name: &str,
) -> Result<IpNetwork, NodeIpamError> {
    let cidr = alloc.set.allocate()?;
    let patch =
        serde_json::json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(cidr),
        Err(source) => {
            let _ = alloc.set.release(&cidr);
            Err(NodeIpamError::Patch {
                node: name.to_string(),
                cidr,
                source,
            })
        }
    }
}
