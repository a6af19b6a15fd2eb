//! What the proxy benchmarks (`proxy-bench`, `proxy-ebpf-bench`) run inside
//! their lab namespaces: a one-line TCP backend and timed connect + read
//! exchanges from a client namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use skiff_cni::Netns;

/// The bind-mount path of the named network namespace `name`.
pub fn netns_path(name: &str) -> String {
    format!("/var/run/netns/{name}")
}

/// A backend answering one line per connection, on a thread, until dropped.
/// (Blocking accept: no polling delay in the measured exchanges; the thread
/// notices the drop at its next connection or ends with the process.)
pub struct Backend(Arc<AtomicBool>);

impl Backend {
    /// Listens on `port` of every address in namespace `pod`.
    pub fn start(pod: &str, port: u16) -> Result<Backend> {
        let listener =
            Netns::open(netns_path(pod))?.run(|| TcpListener::bind(("0.0.0.0", port)))??;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(mut c) = conn {
                    let _ = c.write_all(b"ok\n");
                }
            }
        });
        Ok(Backend(stop))
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Durations of `n` connect + read-one-reply exchanges from namespace
/// `client` to `addr`.
pub fn exchanges(client: &str, addr: SocketAddr, n: usize) -> Result<Vec<Duration>> {
    let netns = Netns::open(netns_path(client))?;
    let samples = netns.run(|| -> std::io::Result<Vec<Duration>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            let mut buf = [0u8; 8];
            let _ = c.read(&mut buf)?;
            out.push(start.elapsed());
        }
        Ok(out)
    })??;
    Ok(samples)
}
