//! Small helpers over `rtnetlink` shared by the bridge, veth, route and VXLAN
//! modules: the error type that names the operation and namespace, errno
//! checks, and reading attributes out of link messages.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkExtentMask, LinkFlags, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{NetlinkMessage, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use rtnetlink::AddressMessageBuilder;

use crate::rtnl::Rtnl;

/// A failed netlink request: what was being done, where, and the kernel's answer.
#[derive(Debug, thiserror::Error)]
#[error("{op} in {ns} failed: {source}")]
pub struct NetlinkError {
    /// The operation, e.g. `creating veth sk1234 for eth0`.
    pub op: String,
    /// The namespace, as [`crate::netns::Netns::describe`] prints it.
    pub ns: String,
    /// The kernel's or the library's error.
    #[source]
    pub source: rtnetlink::Error,
}

impl NetlinkError {
    /// The positive errno the kernel returned, if any.
    pub fn errno(&self) -> Option<i32> {
        errno(&self.source)
    }
}

/// The positive errno of a netlink error message.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()).filter(|c| *c != 0),
        _ => None,
    }
}

/// `EEXIST`.
pub const EEXIST: i32 = 17;
/// `ENODEV`.
pub const ENODEV: i32 = 19;
/// `ESRCH` (route or neighbour not found).
pub const ESRCH: i32 = 3;
/// `ENOENT`.
pub const ENOENT: i32 = 2;
/// `EADDRNOTAVAIL` (address not found).
pub const EADDRNOTAVAIL: i32 = 99;

/// Whether `e` means "the object is not there".
pub fn is_not_found(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(ENODEV | ESRCH | ENOENT | EADDRNOTAVAIL))
}

/// Whether `e` means "the object already exists".
pub fn is_exists(e: &rtnetlink::Error) -> bool {
    errno(e) == Some(EEXIST)
}

/// The link called `name`, if it exists (without its statistics, which
/// nothing here reads and the kernel would otherwise gather and copy).
pub async fn link_by_name(
    h: &rtnetlink::Handle,
    name: &str,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    let req = h
        .link()
        .get()
        .match_name(name)
        .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats]);
    match req.execute().try_next().await {
        Ok(link) => Ok(link),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every link in the namespace.
pub async fn all_links(h: &rtnetlink::Handle) -> Result<Vec<LinkMessage>, rtnetlink::Error> {
    h.link().get().execute().try_collect().await
}

/// A link's name.
pub fn name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// A link's alias (`IFLA_IFALIAS`).
pub fn alias(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(n) => Some(n.as_str()),
        _ => None,
    })
}

/// The index of the bridge (or other controller) a link is attached to.
pub fn controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

/// A link's MTU.
pub fn mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// A link's hardware address as `aa:bb:cc:dd:ee:ff`.
pub fn mac(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) => Some(format_mac(m)),
            _ => None,
        })
        .unwrap_or_default()
}

/// Whether the link is administratively up.
pub fn is_up(link: &LinkMessage) -> bool {
    link.header.flags.contains(LinkFlags::Up)
}

/// Formats bytes as a colon-separated MAC address.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// FNV-1a: a stable 64-bit hash for deriving names and MAC addresses.
pub fn stable_hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// A locally administered unicast MAC derived from `parts`.
pub fn derived_mac(parts: &[&str]) -> [u8; 6] {
    let h = stable_hash(parts).to_be_bytes();
    [0x0a, h[0], h[1], h[2], h[3], h[4]]
}

/// The request adding `addr` to link `index`. IPv6 addresses skip duplicate
/// address detection: the plugin owns the subnet, and a tentative gateway or
/// pod address would drop the pod's first packets.
pub fn address_message(index: u32, addr: IpNetwork) -> AddressMessage {
    let mut m = match addr.ip() {
        IpAddr::V4(ip) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(ip, addr.prefix())
            .build(),
        IpAddr::V6(ip) => AddressMessageBuilder::<Ipv6Addr>::new()
            .index(index)
            .address(ip, addr.prefix())
            .build(),
    };
    if addr.is_ipv6() {
        m.header.flags |= AddressHeaderFlags::Nodad;
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    m
}

/// Adds `addr` to link `index` (see [`address_message`]); an address
/// already present is fine.
pub async fn add_address(
    h: &rtnetlink::Handle,
    index: u32,
    addr: IpNetwork,
    ns: &str,
) -> Result<(), NetlinkError> {
    let mut req = h.address().add(index, addr.ip(), addr.prefix());
    *req.message_mut() = address_message(index, addr);
    address_added(req.execute().await, addr, ns)
}

/// The outcome of adding `addr`: "already there" is success.
pub fn address_added(
    r: Result<(), rtnetlink::Error>,
    addr: IpNetwork,
    ns: &str,
) -> Result<(), NetlinkError> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if is_exists(&e) => Ok(()),
        Err(source) => Err(NetlinkError {
            op: format!("adding address {addr}"),
            ns: ns.to_string(),
            source,
        }),
    }
}

/// A request creating something (`NLM_F_CREATE | NLM_F_EXCL`), as the
/// `add` requests of rtnetlink send it; [`Rtnl`](crate::rtnl::Rtnl) adds
/// `NLM_F_ACK`.
pub fn create_request(msg: RouteNetlinkMessage) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL;
    req
}

/// A plain request (a change to an existing object, a lookup).
pub fn plain_request(msg: RouteNetlinkMessage) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST;
    req
}

/// [`link_by_name`] over a blocking socket.
pub fn link_by_name_blocking(
    nl: &mut Rtnl,
    name: &str,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    let answer = nl.request(plain_request(RouteNetlinkMessage::GetLink(m)))?;
    match answer.result {
        Ok(()) => Ok(answer.messages.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes the link called `name` over a blocking socket; returns whether it existed.
pub fn delete_link_blocking(nl: &mut Rtnl, name: &str, ns: &str) -> Result<bool, NetlinkError> {
    let msg = rtnetlink::LinkUnspec::new_with_name(name).build();
    let r = nl
        .request(plain_request(RouteNetlinkMessage::DelLink(msg)))
        .and_then(|a| a.result);
    deleted(r, name, ns)
}

/// Deletes the link called `name`; returns whether it existed.
pub async fn delete_link(
    h: &rtnetlink::Handle,
    name: &str,
    ns: &str,
) -> Result<bool, NetlinkError> {
    let msg = rtnetlink::LinkUnspec::new_with_name(name).build();
    deleted(h.link().del_with_message(msg).execute().await, name, ns)
}

fn deleted(r: Result<(), rtnetlink::Error>, name: &str, ns: &str) -> Result<bool, NetlinkError> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(source) => Err(NetlinkError {
            op: format!("deleting link {name}"),
            ns: ns.to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip_and_are_local_unicast() {
        let m = derived_mac(&["a", "b"]);
        assert_eq!(m[0] & 0x03, 0x02);
        assert_eq!(parse_mac(&format_mac(&m)), Some(m));
        assert_eq!(parse_mac("0a:00"), None);
        assert_ne!(stable_hash(&["ab", "c"]), stable_hash(&["a", "bc"]));
    }
}
