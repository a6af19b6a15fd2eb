//! `skiff proxy`: the service proxy standalone, against any Kubernetes API
//! server reachable with a kubeconfig (ours or a real cluster).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use skiff_proxy::Mode;

/// Arguments of `skiff proxy`.
#[derive(clap::Args)]
pub struct Args {
    /// kubeconfig of the API server to watch.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Data plane: iptables or ebpf (socket-level ClusterIP balancing; falls back to
    /// iptables with a log line when the kernel lacks what it needs).
    #[arg(long, default_value = "iptables")]
    mode: Mode,
    /// This node's name (endpoints with this nodeName are local). Default: the hostname.
    #[arg(long)]
    node_name: Option<String>,
    /// Program this network namespace (e.g. /var/run/netns/node1) instead of our own.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Serve /healthz here (inside the namespace).
    #[arg(long)]
    healthz_listen: Option<SocketAddr>,
    /// Serve /metrics here (inside the namespace).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Pod network CIDR(s), comma-separated: ClusterIP traffic from elsewhere is masqueraded.
    #[arg(long, value_delimiter = ',')]
    cluster_cidr: Vec<skiff_proxy::model::IpNetwork>,
    /// Masquerade all ClusterIP traffic.
    #[arg(long)]
    masquerade_all: bool,
    /// Full resync period in seconds (repairs drift).
    #[arg(long, default_value_t = 30)]
    sync_period_secs: u64,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

pub async fn run(args: Args) -> Result<()> {
    let client = skiff_proxy::runner::client_from_kubeconfig(&args.kubeconfig).await?;
    let mut config = skiff_proxy::Config::new(args.node_name.unwrap_or_else(hostname), args.mode);
    config.netns = args.netns;
    config.healthz_listen = args.healthz_listen;
    config.metrics_listen = args.metrics_listen;
    config.cluster_cidrs = args.cluster_cidr;
    config.masquerade_all = args.masquerade_all;
    config.sync_period = Duration::from_secs(args.sync_period_secs.max(1));
    skiff_proxy::run(client, config, crate::shutdown_signal())
        .await
        .context("skiff proxy")
}
