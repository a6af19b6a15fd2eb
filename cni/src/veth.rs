//! The veth pair joining a pod to the node bridge.
//!
//! One netlink request creates both ends: the host end (named from a hash of
//! network, container and interface, attached to the bridge, up) and the pod
//! end, created directly inside the pod namespace under its final `CNI_IFNAME`
//! (so no temporary name ever appears on the node and the kernel itself
//! refuses a name the pod already has). The host end carries an alias
//! `skiff/<network>/<container>/<ifname>` that GC uses to find its owner.
//! Deleting the host end deletes the pair; a pair whose pod namespace is gone
//! has already been deleted by the kernel.

use std::os::fd::RawFd;

use futures::StreamExt;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoPortKind, InfoVeth, LinkAttribute, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REQUEST,
};
use rtnetlink::{LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth};

use crate::config::AttachmentId;
use crate::netlink::{self, NetlinkError};

/// Prefix of every host-side veth name.
pub const HOST_PREFIX: &str = "sk";

/// Errors creating the pair.
#[derive(Debug, thiserror::Error)]
pub enum VethError {
    /// The pod already has an interface with this name.
    #[error("interface {ifname} already exists in {netns}; ADD refuses to reuse it (run DEL first or choose another CNI_IFNAME)")]
    PodExists {
        /// The interface name.
        ifname: String,
        /// The pod namespace path.
        netns: String,
    },
    /// The host end exists: a leftover of an earlier ADD of this attachment.
    #[error("host interface {host} for this container and interface already exists (an earlier ADD was not deleted); run DEL for the container first")]
    HostExists {
        /// The host-side name.
        host: String,
    },
    /// Any other netlink failure.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// Everything needed to create one pair.
pub struct VethSpec<'a> {
    /// Host-side name (see [`host_name`]).
    pub host: String,
    /// Pod-side name (`CNI_IFNAME`).
    pub ifname: &'a str,
    /// MTU of both ends.
    pub mtu: Option<u32>,
    /// Pod-side MAC.
    pub pod_mac: [u8; 6],
    /// Host-side MAC.
    pub host_mac: [u8; 6],
    /// Bridge to attach the host end to.
    pub bridge_index: u32,
    /// Descriptor of the pod network namespace.
    pub pod_ns_fd: RawFd,
    /// Pod namespace path, for messages.
    pub pod_ns: String,
    /// Hairpin mode on the bridge port.
    pub hairpin: bool,
    /// Alias recording the owner.
    pub alias: String,
}

/// The host-side name of `id`'s veth in `network`: `sk` + 12 hex digits.
pub fn host_name(network: &str, id: &AttachmentId) -> String {
    let h = netlink::stable_hash(&[network, &id.container_id, &id.ifname]);
    format!("{HOST_PREFIX}{:012x}", h >> 16)
}

/// The alias marking a host veth as `id`'s in `network`.
pub fn alias(network: &str, id: &AttachmentId) -> String {
    format!("skiff/{network}/{}/{}", id.container_id, id.ifname)
}

/// The owner recorded in `alias`, if it belongs to `network`.
pub fn parse_alias(network: &str, alias: &str) -> Option<AttachmentId> {
    let rest = alias
        .strip_prefix("skiff/")?
        .strip_prefix(network)?
        .strip_prefix('/')?;
    let (cid, ifname) = rest.split_once('/')?;
    Some(AttachmentId {
        container_id: cid.to_string(),
        ifname: ifname.to_string(),
    })
}

/// Creates the pair, host end attached to the bridge and up, and sets the
/// port options; returns the pod end's interface index when the kernel told
/// it (it echoes the new host link, whose `IFLA_LINK` is the peer). The pod
/// end is brought up by the caller inside the pod namespace: the kernel
/// refuses to open a veth peer before the pair is complete.
///
/// The port options and alias can only be set once the port exists, but that
/// request is queued right behind the creation without waiting for its
/// answer: the kernel handles a socket's requests in order.
pub async fn create(
    h: &rtnetlink::Handle,
    spec: &VethSpec<'_>,
    ns: &str,
) -> Result<Option<u32>, VethError> {
    let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(spec.ifname)
        .address(spec.pod_mac.to_vec())
        .setns_by_fd(spec.pod_ns_fd);
    let mut host = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(spec.host.clone())
        .address(spec.host_mac.to_vec())
        .controller(spec.bridge_index)
        .up();
    if let Some(m) = spec.mtu {
        peer = peer.mtu(m);
        host = host.mtu(m);
    }
    let msg = host
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
        .build();
    let port = LinkMessageBuilder::<LinkBridgePort>::default()
        .name(spec.host.clone())
        .set_port_kind(InfoPortKind::Bridge)
        .hairpin(spec.hairpin)
        .alias(spec.alias.clone())
        .build();
    let (created, port_set) = futures::join!(
        add_echoed(h.clone(), msg),
        h.link().set_port(port).execute()
    );
    let peer_index = match created {
        Ok(index) => index,
        Err(e) if netlink::is_exists(&e) => {
            let host_there = netlink::link_by_name(h, &spec.host)
                .await
                .ok()
                .flatten()
                .is_some();
            return Err(if host_there {
                VethError::HostExists {
                    host: spec.host.clone(),
                }
            } else {
                VethError::PodExists {
                    ifname: spec.ifname.to_string(),
                    netns: spec.pod_ns.clone(),
                }
            });
        }
        Err(e) => {
            return Err(NetlinkError {
                op: format!("creating veth {} / {}", spec.host, spec.ifname),
                ns: ns.to_string(),
                source: e,
            }
            .into())
        }
    };
    port_set.map_err(|source| NetlinkError {
        op: format!("setting hairpin mode and alias on {}", spec.host),
        ns: ns.to_string(),
        source,
    })?;
    Ok(peer_index)
}

/// Sends `RTM_NEWLINK` with `NLM_F_ECHO`; returns the `IFLA_LINK` (for a veth:
/// the peer's index) of the link the kernel echoes back, if it did.
async fn add_echoed(
    mut h: rtnetlink::Handle,
    msg: LinkMessage,
) -> Result<Option<u32>, rtnetlink::Error> {
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewLink(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE | NLM_F_ECHO;
    let mut answers = h.request(req)?;
    let mut peer = None;
    while let Some(m) = answers.next().await {
        match m.payload {
            NetlinkPayload::Error(e) => return Err(rtnetlink::Error::NetlinkError(e)),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                peer = peer.or_else(|| {
                    l.attributes.iter().find_map(|a| match a {
                        LinkAttribute::Link(i) => Some(*i),
                        _ => None,
                    })
                });
            }
            _ => {}
        }
    }
    Ok(peer)
}

/// Deletes the pair by its host end; returns whether it existed.
pub async fn delete(h: &rtnetlink::Handle, host: &str, ns: &str) -> Result<bool, NetlinkError> {
    netlink::delete_link(h, host, ns).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_stable_and_distinct() {
        let a = AttachmentId {
            container_id: "abc".into(),
            ifname: "eth0".into(),
        };
        let b = AttachmentId {
            container_id: "abd".into(),
            ifname: "eth0".into(),
        };
        let n = host_name("net", &a);
        assert_eq!(n.len(), 14);
        assert!(crate::config::check_ifname(&n).is_ok());
        assert_eq!(n, host_name("net", &a));
        assert_ne!(n, host_name("net", &b));
        assert_ne!(n, host_name("other", &a));
        let al = alias("net", &a);
        assert_eq!(parse_alias("net", &al), Some(a));
        assert_eq!(parse_alias("ne", &al), None);
    }
}
