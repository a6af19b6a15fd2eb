//! The node bridge: created on the first ADD with a fixed MAC (so it does not
//! change as ports come and go), brought up, and given the gateway address of
//! every range so pods can route through it. Concurrent ADDs may race to
//! create it; "already exists" is success.

use ipnetwork::IpNetwork;
use rtnetlink::{LinkBridge, LinkUnspec};

use crate::netlink::{self, NetlinkError};

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

fn nl(op: String, ns: &str) -> impl FnOnce(rtnetlink::Error) -> NetlinkError + '_ {
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
        .map_err(nl(format!("looking up bridge {name}"), ns))?;
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
    let existing = netlink::link_by_name(h, name)
        .await
        .map_err(nl(format!("looking up bridge {name}"), ns))?;
    let link = match existing {
        Some(l) => {
            if !netlink::is_up(&l) {
                let up = LinkUnspec::new_with_index(l.header.index).up().build();
                h.link()
                    .set(up)
                    .execute()
                    .await
                    .map_err(nl(format!("bringing bridge {name} up"), ns))?;
            }
            l
        }
        None => {
            let mut b =
                LinkBridge::new(name).address(netlink::derived_mac(&["bridge", name]).to_vec());
            if let Some(m) = mtu {
                b = b.mtu(m);
            }
            match h.link().add(b.build()).execute().await {
                Ok(()) => {}
                Err(e) if netlink::is_exists(&e) => {}
                Err(e) => return Err(nl(format!("creating bridge {name}"), ns)(e)),
            }
            netlink::link_by_name(h, name)
                .await
                .map_err(nl(format!("looking up bridge {name}"), ns))?
                .ok_or_else(|| NetlinkError {
                    op: format!("creating bridge {name}"),
                    ns: ns.to_string(),
                    source: rtnetlink::Error::RequestFailed,
                })?
        }
    };
    let index = link.header.index;
    for gw in gateways {
        netlink::add_address(h, index, *gw, ns)
            .await
            .map_err(|e| NetlinkError {
                op: format!("adding gateway {gw} to bridge {name}"),
                ..e
            })?;
    }
    Ok(Bridge {
        index,
        mac: netlink::mac(&link),
        mtu: netlink::mtu(&link),
    })
}
