//! Test harness shared by the integration tests: a real `skiff server` per
//! test (redb or etcd store) on a free 127.0.0.1 port, and the clients users
//! drive it with — kubectl, raw HTTPS through curl, the Python client.
//!
//! [`TestServer`] is a guard: dropping it (also while a test panics) kills the
//! server by its PID, stops its etcd, removes its directory, and on a panic
//! prints the server's log so the failure explains itself.

// Each test binary includes this module and uses a different subset of it.
#![allow(dead_code)]

pub mod http;
pub mod process;
pub mod tools;

#[allow(dead_code)]
#[path = "../../controlplane/tests/support/etcd.rs"]
mod etcd;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub use http::{Auth, Request, Response};
pub use process::Streaming;

/// How long a server may take to answer `/readyz` after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Upper bound for one kubectl or python invocation.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// How much of the server log a failing test prints.
const LOG_TAIL_LINES: usize = 400;

/// Which storage backend the server runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Redb,
    Etcd,
}

impl StoreKind {
    /// The value of `skiff server --store`.
    pub fn flag(self) -> &'static str {
        match self {
            StoreKind::Redb => "redb",
            StoreKind::Etcd => "etcd",
        }
    }
}

/// The repository root (where `examples/` lives).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A running `skiff server` with its own data directory and port.
pub struct TestServer {
    store: StoreKind,
    port: u16,
    child: Option<Child>,
    token: String,
    starts: u32,
    // Dropped after the server is killed (Drop runs before fields are dropped).
    root: TempDir,
    etcd: Option<etcd::EtcdServer>,
    /// More `skiff server` flags (e.g. a dual-stack `--service-cidr`).
    extra_args: Vec<String>,
}

impl TestServer {
    /// Starts a server on `store` and waits until `/readyz` answers `ok`.
    pub fn start(store: StoreKind) -> TestServer {
        TestServer::start_with_args(store, &[])
    }

    /// As [`TestServer::start`], with more `skiff server` flags.
    pub fn start_with_args(store: StoreKind, extra_args: &[&str]) -> TestServer {
        let etcd = match store {
            StoreKind::Etcd => Some(etcd::EtcdServer::start()),
            StoreKind::Redb => None,
        };
        let root = tempfile::Builder::new()
            .prefix("skiff-test-")
            .tempdir()
            .expect("create a temporary directory");
        let port = free_port();
        let mut server = TestServer {
            store,
            port,
            child: None,
            token: String::new(),
            starts: 0,
            root,
            etcd,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        };
        server.spawn();
        server.wait_ready();
        server
    }

    pub fn store(&self) -> StoreKind {
        self.store
    }

