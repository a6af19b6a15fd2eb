//! The pod end of an attachment, set up inside the pod namespace: brought up,
//! given its addresses and routes. All requests are queued on the pod's
//! netlink socket before any answer is awaited, which saves the plugin a
//! wake-up per step (the kernel answers rtnetlink requests synchronously, so
//! there is no network-style latency to hide); the kernel handles a socket's
//! requests in order, so the routes still see the link up and the addresses
//! in place. The first failure, in request order, is the one reported.

use std::net::IpAddr;

use futures::future::join_all;
use ipnetwork::IpNetwork;

use crate::netlink::{self, NetlinkError};
use crate::routes;

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

/// Brings `ifname` up and adds `addrs` and `routes` (destination, gateway).
/// `known` is the interface's index and MTU when the caller already knows
/// them (from the veth creation); otherwise they are looked up.
pub async fn configure(
    h: &rtnetlink::Handle,
    ifname: &str,
    known: Option<PodLink>,
    addrs: &[IpNetwork],
    routes: &[(IpNetwork, Option<IpAddr>)],
    ns: &str,
) -> Result<PodLink, PodError> {
    let link = match known {
        Some(l) => l,
        None => {
            let l = netlink::link_by_name(h, ifname)
                .await
                .map_err(|source| NetlinkError {
                    op: format!("looking up {ifname}"),
                    ns: ns.to_string(),
                    source,
                })?
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
    let up = async {
        h.link()
            .set(
                rtnetlink::LinkUnspec::new_with_index(link.index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|source| NetlinkError {
                op: format!("bringing {ifname} up"),
                ns: ns.to_string(),
                source,
            })
    };
    let addresses = join_all(
        addrs
            .iter()
            .map(|a| netlink::add_address(h, link.index, *a, ns)),
    );
    let routes = join_all(
        routes
            .iter()
            .map(|(dst, gw)| routes::add_pod_route(h, link.index, *dst, *gw, ns)),
    );
    let (up, addresses, routes) = futures::join!(up, addresses, routes);
    up?;
    for r in addresses.into_iter().chain(routes) {
        r?;
    }
    Ok(link)
}
