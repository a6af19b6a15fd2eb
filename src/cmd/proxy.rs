//! `skiff proxy`: the service proxy standalone, against any Kubernetes API
//! server reachable with a kubeconfig (ours or a real cluster).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use skiff_proxy::Mode;

/// Arguments of `skiff proxy`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<ProxyCommand>,
    /// kubeconfig of the API server to watch (required to run the proxy).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Data plane: ebpf (socket-level ClusterIP balancing on the node cgroup, tc
    /// programs for NodePorts/external IPs on the node's interfaces; falls back to
    /// iptables with one log line naming what the kernel lacks) or iptables.
    #[arg(long, default_value = "ebpf")]
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
    /// iptables implementation for --mode iptables: auto (the one holding the
    /// node's KUBE- chains, else legacy when installed, else nft), legacy or nft.
    #[arg(long, default_value = "auto")]
    iptables_backend: skiff_proxy::iptables::BackendChoice,
    /// --mode ebpf: cgroup (relative to the cgroup v2 root) whose processes
    /// get socket-level load balancing. Default: skiff-<node name>.
    #[arg(long)]
    ebpf_cgroup: Option<PathBuf>,
    /// --mode ebpf: bpffs directory for pinned maps and links.
    /// Default: /sys/fs/bpf/skiff/<node name>.
    #[arg(long)]
    ebpf_pin_dir: Option<PathBuf>,
    /// Full resync period in seconds (repairs drift). Above 1000 endpoints
    /// (kube-proxy's large cluster mode) full resyncs run hourly; changes are
    /// always synced as they come.
    #[arg(long, default_value_t = 30)]
    sync_period_secs: u64,
    /// Remove what a proxy left on the node (its iptables chains and jumps in
    /// both implementations and families, and with --node-name or
    /// --ebpf-pin-dir its pinned eBPF programs and maps), then exit.
    #[arg(long)]
    cleanup: bool,
}

/// `skiff proxy <command>`.
#[derive(clap::Subcommand)]
enum ProxyCommand {
    /// Show a node's eBPF data plane from its pins: attached programs, map
    /// fill levels and per-frontend connection/packet counters.
    Status {
        /// The node. Default: the hostname.
        #[arg(long)]
        node_name: Option<String>,
        /// bpffs directory of the node's pins. Default: /sys/fs/bpf/skiff/<node name>.
        #[arg(long)]
        ebpf_pin_dir: Option<PathBuf>,
    },
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

pub async fn run(args: Args) -> Result<()> {
    if let Some(ProxyCommand::Status {
        node_name,
        ebpf_pin_dir,
    }) = args.command
    {
        let node = node_name.unwrap_or_else(hostname);
        let dir =
            ebpf_pin_dir.unwrap_or_else(|| skiff_proxy::ebpf::EbpfConfig::default_pin_dir(&node));
        let status = skiff_proxy::ebpf::read_status(&dir)
            .with_context(|| format!("eBPF status of node {node}"))?;
        print!("{status}");
        return Ok(());
    }
    if args.cleanup {
        return cleanup(
            args.netns.as_deref(),
            args.node_name.as_deref(),
            args.ebpf_pin_dir,
        );
    }
    let kubeconfig = args
        .kubeconfig
        .context("--kubeconfig (or KUBECONFIG) is required to run the proxy")?;
    let client = skiff_proxy::runner::client_from_kubeconfig(&kubeconfig).await?;
    let mut config = skiff_proxy::Config::new(args.node_name.unwrap_or_else(hostname), args.mode);
    config.netns = args.netns;
    config.healthz_listen = args.healthz_listen;
    config.metrics_listen = args.metrics_listen;
    config.cluster_cidrs = args.cluster_cidr;
    config.masquerade_all = args.masquerade_all;
    config.iptables_backend = args.iptables_backend;
    config.ebpf_cgroup = args.ebpf_cgroup;
    config.ebpf_pin_dir = args.ebpf_pin_dir;
    config.sync_period = Duration::from_secs(args.sync_period_secs.max(1));
    skiff_proxy::run(client, config, crate::shutdown_signal())
        .await
        .context("skiff proxy")
}

/// `skiff proxy --cleanup`, as `kube-proxy --cleanup`.
fn cleanup(
    netns: Option<&std::path::Path>,
    node_name: Option<&str>,
    pin_dir: Option<PathBuf>,
) -> Result<()> {
    let ns = match netns {
        Some(p) => skiff_cni::Netns::open(p)
            .with_context(|| format!("opening network namespace {}", p.display()))?,
        None => skiff_cni::Netns::current(),
    };
    let cleaned = skiff_proxy::iptables::backend::remove_leftovers(&ns, None)
        .context("removing the proxy's iptables rules")?;
    for backend in &cleaned {
        println!(
            "removed the service rules from iptables-{}",
            backend.as_str()
        );
    }
    let pins = pin_dir.or_else(|| node_name.map(skiff_proxy::ebpf::EbpfConfig::default_pin_dir));
    if let Some(dir) = pins.filter(|d| d.exists()) {
        skiff_proxy::ebpf::detach_and_unpin(&dir)
            .with_context(|| format!("removing the eBPF pins in {}", dir.display()))?;
        println!("detached and unpinned {}", dir.display());
    }
    Ok(())
}
