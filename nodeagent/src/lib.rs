//! The node agent (kubelet): node status, pod workers, runc runtime. Filled by issue 5.

pub mod container;
pub mod context;
pub mod env;
pub mod image;
pub mod logs;
pub mod node;
pub mod probe;
pub mod quantity;
pub mod runtime;
pub mod sandbox;
pub mod status;
pub mod volume;

/// Maximum pods a node advertises, as upstream's kubelet default.
pub const DEFAULT_MAX_PODS: u32 = 110;
