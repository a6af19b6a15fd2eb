//! `skiff dns`: the cluster DNS server standalone, against any Kubernetes API
//! server (ours or a real one) reached through a kubeconfig.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};

/// Arguments of `skiff dns`.
#[derive(clap::Args)]
pub struct Args {
    /// Kubeconfig of the cluster to serve (default: $KUBECONFIG, ~/.kube/config or in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Address to answer on (UDP and TCP); repeat or comma-separate for several.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:53")]
    listen: Vec<SocketAddr>,
    /// The cluster zone.
    #[arg(long, default_value = skiff_dns::DEFAULT_ZONE)]
    zone: String,
    /// TTL of cluster records, seconds.
    #[arg(long, default_value_t = skiff_dns::DEFAULT_TTL)]
    ttl: u32,
    /// Upstream resolvers IP:PORT, comma-separated (default: the nameservers of /etc/resolv.conf).
    #[arg(long, value_delimiter = ',')]
    upstream: Vec<SocketAddr>,
    /// Where to serve Prometheus metrics (GET /metrics).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Most upstream answers cached at once.
    #[arg(long, default_value_t = 10_000)]
    cache_entries: usize,
    /// Answer a pod's search-path walk (`name.<its namespace>.svc.<zone>`
    /// that does not exist) with the first name down the path that does,
    /// behind a CNAME, as CoreDNS autopath; the namespace comes from the
    /// pod's IP.
    #[arg(long)]
    autopath: bool,
}

pub async fn run(args: Args) -> Result<()> {
    let client = skiff_dns::client(args.kubeconfig.as_deref()).await?;
    let config = skiff_dns::Config {
        listen: args.listen,
        zone: args.zone,
        ttl: args.ttl,
        upstreams: (!args.upstream.is_empty()).then_some(args.upstream),
        metrics_listen: args.metrics_listen,
        cache_entries: args.cache_entries,
        autopath: args.autopath,
        ..skiff_dns::Config::default()
    };
    skiff_dns::run(client, config, crate::shutdown_signal())
        .await
        .context("skiff dns")
}
