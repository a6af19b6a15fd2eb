//! The store's on-disk format, read and written only while the lock is held.
//!
//! An allocation is a directory entry whose *name* carries everything:
//! `ip-<address>,<containerID>,<ifname>` (container IDs never hold a comma),
//! a hard link to the lock file (see [`record`]). One
//! `getdents` pass therefore loads the whole store without opening or reading
//! any entry, so an ADD does not slow down as the node fills up. Owners too
//! long for a file name use `ip-<address>`, a symlink to
//! `<containerID>/<ifname>` resolved with `readlink`, as do stores written by
//! older versions (which also made the long names symlinks).
//!
//! The round-robin pointers live in the lock file itself, one fixed-width
//! line per range set, overwritten in place: no inode is created or replaced
//! per ADD, and a torn pointer only moves where the next search starts.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{Allocation, IpamError};

const IP_PREFIX: &str = "ip-";
/// Round-robin pointers of stores written before they moved into the lock file.
const LEGACY_LAST_PREFIX: &str = "last-";
/// Width of one pointer line: the longest IPv6 text (39) plus a newline.
const POINTER_LINE: usize = 40;
/// Longest file name Linux accepts.
const NAME_MAX: usize = 255;
/// `EMLINK`: the file already has the most links the file system allows.
const EMLINK: i32 = 31;

/// Everything the store holds.
#[derive(Default)]
pub(super) struct State {
    /// Last address handed out per range set (round-robin start point).
    pub(super) last: Vec<Option<IpAddr>>,
    /// Allocations, sorted by address.
    pub(super) allocations: Vec<Allocation>,
    /// The file recording each allocated address.
    files: HashMap<IpAddr, String>,
    /// Pre-lock-file pointer symlinks, removed on the next pointer write.
    legacy: Vec<String>,
}

impl State {
    /// The file name recording `ip`, if allocated.
    pub(super) fn file_of(&self, ip: IpAddr) -> Option<&str> {
        self.files.get(&ip).map(String::as_str)
    }
}

/// The entry name recording `ip` for `container_id`/`ifname`.
pub(super) fn entry_name(ip: IpAddr, container_id: &str, ifname: &str) -> String {
    let full = format!("{IP_PREFIX}{ip},{container_id},{ifname}");
    if full.len() <= NAME_MAX {
        full
    } else {
        format!("{IP_PREFIX}{ip}")
    }
}

/// Records `ip` for its owner: one directory entry, created atomically.
///
/// When the name holds the owner, the entry is a hard link to the lock file:
/// only the name matters, and a link allocates no inode (on ext4, creating
/// an inode — a symlink's — costs more than the rest of the IPAM step, as it
/// scans for recently freed inodes). Names too long to hold the owner, and a
/// lock file at the file system's link limit, get a symlink to the owner.
pub(super) fn record(
    dir: &Path,
    ip: IpAddr,
    container_id: &str,
    ifname: &str,
) -> Result<(), IpamError> {
    let name = entry_name(ip, container_id, ifname);
    let path = dir.join(&name);
    let io = |source| IpamError::Io {
        op: "recording an allocation",
        path: path.clone(),
        source,
    };
    if name.contains(',') {
        match fs::hard_link(dir.join(super::LOCK_FILE), &path) {
            Err(e) if e.raw_os_error() == Some(EMLINK) => {}
            other => return other.map_err(io),
        }
    }
    std::os::unix::fs::symlink(format!("{container_id}/{ifname}"), &path).map_err(io)
}

/// Loads the store in `dir`, whose lock file `lock` is held.
pub(super) fn read(dir: &Path, lock: &File) -> Result<State, IpamError> {
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| IpamError::Io { op, path, source }
    };
    let corrupt = |path: &Path, reason: &str| IpamError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let mut state = State {
        last: read_pointers(lock).map_err(io("reading the round-robin pointers", dir))?,
        ..State::default()
    };
    let mut legacy_last = Vec::new();
    for entry in fs::read_dir(dir).map_err(io("listing the store", dir))? {
        let entry = entry.map_err(io("listing the store", dir))?;
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        if let Some(rest) = file.strip_prefix(IP_PREFIX) {
            let path = entry.path();
            let mut parts = rest.splitn(3, ',');
            let ip = parts.next().unwrap_or_default();
            let ip: IpAddr = ip.parse().map_err(|_| corrupt(&path, "not an address"))?;
            let (cid, ifname) = match (parts.next(), parts.next()) {
                (Some(cid), Some(ifname)) => (cid.to_string(), ifname.to_string()),
                _ => {
                    let target =
                        fs::read_link(&path).map_err(|_| corrupt(&path, "not a symlink"))?;
                    let owner = target.to_str().unwrap_or_default();
                    let (cid, ifname) = owner
                        .split_once('/')
                        .ok_or_else(|| corrupt(&path, "owner is not <containerID>/<ifname>"))?;
                    (cid.to_string(), ifname.to_string())
                }
            };
            state.files.insert(ip, file.to_string());
            state.allocations.push(Allocation {
                ip,
                container_id: cid,
                ifname,
            });
        } else if let Some(n) = file
            .strip_prefix(LEGACY_LAST_PREFIX)
            .and_then(|n| n.parse::<usize>().ok())
        {
            let last = fs::read_link(entry.path())
                .ok()
                .and_then(|t| t.to_str().and_then(|t| t.parse().ok()));
            legacy_last.push((n, last));
            state.legacy.push(file.to_string());
        }
    }
    for (n, last) in legacy_last {
        if state.last.len() <= n {
            state.last.resize(n + 1, None);
        }
        if state.last[n].is_none() {
            state.last[n] = last;
        }
    }
    state.allocations.sort_by_key(|a| a.ip);
    Ok(state)
}

/// Overwrites range set `set`'s round-robin pointer with `ip`, and drops
/// pointer files of the older format.
pub(super) fn write_pointer(
    dir: &Path,
    lock: &File,
    state: &mut State,
    set: usize,
    ip: IpAddr,
) -> Result<(), IpamError> {
    let mut line = format!("{ip:<width$}", width = POINTER_LINE - 1);
    line.push('\n');
    let offset = (set * POINTER_LINE) as u64;
    lock.write_all_at(line.as_bytes(), offset)
        .map_err(|source| IpamError::Io {
            op: "writing the round-robin pointer",
            path: dir.join(super::LOCK_FILE),
            source,
        })?;
    for name in state.legacy.drain(..) {
        let _ = fs::remove_file(dir.join(name));
    }
    Ok(())
}

fn read_pointers(mut lock: &File) -> std::io::Result<Vec<Option<IpAddr>>> {
    let mut bytes = Vec::new();
    lock.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .map(|l| l.trim().parse().ok())
        .collect())
}
