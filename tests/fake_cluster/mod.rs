//! A `skiff server` for controller tests: only the named controllers run
//! (so nothing else touches the fake nodes and pods a test writes), with
//! extra flags such as short timings, on a free 127.0.0.1 port and a
//! temporary data directory. The guard kills the server by its PID, also
//! when a test panics (and prints the server log then).

// Each test binary includes this module and uses a different subset of it.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Upper bound for anything the controllers should do.
pub const TIMEOUT: Duration = Duration::from_secs(40);

/// A `skiff server` running only the named controllers.
pub struct Server {
    child: Option<Child>,
    dir: TempDir,
    args: Vec<String>,
}

impl Server {
    pub async fn start(enabled: &[&str], extra: &[&str]) -> (Server, kube::Client) {
        let dir = tempfile::Builder::new()
            .prefix("skiff-nodes-test-")
            .tempdir()
            .expect("create a temporary directory");
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("find a free port")
            .port();
        let disabled: Vec<&str> = skiff_controlplane::controllers::ALL
            .iter()
            .copied()
            .filter(|n| !enabled.contains(n))
            .collect();
        let mut args: Vec<String> = vec![
            "server".into(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--disable-controllers".into(),
            disabled.join(","),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = Server {
            child: None,
            dir,
            args,
        };
        let client = server.spawn().await;
        (server, client)
    }

    /// Starts the process (again, on the same data directory and port).
    async fn spawn(&mut self) -> kube::Client {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("open the server log");
        let child = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("run the skiff binary");
        self.child = Some(child);
        self.wait_ready().await
    }

    /// Kills the process (SIGKILL to its PID) and starts it again.
    pub async fn restart(&mut self) -> kube::Client {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn().await
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("data").join("admin.kubeconfig")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) -> kube::Client {
        let deadline = Instant::now() + TIMEOUT;
        let mut last = String::from("no attempt yet");
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("skiff server exited with {status}; log:\n{}", self.log());
            }
            if self.kubeconfig().exists() {
                match client(&self.kubeconfig()).await {
                    Ok(client) => match client.apiserver_version().await {
                        Ok(_) => return client,
                        Err(e) => last = e.to_string(),
                    },
                    Err(e) => last = e,
                }
            }
            assert!(
                Instant::now() < deadline,
                "skiff server not ready after {TIMEOUT:?}: {last}\nlog:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL to this child's PID only.
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- skiff server log -----\n{}\n----- end of server log -----",
                self.log()
            );
        }
    }
}

async fn client(kubeconfig: &std::path::Path) -> Result<kube::Client, String> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| e.to_string())?;
    let config =
        kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| e.to_string())?;
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// Polls `check` every 100 ms until it returns `Ok`, or panics with `what`
/// and the last thing `check` reported.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {TIMEOUT:?} waiting for {what}; last seen: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
