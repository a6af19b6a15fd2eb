//! Cluster DNS: a record index fed by Service/EndpointSlice/Pod watches,
//! served by hickory-server over UDP and TCP, with upstream forwarding
//! through a bounded cache, and Prometheus metrics.
//!
//! The node agent embeds it; `skiff dns` runs it standalone:
//!
//! ```no_run
//! # async fn example(client: kube::Client) -> Result<(), skiff_dns::DnsError> {
//! let config = skiff_dns::Config {
//!     listen: vec!["169.254.20.10:53".parse().unwrap()],
//!     metrics_listen: Some("127.0.0.1:9153".parse().unwrap()),
//!     ..skiff_dns::Config::default()
//! };
//! skiff_dns::run(client, config, std::future::pending::<()>()).await
//! # }
//! ```
//!
//! Modules: [`records`] (Kubernetes objects → records, the spec),
//! [`index`] (names, NXDOMAIN vs NODATA), [`watch`] (kube watchers → index),
//! [`handler`] (one request → reply), [`autopath`] (search-path walks
//! answered in one query), [`upstream`] + [`cache`] (forwarding),
//! [`slim`] (decoding only the fields DNS uses),
//! [`sockets`] (where sockets are opened: the agent's are in the node's
//! network namespace), [`metrics`], [`packet`] (bytes → bytes, for tests and
//! fuzzing).

#![forbid(unsafe_code)]

pub mod autopath;
pub mod cache;
pub mod handler;
pub mod index;
mod key;
pub mod metrics;
pub mod packet;
pub mod records;
pub mod slim;
pub mod sockets;
pub mod udp;
pub mod upstream;
pub mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::Server;

pub use handler::Handler;
pub use sockets::{HostSockets, Sockets};

/// The default cluster zone.
pub const DEFAULT_ZONE: &str = "cluster.local";
/// The default TTL of cluster records, seconds.
pub const DEFAULT_TTL: u32 = 5;
/// The node-local address the agent listens on by default.
pub const NODE_LOCAL_ADDRESS: &str = "169.254.20.10";

/// How long a TCP client may stay idle between queries.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one upstream may take to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// How the DNS server runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Addresses to answer on, UDP and TCP each.
    pub listen: Vec<SocketAddr>,
    /// The cluster zone (`cluster.local`).
    pub zone: String,
    /// TTL of cluster records, seconds.
    pub ttl: u32,
    /// Upstream resolvers; `None` means the nameservers of `/etc/resolv.conf`,
    /// an empty list means nothing is forwarded (other names get SERVFAIL).
    pub upstreams: Option<Vec<SocketAddr>>,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Most upstream answers cached at once.
    pub cache_entries: usize,
    /// Most upstream queries in flight at once.
    pub max_upstream_inflight: usize,
    /// Answer a pod's search-path walk in one query ([`autopath`]); off by
    /// default, as in CoreDNS.
    pub autopath: bool,
    /// Makes the listening and forwarding sockets (the node agent opens them
    /// in the node's network namespace).
    pub sockets: Arc<dyn Sockets>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 53))],
            zone: DEFAULT_ZONE.to_string(),
            ttl: DEFAULT_TTL,
            upstreams: None,
            metrics_listen: None,
            cache_entries: 10_000,
            max_upstream_inflight: 1_024,
            autopath: false,
            sockets: Arc::new(HostSockets),
        }
    }
}

/// Errors that stop the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("invalid cluster zone {0:?}: it must be a DNS name like cluster.local")]
    Zone(String),
    #[error("no listen address given")]
    NoListen,
    #[error(
        "cannot listen for DNS on {addr} (is the port taken, or does it need root?): {source}"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error(transparent)]
    Watch(#[from] watch::WatchError),
    #[error("the DNS server stopped: {0}")]
    Server(String),
    #[error("cannot build a Kubernetes client from {source_of}: {detail}")]
    Client { source_of: String, detail: String },
}

