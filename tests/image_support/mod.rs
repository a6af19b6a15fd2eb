//! Helpers for the image tests: Debian's `docker-registry` on a free loopback port
//! (optionally with htpasswd basic auth), killed by its PID on drop, and the
//! `skiff image` CLI.
//!
//! Safety (DESIGN §6): the registry listens on 127.0.0.1 only; everything lives
//! in a per-test temp dir; rootfs mounts are undone by [`RootfsGuard`].

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long the registry may take to answer `/v2/`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound of one `skiff image` run.
const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// A running `docker-registry`; killed (by PID) and removed on drop.
pub struct Registry {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Registry {
    /// Starts an anonymous registry.
    pub fn start() -> Registry {
        Registry::start_with(None)
    }

    /// Starts a registry that requires `user`/`password` (bcrypt htpasswd).
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Registry::start_with(Some((user, password)))
    }

    fn start_with(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("skiff-registry-")
            .tempdir()
            .expect("registry temp dir");
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = auth {
            let htpasswd = dir.path().join("htpasswd");
            let out = Command::new("htpasswd")
                .args(["-Bbc"])
                .arg(&htpasswd)
                .args([user, password])
                .output()
                .expect("run htpasswd (apache2-utils, installed by scripts/setup.sh)");
            assert!(out.status.success(), "htpasswd: {out:?}");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("run docker-registry (installed by scripts/setup.sh)");
        let mut registry = Registry { child, port, dir };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("docker-registry exited with {status}:\n{}", self.log());
            }
            if let Some(status) = http_status(self.port, "/v2/") {
                // 200 anonymous, 401 with auth: either way it serves.
                if status == 200 || status == 401 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry not ready on port {} after {READY_TIMEOUT:?}:\n{}",
                self.port,
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Child::kill is SIGKILL to exactly this PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free loopback port")
}

/// The status code of a plain HTTP GET to 127.0.0.1:port, if it answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Runs `skiff image ARGS` and returns its output.
pub fn skiff_image(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
    cmd.arg("image").args(args);
    crate::common::process::run(cmd, None, CLI_TIMEOUT)
}

/// Runs `skiff image ARGS`, asserts success and returns stdout.
pub fn skiff_image_ok(args: &[&str]) -> String {
    let out = skiff_image(args);
    assert!(
        out.status.success(),
        "skiff image {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the busybox image archive at `dir/name.tar`.
pub fn build_busybox(dir: &Path, file: &str, name: &str, format: &str) -> PathBuf {
    let out = dir.join(file);
    skiff_image_ok(&[
        "build-busybox",
        "--output",
        out.to_str().expect("utf-8 path"),
        "--name",
        name,
        "--format",
        format,
    ]);
    out
}

/// Unmounts a container rootfs on drop (also while a test panics).
pub struct RootfsGuard(pub PathBuf);

impl Drop for RootfsGuard {
    fn drop(&mut self) {
        let _ = skiff_nodeagent::image::ImageStore::unmount_rootfs(&self.0);
    }
}
