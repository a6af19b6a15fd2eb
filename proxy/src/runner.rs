//! The proxy's main loop, shared by `skiff proxy` and the node agent:
//! watch → rebuild the [`ServiceMap`] → diff → [`Dataplane::sync`] on a
//! blocking thread, rate-limited, with a periodic full resync that repairs
//! drift and a full retry after any failed sync.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use kube::Client;
use skiff_cni::Netns;
use tokio::sync::Notify;

use crate::dataplane::Dataplane;
use crate::health::{HealthError, HealthState, HttpServers};
use crate::iptables::{BackendChoice, Family, Iptables, RuleOptions};
use crate::model::{self, Changes, ServiceMap};
use crate::watch::Stores;
use crate::Mode;

/// How long to wait before retrying a failed sync.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Settings of one proxy instance.
#[derive(Debug, Clone)]
pub struct Config {
    /// Name of the node the proxy serves (endpoints with this `nodeName` are local).
    pub node_name: String,
    /// Data plane.
    pub mode: Mode,
    /// Network namespace to program (`None`: the proxy's own).
    pub netns: Option<PathBuf>,
    /// `/healthz` listen address (inside the namespace).
    pub healthz_listen: Option<SocketAddr>,
    /// `/metrics` listen address (inside the namespace).
    pub metrics_listen: Option<SocketAddr>,
    /// Full resync period.
    pub sync_period: Duration,
    /// Minimum time between two syncs (changes arriving faster are batched).
    pub min_sync_interval: Duration,
    /// Pod network(s): ClusterIP traffic from elsewhere is masqueraded.
    pub cluster_cidrs: Vec<IpNetwork>,
    /// Masquerade all ClusterIP traffic.
    pub masquerade_all: bool,
    /// iptables implementation (legacy, nft, or detected: see [`crate::iptables::backend`]).
    pub iptables_backend: BackendChoice,
    /// eBPF: cgroup (relative to the cgroup v2 root) the socket programs
    /// attach to, instead of `skiff-<node>` (several proxies for one node
    /// name on one host, as in tests).
    pub ebpf_cgroup: Option<PathBuf>,
    /// eBPF: bpffs directory for maps and links, instead of
    /// `/sys/fs/bpf/skiff/<node>`.
    pub ebpf_pin_dir: Option<PathBuf>,
}

impl Config {
    /// Defaults for `node_name` in `mode`.
    pub fn new(node_name: impl Into<String>, mode: Mode) -> Config {
        Config {
            node_name: node_name.into(),
            mode,
            netns: None,
            healthz_listen: None,
            metrics_listen: None,
            sync_period: Duration::from_secs(30),
            min_sync_interval: Duration::from_millis(100),
            cluster_cidrs: Vec::new(),
            masquerade_all: false,
            iptables_backend: BackendChoice::Auto,
            ebpf_cgroup: None,
            ebpf_pin_dir: None,
        }
    }
}

/// Errors that stop the proxy.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The namespace given with `--netns` cannot be opened.
    #[error("opening network namespace {path}: {source}")]
    Netns {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: skiff_cni::netns::NetnsError,
    },
    /// An HTTP listener could not be started.
    #[error(transparent)]
    Http(#[from] HealthError),
    /// The kubeconfig cannot be read or used.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The requested data plane is not available.
    #[error("the {0} data plane is not available in this build: {1}")]
    Unavailable(&'static str, String),
}

fn open_netns(path: &Option<PathBuf>) -> Result<Netns, RunError> {
    match path {
        Some(p) => Netns::open(p).map_err(|source| RunError::Netns {
            path: p.clone(),
            source,
        }),
        None => Ok(Netns::current()),
    }
}

/// An API client from a kubeconfig file (for `skiff proxy --kubeconfig`).
pub async fn client_from_kubeconfig(path: &std::path::Path) -> Result<Client, RunError> {
    let err = |message: String| RunError::Kubeconfig {
        path: path.to_path_buf(),
        message,
    };
    let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| err(e.to_string()))?;
    // The field manager of what the proxy writes (events), as upstream
    // derives it from the User-Agent.
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(concat!("skiff-proxy/", env!("CARGO_PKG_VERSION"))),
    ));
    Client::try_from(config).map_err(|e| err(e.to_string()))
}

