//! `skiff agent`: the node agent (kubelet). The same subcommand, with the
//! hidden `--shim-*` flags, is the per-container shim the agent starts.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use skiff_nodeagent::agent::{self, AgentConfig};
use skiff_nodeagent::dns::NodeDnsSettings;
use skiff_nodeagent::proxy::ProxySettings;

/// Arguments of `skiff agent`.
#[derive(clap::Args)]
pub struct Args {
    /// Kubeconfig of the API server.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Name of this node.
    #[arg(long)]
    node_name: Option<String>,
    /// The node's network namespace (e.g. /var/run/netns/node1); pods and CNI
    /// live there. Default: the agent's own namespace.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Where pods, images, logs and runc state are kept.
    #[arg(long, default_value = "/var/lib/skiff/agent")]
    data_dir: PathBuf,
    /// Directory with the CNI network config (*.conf / *.conflist); default: a
    /// bridge over the node's podCIDR.
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// Registries reached over plain HTTP, comma-separated host:port.
    #[arg(long, value_delimiter = ',')]
    insecure_registry: Vec<String>,
    /// The node's InternalIP; default: the first global address in the node namespace.
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// Address of the agent's HTTPS endpoint (logs); port 0 picks a free port.
    #[arg(long, default_value = "0.0.0.0:10250")]
    listen: SocketAddr,
    /// Address of the DNS server the agent runs in the node namespace (UDP
    /// and TCP port 53, on a `skiff-dns` dummy link), or none.
    #[arg(long, default_value = skiff_dns::NODE_LOCAL_ADDRESS, value_parser = parse_node_local_dns)]
    node_local_dns: NodeLocalDns,
    /// Let the node-local DNS answer a pod's search-path walk in one query
    /// (CoreDNS autopath: the pod's namespace is known from its IP).
    #[arg(long)]
    dns_autopath: bool,
    /// Nameserver written into ClusterFirst pods' resolv.conf. Default: the
    /// --node-local-dns address, or the kube-dns ClusterIP without one.
    #[arg(long)]
    cluster_dns: Option<String>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Pods this node accepts.
    #[arg(long, default_value_t = skiff_nodeagent::DEFAULT_MAX_PODS)]
    max_pods: u32,
    /// Service proxy data plane run inside the agent: ebpf (the default;
    /// falls back to iptables, saying what was missing, when the kernel lacks
    /// what it needs), iptables or none. eBPF socket load balancing serves the
    /// processes in the node's cgroup `skiff-<node>` (the pods).
    #[arg(long, default_value = "ebpf", value_parser = parse_proxy_mode)]
    proxy_mode: ProxyMode,
    /// Pod network CIDR(s), comma-separated, for the proxy: ClusterIP traffic
    /// from elsewhere is masqueraded. Same default as `skiff server`.
    #[arg(long, value_delimiter = ',', default_value = "10.244.0.0/16")]
    cluster_cidr: Vec<skiff_proxy::model::IpNetwork>,
    /// iptables implementation of the proxy in iptables mode (also on the
    /// eBPF fallback): auto (the one holding the node's KUBE- chains, else
    /// legacy when installed, else nft), legacy or nft.
    #[arg(long, default_value = "auto")]
    iptables_backend: skiff_proxy::iptables::BackendChoice,
    #[arg(long, hide = true)]
    shim_log: Option<PathBuf>,
    #[arg(long, hide = true)]
    shim_exit: Option<PathBuf>,
    #[arg(long, hide = true)]
    shim_pid_file: Option<PathBuf>,
    /// The runtime command the shim runs.
    #[arg(last = true, hide = true)]
    shim_command: Vec<String>,
}

/// `--proxy-mode`: a data plane, or none.
#[derive(Debug, Clone, Copy)]
struct ProxyMode(Option<skiff_proxy::Mode>);

fn parse_proxy_mode(s: &str) -> std::result::Result<ProxyMode, String> {
    match s {
        "none" => Ok(ProxyMode(None)),
        other => other
            .parse()
            .map(|m| ProxyMode(Some(m)))
            .map_err(|e| format!("{e} (or none)")),
    }
}

/// `--node-local-dns`: an address, or none.
#[derive(Debug, Clone, Copy)]
struct NodeLocalDns(Option<IpAddr>);

fn parse_node_local_dns(s: &str) -> std::result::Result<NodeLocalDns, String> {
    match s {
        "none" => Ok(NodeLocalDns(None)),
        other => other
            .parse()
            .map(|ip| NodeLocalDns(Some(ip)))
            .map_err(|e| format!("{e}: expected an IP address or none")),
    }
}

/// The kube-dns Service's ClusterIP (the 10th address of the default service CIDR).
const KUBE_DNS_IP: &str = "10.96.0.10";

pub async fn run(args: Args) -> Result<()> {
    if let (Some(log), Some(exit), Some(pid)) =
        (&args.shim_log, &args.shim_exit, &args.shim_pid_file)
    {
        let code = skiff_nodeagent::runtime::shim::run(log, exit, pid, &args.shim_command)?;
        std::process::exit(code);
    }
    let (Some(kubeconfig), Some(node_name)) = (args.kubeconfig, args.node_name) else {
        bail!("skiff agent needs --kubeconfig FILE and --node-name NAME");
    };
    let exe = std::env::current_exe().context("finding the skiff binary for the container shim")?;
    let config = AgentConfig {
        kubeconfig,
        node_name,
        netns: args.netns,
        data_dir: args.data_dir,
        cni_conf_dir: args.cni_conf_dir,
        insecure_registries: args.insecure_registry,
        node_ip: args.node_ip,
        listen: args.listen,
        cluster_dns: args.cluster_dns.unwrap_or_else(|| {
            args.node_local_dns
                .0
                .map_or_else(|| KUBE_DNS_IP.to_string(), |ip| ip.to_string())
        }),
        cluster_domain: args.cluster_domain.clone(),
        max_pods: args.max_pods,
        shim_command: shim_command(&exe),
        proxy: ProxySettings {
            mode: args.proxy_mode.0,
            cluster_cidrs: args.cluster_cidr,
            iptables_backend: args.iptables_backend,
        },
        dns: NodeDnsSettings {
            addresses: args.node_local_dns.0.into_iter().collect(),
            zone: args.cluster_domain,
            autopath: args.dns_autopath,
        },
    };
    tokio::select! {
        r = agent::run(config) => r.map_err(Into::into),
        _ = crate::shutdown_signal() => Ok(()),
    }
}

/// The shim command: the small `skiff-shim` installed next to `skiff`, or
/// `skiff agent` with the hidden shim flags when it is not there.
fn shim_command(exe: &std::path::Path) -> Vec<String> {
    let shim = exe.with_file_name("skiff-shim");
    if shim.is_file() {
        vec![shim.display().to_string()]
    } else {
        vec![exe.display().to_string(), "agent".into()]
    }
}
