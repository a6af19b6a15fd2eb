//! Controllers, as kube-controller-manager runs them: each watches the API
//! through the `kube` crate (the same client any Kubernetes controller
//! uses) and drives objects towards their spec. They run inside
//! `skiff server`, each one can be disabled by name.

pub mod daemonset;
pub mod deployment;
pub mod endpointslice;
pub mod events;
pub mod garbagecollector;
pub mod hpa;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podgc;
pub mod pods;
pub mod replicaset;
mod runtime;
pub mod statefulset;
pub mod workload;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

pub use runtime::ControllerRuntime;

/// Every controller by name, as `--disable-controllers` accepts them.
pub const ALL: &[&str] = &[
    "scheduler",
    "deployment",
    "replicaset",
    "endpointslice",
    "nodeipam",
    "nodelifecycle",
    "namespace",
    "garbagecollector",
    "daemonset",
    "statefulset",
    "job",
    "horizontalpodautoscaling",
    "podgc",
];

/// Settings shared by the controllers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Controllers (and `scheduler`) not to start.
    pub disabled: BTreeSet<String>,
    /// How long a node may go without renewing its Lease before it is NotReady.
    pub node_monitor_grace_period: Duration,
    /// Default `tolerationSeconds` for not-ready/unreachable NoExecute taints.
    pub default_toleration_seconds: i64,
    /// Pod network range nodes' podCIDRs are carved from.
    pub cluster_cidr: ipnetwork::IpNetwork,
    /// Prefix length of each node's podCIDR.
    pub node_cidr_mask_size: u8,
    /// Terminated pods kept before the oldest are deleted (0: never).
    pub terminated_pod_gc_threshold: usize,
    /// How long a pod's node must be missing before the pod is collected.
    pub pod_gc_orphan_quarantine: Duration,
    /// How long the API server keeps an Event after its last occurrence
    /// (kube-apiserver's `--event-ttl`; zero keeps them forever).
    pub event_ttl: Duration,
}

impl Settings {
    /// Upstream's defaults for a cluster CIDR.
    pub fn new(cluster_cidr: ipnetwork::IpNetwork) -> Self {
        Settings {
            disabled: BTreeSet::new(),
            node_monitor_grace_period: Duration::from_secs(50),
            default_toleration_seconds: 300,
            cluster_cidr,
            node_cidr_mask_size: 24,
            terminated_pod_gc_threshold: 12500,
            pod_gc_orphan_quarantine: Duration::from_secs(40),
            event_ttl: Duration::from_secs(3600),
        }
    }

    /// True unless disabled.
    pub fn enabled(&self, name: &str) -> bool {
        !self.disabled.contains(name)
    }
}

/// What every controller gets.
pub struct Context {
    /// Client of this API server.
    pub client: kube::Client,
    /// Settings.
    pub settings: Settings,
}

/// Errors starting the controllers.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The kubeconfig could not be read or used.
    #[error("cannot build a client from {path}: {message}")]
    Client {
        /// The kubeconfig.
        path: String,
        /// What failed.
        message: String,
    },
}

/// A client of this server from its admin kubeconfig.
pub async fn client_from_kubeconfig(
    path: &std::path::Path,
) -> Result<kube::Client, ControllerError> {
    let err = |e: &dyn std::fmt::Display| ControllerError::Client {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| err(&e))?;
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| err(&e))?;
    // The server records "skiff-controller-manager" as the field manager of
    // what the controllers and the scheduler write (upstream takes it from
    // the User-Agent up to the first '/').
    config.headers.push((
        hyper::header::USER_AGENT,
        hyper::header::HeaderValue::from_static(concat!(
            "skiff-controller-manager/",
            env!("CARGO_PKG_VERSION")
        )),
    ));
    kube::Client::try_from(config).map_err(|e| err(&e))
}

/// Starts every enabled controller on the runtime; they run until the process ends.
/// The controllers that follow pods share one [`pods::PodInformer`]; its
/// watch starts with the first of them.
pub fn spawn_all(ctx: Arc<Context>) {
    // The scheduler reads whole pods; the informer hands it each event
    // whole, after keeping a compact copy in the shared cache.
    let (pods, mut scheduler_pods) = if ctx.settings.enabled("scheduler") {
        let (pods, events) = pods::PodInformer::with_full_events(ctx.client.clone());
        (pods, Some(events))
    } else {
        (pods::PodInformer::new(ctx.client.clone()), None)
    };
    for name in ALL.iter().copied().filter(|n| ctx.settings.enabled(n)) {
        tracing::info!("starting {name}");
        let ctx = ctx.clone();
        let pods = pods.clone();
        match name {
            "scheduler" => match scheduler_pods.take() {
                Some(events) => tokio::spawn(crate::scheduler::run(ctx, events)),
                None => continue,
            },
            "deployment" => tokio::spawn(deployment::run(ctx)),
            "replicaset" => tokio::spawn(replicaset::run(ctx, pods)),
            "endpointslice" => tokio::spawn(endpointslice::run(ctx, pods)),
            "nodeipam" => tokio::spawn(nodeipam::run(ctx)),
            "nodelifecycle" => tokio::spawn(nodelifecycle::run(ctx, pods)),
            "namespace" => tokio::spawn(namespace::run(ctx)),
            "garbagecollector" => tokio::spawn(garbagecollector::run(ctx, pods)),
            "daemonset" => tokio::spawn(daemonset::run(ctx, pods)),
            "statefulset" => tokio::spawn(statefulset::run(ctx, pods)),
            "job" => tokio::spawn(job::run(ctx, pods)),
            "horizontalpodautoscaling" => tokio::spawn(hpa::run(ctx)),
            "podgc" => tokio::spawn(podgc::run(ctx, pods)),
            _ => continue,
        };
    }
}