/// The data plane `config.mode` asks for. `ebpf` falls back to iptables, with
/// one log line saying why, when the kernel lacks what the programs need.
pub fn dataplane_for(config: &Config) -> Result<Box<dyn Dataplane>, RunError> {
    match config.mode {
        Mode::Iptables => iptables_dataplane(config),
        Mode::Ebpf => {
            if let Err(e) = crate::ebpf::supported() {
                tracing::warn!("eBPF data plane unavailable ({e}); falling back to iptables");
                return iptables_dataplane(config);
            }
            let dp = ebpf_dataplane(config)?;
            remove_iptables_leftovers(&open_netns(&config.netns)?, None);
            Ok(Box::new(dp))
        }
    }
}

/// Takes out the rules an earlier run left in iptables implementations
/// other than `keep` (see [`crate::iptables::backend::remove_leftovers`]);
/// a failure is logged, not fatal.
fn remove_iptables_leftovers(netns: &Netns, keep: Option<crate::iptables::Backend>) {
    match crate::iptables::backend::remove_leftovers(netns, keep) {
        Ok(cleaned) if cleaned.is_empty() => {}
        Ok(cleaned) => {
            let names: Vec<&str> = cleaned.iter().map(|b| b.as_str()).collect();
            tracing::info!(removed_from = ?names, "removed service rules an earlier run left in iptables");
        }
        Err(e) => tracing::warn!("removing service rules an earlier run left in iptables: {e}"),
    }
}

/// The eBPF data plane for `config`: socket programs on the node's cgroup,
/// tc programs on every node interface in the node's namespace.
pub fn ebpf_dataplane(config: &Config) -> Result<crate::ebpf::EbpfDataplane, RunError> {
    use crate::ebpf::{ensure_subtree, node_cgroup, EbpfConfig, EbpfError};
    let ebpf = |e: EbpfError| RunError::Unavailable("ebpf", e.to_string());
    let node = &config.node_name;
    let cgroup = config
        .ebpf_cgroup
        .clone()
        .unwrap_or_else(|| PathBuf::from(node_cgroup(node)));
    let cfg = EbpfConfig {
        pin_dir: ebpf_pin_dir(config),
        cgroup: ensure_subtree(&cgroup).map_err(|e| ebpf(e.into()))?,
        interfaces: Vec::new(),
        discover_interfaces: true,
        netns: config.netns.clone(),
        maglev_size: skiff_common::maglev::DEFAULT_SIZE,
        tcp_destroy_grace: crate::ebpf::TCP_DESTROY_GRACE,
    };
    let dp = crate::ebpf::EbpfDataplane::new(cfg).map_err(ebpf)?;
    tracing::info!(
        interfaces = ?dp.interfaces(),
        "eBPF data plane: socket load balancing on the node cgroup, tc on node interfaces"
    );
    Ok(dp)
}

/// The bpffs directory of the eBPF data plane of `config`.
fn ebpf_pin_dir(config: &Config) -> PathBuf {
    config
        .ebpf_pin_dir
        .clone()
        .unwrap_or_else(|| crate::ebpf::EbpfConfig::default_pin_dir(&config.node_name))
}

fn iptables_dataplane(config: &Config) -> Result<Box<dyn Dataplane>, RunError> {
    let options = RuleOptions {
        cluster_cidrs: config.cluster_cidrs.clone(),
        masquerade_all: config.masquerade_all,
    };
    let netns = open_netns(&config.netns)?;
    let (backend, why) = config
        .iptables_backend
        .resolve(&netns)
        .map_err(|e| RunError::Unavailable("iptables", e.to_string()))?;
    tracing::info!(backend = backend.as_str(), "iptables implementation: {why}");
    remove_iptables_leftovers(&netns, Some(backend));
    Ok(Box::new(Iptables::new(
        netns,
        options,
        vec![Family::V4, Family::V6],
        backend,
    )))
}

/// Runs the proxy with the data plane of `config.mode` until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let dataplane = dataplane_for(&config)?;
    run_with(client, config, dataplane, shutdown).await
}

/// Seconds since the Unix epoch.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Endpoints above which the proxy is in "large cluster mode", as kube-proxy's
/// `largeClusterEndpointsThreshold`.
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;
/// Full resync period in large cluster mode: a full iptables rewrite of 10k
/// services takes seconds of CPU, so (like kube-proxy, which forces a full
/// sync hourly) only changes are synced in between.
const LARGE_CLUSTER_FULL_RESYNC: Duration = Duration::from_secs(3600);

