//! VXLAN mode for the node agent, laid out as flannel does it: one VXLAN
//! device per node (learning off), holding the network address of the local
//! pod CIDR; per remote node, for each of its pod CIDRs, an on-link route
//! `cidr via <cidr network address> dev <vxlan>`, a permanent neighbour entry
//! mapping that address to the remote device's MAC, and an FDB entry sending
//! that MAC to the remote node's underlay IP. The underlay may be IPv4 or
//! IPv6 (the family of `VxlanConfig::local_ip`).

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteProtocol;
use netlink_packet_route::AddressFamily;
use rtnetlink::{LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::netlink::{self, NetlinkError};
use crate::netns::Netns;
use crate::routes::{self, RemoteNode, RoutesError, RTPROT_SKIFF};

/// Settings of the node's VXLAN device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanConfig {
    /// Device name (flannel uses `flannel.1`; skiff defaults to `skiff.vxlan`).
    pub name: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// UDP port (8472 as flannel and the Linux default, 4789 per IANA).
    pub port: u16,
    /// This node's underlay address, the tunnel source; its family (IPv4 or
    /// IPv6) is the underlay's, and remote nodes are reached at their node
    /// address of the same family.
    pub local_ip: IpAddr,
    /// The underlay interface; the kernel picks by route when absent.
    pub underlay: Option<String>,
    /// This node's pod CIDRs; their network addresses go on the device.
    pub local_pod_cidrs: Vec<IpNetwork>,
}

impl VxlanConfig {
    /// Defaults (`skiff.vxlan`, VNI 1, port 8472) for a node at `local_ip`.
    pub fn new(local_ip: IpAddr, local_pod_cidrs: Vec<IpNetwork>) -> VxlanConfig {
        VxlanConfig {
            name: "skiff.vxlan".into(),
            vni: 1,
            port: 8472,
            local_ip,
            underlay: None,
            local_pod_cidrs,
        }
    }
}

/// Errors of VXLAN mode.
#[derive(Debug, thiserror::Error)]
pub enum VxlanError {
    /// Route management failed.
    #[error(transparent)]
    Routes(#[from] RoutesError),
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The underlay interface does not exist.
    #[error("underlay interface {0} for VXLAN does not exist in the node namespace")]
    NoUnderlay(String),
    /// A remote node has no VTEP MAC.
    #[error("node {0} has no VXLAN MAC address; publish its device MAC before adding it")]
    NoMac(String),
    /// A remote node has no node address of the underlay's family.
    #[error("node {node} has no {family} node address; this node's VXLAN device tunnels over {family}, so give every node an address of that family")]
    NoUnderlayAddress {
        /// The remote node.
        node: String,
        /// `IPv4` or `IPv6`.
        family: &'static str,
    },
}

/// The node's VXLAN device.
pub struct Vxlan {
    h: rtnetlink::Handle,
    ns: String,
    index: u32,
    mac: [u8; 6],
    name: String,
    /// Whether the tunnel runs over IPv4 (else IPv6).
    underlay_v4: bool,
}

impl Vxlan {
    /// Creates the device if missing, brings it up and assigns its addresses.
    pub async fn ensure(node: &Netns, cfg: &VxlanConfig) -> Result<Vxlan, VxlanError> {
        let h = node.netlink().map_err(RoutesError::from)?;
        let ns = node.describe();
        let nl = |op: String| {
            let ns = ns.clone();
            move |source| NetlinkError { op, ns, source }
        };
        let mac = netlink::derived_mac(&["vxlan", &cfg.local_ip.to_string(), &cfg.name]);
        if netlink::link_by_name(&h, &cfg.name)
            .await
            .map_err(nl(format!("looking up {}", cfg.name)))?
            .is_none()
        {
            let b = LinkVxlan::new(&cfg.name, cfg.vni).port(cfg.port);
            let mut b = match cfg.local_ip {
                IpAddr::V4(v4) => b.local(v4),
                IpAddr::V6(v6) => b.local6(v6),
            }
            .learning(false)
            .address(mac.to_vec())
            .up();
            if let Some(u) = &cfg.underlay {
                let link = netlink::link_by_name(&h, u)
                    .await
                    .map_err(nl(format!("looking up {u}")))?
                    .ok_or_else(|| VxlanError::NoUnderlay(u.clone()))?;
                b = b.dev(link.header.index);
            }
            match h.link().add(b.build()).execute().await {
                Ok(()) => {}
                Err(e) if netlink::is_exists(&e) => {}
                Err(e) => return Err(nl(format!("creating VXLAN device {}", cfg.name))(e).into()),
            }
        }
        let link = netlink::link_by_name(&h, &cfg.name)
            .await
            .map_err(nl(format!("looking up {}", cfg.name)))?
            .ok_or_else(|| nl(format!("creating {}", cfg.name))(rtnetlink::Error::RequestFailed))?;
        let index = link.header.index;
        if !netlink::is_up(&link) {
            let up = LinkUnspec::new_with_index(index).up().build();
            h.link()
                .set(up)
                .execute()
                .await
                .map_err(nl(format!("bringing {} up", cfg.name)))?;
        }
        for cidr in &cfg.local_pod_cidrs {
            let host = if cidr.is_ipv4() { 32 } else { 128 };
            let a = IpNetwork::new(cidr.network(), host).unwrap_or(*cidr);
            netlink::add_address(&h, index, a, &ns).await?;
        }
        let mac = netlink::parse_mac(&netlink::mac(&link)).unwrap_or(mac);
        Ok(Vxlan {
            h,
            ns,
            index,
            mac,
            name: cfg.name.clone(),
            underlay_v4: cfg.local_ip.is_ipv4(),
        })
    }

