//! The `skiff` command: one binary for the control plane, the node agent and
//! the node components, plus `skiff up` for a whole cluster on one machine.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use skiff_controlplane::apiserver::server::{self, Config, StoreConfig};

mod cmd;

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "A compact Kubernetes-compatible cluster with an eBPF data path"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up; the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the control plane: the Kubernetes API server over an embedded or etcd store.
    Server(ServerArgs),
    /// Run the node agent (kubelet) on this machine or in a node network namespace.
    Agent(cmd::agent::Args),
    /// Start a whole cluster on this machine (control plane and node namespaces).
    Up(cmd::up::Args),
    /// Remove the cluster `skiff up` started (also after a crash).
    Down(cmd::down::Args),
    /// Run the service proxy standalone.
    Proxy(cmd::proxy::Args),
    /// Run the cluster DNS server standalone.
    Dns(cmd::dns::Args),
    /// Manage node images.
    Image(cmd::image::Args),
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Directory for the PKI, admin.kubeconfig and the embedded store.
    #[arg(long)]
    data_dir: PathBuf,
    /// HTTPS listen address.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Storage backend.
    #[arg(long, default_value = "redb", value_parser = ["redb", "etcd"])]
    store: String,
    /// etcd client URLs (with --store etcd), comma-separated.
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// ClusterIP range of Services; two ranges of different families,
    /// comma-separated (the primary first), make the cluster dual-stack.
    #[arg(
        long,
        alias = "service-cluster-ip-range",
        default_value = "10.96.0.0/12"
    )]
    service_cidr: String,
    /// Pod network range.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// Address nodes and clients reach the server at (added to the certificate).
    #[arg(long)]
    advertise_address: Option<IpAddr>,
    /// Controllers not to run (and `scheduler`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    disable_controllers: Vec<String>,
    /// Time a node may go without renewing its Lease before it is marked NotReady.
    #[arg(long, default_value = "50s", value_parser = parse_duration)]
    node_monitor_grace_period: std::time::Duration,
    /// tolerationSeconds of the default not-ready/unreachable tolerations.
    #[arg(long, default_value_t = 300)]
    default_toleration_seconds: i64,
    /// Prefix length of each node's podCIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// Terminated pods kept before the pod garbage collector deletes the oldest (0: never).
    #[arg(long, default_value_t = 12500)]
    terminated_pod_gc_threshold: usize,
    /// Time a pod's node must be missing before the pod garbage collector deletes the pod.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pod_gc_orphan_quarantine: std::time::Duration,
    /// How long Events are kept after their last occurrence (0s: forever).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    event_ttl: std::time::Duration,
}

/// Parses `50s`, `2m`, `1h` or plain seconds.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 50s, 2m, 1h"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit in {s:?}: use ms, s, m or h")),
    };
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// `--service-cidr`: one range, or two of different families (dual-stack).
fn service_cidrs(
    text: &str,
) -> Result<(
    skiff_proxy::model::IpNetwork,
    Option<skiff_proxy::model::IpNetwork>,
)> {
    let cidrs = text
        .split(',')
        .map(|c| c.trim().parse::<skiff_proxy::model::IpNetwork>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("--service-cidr {text:?}"))?;
    match cidrs.as_slice() {
        [one] => Ok((*one, None)),
        [a, b] if a.is_ipv4() != b.is_ipv4() => Ok((*a, Some(*b))),
        _ => bail!("--service-cidr {text:?}: expected one range, or an IPv4 and an IPv6 range"),
    }
}

fn server_config(args: ServerArgs) -> Result<Config> {
    let store = match args.store.as_str() {
        "etcd" if args.etcd_endpoints.is_empty() => {
            bail!("--store etcd needs --etcd-endpoints URL[,URL...]")
        }
        "etcd" => StoreConfig::Etcd(args.etcd_endpoints),
        _ => StoreConfig::Redb,
    };
    let cluster_cidr = args
        .cluster_cidr
        .parse()
        .with_context(|| format!("--cluster-cidr {:?}", args.cluster_cidr))?;
    let mut controllers = skiff_controlplane::controllers::Settings::new(cluster_cidr);
    for name in &args.disable_controllers {
        if !skiff_controlplane::controllers::ALL.contains(&name.as_str()) {
            bail!(
                "--disable-controllers: unknown controller {name:?}; known: {}",
                skiff_controlplane::controllers::ALL.join(", ")
            );
        }
    }
    controllers.disabled = args.disable_controllers.into_iter().collect();
    controllers.node_monitor_grace_period = args.node_monitor_grace_period;
    controllers.default_toleration_seconds = args.default_toleration_seconds;
    controllers.node_cidr_mask_size = args.node_cidr_mask_size;
    controllers.terminated_pod_gc_threshold = args.terminated_pod_gc_threshold;
    controllers.pod_gc_orphan_quarantine = args.pod_gc_orphan_quarantine;
    controllers.event_ttl = args.event_ttl;
    let (service_cidr, secondary_service_cidr) = service_cidrs(&args.service_cidr)?;
    Ok(Config {
        data_dir: args.data_dir,
        listen: args.listen,
        store,
        service_cidr,
        secondary_service_cidr,
        cluster_cidr,
        advertise_address: args.advertise_address,
        controllers,
    })
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
                .unwrap_or_else(|_| "info,hickory_server=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Server(args) => {
            let config = server_config(args)?;
            server::run(config, shutdown_signal()).await?;
            Ok(())
        }
        Command::Agent(args) => cmd::agent::run(args).await,
        Command::Up(args) => cmd::up::run(args).await,
        Command::Down(args) => cmd::down::run(args).await,
        Command::Proxy(args) => cmd::proxy::run(args).await,
        Command::Dns(args) => cmd::dns::run(args).await,
        Command::Image(args) => cmd::image::run(args).await,
    }
}
