//! Cluster DNS: a record index fed by Service/EndpointSlice watches, served by
//! hickory-server, with upstream forwarding. Filled by issue 8.

/// The default cluster zone.
pub const DEFAULT_ZONE: &str = "cluster.local";
