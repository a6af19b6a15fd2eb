//! A throwaway single-member etcd for tests.
//!
//! `EtcdServer::start` runs the distribution's `etcd` binary on free
//! 127.0.0.1 ports with its data in a fresh temporary directory, waits until
//! `/health` answers, and returns a guard. Dropping the guard (also while a
//! test panics) kills that one process by its PID and removes the directory.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Where Debian's `etcd-server` package installs the server.
pub const ETCD_BINARY: &str = "/usr/bin/etcd";

/// How long a fresh etcd may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts, in case another process grabs a port between probe and bind.
const START_ATTEMPTS: usize = 3;

/// A running etcd, killed and wiped on drop.
pub struct EtcdServer {
    child: Child,
    client_url: String,
    data: TempDir,
}

impl EtcdServer {
    /// Starts etcd and waits until it is healthy; panics with its log if it cannot.
    pub fn start() -> EtcdServer {
        let binary = std::env::var("SKIFF_TEST_ETCD").unwrap_or_else(|_| ETCD_BINARY.to_owned());
        assert!(
            Path::new(&binary).exists(),
            "{binary} not found: install it with `apt-get install -y etcd-server` \
             (or point SKIFF_TEST_ETCD at an etcd binary)"
        );
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match EtcdServer::try_start(&binary) {
                Ok(server) => return server,
                Err(failure) => failures.push(failure),
            }
        }
        panic!("etcd did not start:\n{}", failures.join("\n---\n"));
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    /// The client URL as the endpoint list `EtcdStore::connect` takes.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.client_url.clone()]
    }

    /// The OS process id of the etcd server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The data directory (removed on drop).
    pub fn data_dir(&self) -> PathBuf {
        self.data.path().join("data")
    }

    fn try_start(binary: &str) -> Result<EtcdServer, String> {
        let data = tempfile::Builder::new()
            .prefix("skiff-etcd-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log_path = data.path().join("etcd.log");
        let log = File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("cannot reopen the etcd log: {e}"))?;
        let child = Command::new(binary)
            .arg("--name=default")
            .arg(format!("--data-dir={}", data.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .arg("--initial-cluster-state=new")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot run {binary}: {e}"))?;
        // From here on the guard owns the process: any failure drops (kills) it.
        let mut server = EtcdServer {
            child,
            client_url,
            data,
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, client_port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "etcd exited with {status}; log:\n{}",
                    read_log(&log_path)
                ));
            }
            if healthy(addr) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd was not healthy after {START_TIMEOUT:?}; log:\n{}",
                    read_log(&log_path)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to exactly this PID; wait reaps it so the
        // data directory is no longer in use when TempDir removes it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on right now.
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("cannot bind 127.0.0.1:0: {e}"))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|e| format!("cannot read the bound port: {e}"))
}

/// True once etcd's `/health` endpoint reports healthy.
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.contains("\"health\":\"true\"")
}

/// The etcd log, for failure messages.
fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}