/// How long a full resync (drift repair) may wait, given what is installed.
fn full_resync_period(config: &Config, applied: &ServiceMap) -> Duration {
    if applied.endpoint_count() > LARGE_CLUSTER_ENDPOINTS {
        config.sync_period.max(LARGE_CLUSTER_FULL_RESYNC)
    } else {
        config.sync_period
    }
}

/// Runs the proxy with a given data plane until `shutdown` resolves.
pub async fn run_with(
    client: Client,
    config: Config,
    mut dataplane: Box<dyn Dataplane>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let netns = Arc::new(open_netns(&config.netns)?);
    let health = HealthState::new(config.sync_period);
    if dataplane.name() == "ebpf" {
        health
            .metrics()
            .add_collector(Box::new(crate::ebpf::EbpfCollector::new(ebpf_pin_dir(
                &config,
            ))));
    }
    let mut http = HttpServers::start(
        netns,
        health.clone(),
        config.healthz_listen,
        config.metrics_listen,
    )?;
    let notify = Arc::new(Notify::new());
    let triggers = health.metrics().change_counters().triggers;
    let stores = Stores::start(
        client,
        &config.node_name,
        notify.clone(),
        health.metrics().change_counters(),
    );
    tokio::pin!(shutdown);
    tokio::select! {
        () = stores.ready() => {}
        () = &mut shutdown => return Ok(()),
    }
    tracing::info!(node = %config.node_name, mode = dataplane.name(), "proxy watching; first sync");
    let mut applied = ServiceMap::default();
    let mut need_full = true;
    let mut last_full = Instant::now();
    let mut last_sync: Option<Instant> = None;
    loop {
        if let Some(at) = last_sync {
            let next = at + config.min_sync_interval;
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {}
                () = &mut shutdown => return Ok(()),
            }
        }
        if last_full.elapsed() >= full_resync_period(&config, &applied) {
            need_full = true;
        }
        // Taken before the build: these changes are in the map.
        let programmed = triggers.take();
        let map = stores.build(&config.node_name);
        // Always diff against the last applied map, so a full resync still
        // carries the stale endpoints for conntrack cleanup.
        let mut changes = model::diff(&applied, &map);
        if need_full {
            changes.full = true;
            changes.updated = Changes::full(&map).updated;
        }
        if !changes.is_empty() {
            let started = Instant::now();
            // A changed node identity makes the diff full as well.
            let full = changes.full;
            let (dp, result, map) = tokio::task::spawn_blocking(move || {
                let r = dataplane.sync(&map, &changes);
                (dataplane, r, map)
            })
            .await
            .map_err(|e| RunError::Unavailable("sync", format!("sync task failed: {e}")))?;
            dataplane = dp;
            match result {
                Ok(stats) => {
                    let took = started.elapsed();
                    tracing::debug!(
                        ports = map.ports.len(),
                        rules = stats.rules,
                        ?took,
                        full,
                        "synced"
                    );
                    health.synced(&map, full, took, stats.rules);
                    health.metrics().programmed(&programmed, unix_now());
                    http.update_health_ports();
                    if full {
                        last_full = Instant::now();
                    }
                    need_full = false;
                    applied = map;
                }
                Err(e) => {
                    tracing::warn!("sync failed, retrying with a full sync: {e}");
                    health.metrics().failed();
                    triggers.restore(programmed);
                    need_full = true;
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_AFTER) => {}
                        () = &mut shutdown => return Ok(()),
                    }
                    last_sync = Some(Instant::now());
                    continue;
                }
            }
        } else {
            // Nothing changed: still tell /healthz the data plane is current.
            health.alive();
            health.metrics().programmed(&programmed, unix_now());
        }
        last_sync = Some(Instant::now());
        // Wake at least every sync period: /healthz wants a recent sign of life
        // even while a large cluster's full resync is an hour away.
        let until_resync = full_resync_period(&config, &applied)
            .saturating_sub(last_full.elapsed())
            .min(config.sync_period);
        tokio::select! {
            () = notify.notified() => {}
            () = tokio::time::sleep(until_resync) => {}
            () = &mut shutdown => return Ok(()),
        }
    }
}