/// A Kubernetes client from `kubeconfig`, or without one from the usual
/// places (`$KUBECONFIG`, `~/.kube/config`, the in-cluster service account).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, DnsError> {
    let source_of = kubeconfig.map_or_else(
        || "the default kubeconfig / in-cluster config".to_string(),
        |p| p.display().to_string(),
    );
    let fail = |detail: String| DnsError::Client {
        source_of: source_of.clone(),
        detail,
    };
    let mut config = match kubeconfig {
        Some(path) => {
            let file =
                kube::config::Kubeconfig::read_from(path).map_err(|e| fail(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| fail(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| fail(e.to_string()))?,
    };
    // Names us in the API server's logs and audit (the field manager of
    // anything we wrote; DNS only reads).
    config.headers.push((
        hyper::header::USER_AGENT,
        hyper::header::HeaderValue::from_static(concat!("skiff-dns/", env!("CARGO_PKG_VERSION"))),
    ));
    kube::Client::try_from(config).map_err(|e| fail(e.to_string()))
}

/// The handler shared between hickory-server and the loop probe.
struct Shared(Arc<Handler>);

#[async_trait::async_trait]
impl RequestHandler for Shared {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.0
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

/// The upstreams `config` asks for, or resolv.conf's, minus ourselves.
fn upstream_servers(config: &Config) -> Vec<SocketAddr> {
    let servers = match &config.upstreams {
        Some(servers) => servers.clone(),
        None => std::fs::read_to_string("/etc/resolv.conf")
            .map(|text| upstream::from_resolv_conf(&text))
            .unwrap_or_default(),
    };
    let kept = upstream::without_self(servers.clone(), &config.listen);
    if kept.len() != servers.len() {
        tracing::warn!(
            ?servers,
            ?kept,
            "dropped upstreams that are this server's own listen addresses (forwarding loop)"
        );
    }
    kept
}

/// Runs the DNS server until `shutdown` resolves: watches the cluster through
/// `client`, starts answering once the first list of Services, EndpointSlices
/// and Pods is indexed, and serves metrics if configured.
pub async fn run(
    client: kube::Client,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DnsError> {
    let zone = records::Zone::new(&config.zone, config.ttl)
        .ok_or_else(|| DnsError::Zone(config.zone.clone()))?;
    if config.listen.is_empty() {
        return Err(DnsError::NoListen);
    }
    let index = Arc::new(RwLock::new(index::Index::new(zone)));
    let metrics = Arc::new(metrics::Metrics::new());
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    // Bind before the first list so a taken port fails at once.
    let mut sockets = Vec::new();
    for addr in &config.listen {
        let bind = |source| DnsError::Bind {
            addr: *addr,
            source,
        };
        let udp = sockets::tokio_udp(config.sockets.as_ref(), *addr).map_err(bind)?;
        let tcp = sockets::tokio_listener(config.sockets.as_ref(), *addr).map_err(bind)?;
        sockets.push((udp, tcp));
    }

    let (synced_tx, mut synced_rx) = tokio::sync::watch::channel(false);
    let mut watch_task = tokio::spawn(watch::run(client, index.clone(), synced_tx));
    tokio::pin!(shutdown);
    tokio::select! {
        _ = &mut shutdown => {
            watch_task.abort();
            return Ok(());
        }
        ended = &mut watch_task => {
            return Err(flatten(ended));
        }
        _ = synced_rx.wait_for(|s| *s) => {}
    }

    let upstreams = upstream::Upstreams::with_sockets(
        upstream_servers(&config),
        UPSTREAM_TIMEOUT,
        config.max_upstream_inflight,
        config.sockets.clone(),
    );
    let handler = Arc::new(
        Handler::new(
            index.clone(),
            cache::Cache::new(config.cache_entries),
            upstreams,
            metrics.clone(),
        )
        .with_autopath(config.autopath),
    );
    // UDP, where nearly all queries come, is served by our own loop (no task
    // or channel per query); TCP by hickory-server.
    let mut server = Server::new(Shared(handler.clone()));
    let mut udp_tasks = tokio::task::JoinSet::new();
    for (udp, tcp) in sockets {
        udp_tasks.spawn(udp::serve(udp, handler.clone()));
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, 64 * 1024);
    }
    let metrics_task = metrics_listener.map(|l| tokio::spawn(metrics::serve(l, metrics)));
    let probe = tokio::spawn(async move { handler.probe_for_loops().await });
    let names = index.read().map(|i| i.len()).unwrap_or_default();
    tracing::info!(listen = ?config.listen, zone = %config.zone, names, "cluster DNS serving");

    let result = tokio::select! {
        _ = &mut shutdown => Ok(()),
        ended = &mut watch_task => Err(flatten(ended)),
        Some(ended) = udp_tasks.join_next() => Err(DnsError::Server(match ended {
            Ok(error) => format!("UDP socket failed: {error}"),
            Err(error) => format!("the UDP task failed: {error}"),
        })),
        done = server.block_until_done() => Err(DnsError::Server(match done {
            Ok(()) => "all listeners closed".to_string(),
            Err(e) => e.to_string(),
        })),
    };
    probe.abort();
    udp_tasks.abort_all();
    watch_task.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    let _ = server.shutdown_gracefully().await;
    result
}

fn flatten(ended: Result<Result<(), watch::WatchError>, tokio::task::JoinError>) -> DnsError {
    match ended {
        Ok(Err(e)) => DnsError::Watch(e),
        Ok(Ok(())) => DnsError::Watch(watch::WatchError::Ended),
        Err(e) => DnsError::Server(format!("the watch task failed: {e}")),
    }
}