    /// The device's MAC, which other nodes need in their [`RemoteNode::vtep_mac`].
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Adds (or updates) route, neighbour and FDB entries for `remote`.
    pub async fn add_node(&self, remote: &RemoteNode) -> Result<(), VxlanError> {
        let mac = remote
            .vtep_mac
            .ok_or_else(|| VxlanError::NoMac(remote.name.clone()))?;
        let Some(node_ip) = self.underlay_ip(remote) else {
            return Err(VxlanError::NoUnderlayAddress {
                node: remote.name.clone(),
                family: if self.underlay_v4 { "IPv4" } else { "IPv6" },
            });
        };
        let err = |op: String| {
            let ns = self.ns.clone();
            move |source| NetlinkError { op, ns, source }
        };
        self.h
            .neighbours()
            .add_bridge(self.index, &mac)
            .destination(node_ip)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(err(format!(
                "adding FDB entry for node {} on {}",
                remote.name, self.name
            )))?;
        for cidr in &remote.pod_cidrs {
            let gw = cidr.network();
            self.h
                .neighbours()
                .add(self.index, gw)
                .link_layer_address(&mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(err(format!(
                    "adding neighbour {gw} for node {}",
                    remote.name
                )))?;
            let route = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(gw, cidr.prefix())
                .and_then(|b| b.gateway(gw))
                .map(|b| {
                    b.output_interface(self.index)
                        .onlink()
                        .protocol(RouteProtocol::Other(RTPROT_SKIFF))
                        .build()
                })
                .unwrap_or_default();
            self.h
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(err(format!(
                    "adding route {cidr} for node {} via {}",
                    remote.name, self.name
                )))?;
        }
        Ok(())
    }

    /// Removes `remote`'s route, neighbour and FDB entries; missing ones are fine.
    pub async fn remove_node(&self, remote: &RemoteNode) -> Result<(), VxlanError> {
        for cidr in &remote.pod_cidrs {
            routes::delete_route(&self.h, *cidr, &self.ns).await?;
            let mut n = NeighbourMessage::default();
            n.header.family = if cidr.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            n.header.ifindex = self.index;
            n.attributes
                .push(NeighbourAttribute::Destination(match cidr.network() {
                    IpAddr::V4(v) => NeighbourAddress::Inet(v),
                    IpAddr::V6(v) => NeighbourAddress::Inet6(v),
                }));
            self.del_neigh(
                n,
                format!(
                    "deleting neighbour {} of node {}",
                    cidr.network(),
                    remote.name
                ),
            )
            .await?;
        }
        if let Some(mac) = remote.vtep_mac {
            let mut n = NeighbourMessage::default();
            n.header.family = AddressFamily::Bridge;
            n.header.ifindex = self.index;
            n.header.flags = NeighbourFlags::Own;
            n.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
            match self.underlay_ip(remote) {
                Some(IpAddr::V4(v)) => n
                    .attributes
                    .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(v))),
                Some(IpAddr::V6(v)) => n
                    .attributes
                    .push(NeighbourAttribute::Destination(NeighbourAddress::Inet6(v))),
                None => {}
            }
            self.del_neigh(n, format!("deleting FDB entry of node {}", remote.name))
                .await?;
        }
        Ok(())
    }

    /// `remote`'s node address of the underlay's family.
    fn underlay_ip(&self, remote: &RemoteNode) -> Option<IpAddr> {
        remote
            .node_ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == self.underlay_v4)
    }

    async fn del_neigh(&self, n: NeighbourMessage, op: String) -> Result<(), NetlinkError> {
        match self.h.neighbours().del(n).execute().await {
            Ok(()) => Ok(()),
            Err(e) if netlink::is_not_found(&e) => Ok(()),
            Err(source) => Err(NetlinkError {
                op,
                ns: self.ns.clone(),
                source,
            }),
        }
    }

    /// Deletes the device (and with it every route, neighbour and FDB entry on it).
    pub async fn delete(self) -> Result<(), NetlinkError> {
        netlink::delete_link(&self.h, &self.name, &self.ns)
            .await
            .map(|_| ())
    }
}
