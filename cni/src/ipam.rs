//! The built-in IPAM: a per-network store under `dataDir/<network>/`, guarded
//! by an exclusive `flock` on `dataDir/<network>/lock` so concurrent plugin
//! processes never hand out the same address.
//!
//! Each allocation is one directory entry whose name holds the address and
//! its owner (format in [`entries`]). Creating or removing it is a single atomic
//! system call with no file data, so a process killed at any point leaves a
//! consistent store, and no write waits for the disk (rewriting a regular
//! file by rename or truncation makes ext4 flush it). The reference
//! `host-local` does not fsync either: an allocation survives any crash of
//! the plugin; after a crash of the machine the pods that held addresses are
//! gone too. An allocation is recorded before any link exists; a crashed ADD
//! therefore leaves an entry that DEL (by container) or GC (by
//! `cni.dev/valid-attachments`) reclaims.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use ipnetwork::IpNetwork;
use nix::fcntl::{Flock, FlockArg};

use crate::config::{AttachmentId, BuiltinIpam, Range, RangeSet};

/// Environment variable overriding how long to wait for the store lock (ms).
pub const LOCK_TIMEOUT_ENV: &str = "SKIFF_CNI_LOCK_TIMEOUT_MS";
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);
const LOCK_FILE: &str = "lock";

mod entries;
use entries::State;

/// Errors of the built-in IPAM.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The state directory or a file in it cannot be used.
    #[error("IPAM store {path}: {op} failed; check that dataDir is a writable directory")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process held the lock for too long.
    #[error("IPAM store {path} stayed locked for {waited:?}; another skiff-cni may be stuck, retry later")]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long this process waited.
        waited: Duration,
    },
    /// A store entry does not parse.
    #[error("IPAM store entry {path} is corrupt ({reason}); remove it and run GC")]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },
    /// A range set has no free address.
    #[error("IP range {ranges} of network {network} is exhausted: all {size} addresses are allocated or reserved; free some with DEL/GC or widen ipam.ranges")]
    Exhausted {
        /// The network name.
        network: String,
        /// The ranges of the full set, e.g. `10.244.1.1-10.244.1.254`.
        ranges: String,
        /// How many addresses the set has.
        size: u128,
    },
    /// A requested static address is in no range of the network.
    #[error("requested IP {ip} is outside every range of network {network} ({ranges}); request an address inside a range")]
    NotInRange {
        /// The requested address.
        ip: IpAddr,
        /// The network name.
        network: String,
        /// The network's ranges, printed.
        ranges: String,
    },
    /// A requested static address cannot be handed out.
    #[error("requested IP {ip} of network {network} is not available: {why}")]
    Unavailable {
        /// The requested address.
        ip: IpAddr,
        /// The network name.
        network: String,
        /// Why (its owner, or that it is the gateway).
        why: String,
    },
}

/// One allocated address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// The address.
    pub ip: IpAddr,
    /// Owner container.
    pub container_id: String,
    /// Owner interface.
    pub ifname: String,
}

/// Free capacity of one range set, as STATUS reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetUsage {
    /// The ranges, printed.
    pub ranges: String,
    /// Addresses in the set, gateways included.
    pub size: u128,
    /// Addresses that can still be allocated.
    pub free: u128,
}

/// The per-network IPAM store.
pub struct Store {
    dir: PathBuf,
    network: String,
}

/// The state, loaded while the store's lock is held.
struct Locked {
    lock: Flock<File>,
    state: State,
    dir: PathBuf,
}

impl Store {
    /// The store of `network` under `conf.data_dir` (created on first use).
    pub fn new(conf: &BuiltinIpam, network: &str) -> Store {
        Store {
            dir: conf.data_dir.join(network),
            network: network.to_string(),
        }
    }

