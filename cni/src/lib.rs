//! The skiff CNI plugin (spec 1.1.0, also 0.3.0–1.0.0) and the library the
//! node agent calls in-process.
//!
//! A pod joins its node's bridge through a veth pair; addresses come from the
//! built-in file-locked IPAM or a delegated IPAM plugin; the optional
//! masquerade rule and forwarding sysctls live in the node namespace. The node
//! agent also uses [`HostGw`] and [`Vxlan`] to route pod CIDRs between nodes.
//!
//! Everything that touches the network goes through a [`Netns`]: the plugin
//! binary passes [`Netns::current`] (it runs inside the node namespace), tests
//! pass the namespace they created. Nothing here ever changes the namespace of
//! a thread it did not start for that purpose.

#![forbid(unsafe_code)]

pub mod bridge;
pub mod check;
pub mod config;
pub mod delegate;
pub mod errors;
pub mod gc;
pub mod invoke;
pub mod ipam;
pub mod ledger;
pub mod masq;
pub mod netlink;
pub mod netns;
pub mod plugin;
pub mod pod;
pub mod result;
pub mod routes;
pub mod rtnl;
pub mod unlink;
pub mod version;
pub mod veth;
pub mod vxlan;

/// The prefix type of the public API, re-exported for callers.
pub use ipnetwork;

pub use check::check;
pub use config::{AttachmentId, NetConf};
pub use errors::{CniError, Code};
pub use gc::{gc, status, GcReport};
pub use netns::Netns;
pub use plugin::{add, add_blocking, del, Attachment};
pub use result::CniResult;
pub use routes::{HostGw, RemoteNode};
pub use version::CniVersion;
pub use vxlan::{Vxlan, VxlanConfig};

/// The CNI spec version this plugin implements.
pub const SPEC_VERSION: &str = "1.1.0";
