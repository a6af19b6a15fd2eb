//! Starting the agent: API client from the kubeconfig, the HTTPS endpoint,
//! node registration and heartbeat, the pod network config (from
//! `--cni-conf-dir` or a default bridge config over the node's podCIDR), the
//! runtime pieces, routes to other nodes, the service proxy ([`crate::proxy`]),
//! node-local DNS ([`crate::dns`])
//! and the pod manager.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kube::config::{KubeConfigOptions, Kubeconfig};
use skiff_cni::NetConf;

use crate::context::Ctx;
use crate::image::ImageStore;
use crate::node::{self, NodeIdentity};
use crate::runtime::cgroup::NodeCgroups;
use crate::runtime::runc::Runc;
use crate::sandbox::DnsSettings;

/// Settings of `skiff agent`.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub kubeconfig: PathBuf,
    pub node_name: String,
    pub netns: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub cni_conf_dir: Option<PathBuf>,
    pub insecure_registries: Vec<String>,
    /// Node InternalIP; detected from the node namespace when absent.
    pub node_ip: Option<IpAddr>,
    /// Address and port of the HTTPS endpoint (port 0 = any free port).
    pub listen: SocketAddr,
    pub cluster_dns: String,
    pub cluster_domain: String,
    pub max_pods: u32,
    /// argv prefix that runs the shim (`[/path/to/skiff, agent]`).
    pub shim_command: Vec<String>,
    /// The embedded service proxy (`--proxy-mode`, `--cluster-cidr`).
    pub proxy: crate::proxy::ProxySettings,
    /// The embedded node-local DNS server (`--node-local-dns`).
    pub dns: crate::dns::NodeDnsSettings,
}

/// Errors starting the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("reading kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error(transparent)]
    Node(#[from] node::NodeError),
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
    #[error(transparent)]
    Cgroup(#[from] crate::runtime::cgroup::CgroupError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error("network config: {0}")]
    NetConf(String),
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The first global IPv4 (else IPv6) address in the node namespace.
async fn detect_node_ip(netns: Option<&Path>) -> Option<IpAddr> {
    use futures::TryStreamExt;
    use netlink_packet_route::address::AddressAttribute;
    let ns = match netns {
        Some(p) => skiff_cni::Netns::open(p).ok()?,
        None => skiff_cni::Netns::current(),
    };
    let h = ns.netlink().ok()?;
    let mut addrs = h.address().get().execute();
    let mut found: Vec<IpAddr> = Vec::new();
    while let Ok(Some(msg)) = addrs.try_next().await {
        for a in &msg.attributes {
            if let AddressAttribute::Address(ip) = a {
                let global = match ip {
                    IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
                    IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
                };
                if global {
                    found.push(*ip);
                }
            }
        }
    }
    found.sort_by_key(|ip| ip.is_ipv6());
    found.first().copied()
}

/// The pod network config: the first `*.conf`/`*.conflist` of `dir`, or a
/// bridge over `pod_cidrs` with its IPAM store under `data_dir`.
pub fn network_config(
    dir: Option<&Path>,
    pod_cidrs: &[String],
    data_dir: &Path,
) -> Result<NetConf, AgentError> {
    if let Some(dir) = dir {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| AgentError::NetConf(format!("{}: {e}", dir.display())))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conf" | "conflist" | "json")
                )
            })
            .collect();
        files.sort();
        let Some(file) = files.first() else {
            return Err(AgentError::NetConf(format!(
                "no *.conf or *.conflist in {}",
                dir.display()
            )));
        };
        let text = std::fs::read(file)
            .map_err(|e| AgentError::NetConf(format!("{}: {e}", file.display())))?;
        let mut v: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| AgentError::NetConf(format!("{}: {e}", file.display())))?;
        if let Some(plugins) = v.get("plugins").and_then(|p| p.as_array()).cloned() {
            let mut first = plugins.into_iter().next().unwrap_or_default();
            first["cniVersion"] = v["cniVersion"].clone();
            first["name"] = v["name"].clone();
            v = first;
        }
        return NetConf::parse(v.to_string().as_bytes())
            .map_err(|e| AgentError::NetConf(format!("{}: {e}", file.display())));
    }
    let ranges: Vec<serde_json::Value> = pod_cidrs
        .iter()
        .map(|c| serde_json::json!([{"subnet": c}]))
        .collect();
    let mut routes = vec![serde_json::json!({"dst": "0.0.0.0/0"})];
    if pod_cidrs.iter().any(|c| c.contains(':')) {
        routes.push(serde_json::json!({"dst": "::/0"}));
    }
    let conf = serde_json::json!({
        "cniVersion": skiff_cni::SPEC_VERSION,
        "name": "skiff",
        "type": "skiff",
        "bridge": skiff_cni::config::DEFAULT_BRIDGE,
        "hairpinMode": true,
        "ipam": {"type": "skiff", "ranges": ranges, "routes": routes,
                 "dataDir": data_dir.join("cni")},
    });
    NetConf::parse(conf.to_string().as_bytes()).map_err(|e| AgentError::NetConf(e.to_string()))
}

