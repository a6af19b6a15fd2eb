//! The processes under test: `skiff server` and Debian's etcd.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use skiff_bench::https::ApiClient;
use skiff_bench::process::{free_port, wait_for_tcp, ChildGuard};
use tempfile::TempDir;

use super::StoreKind;

/// Debian's etcd on free loopback ports with a temporary data directory.
pub(super) struct Etcd {
    // Fields drop in order: the process is killed before its directory goes.
    pub(super) child: ChildGuard,
    client_url: String,
    _dir: TempDir,
}

impl Etcd {
    pub(super) async fn start(binary: &Path, timeout: Duration) -> Result<Etcd> {
        let dir = temp_dir("skiff-bench-etcd-")?;
        let client_port = free_port()?;
        let mut peer_port = free_port()?;
        while peer_port == client_port {
            peer_port = free_port()?;
        }
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(binary);
        cmd.arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("default={peer_url}")]);
        let mut child = ChildGuard::spawn("etcd", cmd, &dir.path().join("etcd.log"))?;
        wait_for_tcp(
            &mut child,
            SocketAddr::from((Ipv4Addr::LOCALHOST, client_port)),
            timeout,
        )
        .await?;
        Ok(Etcd {
            child,
            client_url,
            _dir: dir,
        })
    }
}

/// `skiff server` on a free loopback port with a temporary data directory.
pub(super) struct Server {
    // Fields drop in order: the process is killed before its directory goes.
    pub(super) child: ChildGuard,
    addr: SocketAddr,
    data_dir: PathBuf,
    store: StoreKind,
    _dir: TempDir,
}

impl Server {
    pub(super) fn start(
        binary: &Path,
        store: StoreKind,
        etcd: Option<&Etcd>,
        disable_controllers: &[String],
    ) -> Result<Server> {
        let dir = temp_dir("skiff-bench-server-")?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let data_dir = dir.path().join("data");
        let mut cmd = Command::new(binary);
        cmd.arg("server").arg("--data-dir").arg(&data_dir).args([
            "--listen",
            &addr.to_string(),
            "--store",
            &store.to_string(),
        ]);
        if let Some(etcd) = etcd {
            cmd.args(["--etcd-endpoints", &etcd.client_url]);
        }
        if !disable_controllers.is_empty() {
            cmd.arg("--disable-controllers")
                .arg(disable_controllers.join(","));
        }
        // Per-request logging would cost the server time the benchmark measures.
        if std::env::var_os("SKIFF_LOG").is_none() {
            cmd.env("SKIFF_LOG", "warn");
        }
        let child = ChildGuard::spawn("skiff server", cmd, &dir.path().join("server.log"))?;
        Ok(Server {
            child,
            addr,
            data_dir,
            store,
            _dir: dir,
        })
    }

    /// Waits for the CA and token files and for `GET /readyz` to answer 200.
    pub(super) async fn connect(&mut self, http2: bool, timeout: Duration) -> Result<ApiClient> {
        let deadline = Instant::now() + timeout;
        loop {
            self.child.check_running()?;
            let last = match self.try_ready(http2).await {
                Ok(api) => return Ok(api),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                bail!(
                    "skiff server ({}) on {} is not ready after {timeout:?}; last attempt: {last:#}\nend of its log:\n{}",
                    self.store,
                    self.addr,
                    self.child.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn try_ready(&self, http2: bool) -> Result<ApiClient> {
        let ca_path = self.data_dir.join("ca.crt");
        let token_path = self.data_dir.join("admin.token");
        let ca =
            std::fs::read(&ca_path).with_context(|| format!("reading {}", ca_path.display()))?;
        let token = std::fs::read_to_string(&token_path)
            .with_context(|| format!("reading {}", token_path.display()))?;
        ensure!(
            !token.trim().is_empty(),
            "{} is empty",
            token_path.display()
        );
        let api = ApiClient::new(self.addr, &ca, &token, http2)?;
        api.expect(StatusCode::OK, Method::GET, "/readyz", None, Bytes::new())
            .await?;
        Ok(api)
    }
}

fn temp_dir(prefix: &str) -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("creating a temporary directory")
}
