//! Network namespaces: a handle to "the node" or "the pod" namespace, and the
//! one way code gets inside one — a short-lived dedicated thread that calls
//! `setns` and exits, so no other thread (a tokio worker, the caller) ever
//! changes namespace. The single-threaded plugin binary opts instead into
//! entering on its own thread and switching back right after the synchronous
//! step ([`enter_on_calling_thread`]), which saves a thread per operation.
//!
//! Netlink sockets are created on that thread and then used from anywhere: a
//! socket stays bound to the namespace it was created in. Commands (iptables,
//! a delegated IPAM plugin) are spawned from the same kind of thread and
//! inherit its namespace; `/proc/sys/net` is opened there too, because it shows
//! the namespace of the thread that opens it.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sched::{setns, CloneFlags};

/// Errors entering or using a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace path cannot be opened.
    #[error("network namespace {path} cannot be opened; does it still exist?")]
    Open {
        /// The path given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `setns` failed (not a netns file, or missing CAP_SYS_ADMIN).
    #[error("entering network namespace {path} failed; is it a netns file and is skiff-cni running as root?")]
    Enter {
        /// The path given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// The helper thread could not be started or panicked.
    #[error("the helper thread for network namespace {path} failed")]
    Thread {
        /// The path given.
        path: PathBuf,
    },
    /// Opening a netlink socket failed.
    #[error("opening a netlink socket in {where_} failed")]
    Socket {
        /// Which namespace.
        where_: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// There is no tokio runtime to drive the netlink connection.
    #[error("netlink needs a tokio runtime; call this from async code")]
    NoRuntime,
}

/// A network namespace: the caller's own, or one opened by path.
#[derive(Debug)]
pub struct Netns {
    target: Option<(PathBuf, File)>,
}

impl Netns {
    /// The namespace the calling process is in (the node, for the plugin binary).
    pub fn current() -> Netns {
        Netns { target: None }
    }

    /// The namespace at `path` (e.g. `/var/run/netns/x`, `/proc/<pid>/ns/net`).
    pub fn open(path: impl AsRef<Path>) -> Result<Netns, NetnsError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| NetnsError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Netns {
            target: Some((path, file)),
        })
    }

    /// The path this was opened from; `None` for the current namespace.
    pub fn path(&self) -> Option<&Path> {
        self.target.as_ref().map(|(p, _)| p.as_path())
    }

    /// A descriptor for `IFLA_NET_NS_FD`; `None` for the current namespace.
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.target.as_ref().map(|(_, f)| f.as_raw_fd())
    }

    /// Describes this namespace for messages.
    pub fn describe(&self) -> String {
        match self.path() {
            Some(p) => format!("netns {}", p.display()),
            None => "the node's network namespace".to_string(),
        }
    }

    /// Runs `f` inside this namespace: on the calling thread for the current
    /// namespace, else on a dedicated thread that enters it and then exits
    /// (or, after [`enter_on_calling_thread`], on the calling thread, which
    /// switches back before returning).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        let Some((path, file)) = &self.target else {
            return Ok(f());
        };
        let fd = file.as_fd();
        if SAME_THREAD.load(Ordering::Relaxed) {
            let back = File::open(CURRENT_NETNS).map_err(|source| NetnsError::Open {
                path: PathBuf::from(CURRENT_NETNS),
                source,
            })?;
            setns(fd, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                path: path.clone(),
                source,
            })?;
            let _restore = Restore(back);
            return Ok(f());
        }
        std::thread::scope(|s| {
            let worker = std::thread::Builder::new()
                .name("skiff-netns".into())
                .spawn_scoped(s, move || {
                    // Only this thread changes namespace; it ends right after `f`.
                    setns(fd, CloneFlags::CLONE_NEWNET).map(|()| f())
                })
                .map_err(|_| NetnsError::Thread { path: path.clone() })?;
            worker
                .join()
                .map_err(|_| NetnsError::Thread { path: path.clone() })?
                .map_err(|source| NetnsError::Enter {
                    path: path.clone(),
                    source,
                })
        })
    }

    /// A netlink handle bound to this namespace, driven by the current tokio runtime.
    pub fn netlink(&self) -> Result<rtnetlink::Handle, NetnsError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| NetnsError::NoRuntime)?;
        let rt2 = rt.clone();
        let made = self.run(move || {
            let _entered = rt2.enter();
            rtnetlink::new_connection()
        })?;
        let (conn, handle, _) = made.map_err(|source| NetnsError::Socket {
            where_: self.describe(),
            source,
        })?;
        rt.spawn(conn);
        Ok(handle)
    }

    /// Reads a sysctl under `/proc/sys/` (e.g. `net/ipv4/ip_forward`) in this namespace.
    pub fn read_sysctl(&self, key: &str) -> Result<std::io::Result<String>, NetnsError> {
        let path = sysctl_path(key);
        self.run(move || std::fs::read_to_string(path).map(|s| s.trim().to_string()))
    }

    /// Sets a sysctl in this namespace unless it already has `value`.
    pub fn ensure_sysctl(&self, key: &str, value: &str) -> Result<std::io::Result<()>, NetnsError> {
        let path = sysctl_path(key);
        let value = value.to_string();
        self.run(move || {
            if std::fs::read_to_string(&path)?.trim() == value {
                return Ok(());
            }
            std::fs::write(&path, value.as_bytes())
        })
    }
}

/// The calling thread's own namespace.
const CURRENT_NETNS: &str = "/proc/thread-self/ns/net";

static SAME_THREAD: AtomicBool = AtomicBool::new(false);

/// Makes [`Netns::run`] enter namespaces on the calling thread and switch
/// back right after `f`, saving a thread start and join per namespace
/// operation. Only for the plugin binary: it has a single thread (ADD runs
/// without an async runtime, the other commands on a current-thread one) and
/// `f` is synchronous, so nothing else runs while the thread is inside, and
/// `setns` never affects other threads. A thread that cannot switch back
/// aborts the process rather than go on in the wrong namespace.
pub fn enter_on_calling_thread() {
    SAME_THREAD.store(true, Ordering::Relaxed);
}

/// Switches the thread back to its namespace when dropped (also on panic).
struct Restore(File);

impl Drop for Restore {
    fn drop(&mut self) {
        if let Err(e) = setns(self.0.as_fd(), CloneFlags::CLONE_NEWNET) {
            eprintln!(
                "skiff-cni: returning to the original network namespace failed ({e}); aborting"
            );
            std::process::abort();
        }
    }
}

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key)
}