/// Runs the agent until the process is stopped.
pub async fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| AgentError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let kc_err = |message: String| AgentError::Kubeconfig {
        path: cfg.kubeconfig.clone(),
        message,
    };
    let kubeconfig = Kubeconfig::read_from(&cfg.kubeconfig).map_err(|e| kc_err(e.to_string()))?;
    let mut kube_config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| kc_err(e.to_string()))?;
    // The server records "skiff-agent" as the field manager of the node and
    // pod status the agent writes (upstream: "kubelet"), from this header.
    kube_config.headers.push((
        hyper::header::USER_AGENT,
        hyper::header::HeaderValue::from_static(concat!("skiff-agent/", env!("CARGO_PKG_VERSION"))),
    ));
    let client = kube::Client::try_from(kube_config.clone()).map_err(|e| kc_err(e.to_string()))?;

    let internal_ip = match cfg.node_ip {
        Some(ip) => ip,
        None => detect_node_ip(cfg.netns.as_deref())
            .await
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    };
    let (log_server, listener, acceptor) = crate::server::LogServer::bind(
        cfg.listen,
        cfg.data_dir.join("logs"),
        kube_config,
        &cfg.node_name,
    )
    .await?;
    let port = listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or(cfg.listen.port());
    tokio::spawn(log_server.serve(listener, acceptor));
    let serving_ip = cfg.listen.ip();
    let agent_address = match serving_ip {
        ip if ip.is_unspecified() || ip == internal_ip => None,
        ip => Some(ip),
    };
    let id = NodeIdentity {
        name: cfg.node_name.clone(),
        internal_ip,
        agent_address,
        port,
        max_pods: cfg.max_pods,
        labels: Default::default(),
    };
    let node = node::register(&client, &id).await?;
    tracing::info!(node = %cfg.node_name, %internal_ip, port, "node registered");
    tokio::spawn(node::heartbeat(client.clone(), id, node));
    crate::proxy::spawn(
        client.clone(),
        &cfg.node_name,
        cfg.netns.clone(),
        &cfg.proxy,
    );
    crate::dns::spawn(client.clone(), cfg.netns.clone(), &cfg.dns);

    let pod_cidrs = if cfg.cni_conf_dir.is_some() {
        Vec::new()
    } else {
        node::wait_pod_cidrs(&client, &cfg.node_name).await?
    };
    let netconf = network_config(cfg.cni_conf_dir.as_deref(), &pod_cidrs, &cfg.data_dir)?;
    if let Some(netns) = cfg.netns.clone() {
        tokio::spawn(node::sync_routes(
            client.clone(),
            cfg.node_name.clone(),
            netns,
        ));
    }
    let ctx = Arc::new(Ctx {
        events: crate::events::Recorder::start(client.clone(), &cfg.node_name),
        client,
        node_name: cfg.node_name.clone(),
        runc: Runc::new(cfg.data_dir.join("runc")),
        cgroups: NodeCgroups::detect(&cfg.node_name)?,
        images: ImageStore::open(cfg.data_dir.join("images"), cfg.insecure_registries.clone())?,
        node_netns: cfg.netns.clone(),
        netconf,
        dns: DnsSettings {
            nameserver: cfg.cluster_dns.clone(),
            cluster_domain: cfg.cluster_domain.clone(),
        },
        host_ip: internal_ip,
        shim_command: cfg.shim_command.clone(),
        data_dir: cfg.data_dir.clone(),
    });
    crate::pods::Manager::new(ctx).run().await;
    Ok(())
}
