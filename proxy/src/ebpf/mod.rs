//! The eBPF data plane: socket-level load balancing for ClusterIPs (cgroup
//! programs on the node's cgroup v2 subtree) and tc load balancing for
//! NodePorts, externalIPs and LoadBalancer IPs on node interfaces, driven by
//! pinned maps that this module keeps equal to the service model.
//!
//! It owns `/sys/fs/bpf/skiff/<node>` (maps and links) and attaches only to
//! the cgroup subtree and interfaces it is given; it never touches the root
//! cgroup (DESIGN §6).

mod attach;
mod cgroup;
mod collector;
mod desired;
mod iface;
mod layout;
mod sockdestroy;
mod status;
mod tables;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap as BpfHash, LpmTrie, PerCpuArray};
use aya::Ebpf;
use skiff_common::{maglev, names, FrontendKey};

pub use attach::{detach_and_unpin, AttachError, SOCK_PROGRAMS, TC_EGRESS, TC_INGRESS};
pub use cgroup::{cgroup2_mount, check_subtree, ensure_subtree, CgroupError};
pub use collector::EbpfCollector;
pub use desired::{frontends, BackendAddr, DesiredFrontend};
pub use iface::{node_interfaces, IfaceError, NodeInterface};
pub use layout::{expected as map_layouts, pinned as pinned_layout, Layout, LayoutError};
pub use status::{read as read_status, FrontendStatus, MapFill, Status, StatusError};
pub use tables::TablesError;

use crate::dataplane::{Dataplane, DataplaneError, SyncStats};
use crate::model::{Changes, ServiceMap, ServicePortName};
use tables::{Maps, Tables};

/// Where the eBPF data plane pins and attaches.
#[derive(Debug, Clone)]
pub struct EbpfConfig {
    /// bpffs directory for maps and links, e.g. `/sys/fs/bpf/skiff/<node>`.
    pub pin_dir: PathBuf,
    /// cgroup v2 directory the socket programs attach to (never the root).
    pub cgroup: PathBuf,
    /// Node interfaces that get the tc programs (NodePort, external IPs).
    pub interfaces: Vec<String>,
    /// Also attach the tc programs to every up, non-loopback interface with
    /// an address ([`node_interfaces`]), found at start and at each sync;
    /// their addresses answer NodePorts.
    pub discover_interfaces: bool,
    /// Network namespace the interfaces live in (`None`: our own).
    pub netns: Option<PathBuf>,
    /// Maglev table size, a prime ≤ 16381.
    pub maglev_size: usize,
    /// How long TCP connections to a removed backend may finish before they
    /// are destroyed (connected UDP sockets are destroyed at once).
    pub tcp_destroy_grace: std::time::Duration,
}

/// Default [`EbpfConfig::tcp_destroy_grace`].
pub const TCP_DESTROY_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The bpffs directory holding one pin directory per node.
pub const PIN_ROOT: &str = "/sys/fs/bpf/skiff";

/// The node's cgroup, relative to each hierarchy's root: the socket programs
/// attach to it in cgroup v2, and the node agent creates its pod cgroups below
/// it, so one name serves both.
pub fn node_cgroup(node: &str) -> String {
    format!("skiff-{node}")
}

impl EbpfConfig {
    /// `/sys/fs/bpf/skiff/<node>` ([`PIN_ROOT`]`/<node>`).
    pub fn default_pin_dir(node: &str) -> PathBuf {
        Path::new(PIN_ROOT).join(node)
    }

    /// The default layout for `node`: pins under /sys/fs/bpf/skiff/<node>,
    /// programs on the cgroup [`node_cgroup`] below the cgroup v2 root
    /// (created here; the agent puts the node's pods below it).
    pub fn for_node(node: &str) -> Result<EbpfConfig, EbpfError> {
        Ok(EbpfConfig {
            pin_dir: EbpfConfig::default_pin_dir(node),
            cgroup: ensure_subtree(Path::new(&node_cgroup(node)))?,
            interfaces: Vec::new(),
            discover_interfaces: true,
            netns: None,
            maglev_size: maglev::DEFAULT_SIZE,
            tcp_destroy_grace: TCP_DESTROY_GRACE,
        })
    }
}

