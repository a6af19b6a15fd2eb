//! CHECK: verifies that what ADD reported in `prevResult` is still in place —
//! the address allocation, the host veth on the bridge, the pod interface
//! (up, MAC, addresses), the pod routes, and the masquerade rule.

use std::collections::HashSet;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};

use crate::bridge;
use crate::config::{Ipam, NetConf};
use crate::delegate;
use crate::errors::{from_err, CniError, Code};
use crate::ipam::Store;
use crate::masq;
use crate::netlink;
use crate::netns::Netns;
use crate::plugin::{ipam_err, Attachment};
use crate::routes;
use crate::veth;

fn mismatch(msg: String) -> CniError {
    CniError::new(Code::CheckFailed, msg)
}

/// Verifies the attachment against `conf.prev_result`.
pub async fn check(conf: &NetConf, att: &Attachment, node: &Netns) -> Result<(), CniError> {
    if !conf.cni_version.has_check() {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!(
                "CHECK needs cniVersion 0.4.0 or later; the config says {}",
                conf.cni_version
            ),
        ));
    }
    att.validate(true)?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            Code::InvalidConfig,
            "CHECK needs prevResult: pass the result of the ADD",
        )
    })?;
    let id = att.id();
    let pod_iface = prev
        .interfaces
        .iter()
        .position(|i| i.name == att.ifname && i.sandbox.is_some());
    let expected: Vec<IpNetwork> = prev
        .ips
        .iter()
        .filter(|ip| pod_iface.is_none() || ip.interface == pod_iface)
        .map(|ip| ip.address)
        .collect();

    let h = node.netlink().map_err(|e| from_err(Code::Netlink, &e))?;
    let ns = node.describe();
    let host = veth::host_name(&conf.name, &id);
    let host_link = netlink::link_by_name(&h, &host)
        .await
        .map_err(|source| netlink::NetlinkError {
            op: format!("looking up {host}"),
            ns: ns.clone(),
            source,
        })
        .map_err(|e| from_err(Code::Netlink, &e))?;

    match &conf.ipam {
        Ipam::Builtin(b) => {
            let held = Store::new(b, &conf.name).lookup(&id).map_err(ipam_err)?;
            if held.is_empty() && host_link.is_none() {
                return Err(CniError::new(
                    Code::UnknownContainer,
                    format!(
                        "container {} has no {} attachment in network {}",
                        att.container_id, att.ifname, conf.name
                    ),
                ));
            }
            for ip in &expected {
                if !held.contains(&ip.ip()) {
                    return Err(mismatch(format!(
                        "address {} is not allocated to container {} in network {} (allocated: {held:?})",
                        ip.ip(),
                        att.container_id,
                        conf.name
                    )));
                }
            }
        }
        Ipam::Delegate { plugin, .. } => {
            delegate::exec(node, plugin, "CHECK", att, &conf.raw).map_err(|e| e.to_cni())?;
        }
    }

    let host_link =
        host_link.ok_or_else(|| mismatch(format!("host interface {host} is missing from {ns}")))?;
    let br = bridge::find(&h, &conf.bridge, &ns)
        .await
        .map_err(|e| from_err(Code::Netlink, &e))?
        .ok_or_else(|| mismatch(format!("bridge {} is missing from {ns}", conf.bridge)))?;
    if netlink::controller(&host_link) != Some(br.index) {
        return Err(mismatch(format!(
            "host interface {host} is not attached to bridge {}",
            conf.bridge
        )));
    }

    let path = att.netns.clone().unwrap_or_default();
    let pod = Netns::open(&path).map_err(|e| from_err(Code::UnknownContainer, &e))?;
    let pod_h = pod.netlink().map_err(|e| from_err(Code::Netlink, &e))?;
    let pod_ns = pod.describe();
    let link = netlink::link_by_name(&pod_h, &att.ifname)
        .await
        .map_err(|source| netlink::NetlinkError {
            op: format!("looking up {}", att.ifname),
            ns: pod_ns.clone(),
            source,
        })
        .map_err(|e| from_err(Code::Netlink, &e))?
        .ok_or_else(|| mismatch(format!("interface {} is missing from {pod_ns}", att.ifname)))?;
    if !netlink::is_up(&link) {
        return Err(mismatch(format!(
            "interface {} in {pod_ns} is down",
            att.ifname
        )));
    }
    if let Some(i) = pod_iface {
        let want = &prev.interfaces[i].mac;
        let have = netlink::mac(&link);
        if !want.is_empty() && !want.eq_ignore_ascii_case(&have) {
            return Err(mismatch(format!(
                "interface {} has MAC {have}, ADD reported {want}",
                att.ifname
            )));
        }
    }
    if let (Some(want), Some(have)) = (conf.mtu, netlink::mtu(&link)) {
        if want != have {
            return Err(mismatch(format!(
                "interface {} has MTU {have}, the config says {want}",
                att.ifname
            )));
        }
    }

    let addrs: Vec<AddressMessage> = pod_h
        .address()
        .get()
        .set_link_index_filter(link.header.index)
        .execute()
        .try_collect()
        .await
        .map_err(|source| netlink::NetlinkError {
            op: "listing addresses".into(),
            ns: pod_ns.clone(),
            source,
        })
        .map_err(|e| from_err(Code::Netlink, &e))?;
    let have: HashSet<IpNetwork> = addrs
        .iter()
        .filter_map(|m| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => IpNetwork::new(*ip, m.header.prefix_len).ok(),
                _ => None,
            })
        })
        .collect();
    for ip in &expected {
        if !have.contains(ip) {
            return Err(mismatch(format!(
                "address {ip} is missing from {} in {pod_ns}",
                att.ifname
            )));
        }
    }

    let table = routes::main_table(&pod_h)
        .await
        .map_err(|source| netlink::NetlinkError {
            op: "listing routes".into(),
            ns: pod_ns.clone(),
            source,
        })
        .map_err(|e| from_err(Code::Netlink, &e))?;
    for r in &prev.routes {
        let found = table.iter().any(|t| {
            t.dst == r.dst && (r.gw.is_none() || t.gw == r.gw) && t.oif == Some(link.header.index)
        });
        if !found {
            return Err(mismatch(format!(
                "route {}{} is missing from {pod_ns}",
                r.dst,
                r.gw.map(|g| format!(" via {g}")).unwrap_or_default()
            )));
        }
    }

    if conf.ip_masq {
        let rules = masq::list(node, &conf.name).map_err(|e| from_err(Code::Iptables, &e))?;
        for ip in &expected {
            let host_len = if ip.is_ipv4() { 32 } else { 128 };
            let needle = format!("-s {}/{host_len} ", ip.ip());
            if !rules
                .iter()
                .any(|r| r.owner == id && r.line.contains(&needle))
            {
                return Err(mismatch(format!(
                    "the masquerade rule for {} is missing from {ns}",
                    ip.ip()
                )));
            }
        }
    }
    Ok(())
}
