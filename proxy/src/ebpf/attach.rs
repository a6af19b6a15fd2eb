//! Loads the embedded eBPF object, attaches its programs and pins their links
//! next to the maps, so the programs stay attached and keep using the same
//! maps when the proxy exits or restarts. A restarted proxy finds the pinned
//! links and leaves them in place — unless the program behind a link is not
//! this build's (other code, or maps that were replaced because their layout
//! changed): then the new program is attached first and the old link dropped
//! after, so no packet or connect() meets a moment without a program.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use aya::programs::links::{CgroupAttachMode, FdLink, PinnedLink};
use aya::programs::{
    loaded_programs, CgroupSockAddr, ProgramError, ProgramInfo, SchedClassifier, TcAttachType,
    TestRun, TestRunOptions,
};
use aya::{Ebpf, EbpfError, EbpfLoader};

/// The object aya-build compiled from `ebpf/` (see `proxy/build.rs`).
pub(super) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/skiff-ebpf"));

/// The socket-LB programs, all attached to the node's cgroup subtree.
pub const SOCK_PROGRAMS: [&str; 8] = [
    "skiff_connect4",
    "skiff_connect6",
    "skiff_sendmsg4",
    "skiff_sendmsg6",
    "skiff_recvmsg4",
    "skiff_recvmsg6",
    "skiff_getpeername4",
    "skiff_getpeername6",
];
/// tc program for node-interface ingress.
pub const TC_INGRESS: &str = "skiff_tc_ingress";
/// tc program for node-interface egress.
pub const TC_EGRESS: &str = "skiff_tc_egress";