/// Setting up the eBPF data plane failed.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// cgroup or bpffs setup.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Loading or attaching programs.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// Map access.
    #[error(transparent)]
    Tables(#[from] TablesError),
    /// A map is missing from the object.
    #[error("eBPF map {0} missing from the embedded object")]
    MissingMap(&'static str),
    /// A map has another type than expected (a build mismatch).
    #[error("eBPF map {0}: {1}")]
    MapType(&'static str, aya::maps::MapError),
    /// Entering the node's network namespace failed.
    #[error("network namespace for the tc programs: {0}")]
    Netns(skiff_cni::netns::NetnsError),
    /// Reading the pinned state.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// Reading or preparing the node's interfaces.
    #[error(transparent)]
    Iface(#[from] IfaceError),
    /// The kernel lacks what the data plane needs.
    #[error("the kernel cannot run the eBPF data plane: {0}")]
    Unsupported(String),
    /// The Maglev table size is not usable.
    #[error("maglev table size: {0}")]
    Maglev(#[from] maglev::MaglevError),
}

/// Whether this kernel and host can run the eBPF data plane: a cgroup v2
/// mount, and the program and map types the data plane loads. The error says
/// what is missing (for the one log line of the iptables fallback).
pub fn supported() -> Result<(), EbpfError> {
    use aya::maps::MapType;
    use aya::programs::ProgramType;
    use aya::sys::{is_map_supported, is_program_supported};
    cgroup2_mount()?;
    for (what, ty) in [
        ("cgroup sock_addr programs", ProgramType::CgroupSockAddr),
        ("tc classifier programs", ProgramType::SchedClassifier),
    ] {
        if !is_program_supported(ty).map_err(|e| EbpfError::Unsupported(format!("{what}: {e}")))? {
            return Err(EbpfError::Unsupported(format!("no {what}")));
        }
    }
    for (what, ty) in [
        ("LRU hash maps", MapType::LruHash),
        ("LPM trie maps", MapType::LpmTrie),
    ] {
        if !is_map_supported(ty).map_err(|e| EbpfError::Unsupported(format!("{what}: {e}")))? {
            return Err(EbpfError::Unsupported(format!("no {what}")));
        }
    }
    Ok(())
}

/// The eBPF backend of the proxy.
pub struct EbpfDataplane {
    ebpf: Ebpf,
    tables: Tables,
    cfg: EbpfConfig,
    netns: skiff_cni::Netns,
    /// Interfaces the tc programs are attached to, and their addresses.
    attached: BTreeMap<String, Vec<IpAddr>>,
    destroyer: sockdestroy::Destroyer,
    by_port: BTreeMap<ServicePortName, Vec<FrontendKey>>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(EbpfError::MissingMap(name))?;
    T::try_from(map).map_err(|e| EbpfError::MapType(name, e))
}

impl EbpfDataplane {
    /// Loads the programs (reusing maps and links a previous proxy pinned in
    /// `cfg.pin_dir`), attaches them and resumes from the pinned state.
    pub fn new(cfg: EbpfConfig) -> Result<EbpfDataplane, EbpfError> {
        maglev::build(&[], cfg.maglev_size)?;
        let cgroup = check_subtree(&cfg.cgroup)?;
        cgroup::ensure_bpffs_dir(&cfg.pin_dir)?;
        let mut ebpf = attach::load(&cfg.pin_dir)?;
        attach::attach_cgroup(&mut ebpf, &cgroup, &cfg.pin_dir)?;
        let netns = match &cfg.netns {
            Some(p) => skiff_cni::Netns::open(p).map_err(EbpfError::Netns)?,
            None => skiff_cni::Netns::current(),
        };
        let maps = Maps {
            frontends: take::<BpfHash<_, _, _>>(&mut ebpf, names::FRONTENDS)?,
            slots: take::<BpfHash<_, _, _>>(&mut ebpf, names::SLOTS)?,
            backends: take::<BpfHash<_, _, _>>(&mut ebpf, names::BACKENDS)?,
            maglev: take::<BpfHash<_, _, _>>(&mut ebpf, names::MAGLEV)?,
            ranges: take::<LpmTrie<_, _, _>>(&mut ebpf, names::SOURCE_RANGES)?,
            node_addrs: take::<BpfHash<_, _, _>>(&mut ebpf, names::NODE_ADDRS)?,
            counters: take::<PerCpuArray<_, _>>(&mut ebpf, names::COUNTERS)?,
            snat: take::<Array<_, _>>(&mut ebpf, names::SNAT)?,
            names: take::<BpfHash<_, _, _>>(&mut ebpf, names::SERVICE_NAMES)?,
        };
        let tables = Tables::resume(maps, cfg.maglev_size)?;
        let destroyer = sockdestroy::Destroyer::start(cgroup, cfg.tcp_destroy_grace);
        let mut dp = EbpfDataplane {
            ebpf,
            tables,
            cfg,
            netns,
            attached: BTreeMap::new(),
            destroyer,
            by_port: BTreeMap::new(),
        };
        dp.attach_interfaces()?;
        Ok(dp)
    }

    /// Attaches the tc programs to the configured interfaces and (with
    /// `discover_interfaces`) to every node interface not yet attached; a
    /// restarted proxy finds its pinned links and adds none.
    fn attach_interfaces(&mut self) -> Result<(), EbpfError> {
        let (cfg, ebpf, attached) = (&self.cfg, &mut self.ebpf, &mut self.attached);
        if cfg.interfaces.is_empty() && !cfg.discover_interfaces {
            return Ok(());
        }
        self.netns
            .run(|| -> Result<(), EbpfError> {
                let found = if cfg.discover_interfaces {
                    node_interfaces()?
                } else {
                    Vec::new()
                };
                let mut want: BTreeMap<String, Vec<IpAddr>> = cfg
                    .interfaces
                    .iter()
                    .map(|i| (i.clone(), Vec::new()))
                    .collect();
                for i in found {
                    want.insert(i.name, i.addrs);
                }
                for gone in attached.keys().filter(|n| !want.contains_key(*n)) {
                    // Its links died with it; unpinned, a new interface of
                    // the same name gets the programs again.
                    attach::unpin_tc(&cfg.pin_dir, gone)?;
                    tracing::info!(interface = %gone, "interface gone; tc links unpinned");
                }
                for name in want.keys().filter(|n| !attached.contains_key(*n)) {
                    iface::accept_local(name)?;
                    iface::loose_rp_filter(name)?;
                    attach::attach_tc(ebpf, name, &cfg.pin_dir)?;
                    tracing::info!(interface = %name, "tc programs attached");
                }
                *attached = want;
                Ok(())
            })
            .map_err(EbpfError::Netns)?
    }

    /// The tcx programs the kernel runs on `iface` of the node's namespace,
    /// (ingress, egress) by name (names are cut to 15 characters).
    pub fn tc_programs(&self, iface: &str) -> Result<(Vec<String>, Vec<String>), EbpfError> {
        Ok(self
            .netns
            .run(|| attach::query_tc(iface))
            .map_err(EbpfError::Netns)??)
    }

    /// Interfaces carrying the tc programs.
    pub fn interfaces(&self) -> Vec<String> {
        self.attached.keys().cloned().collect()
    }

    /// The node addresses NodePorts answer on: the Node object's, then those
    /// of the attached interfaces. The first of each family is that family's
    /// SNAT source for flows to external and LoadBalancer IPs.
    fn node_addrs(&self, model: &[IpAddr]) -> Vec<IpAddr> {
        let mut seen = BTreeSet::new();
        model
            .iter()
            .chain(self.attached.values().flatten())
            .filter(|ip| seen.insert(**ip))
            .copied()
            .collect()
    }

    /// Runs a tc program once on `packet` (BPF_PROG_TEST_RUN), for tests and
    /// diagnostics; returns the `TC_ACT_*` verdict and the rewritten packet.
    pub fn run_tc(&self, ingress: bool, packet: &[u8]) -> Result<(u32, Vec<u8>), EbpfError> {
        Ok(attach::run_tc(&self.ebpf, ingress, packet)?)
    }

    /// Attached programs, map fill and per-frontend counters.
    pub fn status(&self) -> Result<Status, EbpfError> {
        Ok(status::read(&self.cfg.pin_dir)?)
    }

    fn apply_port(&mut self, name: &ServicePortName, map: &ServiceMap) -> Result<(), EbpfError> {
        let want = map.ports.get(name).map(frontends).unwrap_or_default();
        let keys: Vec<FrontendKey> = want.iter().map(|d| d.key).collect();
        for d in &want {
            self.tables.apply(d)?;
        }
        if let Some(old) = self.by_port.remove(name) {
            for k in old.iter().filter(|k| !keys.contains(k)) {
                self.tables.remove(k)?;
            }
        }
        if !keys.is_empty() {
            self.by_port.insert(name.clone(), keys);
        }
        Ok(())
    }

    fn sync_inner(&mut self, map: &ServiceMap, changes: &Changes) -> Result<(), EbpfError> {
        // Interfaces come and go (the pod bridge appears with the first pod).
        self.attach_interfaces()?;
        let addrs = self.node_addrs(&map.node.addresses);
        self.tables.set_node_addrs(&addrs)?;
        if changes.full {
            let names: Vec<ServicePortName> = map.ports.keys().cloned().collect();
            for name in &names {
                self.apply_port(name, map)?;
            }
            // Anything else pinned (removed while no proxy ran) goes.
            let live: HashSet<FrontendKey> = self.by_port.values().flatten().copied().collect();
            let stale: Vec<FrontendKey> = self
                .tables
                .keys()
                .filter(|k| !live.contains(k))
                .copied()
                .collect();
            for k in &stale {
                self.tables.remove(k)?;
            }
            self.by_port.retain(|n, _| map.ports.contains_key(n));
        } else {
            for name in changes.removed.keys() {
                self.apply_port(name, map)?;
            }
            for name in &changes.updated {
                self.apply_port(name, map)?;
            }
        }
        // Connections to a removed backend would hang until they time out:
        // destroy them so clients reconnect.
        let gone = self.tables.collect_backends()?;
        let tables = &self.tables;
        self.destroyer.keep_alive(|a| tables.has_backend(a));
        self.destroyer.submit(gone);
        Ok(())
    }
}

impl Dataplane for EbpfDataplane {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn sync(&mut self, map: &ServiceMap, changes: &Changes) -> Result<SyncStats, DataplaneError> {
        self.tables.written = 0;
        self.sync_inner(map, changes)
            .map_err(|e| DataplaneError::new("ebpf", e))?;
        Ok(SyncStats {
            rules: self.tables.entry_count(),
            written: self.tables.written,
        })
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        detach_and_unpin(&self.cfg.pin_dir).map_err(|e| DataplaneError::new("ebpf", e))
    }
}
