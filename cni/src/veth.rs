//! The veth pair joining a pod to the node bridge.
//!
//! One netlink request creates both ends: the host end (named from a hash of
//! network, container and interface, attached to the bridge, up) and the pod
//! end, created directly inside the pod namespace under its final `CNI_IFNAME`
//! (so no temporary name ever appears on the node and the kernel itself
//! refuses a name the pod already has). The plugin's ADD sets nothing else
//! on the host end but hairpin mode, with the bridge's own request (see
//! [`hairpin_request`]); GC finds a pod's host end by its name, derived from
//! the attachments the IPAM store or ledger records. (The async [`create`],
//! used for `skiff up`'s lab links, also sets an alias recording the owner.)
//! Deleting the host end deletes the pair; a pair whose pod namespace is gone
//! has already been deleted by the kernel.

use std::os::fd::RawFd;

use futures::StreamExt;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoPortKind, InfoVeth, LinkAttribute, LinkMessage, LinkProtoInfoBridge,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{
    DefaultNla, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use rtnetlink::{LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth};

use crate::config::AttachmentId;
use crate::netlink::{self, NetlinkError};
use crate::rtnl::{Answer, Rtnl};

/// Prefix of every host-side veth name.
pub const HOST_PREFIX: &str = "sk";
/// `IFLA_BRPORT_MODE`: the bridge port attribute holding hairpin mode.
const IFLA_BRPORT_MODE: u16 = 4;

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

/// The owner recorded in `alias` (`skiff/<network>/<container>/<ifname>`,
/// which earlier versions set on host veths), if it belongs to `network`.
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
    let (msg, port) = messages(spec);
    let (created, port_set) = futures::join!(
        add_echoed(h.clone(), msg),
        h.link().set_port(port).execute()
    );
    let created = match created {
        Err(e) if netlink::is_exists(&e) => {
            let host_there = netlink::link_by_name(h, &spec.host)
                .await
                .ok()
                .flatten()
                .is_some();
            return Err(exists(spec, host_there));
        }
        other => other,
    };
    outcome(spec, ns, created, port_set)
}

/// [`create`] over a blocking socket, for the plugin's ADD: the creation
/// request, to be sent behind whatever else the caller batches. Unlike
/// [`create`] it sets no alias and no port options: the host end carries
/// neither until the caller sends [`hairpin_request`] (see there).
pub fn create_request(spec: &VethSpec<'_>) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut create = netlink::create_request(RouteNetlinkMessage::NewLink(create_message(spec)));
    create.header.flags |= NLM_F_ECHO;
    create
}

/// The indexes of a pair the kernel created.
#[derive(Clone, Copy, Debug)]
pub struct Created {
    /// The host end.
    pub host: u32,
    /// The pod end, when the kernel told it (the echoed host link's `IFLA_LINK`).
    pub peer: Option<u32>,
}

/// The result of [`create_request`] from the kernel's answer (`nl` tells
/// the two "already exists" cases apart).
pub fn created(
    nl: &mut Rtnl,
    spec: &VethSpec<'_>,
    ns: &str,
    create: Answer,
) -> Result<Created, VethError> {
    if create.result.as_ref().is_err_and(netlink::is_exists) {
        let host_there = netlink::link_by_name_blocking(nl, &spec.host)
            .ok()
            .flatten()
            .is_some();
        return Err(exists(spec, host_there));
    }
    let failed = |source| NetlinkError {
        op: format!("creating veth {} / {}", spec.host, spec.ifname),
        ns: ns.to_string(),
        source,
    };
    create.result.map_err(failed)?;
    create
        .messages
        .iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(Created {
                host: l.header.index,
                peer: peer_of(l),
            }),
            _ => None,
        })
        .ok_or_else(|| VethError::Netlink(failed(rtnetlink::Error::RequestFailed)))
}