    /// The directory holding this network's state.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> Result<Locked, IpamError> {
        let lock_path = self.dir.join(LOCK_FILE);
        let open = || {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&lock_path)
        };
        // The directory exists on every ADD but the first: try the file first.
        let file = match open() {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                fs::create_dir_all(&self.dir).map_err(|source| IpamError::Io {
                    op: "creating the directory",
                    path: self.dir.clone(),
                    source,
                })?;
                open()
            }
            r => r,
        }
        .map_err(|source| IpamError::Io {
            op: "opening the lock file",
            path: lock_path.clone(),
            source,
        })?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((file, _)) => wait_for_lock(file, &lock_path)?,
        };
        let state = entries::read(&self.dir, &lock)?;
        Ok(Locked {
            lock,
            state,
            dir: self.dir.clone(),
        })
    }

    /// Allocates one address per range set to `id`, or returns the addresses
    /// it already holds (then the flag is `true`).
    pub fn allocate(
        &self,
        conf: &BuiltinIpam,
        id: &AttachmentId,
    ) -> Result<(Vec<Allocated>, bool), IpamError> {
        self.allocate_requested(conf, id, &[])
    }

    /// Like [`Store::allocate`], but range sets holding one of `requested`
    /// (static addresses: `CNI_ARGS` `IP=`, runtimeConfig `ips`) get exactly
    /// that address; an address in no range, in use, the gateway, or two in
    /// one range set are refused and nothing is recorded.
    pub fn allocate_requested(
        &self,
        conf: &BuiltinIpam,
        id: &AttachmentId,
        requested: &[IpAddr],
    ) -> Result<(Vec<Allocated>, bool), IpamError> {
        let mut locked = self.lock()?;
        let owned: Vec<IpAddr> = locked
            .state
            .allocations
            .iter()
            .filter(|a| a.container_id == id.container_id && a.ifname == id.ifname)
            .map(|a| a.ip)
            .collect();
        if !owned.is_empty() {
            return Ok((describe(conf, &owned), true));
        }
        let taken: HashSet<IpAddr> = locked.state.allocations.iter().map(|a| a.ip).collect();
        locked.state.last.resize(conf.range_sets.len(), None);
        let mut fixed: Vec<Option<IpAddr>> = vec![None; conf.range_sets.len()];
        for &ip in requested {
            let unavailable = |why: String| IpamError::Unavailable {
                ip,
                network: self.network.clone(),
                why,
            };
            let Some(i) = conf
                .range_sets
                .iter()
                .position(|s| s.0.iter().any(|r| r.contains(ip)))
            else {
                return Err(IpamError::NotInRange {
                    ip,
                    network: self.network.clone(),
                    ranges: conf
                        .range_sets
                        .iter()
                        .map(set_label)
                        .collect::<Vec<_>>()
                        .join("; "),
                });
            };
            if let Some(other) = fixed[i] {
                return Err(unavailable(format!(
                    "{other} was also requested from the same range set; request one address per family"
                )));
            }
            if conf.range_sets[i].0.iter().any(|r| r.gateway == ip) {
                return Err(unavailable("it is the gateway of its range".into()));
            }
            if let Some(a) = locked.state.allocations.iter().find(|a| a.ip == ip) {
                return Err(unavailable(format!(
                    "it is already allocated to container {} interface {}",
                    a.container_id, a.ifname
                )));
            }
            fixed[i] = Some(ip);
        }
        let mut ips = Vec::new();
        for (i, set) in conf.range_sets.iter().enumerate() {
            if let Some(ip) = fixed[i] {
                ips.push(ip);
                continue;
            }
            let ip =
                pick(set, &taken, locked.state.last[i]).ok_or_else(|| IpamError::Exhausted {
                    network: self.network.clone(),
                    ranges: set_label(set),
                    size: set_size(set),
                })?;
            locked.state.last[i] = Some(ip);
            ips.push(ip);
        }
        for (i, ip) in ips.iter().enumerate() {
            entries::record(&locked.dir, *ip, &id.container_id, &id.ifname)?;
            if fixed[i].is_none() {
                let Locked { lock, state, dir } = &mut locked;
                entries::write_pointer(dir, lock, state, i, *ip)?;
            }
        }
        Ok((describe(conf, &ips), false))
    }

    /// Removes every allocation of `id`; returns them (empty if none).
    pub fn release(&self, id: &AttachmentId) -> Result<Vec<Allocation>, IpamError> {
        self.remove_where(|a| a.container_id == id.container_id && a.ifname == id.ifname)
    }

    /// Removes every allocation not owned by one of `valid`; returns them.
    pub fn gc(&self, valid: &HashSet<AttachmentId>) -> Result<Vec<Allocation>, IpamError> {
        self.remove_where(|a| {
            !valid.contains(&AttachmentId {
                container_id: a.container_id.clone(),
                ifname: a.ifname.clone(),
            })
        })
    }

    /// The addresses `id` holds.
    pub fn lookup(&self, id: &AttachmentId) -> Result<Vec<IpAddr>, IpamError> {
        let locked = self.lock()?;
        Ok(locked
            .state
            .allocations
            .iter()
            .filter(|a| a.container_id == id.container_id && a.ifname == id.ifname)
            .map(|a| a.ip)
            .collect())
    }

    /// Every allocation.
    pub fn allocations(&self) -> Result<Vec<Allocation>, IpamError> {
        Ok(self.lock()?.state.allocations)
    }

    /// Free capacity per range set.
    pub fn usage(&self, conf: &BuiltinIpam) -> Result<Vec<SetUsage>, IpamError> {
        let locked = self.lock()?;
        Ok(conf
            .range_sets
            .iter()
            .map(|set| {
                let size = set_size(set);
                let used = locked
                    .state
                    .allocations
                    .iter()
                    .filter(|a| set.0.iter().any(|r| r.contains(a.ip)))
                    .count() as u128;
                let gateways = set.0.iter().filter(|r| r.contains(r.gateway)).count() as u128;
                SetUsage {
                    ranges: set_label(set),
                    size,
                    free: size.saturating_sub(used + gateways),
                }
            })
            .collect())
    }

    fn remove_where(
        &self,
        mut pred: impl FnMut(&Allocation) -> bool,
    ) -> Result<Vec<Allocation>, IpamError> {
        let locked = self.lock()?;
        let gone: Vec<Allocation> = locked
            .state
            .allocations
            .iter()
            .filter(|a| pred(a))
            .cloned()
            .collect();
        for a in &gone {
            let Some(file) = locked.state.file_of(a.ip) else {
                continue;
            };
            let path = locked.dir.join(file);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(IpamError::Io {
                        op: "removing an allocation",
                        path,
                        source,
                    })
                }
            }
        }
        Ok(gone)
    }
}

