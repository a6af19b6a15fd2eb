//! In-process servers and clients inside lab namespaces: a socket created on
//! a thread that entered a namespace stays in it, so the serving loop runs on
//! an ordinary thread afterwards.
//!
//! Servers answer `<name> <peer address>` so a test sees which backend
//! answered and which source address it saw.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::Ns;

/// How long a client waits for a connection or an answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a server checks whether it should stop.
const POLL: Duration = Duration::from_millis(20);

/// A reply: which backend answered and whom it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The server's name.
    pub backend: String,
    /// The client address the server saw.
    pub peer: String,
}

impl Reply {
    /// Parses a server's reply line.
    pub fn parse(text: &str) -> Option<Reply> {
        let mut it = text.split_whitespace();
        Some(Reply {
            backend: it.next()?.to_string(),
            peer: it.next()?.to_string(),
        })
    }
}

/// A TCP or UDP server on a thread; stopped (and its socket closed) on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves TCP on `0.0.0.0:port` in `ns`: every connection gets one reply line.
pub fn tcp_server(ns: &Ns, port: u16, name: &str) -> Server {
    tcp_server_on(ns, IpAddr::V4(Ipv4Addr::UNSPECIFIED), port, name)
}

/// Serves TCP on `ip:port` in `ns` (`[::]` for IPv6), as [`tcp_server`].
pub fn tcp_server_on(ns: &Ns, ip: IpAddr, port: u16, name: &str) -> Server {
    let listener = ns
        .run(|| TcpListener::bind((ip, port)))
        .unwrap_or_else(|e| panic!("bind tcp {port} in {}: {e}", ns.name()));
    listener.set_nonblocking(true).expect("nonblocking");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let name = name.to_string();
    let thread = thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut conn, peer)) => {
                    let _ = conn.set_nonblocking(false);
                    let _ = writeln!(conn, "{name} {}", peer.ip());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
                Err(_) => thread::sleep(POLL),
            }
        }
    });
    Server {
        stop,
        thread: Some(thread),
    }
}

/// Serves UDP on `0.0.0.0:port` in `ns`: every datagram gets one reply.
pub fn udp_server(ns: &Ns, port: u16, name: &str) -> Server {
    udp_server_on(ns, IpAddr::V4(Ipv4Addr::UNSPECIFIED), port, name)
}

/// Serves UDP on `ip:port` in `ns` (`[::]` for IPv6), as [`udp_server`].
pub fn udp_server_on(ns: &Ns, ip: IpAddr, port: u16, name: &str) -> Server {
    let socket = ns
        .run(|| UdpSocket::bind((ip, port)))
        .unwrap_or_else(|e| panic!("bind udp {port} in {}: {e}", ns.name()));
    socket.set_read_timeout(Some(POLL)).expect("timeout");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let name = name.to_string();
    let thread = thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !flag.load(Ordering::Relaxed) {
            if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(format!("{name} {}\n", peer.ip()).as_bytes(), peer);
            }
        }
    });
    Server {
        stop,
        thread: Some(thread),
    }
}

/// One TCP request from `ns` to `addr` (from the node's cgroup when the
/// node runs the eBPF data plane, see `lab::ebpf`).
pub fn tcp_request(ns: &Ns, addr: SocketAddr) -> io::Result<Reply> {
    if let Some(cgroup) = super::ebpf::cgroup_for(ns.name()) {
        return super::ebpf::tcp_request(ns, &cgroup, addr);
    }
    let mut conn = ns.run(|| TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT))?;
    conn.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    Reply::parse(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, text))
}

/// A UDP socket in `ns` on a fixed local port, so successive requests are one flow.
pub struct UdpClient {
    socket: UdpSocket,
    /// In the node's cgroup when the node runs the eBPF data plane.
    helper: Option<std::sync::Mutex<super::ebpf::UdpHelper>>,
}

impl UdpClient {
    /// Binds an ephemeral port in `ns`.
    pub fn new(ns: &Ns) -> UdpClient {
        let socket = ns
            .run(|| UdpSocket::bind(("0.0.0.0", 0)))
            .expect("bind udp client");
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let helper = super::ebpf::cgroup_for(ns.name())
            .map(|cg| std::sync::Mutex::new(super::ebpf::UdpHelper::new(ns, &cg)));
        UdpClient { socket, helper }
    }

    /// Sends one datagram to `addr` and waits briefly for the reply.
    pub fn request(&self, addr: SocketAddr) -> io::Result<Reply> {
        if let Some(helper) = &self.helper {
            return helper.lock().expect("UDP helper").request(addr);
        }
        self.socket.send_to(b"ping", addr)?;
        let mut buf = [0u8; 512];
        let (n, _) = self.socket.recv_from(&mut buf)?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        Reply::parse(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, text))
    }
}

/// One HTTP GET from `ns`: (status code, body).
pub fn http_get(ns: &Ns, addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut conn = ns.run(|| TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT))?;
    conn.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, text.clone()))?;
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Ok((status, body))
}

/// Retries `f` until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}
