//! Destroys sockets still connected to backends that went away, so clients
//! notice at once (ECONNABORTED) and reconnect to a live backend instead of
//! waiting on a dead one: with socket-level load balancing the kernel has no
//! NAT entry to expire, the socket itself is connected to the backend.
//!
//! Only sockets of processes under the node's cgroup subtree can have been
//! balanced, so their network namespaces are the ones searched: found through
//! `cgroup.procs` and `/proc/<pid>/ns/net`, entered one at a time, and asked
//! over sock_diag netlink for TCP/UDP sockets whose peer is a gone backend,
//! which are then destroyed with SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY).
//!
//! This runs on a [`Destroyer`] thread after the sync that removed the
//! backends, so a sync's time is the time to update the maps; new
//! connections already avoid the removed backends by then. UDP sockets go at
//! once, TCP connections after a grace period (see [`Destroyer`]).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NlAddr};
use skiff_cni::Netns;

/// Destroying sockets failed.
#[derive(Debug, thiserror::Error)]
pub enum SockDestroyError {
    /// A namespace could not be entered.
    #[error("entering a pod's network namespace to destroy sockets: {0}")]
    Netns(#[from] skiff_cni::netns::NetnsError),
    /// Netlink I/O failed.
    #[error("sock_diag netlink: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel refused the request.
    #[error("sock_diag request failed with errno {0}; the kernel needs CONFIG_INET_DIAG_DESTROY")]
    Kernel(i32),
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
/// ENOENT: the socket closed between the dump and the destroy.
const ENOENT: i32 = 2;
/// `inet_diag_sockid`: ports, two 16-byte addresses, interface, cookie.
const SOCKID_LEN: usize = 48;
/// TCP states worth destroying (bit per `TCP_*` state): the live ones, not
/// TIME_WAIT, CLOSE or LISTEN — a busy client has thousands of TIME_WAIT
/// sockets, and skipping them in the kernel keeps the dump short.
const TCP_LIVE_STATES: u32 = (1 << 1) // ESTABLISHED
    | (1 << 2) // SYN_SENT
    | (1 << 3) // SYN_RECV
    | (1 << 4) // FIN_WAIT1
    | (1 << 5) // FIN_WAIT2
    | (1 << 8) // CLOSE_WAIT
    | (1 << 9) // LAST_ACK
    | (1 << 11); // CLOSING
/// A connected UDP socket is "established"; unconnected ones have no peer.
const UDP_CONNECTED_STATES: u32 = 1 << 1;
/// Upper bound of datagrams read for one dump.
const MAX_DUMP_READS: usize = 100_000;
/// Upper bound of cgroup directories walked.
const MAX_CGROUPS: usize = 100_000;

/// A socket as sock_diag names it (`inet_diag_sockid`, kept raw to hand it
/// back to SOCK_DESTROY unchanged) with its peer.
struct DiagSocket {
    family: u8,
    id: [u8; SOCKID_LEN],
    peer: SocketAddr,
}

/// Network namespaces of the processes under `cgroup` (one path per
/// namespace, by inode).
fn namespaces(cgroup: &Path) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    let mut walked = 0;
    while let Some(dir) = dirs.pop() {
        walked += 1;
        if walked > MAX_CGROUPS {
            break;
        }
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            let ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
            if let Ok(meta) = std::fs::metadata(&ns) {
                if seen.insert((meta.dev(), meta.ino())) {
                    out.push(ns);
                }
            }
        }
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            }
        }
    }
    out
}

fn request(
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    proto: u8,
    id: &[u8; SOCKID_LEN],
) -> Vec<u8> {
    let states = if proto == PROTO_TCP {
        TCP_LIVE_STATES
    } else {
        UDP_CONNECTED_STATES
    };
    let mut buf = Vec::with_capacity(16 + 8 + SOCKID_LEN);
    buf.extend_from_slice(&((16 + 8 + SOCKID_LEN) as u32).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, ext, pad, states.
    buf.extend_from_slice(&[family, proto, 0, 0]);
    buf.extend_from_slice(&states.to_ne_bytes());
    buf.extend_from_slice(id);
    buf
}

/// Splits a datagram into (message type, payload after the netlink header).
fn messages(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        if len < 16 || off + len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        out.push((kind, &buf[off + 16..off + len]));
        off += (len + 3) & !3;
    }
    out
}

