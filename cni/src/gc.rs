//! GC and STATUS (spec 1.1.0).
//!
//! GC removes every attachment of this network not listed in
//! `cni.dev/valid-attachments`: address allocations, host veths (by the name
//! derived from each stale attachment the IPAM store or ledger records; those
//! of earlier versions also found on the bridge by their `skiff/<network>/…`
//! alias) and masquerade rules. STATUS
//! says whether ADD can succeed: 50 when a range set is full, 51 when pods are
//! attached but the bridge is gone. With a delegated IPAM plugin both are
//! passed through to it (only `CNI_COMMAND` and `CNI_PATH` set, per the spec),
//! and its spec codes (e.g. 50/51 from STATUS) are returned as they are. As a
//! delegate's GC may do nothing (host-local's does not), GC also sends it a
//! DEL for every stale attachment in skiff's ledger (see `ledger`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::bridge;
use crate::config::{AttachmentId, Ipam, NetConf};
use crate::delegate;
use crate::errors::{from_err, CniError, Code};
use crate::ipam::Store;
use crate::ledger::Ledger;
use crate::masq;
use crate::netlink;
use crate::netns::Netns;
use crate::plugin::{ipam_err, Attachment};
use crate::veth;

/// What GC removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Address allocations released (with a delegated IPAM plugin: stale
    /// attachments it was sent a DEL for).
    pub addresses: usize,
    /// Host veths deleted.
    pub links: usize,
    /// Masquerade rules deleted.
    pub rules: usize,
}

fn needs_1_1(conf: &NetConf, what: &str) -> Result<(), CniError> {
    if conf.cni_version.is_1_1() {
        Ok(())
    } else {
        Err(CniError::new(
            Code::IncompatibleVersion,
            format!(
                "{what} needs cniVersion 1.1.0; the config says {}",
                conf.cni_version
            ),
        ))
    }
}

/// Removes every attachment of `conf`'s network that is not in its valid list.
/// A delegated IPAM plugin (found in `cni_path`) gets the same GC first.
pub async fn gc(conf: &NetConf, node: &Netns, cni_path: &[PathBuf]) -> Result<GcReport, CniError> {
    needs_1_1(conf, "GC")?;
    let valid: HashSet<AttachmentId> = conf
        .valid_attachments
        .clone()
        .ok_or_else(|| {
            CniError::new(
                Code::InvalidConfig,
                "GC needs cni.dev/valid-attachments (an empty list removes every attachment)",
            )
        })?
        .into_iter()
        .collect();
    let mut report = GcReport::default();
    let mut doomed: Vec<AttachmentId> = Vec::new();
    match &conf.ipam {
        Ipam::Builtin(b) => {
            let gone = Store::new(b, &conf.name).gc(&valid).map_err(ipam_err)?;
            report.addresses = gone.len();
            doomed.extend(gone.into_iter().map(|a| AttachmentId {
                container_id: a.container_id,
                ifname: a.ifname,
            }));
        }
        Ipam::Delegate { plugin, data_dir } => {
            // The delegate's own GC, then a DEL for each stale attachment
            // (below), which frees its addresses even when its GC does nothing
            // (host-local's up to at least 1.9.1). A delegate older than 1.1.0
            // gets neither: it would refuse the 1.1.0 DEL as well.
            delegate::exec_network(node, plugin, "GC", cni_path, &conf.raw)
                .map_err(|e| e.to_cni())?;
            let recorded = Ledger::new(data_dir, &conf.name)
                .list()
                .map_err(|e| from_err(Code::Io, &e))?;
            doomed.extend(recorded.into_iter().filter(|a| !valid.contains(a)));
        }
    }

    let h = node.netlink().map_err(|e| from_err(Code::Netlink, &e))?;
    let ns = node.describe();
    if let Some(br) = bridge::find(&h, &conf.bridge, &ns)
        .await
        .map_err(|e| from_err(Code::Netlink, &e))?
    {
        let links = netlink::all_links(&h)
            .await
            .map_err(|source| netlink::NetlinkError {
                op: "listing links".into(),
                ns: ns.clone(),
                source,
            })
            .map_err(|e| from_err(Code::Netlink, &e))?;
        for l in links
            .iter()
            .filter(|l| netlink::controller(l) == Some(br.index))
        {
            if let Some(owner) = netlink::alias(l).and_then(|a| veth::parse_alias(&conf.name, a)) {
                if !valid.contains(&owner) {
                    doomed.push(owner);
                }
            }
        }
    }
    let mut seen = HashSet::new();
    for owner in doomed.iter().filter(|o| seen.insert((*o).clone())) {
        if veth::delete(&h, &veth::host_name(&conf.name, owner), &ns)
            .await
            .map_err(|e| from_err(Code::Netlink, &e))?
        {
            report.links += 1;
        }
        if let Ipam::Delegate { plugin, data_dir } = &conf.ipam {
            release_delegated(conf, node, plugin, data_dir, cni_path, owner)?;
            report.addresses += 1;
        }
    }

    // Rules of an attachment whose config later turned ipMasq off are still
    // swept when iptables is installed.
    if conf.ip_masq || masq::available() {
        match masq::remove(node, &conf.name, |o| !valid.contains(o)) {
            Ok(n) => report.rules = n,
            Err(e) if conf.ip_masq => return Err(from_err(Code::Iptables, &e)),
            Err(_) => {}
        }
    }
    Ok(report)
}

