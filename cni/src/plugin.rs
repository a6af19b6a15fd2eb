//! ADD and DEL, the in-process API the node agent calls and the binary wraps.
//!
//! ADD order: allocate addresses (recorded first, so a crash leaves something
//! DEL/GC can find) → bridge and forwarding sysctls → veth pair (pod end made
//! inside the pod netns) → pod addresses and routes → masquerade rule. If any
//! step fails, the steps done so far are undone in reverse, so a failed ADD
//! leaves nothing behind but the shared bridge. ADD runs over blocking
//! netlink sockets ([`Rtnl`]), so the plugin binary needs no async runtime
//! for it. DEL undoes each piece and treats "already gone" as success, so it
//! can be repeated and works after a crash, after the pod netns was deleted,
//! and without `CNI_NETNS`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnetwork::IpNetwork;

use crate::bridge;
use crate::config::{check_ifname, AttachmentId, Ipam, NetConf};
use crate::delegate;
use crate::errors::{from_err, CniError, Code};
use crate::ipam::{self, Allocated, Store};
use crate::ledger::Ledger;
use crate::masq;
use crate::netlink::{self, NetlinkError};
use crate::netns::Netns;
use crate::pod;
use crate::result::{CniResult, Interface, IpConfig, Route};
use crate::rtnl::Rtnl;
use crate::unlink;
use crate::veth::{self, VethSpec};

/// Test hook: `ipam` or `veth` makes ADD pause (30 s at most) after that step,
/// so tests can kill the plugin mid-ADD.
pub const PAUSE_ENV: &str = "SKIFF_CNI_TEST_PAUSE_AT";

/// One attachment as the runtime describes it (the `CNI_*` variables).
#[derive(Clone, Debug, Default)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_NETNS`; optional on DEL.
    pub netns: Option<PathBuf>,
    /// `CNI_ARGS`, passed on to a delegated IPAM plugin.
    pub args: String,
    /// `CNI_PATH`, where delegated plugins are found.
    pub cni_path: Vec<PathBuf>,
}