fn error_code(payload: &[u8]) -> i32 {
    payload
        .get(..4)
        .map(|b| -i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

/// The peer of an `inet_diag_msg` (family, state, timer, retrans, sockid…).
fn parse(payload: &[u8]) -> Option<DiagSocket> {
    let family = *payload.first()?;
    let id: [u8; SOCKID_LEN] = payload.get(4..4 + SOCKID_LEN)?.try_into().ok()?;
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let dst: [u8; 16] = id[20..36].try_into().ok()?;
    let ip = if family == AF_INET {
        IpAddr::from([dst[0], dst[1], dst[2], dst[3]])
    } else {
        IpAddr::from(dst)
    };
    Some(DiagSocket {
        family,
        id,
        peer: SocketAddr::new(ip, dport),
    })
}

/// Destroys the `proto` sockets of the current namespace whose peer is in
/// `gone`; returns how many.
fn destroy_here(
    socket: &mut Socket,
    seq: &mut u32,
    proto: u8,
    gone: &HashSet<SocketAddr>,
) -> Result<usize, SockDestroyError> {
    let mut found = Vec::new();
    for family in [AF_INET, AF_INET6] {
        *seq += 1;
        let req = request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            *seq,
            family,
            proto,
            &[0; SOCKID_LEN],
        );
        socket.send(&req, 0)?;
        'dump: for _ in 0..MAX_DUMP_READS {
            let mut buf = Vec::with_capacity(64 * 1024);
            socket.recv(&mut buf, 0)?;
            for (kind, payload) in messages(&buf) {
                match kind {
                    NLMSG_DONE => break 'dump,
                    NLMSG_ERROR => match error_code(payload) {
                        0 => {}
                        code => return Err(SockDestroyError::Kernel(code)),
                    },
                    _ => found.extend(parse(payload).filter(|s| gone.contains(&s.peer))),
                }
            }
        }
    }
    let mut destroyed = 0;
    for s in found {
        *seq += 1;
        let req = request(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            *seq,
            s.family,
            proto,
            &s.id,
        );
        socket.send(&req, 0)?;
        let mut buf = Vec::with_capacity(4096);
        socket.recv(&mut buf, 0)?;
        for (kind, payload) in messages(&buf) {
            if kind == NLMSG_ERROR {
                match error_code(payload) {
                    0 => destroyed += 1,
                    ENOENT => {}
                    code => return Err(SockDestroyError::Kernel(code)),
                }
            }
        }
    }
    Ok(destroyed)
}

/// Destroys the `protos` sockets of processes under `cgroup` that are
/// connected to one of `gone`; returns how many were destroyed.
pub fn destroy_connected(
    cgroup: &Path,
    gone: &[SocketAddr],
    protos: &[u8],
) -> Result<usize, SockDestroyError> {
    if gone.is_empty() {
        return Ok(0);
    }
    let gone: HashSet<SocketAddr> = gone.iter().copied().collect();
    let mut destroyed = 0;
    for path in namespaces(cgroup) {
        // The process may have exited since; its namespace with it.
        let Ok(netns) = Netns::open(&path) else {
            continue;
        };
        destroyed += netns.run(|| -> Result<usize, SockDestroyError> {
            let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
            socket.bind_auto()?;
            socket.connect(&NlAddr::new(0, 0))?;
            let mut seq = 0;
            let mut n = 0;
            for proto in protos {
                n += destroy_here(&mut socket, &mut seq, *proto, &gone)?;
            }
            Ok(n)
        })??;
    }
    Ok(destroyed)
}

/// How often the destroyer looks for TCP sockets whose grace is over.
const POLL: Duration = Duration::from_millis(200);

/// Backends whose TCP connections are destroyed once their grace is over.
type Pending = Arc<Mutex<HashMap<SocketAddr, Instant>>>;