/// Hairpin mode on the bridge port `host_index`, as the bridge's own
/// request (`RTM_SETLINK`, family `AF_BRIDGE`, `IFLA_PROTINFO`), the way the
/// reference `bridge` plugin sets it. The generic link request (port options
/// in `IFLA_LINKINFO`, or an alias) makes the kernel announce a
/// `NETDEV_CHANGE`; on a port whose peer is not up yet, IPv6 answers that by
/// walking the node's whole IPv6 routing table (`rt6_sync_down_dev`), which
/// cost more than the rest of the request and grew with every pod.
pub fn hairpin_request(host_index: u32) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut msg = LinkMessage::default();
    msg.header.interface_family = AddressFamily::Bridge;
    msg.header.index = host_index;
    msg.attributes.push(LinkAttribute::ProtoInfoBridge(vec![
        LinkProtoInfoBridge::Other(DefaultNla::new(IFLA_BRPORT_MODE, vec![1])),
    ]));
    netlink::plain_request(RouteNetlinkMessage::SetLink(msg))
}

/// The result of [`hairpin_request`].
pub fn hairpin_set(spec: &VethSpec<'_>, ns: &str, answer: Answer) -> Result<(), VethError> {
    answer.result.map_err(|source| {
        VethError::Netlink(NetlinkError {
            op: format!("setting hairpin mode on {}", spec.host),
            ns: ns.to_string(),
            source,
        })
    })
}

/// The creation request (host end with the peer inside) and the bridge
/// port options.
fn messages(spec: &VethSpec<'_>) -> (LinkMessage, LinkMessage) {
    let port = LinkMessageBuilder::<LinkBridgePort>::default()
        .name(spec.host.clone())
        .set_port_kind(InfoPortKind::Bridge)
        .hairpin(spec.hairpin)
        .alias(spec.alias.clone())
        .build();
    (create_message(spec), port)
}

/// The creation request: the host end, with the peer inside.
///
/// Both ends are created with one queue each way: the number the kernel
/// ends up using anyway. Left unset, veth allocates a queue per CPU and then
/// shrinks the registered device to one, which costs sysfs updates and two
/// synchronize-RCU waits per pair.
fn create_message(spec: &VethSpec<'_>) -> LinkMessage {
    let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(spec.ifname)
        .address(spec.pod_mac.to_vec())
        .setns_by_fd(spec.pod_ns_fd)
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1));
    let mut host = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(spec.host.clone())
        .address(spec.host_mac.to_vec())
        .controller(spec.bridge_index)
        .up()
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1));
    if let Some(m) = spec.mtu {
        peer = peer.mtu(m);
        host = host.mtu(m);
    }
    host.set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
        .build()
}

fn exists(spec: &VethSpec<'_>, host_there: bool) -> VethError {
    if host_there {
        VethError::HostExists {
            host: spec.host.clone(),
        }
    } else {
        VethError::PodExists {
            ifname: spec.ifname.to_string(),
            netns: spec.pod_ns.clone(),
        }
    }
}

fn outcome(
    spec: &VethSpec<'_>,
    ns: &str,
    created: Result<Option<u32>, rtnetlink::Error>,
    port_set: Result<(), rtnetlink::Error>,
) -> Result<Option<u32>, VethError> {
    let peer_index = created.map_err(|e| NetlinkError {
        op: format!("creating veth {} / {}", spec.host, spec.ifname),
        ns: ns.to_string(),
        source: e,
    })?;
    port_set.map_err(|source| NetlinkError {
        op: format!("setting hairpin mode and alias on {}", spec.host),
        ns: ns.to_string(),
        source,
    })?;
    Ok(peer_index)
}

/// The peer's index in an echoed veth (`IFLA_LINK`).
fn peer_of(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(i) => Some(*i),
        _ => None,
    })
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
                peer = peer.or_else(|| peer_of(&l));
            }
            _ => {}
        }
    }
    Ok(peer)
}

/// [`delete`] over a blocking socket.
pub fn delete_blocking(nl: &mut Rtnl, host: &str, ns: &str) -> Result<bool, NetlinkError> {
    netlink::delete_link_blocking(nl, host, ns)
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
        let al = "skiff/net/abc/eth0";
        assert_eq!(parse_alias("net", al), Some(a));
        assert_eq!(parse_alias("ne", al), None);
    }
}
