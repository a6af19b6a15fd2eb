//! The node bridge: created on the first ADD with a fixed MAC (so it does not
//! change as ports come and go), brought up, and given the gateway address of
//! every range so pods can route through it. Concurrent ADDs may race to
//! create it; "already exists" is success.

use ipnetwork::IpNetwork;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::NetlinkMessage;
use rtnetlink::{LinkBridge, LinkUnspec};

use crate::netlink::{self, NetlinkError};
use crate::rtnl::Rtnl;

/// The bridge as ADD needs it.
#[derive(Clone, Debug)]
pub struct Bridge {
    /// Interface index in the node namespace.
    pub index: u32,
    /// Hardware address.
    pub mac: String,
    /// MTU.
    pub mtu: Option<u32>,
}

fn nl_err(op: String, ns: &str) -> impl FnOnce(rtnetlink::Error) -> NetlinkError + '_ {
    move |source| NetlinkError {
        op,
        ns: ns.to_string(),
        source,
    }
}

/// Finds the bridge `name`, if present.
pub async fn find(
    h: &rtnetlink::Handle,
    name: &str,
    ns: &str,
) -> Result<Option<Bridge>, NetlinkError> {
    let link = netlink::link_by_name(h, name)
        .await
        .map_err(nl_err(format!("looking up bridge {name}"), ns))?;
    Ok(link.map(|l| Bridge {
        index: l.header.index,
        mac: netlink::mac(&l),
        mtu: netlink::mtu(&l),
    }))
}

/// Makes sure bridge `name` exists, is up, and holds every gateway address.
pub async fn ensure(
    h: &rtnetlink::Handle,
    name: &str,
    mtu: Option<u32>,
    gateways: &[IpNetwork],
    ns: &str,
) -> Result<Bridge, NetlinkError> {
    let br = ensure_link(h, name, mtu, ns).await?;
    add_gateways(h, &br, name, gateways, ns).await?;
    Ok(br)
}

/// Makes sure bridge `name` exists and is up (its addresses are left to
/// [`add_gateways`], so ADD can send them together with the veth request).
pub async fn ensure_link(
    h: &rtnetlink::Handle,
    name: &str,
    mtu: Option<u32>,
    ns: &str,
) -> Result<Bridge, NetlinkError> {
    let existing = netlink::link_by_name(h, name)
        .await
        .map_err(nl_err(format!("looking up bridge {name}"), ns))?;
    let link = match existing {
        Some(l) => {
            if !netlink::is_up(&l) {
                let up = LinkUnspec::new_with_index(l.header.index).up().build();
                h.link()
                    .set(up)
                    .execute()
                    .await
                    .map_err(nl_err(format!("bringing bridge {name} up"), ns))?;
            }
            l
        }
        None => {
            match h.link().add(create_message(name, mtu)).execute().await {
                Ok(()) => {}
                Err(e) if netlink::is_exists(&e) => {}
                Err(e) => return Err(nl_err(format!("creating bridge {name}"), ns)(e)),
            }
            netlink::link_by_name(h, name)
                .await
                .map_err(nl_err(format!("looking up bridge {name}"), ns))?
                .ok_or_else(|| NetlinkError {
                    op: format!("creating bridge {name}"),
                    ns: ns.to_string(),
                    source: rtnetlink::Error::RequestFailed,
                })?
        }
    };
    Ok(Bridge {
        index: link.header.index,
        mac: netlink::mac(&link),
        mtu: netlink::mtu(&link),
    })
}

/// The request creating bridge `name` with its fixed MAC.
fn create_message(name: &str, mtu: Option<u32>) -> LinkMessage {
    let mut b = LinkBridge::new(name).address(netlink::derived_mac(&["bridge", name]).to_vec());
    if let Some(m) = mtu {
        b = b.mtu(m);
    }
    b.build()
}

/// [`ensure_link`] over a blocking socket.
pub fn ensure_link_blocking(
    nl: &mut Rtnl,
    name: &str,
    mtu: Option<u32>,
    ns: &str,
) -> Result<Bridge, NetlinkError> {
    let lookup = |nl: &mut Rtnl| {
        netlink::link_by_name_blocking(nl, name)
            .map_err(nl_err(format!("looking up bridge {name}"), ns))
    };
    let link = match lookup(nl)? {
        Some(l) => {
            if !netlink::is_up(&l) {
                let up = LinkUnspec::new_with_index(l.header.index).up().build();
                nl.request(netlink::plain_request(RouteNetlinkMessage::SetLink(up)))
                    .and_then(|a| a.result)
                    .map_err(nl_err(format!("bringing bridge {name} up"), ns))?;
            }
            l
        }
        None => {
            let create =
                netlink::create_request(RouteNetlinkMessage::NewLink(create_message(name, mtu)));
            match nl.request(create).and_then(|a| a.result) {
                Ok(()) => {}
                Err(e) if netlink::is_exists(&e) => {}
                Err(e) => return Err(nl_err(format!("creating bridge {name}"), ns)(e)),
            }
            lookup(nl)?.ok_or_else(|| NetlinkError {
                op: format!("creating bridge {name}"),
                ns: ns.to_string(),
                source: rtnetlink::Error::RequestFailed,
            })?
        }
    };
    Ok(Bridge {
        index: link.header.index,
        mac: netlink::mac(&link),
        mtu: netlink::mtu(&link),
    })
}

/// The requests adding each of `gateways` to bridge `br`, for a batch.
pub fn gateway_requests(
    br: &Bridge,
    gateways: &[IpNetwork],
) -> Vec<NetlinkMessage<RouteNetlinkMessage>> {
    gateways
        .iter()
        .map(|gw| {
            netlink::create_request(RouteNetlinkMessage::NewAddress(netlink::address_message(
                br.index, *gw,
            )))
        })
        .collect()
}

/// The outcome of adding gateway `gw` to bridge `name` ("already there" is fine).
pub fn gateway_added(
    r: Result<(), rtnetlink::Error>,
    name: &str,
    gw: IpNetwork,
    ns: &str,
) -> Result<(), NetlinkError> {
    netlink::address_added(r, gw, ns).map_err(|e| NetlinkError {
        op: format!("adding gateway {gw} to bridge {name}"),
        ..e
    })
}

/// Adds every gateway address to bridge `br` (called `name`); addresses
/// already there are fine. The requests go out together.
pub async fn add_gateways(
    h: &rtnetlink::Handle,
    br: &Bridge,
    name: &str,
    gateways: &[IpNetwork],
    ns: &str,
) -> Result<(), NetlinkError> {
    let added = futures::future::join_all(
        gateways
            .iter()
            .map(|gw| netlink::add_address(h, br.index, *gw, ns)),
    )
    .await;
    for (gw, r) in gateways.iter().zip(added) {
        r.map_err(|e| NetlinkError {
            op: format!("adding gateway {gw} to bridge {name}"),
            ..e
        })?;
    }
    Ok(())
}
