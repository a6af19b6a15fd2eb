//! The node's interfaces as the tc programs see them: every interface that is
//! up, is not loopback and carries an address (the uplink(s) and the pod
//! bridge), except the node-local DNS link (its addresses are services, not
//! the node's). Their addresses are node addresses for NodePorts, whatever the
//! Node object says, like kube-proxy's default `--nodeport-addresses`.
//!
//! Read from the calling thread's network namespace; never changes anything
//! but the per-interface `accept_local` and (strict only) `rp_filter`
//! sysctls of the interfaces we attach to.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use nix::net::if_::InterfaceFlags;

/// Reading interfaces or setting their sysctls failed.
#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    /// getifaddrs(3) failed.
    #[error("listing the node's interfaces: {0}")]
    List(nix::Error),
    /// A sysctl could not be written.
    #[error("setting {path}: {source}; the tc data plane needs it for SNATed flows and the node's own ClusterIP flows")]
    Sysctl {
        /// The sysctl file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// An interface the tc programs attach to, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInterface {
    /// Interface name.
    pub name: String,
    /// Its IPv4/IPv6 addresses (IPv6 link-local ones left out).
    pub addrs: Vec<IpAddr>,
}

fn link_local_v6(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// Up, non-loopback interfaces carrying an address, in interface order.
pub fn node_interfaces() -> Result<Vec<NodeInterface>, IfaceError> {
    let mut by_name: BTreeMap<String, (usize, Vec<IpAddr>)> = BTreeMap::new();
    for (order, ifa) in nix::ifaddrs::getifaddrs()
        .map_err(IfaceError::List)?
        .enumerate()
    {
        if ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK)
            || !ifa.flags.contains(InterfaceFlags::IFF_UP)
            || ifa.interface_name == crate::model::NODE_LOCAL_DNS_LINK
        {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if link_local_v6(&ip) {
            continue;
        }
        let entry = by_name
            .entry(ifa.interface_name.clone())
            .or_insert((order, Vec::new()));
        entry.1.push(ip);
    }
    let mut v: Vec<(usize, NodeInterface)> = by_name
        .into_iter()
        .map(|(name, (order, addrs))| (order, NodeInterface { name, addrs }))
        .collect();
    v.sort_by_key(|(order, _)| *order);
    Ok(v.into_iter().map(|(_, i)| i).collect())
}

/// Accepts packets whose source is a local address on `iface`: flows SNATed
/// to the node at ingress, and replies whose source the reverse NAT turned
/// into the NodePort address, arrive with a node address as their source
/// and would otherwise be dropped as martians.
pub fn accept_local(iface: &str) -> Result<(), IfaceError> {
    let path = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{iface}/accept_local"));
    std::fs::write(&path, "1").map_err(|source| IfaceError::Sysctl { path, source })
}

/// Makes strict reverse-path filtering on `iface` loose (leaves it alone
/// when it is off or loose already): the replies of ClusterIP flows the node
/// itself opened get the service address back as their source at this
/// interface's ingress, and the service address is routed elsewhere (the
/// default route), so a strict check would drop them. The effective value
/// is the larger of `all` and the interface's own, so the interface's is
/// raised to 2 rather than `all` lowered.
pub fn loose_rp_filter(iface: &str) -> Result<(), IfaceError> {
    let read = |name: &str| -> u8 {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    if read("all").max(read(iface)) != 1 {
        return Ok(());
    }
    let path = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{iface}/rp_filter"));
    std::fs::write(&path, "2").map_err(|source| IfaceError::Sysctl { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_link_local_is_recognised() {
        assert!(link_local_v6(&"fe80::1".parse().unwrap()));
        assert!(!link_local_v6(&"fd00::1".parse().unwrap()));
        assert!(!link_local_v6(&"192.168.1.1".parse().unwrap()));
    }
}
