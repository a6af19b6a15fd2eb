//! The node agent (kubelet): node registration and Lease, pod workers that run
//! pods with runc in sandboxes made with the CNI library, probes, volumes,
//! logs and the HTTPS endpoint the API server proxies `kubectl logs` to.
//! Images come from [`image`]. Everything the agent creates lives under its
//! `--data-dir`, its own runc root and the `skiff-<node>` cgroups.

pub mod agent;
pub mod attach;
pub mod container;
pub mod context;
pub mod dns;
pub mod env;
pub mod events;
pub mod exec;
pub mod image;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod pod_worker;
pub mod pods;
pub mod probe;
pub mod proxy;
pub mod pull;
pub mod quantity;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod status;
pub mod volume;

/// Maximum pods a node advertises, as upstream's kubelet default.
pub const DEFAULT_MAX_PODS: u32 = 110;
