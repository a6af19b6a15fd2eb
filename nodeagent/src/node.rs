//! The Node object of this agent: registration (capacity, allocatable,
//! addresses, nodeInfo, conditions, daemonEndpoints), periodic status posts,
//! the Lease heartbeat in `kube-node-lease` every 10 s, and host-gw routes to
//! the other nodes' pod CIDRs (only inside the node's own network namespace).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// Version the agent reports as `nodeInfo.kubeletVersion`.
pub const KUBELET_VERSION: &str = "v1.37.0-skiff";
/// How often the Lease is renewed.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// How often the full node status is posted even when nothing changed.
pub const STATUS_PERIOD: Duration = Duration::from_secs(60);
/// Annotation naming the address the API server reaches the agent's HTTPS
/// endpoint at, when that is not the node's InternalIP (agents serving from
/// outside their node namespace in the lab).
pub const AGENT_ADDRESS_ANNOTATION: &str = "node.skiff.dev/agent-address";

/// Errors talking about the Node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The API server refused or failed.
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// The node never got a podCIDR from node IPAM.
    #[error("node {0} has no spec.podCIDR after 60 s; is the node-ipam controller running (skiff server --cluster-cidr)?")]
    NoPodCidr(String),
}

/// What the agent tells the API server about its node.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub name: String,
    pub internal_ip: IpAddr,
    /// Address of the HTTPS endpoint when it differs from `internal_ip`.
    pub agent_address: Option<IpAddr>,
    pub port: u16,
    pub max_pods: u32,
    pub labels: BTreeMap<String, String>,
}

fn memory_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn first_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().next().map(str::trim).map(str::to_string))
        .unwrap_or_default()
}

fn runc_version() -> String {
    std::process::Command::new("runc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .map_or_else(|| "runc://unknown".into(), |v| format!("runc://{v}"))
}

/// The `status` part of the Node.
pub fn status(id: &NodeIdentity) -> serde_json::Value {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = memory_bytes();
    let capacity = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{}Ki", mem / 1024),
        "pods": id.max_pods.to_string(),
        "ephemeral-storage": "100Gi",
    });
    // Upstream reserves 100Mi for eviction by default.
    let allocatable = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{}Ki", mem.saturating_sub(100 << 20) / 1024),
        "pods": id.max_pods.to_string(),
        "ephemeral-storage": "100Gi",
    });
    let now = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string();
    let cond = |t: &str, s: &str, reason: &str, msg: &str| {
        json!({"type": t, "status": s, "reason": reason, "message": msg,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let kernel = first_line("/proc/sys/kernel/osrelease");
    let os_image = first_line("/etc/os-release")
        .strip_prefix("PRETTY_NAME=")
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_else(|| {
            std::fs::read_to_string("/etc/os-release")
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .unwrap_or("Linux")
                .trim_matches('"')
                .to_string()
        });
    json!({
        "capacity": capacity,
        "allocatable": allocatable,
        "addresses": [
            {"type": "InternalIP", "address": id.internal_ip.to_string()},
            {"type": "Hostname", "address": id.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": id.port}},
        "nodeInfo": {
            "machineID": first_line("/etc/machine-id"),
            "systemUUID": first_line("/etc/machine-id"),
            "bootID": first_line("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": kernel,
            "osImage": os_image,
            "containerRuntimeVersion": runc_version(),
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        },
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("NetworkUnavailable", "False", "RouteCreated", "skiff agent configured the pod network"),
            cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ],
    })
}

/// Creates the Node (or takes over an existing one) and posts its status.
pub async fn register(client: &Client, id: &NodeIdentity) -> Result<Node, NodeError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = id.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), id.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert(
        "kubernetes.io/arch".into(),
        std::env::consts::ARCH
            .replace("x86_64", "amd64")
            .replace("aarch64", "arm64"),
    );
    let mut annotations = BTreeMap::new();
    if let Some(a) = id.agent_address {
        annotations.insert(AGENT_ADDRESS_ANNOTATION.to_string(), a.to_string());
    }
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": id.name, "labels": labels, "annotations": annotations},
    }))
    .map_err(|e| NodeError::Api {
        what: "building the Node".into(),
        source: kube::Error::SerdeError(e),
    })?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let patch = json!({"metadata": {"labels": labels, "annotations": annotations}});
            nodes
                .patch(&id.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|source| NodeError::Api {
                    what: format!("updating node {}", id.name),
                    source,
                })?;
        }
        Err(source) => {
            return Err(NodeError::Api {
                what: format!("registering node {}", id.name),
                source,
            })
        }
    }
    post_status(client, id).await
}

