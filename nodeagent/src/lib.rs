//! The node agent (kubelet): node status, pod workers, runc runtime. Filled by issue 5.

/// Maximum pods a node advertises, as upstream's kubelet default.
pub const DEFAULT_MAX_PODS: u32 = 110;