/// Sends the delegate the DEL a runtime would for a stale attachment (no
/// netns: the pod is gone) and drops it from the ledger.
fn release_delegated(
    conf: &NetConf,
    node: &Netns,
    plugin: &str,
    data_dir: &Path,
    cni_path: &[PathBuf],
    owner: &AttachmentId,
) -> Result<(), CniError> {
    let att = Attachment {
        container_id: owner.container_id.clone(),
        ifname: owner.ifname.clone(),
        netns: None,
        args: String::new(),
        cni_path: cni_path.to_vec(),
    };
    delegate::exec(node, plugin, "DEL", &att, &conf.raw).map_err(|e| e.to_cni())?;
    Ledger::new(data_dir, &conf.name)
        .forget(owner)
        .map_err(|e| from_err(Code::Io, &e))
}

/// Reports whether ADD can succeed (`Ok`) or why not (codes 50/51). With a
/// delegated IPAM plugin, its STATUS answer is passed through.
pub async fn status(conf: &NetConf, node: &Netns, cni_path: &[PathBuf]) -> Result<(), CniError> {
    needs_1_1(conf, "STATUS")?;
    let b = match &conf.ipam {
        Ipam::Builtin(b) => b,
        Ipam::Delegate { plugin, .. } => {
            return delegate::exec_network(node, plugin, "STATUS", cni_path, &conf.raw)
                .map(|_| ())
                .map_err(|e| e.to_cni());
        }
    };
    let store = Store::new(b, &conf.name);
    if let Some(full) = store
        .usage(b)
        .map_err(ipam_err)?
        .into_iter()
        .find(|u| u.free == 0)
    {
        return Err(CniError::new(
            Code::NotAvailable,
            format!(
                "IP range {} of network {} is exhausted ({} addresses, none free); ADD will fail until DEL/GC frees addresses or ipam.ranges grows",
                full.ranges, conf.name, full.size
            ),
        ));
    }
    let attached = store.allocations().map_err(ipam_err)?.len();
    if attached > 0 {
        let h = node.netlink().map_err(|e| from_err(Code::Netlink, &e))?;
        let ns = node.describe();
        if bridge::find(&h, &conf.bridge, &ns)
            .await
            .map_err(|e| from_err(Code::Netlink, &e))?
            .is_none()
        {
            return Err(CniError::new(
                Code::NotAvailableLimitedConnectivity,
                format!(
                    "bridge {} is missing from {ns} while {attached} addresses are allocated: those pods have no network; recreate the pods",
                    conf.bridge
                ),
            ));
        }
    }
    Ok(())
}
