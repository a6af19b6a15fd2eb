//! Routes: the pod's routes via its gateway, and host-gw mode for the node
//! agent — one route per remote node's pod CIDR via that node's IP, for nodes
//! that share an L2 network. Node routes carry protocol [`RTPROT_SKIFF`] so
//! [`HostGw::sync`] can tell its own routes from everyone else's.

use std::collections::HashSet;
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use netlink_packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;

use crate::netlink::{self, NetlinkError};
use crate::netns::{Netns, NetnsError};

/// Routing protocol number marking routes skiff installs on a node (`ip route … proto 83`).
pub const RTPROT_SKIFF: u8 = 83;

const RT_TABLE_MAIN: u8 = 254;

/// A remote node as the node agent knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteNode {
    /// Node name, for messages.
    pub name: String,
    /// Its addresses on the shared (underlay) network, at most one per family.
    pub node_ips: Vec<IpAddr>,
    /// Its pod CIDRs (one per family).
    pub pod_cidrs: Vec<IpNetwork>,
    /// Its VXLAN device's MAC (VXLAN mode only).
    pub vtep_mac: Option<[u8; 6]>,
}

impl RemoteNode {
    /// The node address of the family of `cidr`.
    pub fn ip_for(&self, cidr: &IpNetwork) -> Option<IpAddr> {
        self.node_ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == cidr.is_ipv4())
    }
}

/// Errors of node route management.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// Entering the node namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// A pod CIDR has no node address of its family to route through.
    #[error(
        "node {node}: pod CIDR {cidr} needs a node address of its family (the node has {ips:?})"
    )]
    FamilyMismatch {
        /// Node name.
        node: String,
        /// The pod CIDR.
        cidr: IpNetwork,
        /// The node's addresses.
        ips: Vec<IpAddr>,
    },
}

fn route_builder(dst: IpNetwork) -> RouteMessageBuilder<IpAddr> {
    // A prefix that parsed as IpNetwork is always a valid destination.
    RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.network(), dst.prefix())
        .unwrap_or_default()
}

/// Adds a route in a pod: `dst` via `gw` (or on-link) out of `ifindex`.
pub async fn add_pod_route(
    h: &rtnetlink::Handle,
    ifindex: u32,
    dst: IpNetwork,
    gw: Option<IpAddr>,
    ns: &str,
) -> Result<(), NetlinkError> {
    let r = h
        .route()
        .add(pod_route_message(ifindex, dst, gw))
        .execute()
        .await;
    pod_route_added(r, dst, gw, ns)
}

/// The request body adding `dst` via `gw` (or on-link) out of `ifindex`.
pub fn pod_route_message(ifindex: u32, dst: IpNetwork, gw: Option<IpAddr>) -> RouteMessage {
    let mut b = route_builder(dst).output_interface(ifindex);
    if let Some(g) = gw {
        b = b
            .gateway(g)
            .unwrap_or_else(|_| route_builder(dst).output_interface(ifindex));
    }
    b.build()
}

/// The outcome of adding a pod route, with a hint when it already exists.
pub fn pod_route_added(
    r: Result<(), rtnetlink::Error>,
    dst: IpNetwork,
    gw: Option<IpAddr>,
    ns: &str,
) -> Result<(), NetlinkError> {
    r.map_err(|source| {
        let hint = if netlink::is_exists(&source) {
            " (another interface in the pod already has this route; drop it from one network's ipam.routes)"
        } else {
            ""
        };
        NetlinkError {
            op: format!(
                "adding route {dst}{}{hint}",
                gw.map(|g| format!(" via {g}")).unwrap_or_default()
            ),
            ns: ns.to_string(),
            source,
        }
    })
}

/// A route's destination, gateway and output interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteInfo {
    /// Destination prefix.
    pub dst: IpNetwork,
    /// Gateway, if any.
    pub gw: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Routing protocol.
    pub protocol: u8,
}

fn addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