/// PATCHes the node status.
pub async fn post_status(client: &Client, id: &NodeIdentity) -> Result<Node, NodeError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = json!({"status": status(id)});
    nodes
        .patch_status(&id.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| NodeError::Api {
            what: format!("posting status of node {}", id.name),
            source,
        })
}

/// Waits (up to 60 s) until node IPAM gives the node a podCIDR.
pub async fn wait_pod_cidrs(client: &Client, name: &str) -> Result<Vec<String>, NodeError> {
    let nodes: Api<Node> = Api::all(client.clone());
    for _ in 0..120 {
        if let Ok(node) = nodes.get(name).await {
            let spec = node.spec.unwrap_or_default();
            let mut cidrs = spec.pod_cidrs.unwrap_or_default();
            if cidrs.is_empty() {
                cidrs.extend(spec.pod_cidr);
            }
            if !cidrs.is_empty() {
                return Ok(cidrs);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(NodeError::NoPodCidr(name.to_string()))
}

/// Renews (creating if needed) the node's Lease once.
pub async fn renew_lease(client: &Client, node: &Node) -> Result<(), NodeError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": "kube-node-lease",
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Node", "name": name,
                "uid": node.metadata.uid.clone().unwrap_or_default(),
            }],
        },
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now},
    });
    let api = |source| NodeError::Api {
        what: format!("renewing lease of node {name}"),
        source,
    };
    match leases.get_opt(&name).await.map_err(api)? {
        Some(_) => {
            let patch = json!({"spec": {"holderIdentity": name, "renewTime": now}});
            leases
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(api)?;
        }
        None => {
            let lease: Lease =
                serde_json::from_value(lease).map_err(|e| api(kube::Error::SerdeError(e)))?;
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map_err(api)?;
        }
    }
    Ok(())
}

/// Lease renewal and periodic status posting, forever.
pub async fn heartbeat(client: Client, id: NodeIdentity, node: Node) {
    let mut since_status = Duration::ZERO;
    loop {
        if let Err(e) = renew_lease(&client, &node).await {
            tracing::warn!("{e}");
        }
        tokio::time::sleep(LEASE_RENEW).await;
        since_status += LEASE_RENEW;
        if since_status >= STATUS_PERIOD {
            since_status = Duration::ZERO;
            if let Err(e) = post_status(&client, &id).await {
                tracing::warn!("{e}");
            }
        }
    }
}

/// The other nodes' pod CIDRs and InternalIPs, for host-gw routes.
pub fn remote_nodes(nodes: &[Node], me: &str) -> Vec<skiff_cni::RemoteNode> {
    nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(me))
        .filter_map(|n| {
            let spec = n.spec.clone().unwrap_or_default();
            let mut cidrs = spec.pod_cidrs.unwrap_or_default();
            if cidrs.is_empty() {
                cidrs.extend(spec.pod_cidr);
            }
            let ips: Vec<IpAddr> = n
                .status
                .as_ref()?
                .addresses
                .iter()
                .flatten()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect();
            let pod_cidrs = cidrs
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<_>>();
            (!ips.is_empty() && !pod_cidrs.is_empty()).then(|| skiff_cni::RemoteNode {
                name: n.metadata.name.clone().unwrap_or_default(),
                node_ips: ips,
                pod_cidrs,
                vtep_mac: None,
            })
        })
        .collect()
}

/// Keeps host-gw routes in the node namespace `netns` in line with the Node list, forever.
pub async fn sync_routes(client: Client, me: String, netns: PathBuf) {
    use futures::StreamExt;
    use kube::runtime::{reflector, watcher, WatchStreamExt};
    let nodes: Api<Node> = Api::all(client);
    let (reader, writer) = reflector::store();
    // Every event, InitDone included: the reflector fills its store from the
    // initial list only at InitDone, so syncing on the list's objects alone
    // saw an empty store, and nodes listed at start never got routes.
    let stream = reflector(writer, watcher(nodes, watcher::Config::default())).default_backoff();
    futures::pin_mut!(stream);
    while stream.next().await.is_some() {
        let list: Vec<Node> = reader.state().iter().map(|n| (**n).clone()).collect();
        let remotes = remote_nodes(&list, &me);
        let Ok(ns) = skiff_cni::Netns::open(&netns) else {
            continue;
        };
        match skiff_cni::HostGw::new(&ns) {
            Ok(gw) => {
                if let Err(e) = gw.sync(&remotes).await {
                    tracing::warn!("syncing routes to other nodes: {e}");
                }
            }
            Err(e) => tracing::warn!("routes in {}: {e}", netns.display()),
        }
    }
}