/// Loading or attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The object did not load (maps or BTF).
    #[error("loading the eBPF object (pinned maps in {dir}): {source}")]
    Load {
        /// Pin directory.
        dir: PathBuf,
        /// The error (boxed: aya's error is large).
        #[source]
        source: Box<EbpfError>,
    },
    /// A program is missing from the object (a build mismatch).
    #[error("eBPF program {0} missing from the embedded object")]
    Missing(&'static str),
    /// The kernel refused a program.
    #[error("eBPF program {name}: {source}{log}")]
    Program {
        /// Program name.
        name: &'static str,
        /// The error.
        #[source]
        source: ProgramError,
        /// Verifier log, if the verifier rejected it.
        log: String,
    },
    /// A pinned map could not be checked or replaced.
    #[error(transparent)]
    Layout(#[from] super::layout::LayoutError),
    /// A filesystem step failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn perr(name: &'static str) -> impl FnOnce(ProgramError) -> AttachError {
    move |source| {
        let log = match &source {
            ProgramError::LoadError { verifier_log, .. } => format!("\nverifier: {verifier_log}"),
            _ => String::new(),
        };
        AttachError::Program { name, source, log }
    }
}

fn pin_err(name: &'static str, path: &Path) -> impl FnOnce(aya::pin::PinError) -> AttachError {
    let path = path.to_path_buf();
    move |e| AttachError::Io {
        what: if name.is_empty() { "pinning" } else { name },
        path,
        source: std::io::Error::other(e.to_string()),
    }
}

/// Loads the object with its maps pinned (or reused) in `pin_dir`, and loads
/// every program into the kernel. Pins whose layout is not this build's are
/// replaced first ([`super::layout`]).
pub fn load(pin_dir: &Path) -> Result<Ebpf, AttachError> {
    super::layout::replace_stale(pin_dir, OBJECT)?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(OBJECT)
        .map_err(|source| AttachError::Load {
            dir: pin_dir.to_path_buf(),
            source: Box::new(source),
        })?;
    for name in SOCK_PROGRAMS {
        let p: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or(AttachError::Missing(name))?
            .try_into()
            .map_err(perr(name))?;
        p.load().map_err(perr(name))?;
    }
    for name in [TC_INGRESS, TC_EGRESS] {
        let p: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(AttachError::Missing(name))?
            .try_into()
            .map_err(perr(name))?;
        p.load().map_err(perr(name))?;
    }
    Ok(ebpf)
}

fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// Attaches the socket programs to `cgroup` unless a previous proxy left
/// them attached (pinned links). Returns the link pins.
pub fn attach_cgroup(
    ebpf: &mut Ebpf,
    cgroup: &Path,
    pin_dir: &Path,
) -> Result<Vec<PathBuf>, AttachError> {
    let dir = links_dir(pin_dir);
    fs::create_dir_all(&dir).map_err(|source| AttachError::Io {
        what: "creating",
        path: dir.clone(),
        source,
    })?;
    let mut pins = Vec::new();
    let current = Current::take(pin_dir);
    for name in SOCK_PROGRAMS {
        let pin = dir.join(name);
        pins.push(pin.clone());
        let p: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or(AttachError::Missing(name))?
            .try_into()
            .map_err(perr(name))?;
        let ours = p.info().map_err(perr(name))?;
        if current.holds(&pin, &ours) {
            continue;
        }
        let cg = fs::File::open(cgroup).map_err(|source| AttachError::Io {
            what: "opening cgroup",
            path: cgroup.to_path_buf(),
            source,
        })?;
        // bpf_link attachments (kernel ≥ 5.7) coexist with other programs
        // on the cgroup by design; the kernel wants no mode flags for them.
        let id = p.attach(cg, CgroupAttachMode::Single).map_err(perr(name))?;
        let link: FdLink = p.take_link(id).map_err(perr(name))?.try_into().map_err(
            |e: aya::programs::links::LinkError| AttachError::Io {
                what: "taking link of",
                path: pin.clone(),
                source: std::io::Error::other(e.to_string()),
            },
        )?;
        replace_pin(link, &pin)?;
    }
    Ok(pins)
}

/// Pins `link` at `pin`, first dropping (so detaching) a link pinned there
/// before: the new program is already attached, so nothing runs without one.
fn replace_pin(link: FdLink, pin: &Path) -> Result<(), AttachError> {
    if let Ok(old) = PinnedLink::from_pin(pin) {
        let _detached: FdLink = old.unpin().map_err(|source| AttachError::Io {
            what: "unpinning",
            path: pin.to_path_buf(),
            source,
        })?;
        tracing::info!(link = %pin.display(), "attached program replaced by this build's");
    }
    link.pin(pin).map_err(pin_err("pinning link", pin))?;
    Ok(())
}

/// The skiff programs loaded in the kernel and the maps pinned for this node,
/// to tell whether a pinned link runs this build's program on these maps.
struct Current {
    /// Loaded skiff programs: id → (tag, ids of the maps it uses).
    loaded: HashMap<u32, (u64, Vec<u32>)>,
    /// Ids of the maps pinned in the pin directory.
    pinned: HashSet<u32>,
}

impl Current {
    fn take(pin_dir: &Path) -> Current {
        let pinned = fs::read_dir(pin_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| MapInfo::from_pin(e.path()).ok())
            .map(|i| i.id())
            .collect();
        let loaded = loaded_programs()
            .flatten()
            .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("skiff_")))
            .map(|p| {
                let maps = p.map_ids().ok().flatten().unwrap_or_default();
                (p.id(), (p.tag(), maps))
            })
            .collect();
        Current { loaded, pinned }
    }

    /// The pinned maps among `ids`, sorted.
    fn pinned_of(&self, ids: &[u32]) -> Vec<u32> {
        let mut v: Vec<u32> = ids
            .iter()
            .filter(|id| self.pinned.contains(id))
            .copied()
            .collect();
        v.sort_unstable();
        v
    }

    /// Whether a link is pinned at `pin` whose program has `ours`'s code
    /// and uses the same pinned maps.
    fn holds(&self, pin: &Path, ours: &ProgramInfo) -> bool {
        let Ok(link) = PinnedLink::from_pin(pin) else {
            return false;
        };
        let Ok(info) = FdLink::from(link).info() else {
            return false;
        };
        let Some((tag, maps)) = self.loaded.get(&info.program_id()) else {
            return false;
        };
        let our_maps = ours.map_ids().ok().flatten().unwrap_or_default();
        *tag == ours.tag() && self.pinned_of(maps) == self.pinned_of(&our_maps)
    }
}