fn info(m: &RouteMessage) -> Option<RouteInfo> {
    let zero = match m.header.address_family {
        AddressFamily::Inet => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut r = RouteInfo {
        dst: IpNetwork::new(zero, m.header.destination_prefix_length).ok()?,
        gw: None,
        oif: None,
        protocol: u8::from(m.header.protocol),
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => {
                r.dst = IpNetwork::new(addr(d)?, m.header.destination_prefix_length).ok()?
            }
            RouteAttribute::Gateway(g) => r.gw = addr(g),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            _ => {}
        }
    }
    Some(r)
}

/// Every route of the main table, both families.
pub async fn main_table(h: &rtnetlink::Handle) -> Result<Vec<RouteInfo>, rtnetlink::Error> {
    let mut out = Vec::new();
    for b in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let msgs: Vec<RouteMessage> = h.route().get(b).execute().try_collect().await?;
        out.extend(
            msgs.iter()
                .filter(|m| m.header.table == RT_TABLE_MAIN)
                .filter_map(info),
        );
    }
    Ok(out)
}

/// Host-gw mode: routes to remote pod CIDRs via remote node IPs.
pub struct HostGw {
    h: rtnetlink::Handle,
    ns: String,
}

impl HostGw {
    /// Manages host-gw routes in `node` (the node's own namespace in production).
    pub fn new(node: &Netns) -> Result<HostGw, RoutesError> {
        Ok(HostGw {
            h: node.netlink()?,
            ns: node.describe(),
        })
    }

    /// Adds (or updates) the routes to `remote`'s pod CIDRs.
    pub async fn add_node(&self, remote: &RemoteNode) -> Result<(), RoutesError> {
        for cidr in &remote.pod_cidrs {
            let via = remote
                .ip_for(cidr)
                .ok_or_else(|| RoutesError::FamilyMismatch {
                    node: remote.name.clone(),
                    cidr: *cidr,
                    ips: remote.node_ips.clone(),
                })?;
            let msg = route_builder(*cidr)
                .gateway(via)
                .unwrap_or_else(|_| route_builder(*cidr))
                .protocol(RouteProtocol::Other(RTPROT_SKIFF))
                .build();
            self.h
                .route()
                .add(msg)
                .replace()
                .execute()
                .await
                .map_err(|source| NetlinkError {
                    op: format!(
                        "adding route {cidr} via {via} for node {} (is {via} on a directly connected network?)",
                        remote.name
                    ),
                    ns: self.ns.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Removes the routes to `remote`'s pod CIDRs; missing routes are fine.
    pub async fn remove_node(&self, remote: &RemoteNode) -> Result<(), RoutesError> {
        for cidr in &remote.pod_cidrs {
            delete_route(&self.h, *cidr, &self.ns).await?;
        }
        Ok(())
    }

    /// Makes the node's skiff routes exactly those to `remotes`.
    pub async fn sync(&self, remotes: &[RemoteNode]) -> Result<(), RoutesError> {
        let wanted: HashSet<IpNetwork> = remotes
            .iter()
            .flat_map(|r| r.pod_cidrs.iter().copied())
            .collect();
        let current = main_table(&self.h).await.map_err(|source| NetlinkError {
            op: "listing routes".into(),
            ns: self.ns.clone(),
            source,
        })?;
        for r in current
            .iter()
            .filter(|r| r.protocol == RTPROT_SKIFF && r.gw.is_some())
        {
            if !wanted.contains(&r.dst) {
                delete_route(&self.h, r.dst, &self.ns).await?;
            }
        }
        for remote in remotes {
            self.add_node(remote).await?;
        }
        Ok(())
    }
}

/// Deletes the skiff route to `dst`; a missing route is fine.
pub async fn delete_route(
    h: &rtnetlink::Handle,
    dst: IpNetwork,
    ns: &str,
) -> Result<(), NetlinkError> {
    let msg = route_builder(dst)
        .protocol(RouteProtocol::Other(RTPROT_SKIFF))
        .build();
    match h.route().del(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) if netlink::is_not_found(&e) => Ok(()),
        Err(source) => Err(NetlinkError {
            op: format!("deleting route {dst}"),
            ns: ns.to_string(),
            source,
        }),
    }
}
