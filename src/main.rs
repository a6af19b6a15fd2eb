//! The `skiff` command: one binary for the control plane, the node agent and
//! the node components, plus `skiff up` for a whole cluster on one machine.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use skiff_controlplane::apiserver::server::{self, Config, StoreConfig};

#[derive(Parser)]
#[command(name = "skiff", version, about = "A compact Kubernetes-compatible cluster with an eBPF data path")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: the Kubernetes API server over an embedded or etcd store.
    Server(ServerArgs),
    /// Run the node agent (kubelet) on this machine or in a node network namespace.
    Agent,
    /// Start a whole cluster on this machine (control plane and node namespaces).
    Up,
    /// Run the service proxy standalone.
    Proxy,
    /// Run the cluster DNS server standalone.
    Dns,
    /// Manage node images.
    Image,
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
    /// ClusterIP range of Services.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: String,
    /// Pod network range.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// Address nodes and clients reach the server at (added to the certificate).
    #[arg(long)]
    advertise_address: Option<IpAddr>,
}

fn server_config(args: ServerArgs) -> Result<Config> {
    let store = match args.store.as_str() {
        "etcd" if args.etcd_endpoints.is_empty() => bail!("--store etcd needs --etcd-endpoints URL[,URL...]"),
        "etcd" => StoreConfig::Etcd(args.etcd_endpoints),
        _ => StoreConfig::Redb,
    };
    Ok(Config {
        data_dir: args.data_dir,
        listen: args.listen,
        store,
        service_cidr: args.service_cidr.parse().with_context(|| format!("--service-cidr {:?}", args.service_cidr))?,
        cluster_cidr: args.cluster_cidr.parse().with_context(|| format!("--cluster-cidr {:?}", args.cluster_cidr))?,
        advertise_address: args.advertise_address,
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
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

fn not_yet(what: &str, issue: u32) -> Result<()> {
    bail!("`skiff {what}` is not implemented yet (tracked in issue {issue})")
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Server(args) => {
            let config = server_config(args)?;
            server::run(config, shutdown_signal()).await?;
            Ok(())
        }
        Command::Agent => not_yet("agent", 5),
        Command::Up => not_yet("up", 9),
        Command::Proxy => not_yet("proxy", 6),
        Command::Dns => not_yet("dns", 8),
        Command::Image => not_yet("image", 5),
    }
}
