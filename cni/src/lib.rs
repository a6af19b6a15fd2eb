//! The skiff CNI plugin library (spec 1.1.0): bridge, veth, IPAM, routes. Filled by issue 4.

/// The CNI spec version this plugin implements.
pub const SPEC_VERSION: &str = "1.1.0";
