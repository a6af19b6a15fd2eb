//! The cgroup v2 subtree the socket programs attach to, and the bpffs the
//! maps and links are pinned in. Attaching to the cgroup v2 root would
//! balance every socket on the machine, so it is refused (DESIGN §6).

use std::fs;
use std::path::{Path, PathBuf};

/// Filesystem setup failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup2 mount.
    #[error("no cgroup v2 filesystem in /proc/mounts; the eBPF socket load balancer needs one (mount -t cgroup2 none /sys/fs/cgroup/unified)")]
    NoCgroup2,
    /// The root of the hierarchy was given.
    #[error("refusing to attach to the cgroup v2 root {0}: pass a skiff subtree")]
    RootCgroup(PathBuf),
    /// The path is not inside the cgroup2 mount.
    #[error("{0} is not a directory inside the cgroup v2 mount {1}")]
    NotInCgroup2(PathBuf, PathBuf),
    /// An I/O step failed.
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
    /// Mounting bpffs failed.
    #[error("mounting bpffs at {0}: {1}")]
    Mount(PathBuf, nix::Error),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Mount points of filesystems of type `fstype`, from /proc/mounts.
fn mounts_of(fstype: &str) -> Result<Vec<PathBuf>, CgroupError> {
    let p = Path::new("/proc/mounts");
    let text = fs::read_to_string(p).map_err(io("reading", p))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, ty) = (f.next()?, f.next()?, f.next()?);
            // /proc/mounts escapes spaces as \040.
            (ty == fstype).then(|| PathBuf::from(dir.replace("\\040", " ")))
        })
        .collect())
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    mounts_of("cgroup2")?
        .into_iter()
        .next()
        .ok_or(CgroupError::NoCgroup2)
}

/// Checks that `path` is a cgroup v2 directory below (not at) the root.
pub fn check_subtree(path: &Path) -> Result<PathBuf, CgroupError> {
    let mount = cgroup2_mount()?;
    let canon = path.canonicalize().map_err(io("resolving", path))?;
    let mount = mount.canonicalize().map_err(io("resolving", &mount))?;
    if canon == mount {
        return Err(CgroupError::RootCgroup(canon));
    }
    if !canon.starts_with(&mount) || !canon.join("cgroup.procs").exists() {
        return Err(CgroupError::NotInCgroup2(canon, mount));
    }
    Ok(canon)
}

/// Creates (if needed) the cgroup `relative` below the cgroup v2 root, e.g.
/// `skiff/node-a`, and returns its path.
pub fn ensure_subtree(relative: &Path) -> Result<PathBuf, CgroupError> {
    let mount = cgroup2_mount()?;
    let path = mount.join(relative);
    fs::create_dir_all(&path).map_err(io("creating cgroup", &path))?;
    check_subtree(&path)
}

/// Makes sure `dir` lies on a bpffs, mounting one at /sys/fs/bpf when the
/// host has none there yet (as systemd does at boot), then creates `dir`.
pub fn ensure_bpffs_dir(dir: &Path) -> Result<(), CgroupError> {
    let on_bpffs = |p: &Path| -> Result<bool, CgroupError> {
        Ok(mounts_of("bpf")?.iter().any(|m| p.starts_with(m)))
    };
    if !on_bpffs(dir)? {
        let default = Path::new("/sys/fs/bpf");
        if dir.starts_with(default) {
            nix::mount::mount(
                Some("bpffs"),
                default,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .map_err(|e| CgroupError::Mount(default.to_path_buf(), e))?;
            tracing::info!("mounted bpffs at /sys/fs/bpf for pinned eBPF maps");
        } else {
            return Err(CgroupError::Io {
                what: "pinning under",
                path: dir.to_path_buf(),
                source: std::io::Error::other("not on a bpf filesystem"),
            });
        }
    }
    // Another node's cleanup removes the shared root once it is empty; should
    // that fall between create_dir_all's steps, one more try settles it.
    fs::create_dir_all(dir)
        .or_else(|_| fs::create_dir_all(dir))
        .map_err(io("creating pin directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_and_refuses_its_root() {
        let mount = cgroup2_mount().expect("this machine mounts cgroup v2");
        assert!(mount.join("cgroup.procs").exists());
        assert!(matches!(
            check_subtree(&mount),
            Err(CgroupError::RootCgroup(_))
        ));
        assert!(matches!(
            check_subtree(Path::new("/tmp")),
            Err(CgroupError::NotInCgroup2(..))
        ));
    }
}