impl Attachment {
    /// The (container, interface) pair.
    pub fn id(&self) -> AttachmentId {
        AttachmentId {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }

    /// Static addresses asked for with `CNI_ARGS` `IP=a[,b]` (host-local's
    /// convention); a value that is not an address is code 4.
    pub fn requested_ips(&self) -> Result<Vec<IpAddr>, CniError> {
        let mut out = Vec::new();
        for part in self.args.split(';') {
            let Some(list) = part.strip_prefix("IP=") else {
                continue;
            };
            for s in list.split(',').filter(|s| !s.is_empty()) {
                let ip = s.parse::<IpNetwork>().map(|n| n.ip()).map_err(|_| {
                    CniError::new(
                        Code::InvalidEnvironment,
                        format!(
                            "CNI_ARGS IP={s:?} is not an IP address; write e.g. IP=10.244.1.50"
                        ),
                    )
                })?;
                out.push(ip);
            }
        }
        Ok(out)
    }

    /// Checks the identifiers (code 4) and, if `need_netns`, that a netns is given.
    pub fn validate(&self, need_netns: bool) -> Result<(), CniError> {
        if !crate::config::valid_name(&self.container_id) {
            return Err(CniError::new(
                Code::InvalidEnvironment,
                format!(
                    "CNI_CONTAINERID {:?} is invalid: it must start with a letter or digit and hold only letters, digits, '_', '.' or '-'",
                    self.container_id
                ),
            ));
        }
        if let Err(why) = check_ifname(&self.ifname) {
            return Err(CniError::new(
                Code::InvalidEnvironment,
                format!("CNI_IFNAME {:?} is invalid: {why}", self.ifname),
            ));
        }
        if need_netns && self.netns.as_ref().is_none_or(|p| p.as_os_str().is_empty()) {
            return Err(CniError::new(
                Code::InvalidEnvironment,
                "CNI_NETNS is required for this command: set it to the pod's network namespace path",
            ));
        }
        Ok(())
    }
}

/// Addresses and routes for the pod, from the built-in or a delegated IPAM.
pub(crate) struct Addressing {
    pub(crate) ips: Vec<Allocated>,
    pub(crate) routes: Vec<(IpNetwork, Option<IpAddr>)>,
    pub(crate) dns: crate::result::Dns,
    /// Whether this ADD allocated them (and must free them on failure).
    pub(crate) fresh: bool,
}

/// What an ADD has done so far, for rollback.
#[derive(Default)]
struct Progress {
    ipam: bool,
    veth: bool,
    masq: bool,
}

/// Adds the pod's interface to the network; returns the CNI result. (The
/// work is [`add_blocking`]'s: a millisecond of netlink requests the kernel
/// answers synchronously, like the IPAM and iptables steps around them.)
pub async fn add(conf: &NetConf, att: &Attachment, node: &Netns) -> Result<CniResult, CniError> {
    add_blocking(conf, att, node)
}

/// [`add`] without an async runtime, over blocking netlink sockets: one in
/// the node namespace, one made inside the pod namespace. The plugin binary
/// calls this directly.
pub fn add_blocking(conf: &NetConf, att: &Attachment, node: &Netns) -> Result<CniResult, CniError> {
    att.validate(true)?;
    let path = att.netns.clone().unwrap_or_default();
    let pod = Netns::open(&path).map_err(|e| from_err(Code::InvalidEnvironment, &e))?;
    let mut nl = Rtnl::open_in(node).map_err(|e| from_err(Code::Netlink, &e))?;
    let mut progress = Progress::default();
    let r = add_steps(conf, att, node, &pod, &mut nl, &mut progress);
    if r.is_err() {
        rollback(conf, att, node, &mut nl, &progress);
    }
    r
}

fn add_steps(
    conf: &NetConf,
    att: &Attachment,
    node: &Netns,
    pod: &Netns,
    nl: &mut Rtnl,
    progress: &mut Progress,
) -> Result<CniResult, CniError> {
    let id = att.id();
    let ns = node.describe();
    let addressing = allocate(conf, att, node)?;
    progress.ipam = addressing.fresh;
    pause_if_asked("ipam");

    let gateways: Vec<IpNetwork> = addressing
        .ips
        .iter()
        .filter_map(|a| IpNetwork::new(a.gateway, a.address.prefix()).ok())
        .collect();
    let br = bridge::ensure_link_blocking(nl, &conf.bridge, conf.mtu, &ns)
        .map_err(|e| from_err(Code::Netlink, &e))?;
    enable_forwarding(node, &addressing.ips)?;

    let host = veth::host_name(&conf.name, &id);
    let pod_mac = pod_mac(conf, &id, &addressing.ips);
    let host_mac = netlink::derived_mac(&["host", &conf.name, &id.container_id, &id.ifname]);
    let spec = VethSpec {
        host: host.clone(),
        ifname: &att.ifname,
        mtu: conf.mtu,
        pod_mac,
        host_mac,
        bridge_index: br.index,
        pod_ns_fd: pod.raw_fd().unwrap_or(-1),
        pod_ns: pod.describe(),
        hairpin: conf.hairpin_mode,
        alias: String::new(),
    };
    progress.veth = true;
    // Gateway addresses and the veth go out in one batch.
    let mut reqs = bridge::gateway_requests(&br, &gateways);
    reqs.push(veth::create_request(&spec));
    let failed = |source| {
        from_err(
            Code::Netlink,
            &NetlinkError {
                op: format!("creating veth {host} / {}", att.ifname),
                ns: ns.clone(),
                source,
            },
        )
    };
    let mut answers = nl.batch(reqs).map_err(failed)?.into_iter();
    let gateways_added: Vec<_> = answers.by_ref().take(gateways.len()).collect();
    let Some(create) = answers.next() else {
        return Err(failed(rtnetlink::Error::RequestFailed));
    };
    let pair = match veth::created(nl, &spec, &ns, create) {
        Ok(pair) => pair,
        Err(e) => {
            // Only a pair this ADD created may be deleted on rollback.
            progress.veth = !matches!(
                e,
                veth::VethError::HostExists { .. } | veth::VethError::PodExists { .. }
            );
            let code = match e {
                veth::VethError::Netlink(_) => Code::Netlink,
                _ => Code::InterfaceExists,
            };
            return Err(from_err(code, &e));
        }
    };
    for (gw, a) in gateways.iter().zip(gateways_added) {
        bridge::gateway_added(a.result, &conf.bridge, *gw, &ns)
            .map_err(|e| from_err(Code::Netlink, &e))?;
    }
    if conf.hairpin_mode {
        // Needs the port's index, which came back with the creation.
        let answer = nl
            .batch(vec![veth::hairpin_request(pair.host)])
            .map_err(failed)?
            .into_iter()
            .next()
            .ok_or_else(|| failed(rtnetlink::Error::RequestFailed))?;
        veth::hairpin_set(&spec, &ns, answer).map_err(|e| from_err(Code::Netlink, &e))?;
    }
    pause_if_asked("veth");

    let mut pod_nl = Rtnl::open_in(pod).map_err(|e| from_err(Code::Netlink, &e))?;
    // The peer's index came back with the creation; its MTU is the one asked
    // for. Without either, the pod end is looked up.
    let known = pair.peer.zip(conf.mtu).map(|(index, mtu)| pod::PodLink {
        index,
        mtu: Some(mtu),
    });
    let addrs: Vec<IpNetwork> = addressing.ips.iter().map(|a| a.address).collect();
    let link = pod::configure_blocking(
        &mut pod_nl,
        &att.ifname,
        known,
        &addrs,
        &addressing.routes,
        &pod.describe(),
    )
    .map_err(|e| from_err(Code::Netlink, &e))?;

    if conf.ip_masq {
        progress.masq = true;
        let pairs: Vec<(IpNetwork, IpNetwork)> = addressing
            .ips
            .iter()
            .map(|a| (a.address, conf.masq_exclude(&a.address)))
            .collect();
        masq::add(node, &conf.name, &conf.bridge, &id, &pairs)
            .map_err(|e| from_err(Code::Iptables, &e))?;
    }

    let ours = CniResult {
        interfaces: vec![
            Interface {
                name: conf.bridge.clone(),
                mac: br.mac.clone(),
                mtu: br.mtu,
                sandbox: None,
            },
            Interface {
                name: host,
                mac: netlink::format_mac(&host_mac),
                mtu: conf.mtu.or(br.mtu),
                sandbox: None,
            },
            Interface {
                name: att.ifname.clone(),
                mac: netlink::format_mac(&pod_mac),
                mtu: link.mtu,
                sandbox: Some(
                    pod.path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                ),
            },
        ],
        ips: addressing
            .ips
            .iter()
            .map(|a| IpConfig {
                address: a.address,
                gateway: Some(a.gateway),
                interface: Some(2),
            })
            .collect(),
        routes: addressing
            .routes
            .iter()
            .map(|(dst, gw)| Route {
                dst: *dst,
                gw: *gw,
                mtu: None,
                priority: None,
            })
            .collect(),
        dns: if conf.dns == Default::default() {
            addressing.dns
        } else {
            conf.dns.clone()
        },
    };
    Ok(merge(conf.prev_result.clone(), ours))
}

/// Appends `ours` to a previous plugin's result (when skiff is not first).
fn merge(prev: Option<CniResult>, mut ours: CniResult) -> CniResult {
    let Some(mut prev) = prev else { return ours };
    let offset = prev.interfaces.len();
    for ip in &mut ours.ips {
        ip.interface = ip.interface.map(|i| i + offset);
    }
    prev.interfaces.append(&mut ours.interfaces);
    prev.ips.append(&mut ours.ips);
    prev.routes.append(&mut ours.routes);
    if ours.dns != Default::default() {
        prev.dns = ours.dns;
    }
    prev
}

fn rollback(conf: &NetConf, att: &Attachment, node: &Netns, nl: &mut Rtnl, p: &Progress) {
    let id = att.id();
    // Best effort: the original error is what the runtime needs to see.
    if p.masq {
        let _ = masq::remove(node, &conf.name, |o| o == &id);
    }
    if p.veth {
        let _ = veth::delete_blocking(nl, &veth::host_name(&conf.name, &id), &node.describe());
    }
    if p.ipam {
        let _ = release(conf, att, node);
    }
}

fn pod_mac(conf: &NetConf, id: &AttachmentId, ips: &[Allocated]) -> [u8; 6] {
    // Derived from the IPv4 address like the reference plugins used to, so a
    // pod's MAC is predictable from its IP; otherwise from its identity.
    match ips.iter().find_map(|a| match a.address.ip() {
        IpAddr::V4(v) => Some(v.octets()),
        IpAddr::V6(_) => None,
    }) {
        Some(o) => [0x0a, 0x58, o[0], o[1], o[2], o[3]],
        None => netlink::derived_mac(&["pod", &conf.name, &id.container_id, &id.ifname]),
    }
}

fn enable_forwarding(node: &Netns, ips: &[Allocated]) -> Result<(), CniError> {
    let mut keys = Vec::new();
    if ips.iter().any(|a| a.address.is_ipv4()) {
        keys.push("net/ipv4/ip_forward");
    }
    if ips.iter().any(|a| a.address.is_ipv6()) {
        keys.push("net/ipv6/conf/all/forwarding");
    }
    for key in keys {
        node.ensure_sysctl(key, "1")
            .map_err(|e| from_err(Code::Sysctl, &e))?
            .map_err(|e| {
                CniError::new(
                    Code::Sysctl,
                    format!(
                        "setting {key}=1 in {} failed; is /proc/sys writable?",
                        node.describe()
                    ),
                )
                .with_details(e.to_string())
            })?;
    }
    Ok(())
}

/// Gets addresses from the configured IPAM.
pub(crate) fn allocate(
    conf: &NetConf,
    att: &Attachment,
    node: &Netns,
) -> Result<Addressing, CniError> {
    match &conf.ipam {
        Ipam::Builtin(b) => {
            let mut requested = conf.requested_ips.clone();
            requested.extend(att.requested_ips()?);
            let (ips, existed) = Store::new(b, &conf.name)
                .allocate_requested(b, &att.id(), &requested)
                .map_err(ipam_err)?;
            let gw_of = |v4: bool| {
                ips.iter()
                    .find(|a| a.address.is_ipv4() == v4)
                    .map(|a| a.gateway)
            };
            let mut routes: Vec<(IpNetwork, Option<IpAddr>)> = b
                .routes
                .iter()
                .map(|r| (r.dst, r.gw.or_else(|| gw_of(r.dst.is_ipv4()))))
                .collect();
            add_default_routes(conf, &ips, &mut routes);
            Ok(Addressing {
                ips,
                routes,
                dns: Default::default(),
                fresh: !existed,
            })
        }
        Ipam::Delegate { plugin, data_dir } => {
            // Recorded first: an ADD killed while the delegate runs still
            // leaves an entry that GC turns into a DEL.
            let ledger = Ledger::new(data_dir, &conf.name);
            ledger
                .record(&att.id())
                .map_err(|e| from_err(Code::Io, &e))?;
            let out = match delegate::exec(node, plugin, "ADD", att, &conf.raw) {
                Ok(out) => out,
                Err(e) => {
                    // The delegate undid its own failed ADD; a DEL is harmless.
                    let _ = release(conf, att, node);
                    return Err(e.to_cni());
                }
            };
            let result = match out.map(|v| CniResult::from_json(&v)).transpose() {
                Ok(r) => r.unwrap_or_default(),
                Err(e) => {
                    let _ = release(conf, att, node);
                    return Err(from_err(Code::Delegate, &e));
                }
            };
            let ips: Vec<Allocated> = result
                .ips
                .iter()
                .map(|ip| Allocated {
                    address: ip.address,
                    gateway: ip
                        .gateway
                        .unwrap_or_else(|| ipam::add(ip.address.network(), 1)),
                })
                .collect();
            if ips.is_empty() {
                let _ = release(conf, att, node);
                return Err(CniError::new(
                    Code::Delegate,
                    format!("IPAM plugin {plugin} returned no addresses"),
                ));
            }
            let gw_of = |v4: bool| {
                ips.iter()
                    .find(|a| a.address.is_ipv4() == v4)
                    .map(|a| a.gateway)
            };
            let mut routes: Vec<(IpNetwork, Option<IpAddr>)> = result
                .routes
                .iter()
                .map(|r| (r.dst, r.gw.or_else(|| gw_of(r.dst.is_ipv4()))))
                .collect();
            add_default_routes(conf, &ips, &mut routes);
            Ok(Addressing {
                ips,
                routes,
                dns: result.dns,
                fresh: true,
            })
        }
    }
}

fn add_default_routes(
    conf: &NetConf,
    ips: &[Allocated],
    routes: &mut Vec<(IpNetwork, Option<IpAddr>)>,
) {
    if !conf.is_default_gateway {
        return;
    }
    for a in ips {
        let any: IpAddr = if a.address.is_ipv4() {
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        };
        let Ok(default) = IpNetwork::new(any, 0) else {
            continue;
        };
        if !routes.iter().any(|(d, _)| *d == default) {
            routes.push((default, Some(a.gateway)));
        }
    }
}

/// Maps a built-in IPAM error to its CNI code.
pub(crate) fn ipam_err(e: ipam::IpamError) -> CniError {
    let code = match e {
        ipam::IpamError::Exhausted { .. } => Code::RangeExhausted,
        ipam::IpamError::LockTimeout { .. } => Code::TryAgainLater,
        ipam::IpamError::Io { .. } | ipam::IpamError::Corrupt { .. } => Code::Io,
        ipam::IpamError::NotInRange { .. } => Code::InvalidConfig,
        ipam::IpamError::Unavailable { .. } => Code::AddressUnavailable,
    };
    from_err(code, &e)
}

fn release(conf: &NetConf, att: &Attachment, node: &Netns) -> Result<(), CniError> {
    match &conf.ipam {
        Ipam::Builtin(b) => Store::new(b, &conf.name)
            .release(&att.id())
            .map(|_| ())
            .map_err(ipam_err),
        Ipam::Delegate { plugin, data_dir } => {
            delegate::exec(node, plugin, "DEL", att, &conf.raw).map_err(|e| e.to_cni())?;
            Ledger::new(data_dir, &conf.name)
                .forget(&att.id())
                .map_err(|e| from_err(Code::Io, &e))
        }
    }
}

/// Removes the pod's interface, masquerade rule and addresses; succeeds if
/// they are already gone.
pub async fn del(conf: &NetConf, att: &Attachment, node: &Netns) -> Result<(), CniError> {
    att.validate(false)?;
    let id = att.id();
    unlink::delete(node, &veth::host_name(&conf.name, &id))
        .await
        .map_err(|e| from_err(Code::Netlink, &e))?;
    if conf.ip_masq {
        masq::remove(node, &conf.name, |o| o == &id).map_err(|e| from_err(Code::Iptables, &e))?;
    }
    release(conf, att, node)
}

fn pause_if_asked(stage: &str) {
    if std::env::var(PAUSE_ENV).is_ok_and(|v| v == stage) {
        eprintln!("skiff-cni: paused at {stage} ({PAUSE_ENV})");
        std::thread::sleep(Duration::from_secs(30));
    }
}