    /// `--data-dir` of the server.
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The admin kubeconfig the server wrote on first start.
    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir().join("admin.kubeconfig")
    }

    /// The cluster CA certificate the server wrote on first start.
    pub fn ca(&self) -> PathBuf {
        self.data_dir().join("ca.crt")
    }

    /// `https://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The admin bearer token from the kubeconfig.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// PID of the running server process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    /// The server's stdout and stderr so far, over all starts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("server.log")
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the server log");
        writeln!(log, "===== skiff server start #{} =====", self.starts)
            .expect("write the server log");
        let log_err = log.try_clone().expect("clone the server log handle");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
        cmd.arg("server")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--store")
            .arg(self.store.flag());
        if let Some(etcd) = &self.etcd {
            cmd.arg("--etcd-endpoints").arg(etcd.client_url());
        }
        cmd.args(&self.extra_args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .expect("run the skiff binary");
        self.child = Some(child);
    }

    /// Waits until `/readyz` answers 200 `ok` with the admin token.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("no attempt yet");
        loop {
            let child = self.child.as_mut().expect("server is running");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                panic!(
                    "skiff server ({} store) exited with {status} before it was ready; log:\n{}",
                    self.store.flag(),
                    self.log()
                );
            }
            if self.token.is_empty() {
                match read_token(&self.kubeconfig()) {
                    Ok(token) => self.token = token,
                    Err(e) => last = e,
                }
            }
            if !self.token.is_empty() && self.ca().exists() {
                let response = self.get("/readyz");
                if response.status == 200 && response.body.trim() == "ok" {
                    return;
                }
                last = format!("/readyz answered {}: {}", response.status, response.body);
            }
            if Instant::now() >= deadline {
                panic!(
                    "skiff server ({} store) not ready after {READY_TIMEOUT:?}: {last}\nlog:\n{}",
                    self.store.flag(),
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server with SIGTERM and asserts it exits cleanly.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("server is running");
        let pid = child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(
            matches!(sent, Ok(s) if s.success()),
            "kill -TERM {pid} failed: {sent:?}"
        );
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the server") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "skiff server did not exit within {STOP_TIMEOUT:?} of SIGTERM; log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "skiff server did not exit cleanly on SIGTERM ({status}); log:\n{}",
            self.log()
        );
    }

    /// Kills the server with SIGKILL (no chance to flush or clean up).
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("server is running");
        // Child::kill is SIGKILL to exactly this PID.
        child.kill().expect("kill -9 the server");
        let _ = child.wait();
    }

    /// Stops the server (SIGTERM) if it runs, starts it again on the same
    /// data directory and port, and waits until it is ready. The admin token
    /// from the first start must still work.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn();
        self.wait_ready();
    }

    // ----- kubectl --------------------------------------------------------

    /// A kubectl command for this server, run from the repository root, with
    /// its own discovery cache (ports get reused between tests).
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(tools::kubectl());
        cmd.current_dir(repo_root())
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.root.path().join("kube-cache"))
            .args(args);
        cmd
    }

    /// Runs kubectl with `args`.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        process::run(self.kubectl_command(args), None, CLIENT_TIMEOUT)
    }

    /// Runs kubectl with `args`, feeding `input` on stdin.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        process::run(
            self.kubectl_command(args),
            Some(input.as_bytes()),
            CLIENT_TIMEOUT,
        )
    }

    /// Runs kubectl and returns its stdout; panics with everything it printed
    /// if it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        expect_success(&format!("kubectl {}", args.join(" ")), self.kubectl(args))
    }

    /// Like [`kubectl_ok`](Self::kubectl_ok), with `input` on stdin.
    pub fn kubectl_stdin_ok(&self, args: &[&str], input: &str) -> String {
        expect_success(
            &format!("kubectl {}", args.join(" ")),
            self.kubectl_stdin(args, input),
        )
    }

    /// Runs kubectl, asserts that it fails, and returns its stderr.
    pub fn kubectl_fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "kubectl {} should have failed but succeeded\n--- stdout\n{}\n--- stderr\n{stderr}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        stderr
    }

    /// Starts a long-running kubectl (e.g. `get -w`) whose output is read line by line.
    pub fn kubectl_stream(&self, args: &[&str]) -> Streaming {
        Streaming::spawn(self.kubectl_command(args))
    }

    // ----- raw HTTPS -------------------------------------------------------

    /// Sends a raw request to this server.
    pub fn send(&self, req: Request<'_>) -> Response {
        http::send(&self.base_url(), &self.ca(), req)
    }

    /// An admin request with an optional body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&[u8]>,
    ) -> Response {
        self.send(Request {
            method,
            path,
            content_type,
            body,
            auth: Auth::Bearer(&self.token),
        })
    }

    /// An admin GET.
    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, None, None)
    }

    /// An admin request with a JSON body.
    pub fn send_json(&self, method: &str, path: &str, body: &serde_json::Value) -> Response {
        let body = serde_json::to_vec(body).expect("serialize JSON");
        self.request(method, path, Some("application/json"), Some(&body))
    }

    // ----- python -----------------------------------------------------------

    /// Runs `python tests/python/<script> <kubeconfig> <args...>`.
    pub fn python(&self, script: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(tools::python());
        cmd.current_dir(repo_root())
            .arg(repo_root().join("tests/python").join(script))
            .arg(self.kubeconfig())
            .args(args)
            .env("PYTHONUNBUFFERED", "1");
        process::run(cmd, None, CLIENT_TIMEOUT)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "----- skiff server log ({} store, last {} lines) -----\n{}\n----- end of server log -----",
                self.store.flag(),
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// Returns stdout of a successful run; panics with both streams otherwise.
pub fn expect_success(what: &str, out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({})\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// The bearer token of the kubeconfig's first user.
fn read_token(kubeconfig: &Path) -> Result<String, String> {
    let file = File::open(kubeconfig).map_err(|e| format!("{}: {e}", kubeconfig.display()))?;
    let config: serde_yaml::Value =
        serde_yaml::from_reader(file).map_err(|e| format!("{}: {e}", kubeconfig.display()))?;
    config["users"][0]["user"]["token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| format!("{} has no users[0].user.token", kubeconfig.display()))
}