/// Attaches the tc programs to `iface` (in the calling thread's network
/// namespace) in both directions, unless already pinned.
pub fn attach_tc(
    ebpf: &mut Ebpf,
    iface: &str,
    pin_dir: &Path,
) -> Result<Vec<PathBuf>, AttachError> {
    let dir = links_dir(pin_dir);
    let mut pins = Vec::new();
    let current = Current::take(pin_dir);
    for (name, kind, tag) in [
        (TC_INGRESS, TcAttachType::Ingress, "ingress"),
        (TC_EGRESS, TcAttachType::Egress, "egress"),
    ] {
        let pin = dir.join(format!("tc-{iface}-{tag}"));
        pins.push(pin.clone());
        let p: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(AttachError::Missing(name))?
            .try_into()
            .map_err(perr(name))?;
        let ours = p.info().map_err(perr(name))?;
        if current.holds(&pin, &ours) {
            continue;
        }
        let id = p.attach(iface, kind).map_err(perr(name))?;
        let link: FdLink = p.take_link(id).map_err(perr(name))?.try_into().map_err(
            |e: aya::programs::links::LinkError| AttachError::Io {
                what: "taking tc link of",
                path: pin.clone(),
                source: std::io::Error::other(e.to_string()),
            },
        )?;
        replace_pin(link, &pin)?;
    }
    Ok(pins)
}

/// Names of the tcx programs the kernel runs on `iface` (in the calling
/// thread's namespace): (ingress, egress), in run order.
pub fn query_tc(iface: &str) -> Result<(Vec<String>, Vec<String>), AttachError> {
    let names = |kind| -> Result<Vec<String>, AttachError> {
        let (_, progs) = SchedClassifier::query_tcx(iface, kind).map_err(perr("tcx query"))?;
        Ok(progs
            .iter()
            .map(|p| p.name_as_str().unwrap_or("?").to_string())
            .collect())
    };
    Ok((names(TcAttachType::Ingress)?, names(TcAttachType::Egress)?))
}

/// Detaches the tc programs of `iface` (if pinned) and removes their pins.
pub fn unpin_tc(pin_dir: &Path, iface: &str) -> Result<(), AttachError> {
    for tag in ["ingress", "egress"] {
        let pin = links_dir(pin_dir).join(format!("tc-{iface}-{tag}"));
        if let Ok(link) = PinnedLink::from_pin(&pin) {
            let _detached: FdLink = link.unpin().map_err(|source| AttachError::Io {
                what: "unpinning",
                path: pin.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Pinned links under `pin_dir` (the attached programs).
pub fn pinned_links(pin_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(links_dir(pin_dir))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Detaches every pinned program and removes the pins (links, then maps).
pub fn detach_and_unpin(pin_dir: &Path) -> Result<(), AttachError> {
    for pin in pinned_links(pin_dir) {
        if let Ok(link) = PinnedLink::from_pin(&pin) {
            // Dropping the last reference to a bpf_link detaches it.
            let _detached: FdLink = link.unpin().map_err(|source| AttachError::Io {
                what: "unpinning",
                path: pin.clone(),
                source,
            })?;
        }
    }
    let _ = fs::remove_dir(links_dir(pin_dir));
    if let Ok(rd) = fs::read_dir(pin_dir) {
        for e in rd.flatten() {
            let _ = fs::remove_file(e.path());
        }
    }
    match fs::remove_dir(pin_dir) {
        Ok(()) => {
            // The shared root goes with its last node (fails while others remain).
            if pin_dir.parent() == Some(Path::new(super::PIN_ROOT)) {
                let _ = fs::remove_dir(super::PIN_ROOT);
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(AttachError::Io {
            what: "removing",
            path: pin_dir.to_path_buf(),
            source,
        }),
    }
}

/// Runs a tc program once on `packet` with BPF_PROG_TEST_RUN; returns the
/// verdict (`TC_ACT_*`) and the packet as the program left it.
pub fn run_tc(ebpf: &Ebpf, ingress: bool, packet: &[u8]) -> Result<(u32, Vec<u8>), AttachError> {
    let name = if ingress { TC_INGRESS } else { TC_EGRESS };
    let p: &SchedClassifier = ebpf
        .program(name)
        .ok_or(AttachError::Missing(name))?
        .try_into()
        .map_err(perr(name))?;
    let mut out = vec![0u8; packet.len() + 256];
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .map_err(perr(name))?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}
