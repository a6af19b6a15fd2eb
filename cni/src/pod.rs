//! The pod end of an attachment, set up inside the pod namespace: brought up,
//! given its addresses and routes. All requests go to the kernel in one
//! write on a socket made in the pod namespace; the kernel handles them in
//! order, so the routes see the link up and the addresses in place. The
//! first failure, in request order, is the one reported.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_route::RouteNetlinkMessage;

use crate::netlink::{self, NetlinkError};
use crate::routes;
use crate::rtnl::Rtnl;

/// Errors configuring the pod end.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The interface is not in the pod namespace.
    #[error("{ifname} vanished from {ns} right after it was created")]
    Vanished {
        /// The interface name.
        ifname: String,
        /// The pod namespace, for messages.
        ns: String,
    },
}

/// The configured pod interface.
#[derive(Clone, Copy, Debug)]
pub struct PodLink {
    /// Its index in the pod namespace.
    pub index: u32,
    /// Its MTU.
    pub mtu: Option<u32>,
}

/// Brings `ifname` up and adds `addrs` and `routes` (destination, gateway)
/// in one batch. `known` is the interface's index and MTU when the caller
/// already knows them (from the veth creation); otherwise they are looked up.
pub fn configure_blocking(
    nl: &mut Rtnl,
    ifname: &str,
    known: Option<PodLink>,
    addrs: &[IpNetwork],
    routes: &[(IpNetwork, Option<IpAddr>)],
    ns: &str,
) -> Result<PodLink, PodError> {
    let failed = |op: String| {
        move |source| NetlinkError {
            op,
            ns: ns.to_string(),
            source,
        }
    };
    let link = match known {
        Some(l) => l,
        None => {
            let l = netlink::link_by_name_blocking(nl, ifname)
                .map_err(failed(format!("looking up {ifname}")))?
                .ok_or_else(|| PodError::Vanished {
                    ifname: ifname.to_string(),
                    ns: ns.to_string(),
                })?;
            PodLink {
                index: l.header.index,
                mtu: netlink::mtu(&l),
            }
        }
    };
    let up = rtnetlink::LinkUnspec::new_with_index(link.index)
        .up()
        .build();
    // rtnetlink's `set` sends changes with these flags too.
    let mut reqs = vec![netlink::create_request(RouteNetlinkMessage::SetLink(up))];
    reqs.extend(addrs.iter().map(|a| {
        netlink::create_request(RouteNetlinkMessage::NewAddress(netlink::address_message(
            link.index, *a,
        )))
    }));
    reqs.extend(routes.iter().map(|(dst, gw)| {
        netlink::create_request(RouteNetlinkMessage::NewRoute(routes::pod_route_message(
            link.index, *dst, *gw,
        )))
    }));
    let mut answers = nl
        .batch(reqs)
        .map_err(failed(format!("configuring {ifname}")))?
        .into_iter();
    let mut next = || {
        answers
            .next()
            .map_or(Err(rtnetlink::Error::RequestFailed), |a| a.result)
    };
    next().map_err(failed(format!("bringing {ifname} up")))?;
    for a in addrs {
        netlink::address_added(next(), *a, ns)?;
    }
    for (dst, gw) in routes {
        routes::pod_route_added(next(), *dst, *gw, ns)?;
    }
    Ok(link)
}
