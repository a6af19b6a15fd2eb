//! The container runtime: OCI bundles, runc, the per-container shim and the
//! cgroup layout of the node's pods.

pub mod bundle;
pub mod cgroup;
pub mod runc;
pub mod shim;
