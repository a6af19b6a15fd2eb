//! Names of the kube-proxy chains. Fixed base chains, and per-port /
//! per-endpoint chains named by a stable hash, so a restarted proxy (or a
//! partial sync) finds the chains an earlier run made.

use std::net::IpAddr;

use crate::model::{Endpoint, ServicePortName};

/// nat: entry from PREROUTING and OUTPUT; filter: REJECT for ports without endpoints.
pub const SERVICES: &str = "KUBE-SERVICES";
/// nat: NodePort dispatch (jumped to for packets to node-local addresses).
pub const NODEPORTS: &str = "KUBE-NODEPORTS";
/// nat: masquerades packets carrying the masquerade mark.
pub const POSTROUTING: &str = "KUBE-POSTROUTING";
/// nat: sets the masquerade mark.
pub const MARK_MASQ: &str = "KUBE-MARK-MASQ";
/// nat: sets the drop mark (firewall chains, Local policy without local endpoints).
pub const MARK_DROP: &str = "KUBE-MARK-DROP";
/// filter: REJECT for external addresses / NodePorts without endpoints.
pub const EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
/// filter: accepts forwarded service traffic.
pub const FORWARD: &str = "KUBE-FORWARD";
/// filter: drops packets carrying the drop mark.
pub const FIREWALL: &str = "KUBE-FIREWALL";

/// Masquerade mark bit (kube-proxy's default `--iptables-masquerade-bit=14`).
pub const MASQ_MARK: &str = "0x4000";
/// Drop mark bit.
pub const DROP_MARK: &str = "0x8000";

/// Prefixes of the per-port and per-endpoint chains this proxy owns.
pub const OWNED_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
];

/// 64-bit FNV-1a: stable across runs and versions (unlike `DefaultHasher`).
fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn port_hash(name: &ServicePortName) -> u64 {
    fnv64(&[
        name.namespace.as_bytes(),
        name.name.as_bytes(),
        name.port.as_bytes(),
        name.protocol.as_str().as_bytes(),
    ])
}

/// A per-port chain: `<prefix><16 hex digits>` (25 characters; iptables allows 28).
fn port_chain(prefix: &str, name: &ServicePortName) -> String {
    format!("{prefix}{:016X}", port_hash(name))
}

/// Cluster endpoint dispatch of a port.
pub fn svc(name: &ServicePortName) -> String {
    port_chain("KUBE-SVC-", name)
}

/// External endpoint dispatch when it differs from the cluster one (Local policies).
pub fn svl(name: &ServicePortName) -> String {
    port_chain("KUBE-SVL-", name)
}

/// External traffic entry of a port (NodePort, externalIPs, LoadBalancer IPs).
pub fn ext(name: &ServicePortName) -> String {
    port_chain("KUBE-EXT-", name)
}

/// loadBalancerSourceRanges firewall of a port.
pub fn fw(name: &ServicePortName) -> String {
    port_chain("KUBE-FW-", name)
}

/// Per-endpoint DNAT chain (also the `recent` list name for ClientIP affinity).
pub fn sep(name: &ServicePortName, ep: &Endpoint) -> String {
    let ip = ep.ip.to_string();
    let h = fnv64(&[
        &port_hash(name).to_be_bytes(),
        ip.as_bytes(),
        &ep.port.to_be_bytes(),
    ]);
    format!("KUBE-SEP-{h:016X}")
}

/// `ip/32` or `ip/128`.
pub fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

/// `ip:port` or `[ip]:port` for `--to-destination`.
pub fn socket(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}