/// A thread destroying the sockets of removed backends as syncs hand them
/// over: connected UDP sockets at once (a datagram flow has no end to wait
/// for), TCP connections after a grace period, so requests in flight to a
/// backend that is draining can finish while long-lived connections do not
/// hang on it forever; a backend that comes back within its grace keeps its
/// connections. The thread ends when the destroyer is dropped.
pub struct Destroyer {
    tx: Option<mpsc::Sender<Vec<SocketAddr>>>,
    pending: Pending,
    grace: Duration,
    thread: Option<JoinHandle<()>>,
}

fn log(result: Result<usize, SockDestroyError>, what: &str) {
    match result {
        Ok(0) => {}
        Ok(n) => tracing::info!(sockets = n, "destroyed {what} sockets of removed backends"),
        Err(e) => tracing::warn!("destroying {what} sockets of removed backends: {e}"),
    }
}

impl Destroyer {
    /// Starts the thread for the processes under `cgroup`.
    pub fn start(cgroup: PathBuf, grace: Duration) -> Destroyer {
        let (tx, rx) = mpsc::channel::<Vec<SocketAddr>>();
        let pending: Pending = Arc::default();
        let due = pending.clone();
        let thread = std::thread::Builder::new()
            .name("skiff-sockdestroy".into())
            .spawn(move || loop {
                match rx.recv_timeout(POLL) {
                    Ok(gone) => log(destroy_connected(&cgroup, &gone, &[PROTO_UDP]), "UDP"),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
                let now = Instant::now();
                let ready: Vec<SocketAddr> = match due.lock() {
                    Ok(mut p) => {
                        let ready = p
                            .iter()
                            .filter(|(_, at)| **at <= now)
                            .map(|(a, _)| *a)
                            .collect();
                        p.retain(|_, at| *at > now);
                        ready
                    }
                    Err(_) => break,
                };
                log(destroy_connected(&cgroup, &ready, &[PROTO_TCP]), "TCP");
            })
            .ok();
        if thread.is_none() {
            tracing::warn!("no thread for destroying sockets of removed backends");
        }
        Destroyer {
            tx: thread.is_some().then_some(tx),
            pending,
            grace,
            thread,
        }
    }

    /// Queues the sockets connected to `gone` for destruction.
    pub fn submit(&self, gone: Vec<SocketAddr>) {
        let Some(tx) = &self.tx else { return };
        if gone.is_empty() {
            return;
        }
        if let Ok(mut p) = self.pending.lock() {
            let at = Instant::now() + self.grace;
            p.extend(gone.iter().map(|a| (*a, at)));
        }
        let _ = tx.send(gone);
    }

    /// Cancels the TCP destruction of backends that are back (`alive`).
    pub fn keep_alive(&self, alive: impl Fn(&SocketAddr) -> bool) {
        if let Ok(mut p) = self.pending.lock() {
            p.retain(|a, _| !alive(a));
        }
    }
}

impl Drop for Destroyer {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_peer_of_a_diag_message() {
        let mut msg = vec![AF_INET, 1, 0, 0];
        let mut id = [0u8; SOCKID_LEN];
        id[0..2].copy_from_slice(&40000u16.to_be_bytes());
        id[2..4].copy_from_slice(&8080u16.to_be_bytes());
        id[4..8].copy_from_slice(&[10, 244, 1, 9]);
        id[20..24].copy_from_slice(&[10, 244, 2, 5]);
        msg.extend_from_slice(&id);
        msg.extend_from_slice(&[0; 20]);
        let s = parse(&msg).expect("parses");
        assert_eq!(s.peer, "10.244.2.5:8080".parse().unwrap());
        assert_eq!(s.id, id);
        // The destroy request hands the id back unchanged.
        let req = request(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            7,
            AF_INET,
            PROTO_TCP,
            &id,
        );
        assert_eq!(req.len(), 16 + 8 + SOCKID_LEN);
        assert_eq!(&req[24..], &id);
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), SOCK_DESTROY);
    }
}