fn wait_for_lock(file: File, path: &Path) -> Result<Flock<File>, IpamError> {
    let timeout = std::env::var(LOCK_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_LOCK_TIMEOUT);
    // A blocking flock queues fairly behind other waiters; it runs on its own
    // thread so this one can give up after `timeout`. If it does, the thread
    // keeps waiting, and drops (unlocks) the lock as soon as it gets it.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(Flock::lock(file, FlockArg::LockExclusive));
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(lock)) => Ok(lock),
        Ok(Err((_, errno))) => Err(IpamError::Io {
            op: "locking",
            path: path.to_path_buf(),
            source: std::io::Error::from(errno),
        }),
        Err(_) => Err(IpamError::LockTimeout {
            path: path.to_path_buf(),
            waited: timeout,
        }),
    }
}

/// An allocated address with its subnet prefix and gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocated {
    /// Address with the subnet's prefix length.
    pub address: IpNetwork,
    /// The range's gateway.
    pub gateway: IpAddr,
}

fn describe(conf: &BuiltinIpam, ips: &[IpAddr]) -> Vec<Allocated> {
    ips.iter()
        .filter_map(|ip| {
            let r = conf
                .range_sets
                .iter()
                .flat_map(|s| s.0.iter())
                .find(|r| r.subnet.contains(*ip))?;
            Some(Allocated {
                address: IpNetwork::new(*ip, r.subnet.prefix()).ok()?,
                gateway: r.gateway,
            })
        })
        .collect()
}

/// Picks the first free address after `last`, round-robin over the set.
fn pick(set: &RangeSet, taken: &HashSet<IpAddr>, last: Option<IpAddr>) -> Option<IpAddr> {
    let ranges = &set.0;
    let (mut ri, mut ip) = match last.and_then(|l| ranges.iter().position(|r| r.contains(l))) {
        Some(i) => next(ranges, i, last?),
        None => (0, ranges[0].start),
    };
    // Every address skipped is taken or a gateway, so this many steps either
    // find a free address or have visited the whole set.
    let in_set = taken
        .iter()
        .filter(|t| ranges.iter().any(|r| r.contains(**t)))
        .count() as u128;
    let steps = (in_set + ranges.len() as u128 + 1).min(set_size(set));
    for _ in 0..steps {
        let r = &ranges[ri];
        if ip != r.gateway && !taken.contains(&ip) {
            return Some(ip);
        }
        (ri, ip) = next(ranges, ri, ip);
    }
    None
}

fn next(ranges: &[Range], i: usize, ip: IpAddr) -> (usize, IpAddr) {
    if ip < ranges[i].end {
        (i, add(ip, 1))
    } else {
        let n = (i + 1) % ranges.len();
        (n, ranges[n].start)
    }
}

fn set_size(set: &RangeSet) -> u128 {
    set.0
        .iter()
        .map(|r| to_u128(r.end) - to_u128(r.start) + 1)
        .fold(0u128, u128::saturating_add)
}

fn set_label(set: &RangeSet) -> String {
    set.0
        .iter()
        .map(|r| format!("{}-{} ({})", r.start, r.end, r.subnet))
        .collect::<Vec<_>>()
        .join(", ")
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

/// `ip + delta`, wrapping within its family.
pub fn add(ip: IpAddr, delta: i64) -> IpAddr {
    match ip {
        IpAddr::V4(v) => IpAddr::V4(Ipv4Addr::from(
            u32::from(v).wrapping_add_signed(delta as i32),
        )),
        IpAddr::V6(v) => IpAddr::V6(Ipv6Addr::from(
            u128::from(v).wrapping_add_signed(delta as i128),
        )),
    }
}

/// The last address of `net`.
pub fn last_addr(net: &IpNetwork) -> IpAddr {
    match net {
        IpNetwork::V4(n) => IpAddr::V4(n.broadcast()),
        IpNetwork::V6(n) => {
            let host_bits = 128 - u32::from(n.prefix());
            let mask = if host_bits == 128 {
                u128::MAX
            } else {
                (1u128 << host_bits) - 1
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | mask))
        }
    }
}

#[cfg(test)]
mod tests;
