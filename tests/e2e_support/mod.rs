//! The end-to-end harness: a whole `skiff up` cluster per test (3 node
//! namespaces on an underlay bridge, the server and the agents), driven with
//! the real kubectl. [`Cluster`] is a guard: on drop it prints the cluster's
//! state when the test failed, runs `skiff down`, and then asserts that
//! nothing the cluster made is left (namespaces, links, cgroups, bpffs pins,
//! mounts, runc state, processes).
//!
//! Every name carries a per-test prefix (`--prefix`), so tests run in parallel.

#![allow(dead_code)]

pub mod clients;
pub mod leftovers;
pub mod workload;

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::common::{process, repo_root, tools};

/// How long `skiff up` may take until every node is Ready.
const UP_TIMEOUT: Duration = Duration::from_secs(240);
/// Upper bound of one kubectl, curl or `skiff down` run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// A `skiff up` cluster for one test.
pub struct Cluster {
    pub prefix: String,
    pub nodes: usize,
    child: Option<Child>,
    // Removed last, after `skiff down`.
    root: TempDir,
}

/// A short prefix unique to this test process and call (a DNS label start).
fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "e2e{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Cluster {
    /// Runs `skiff up --nodes N` with `extra` flags and waits for N Ready nodes.
    pub fn up(nodes: usize, extra: &[&str]) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("skiff-e2e-")
            .tempdir()
            .expect("create the cluster's directory");
        let mut cluster = Cluster {
            prefix: unique_prefix(),
            nodes,
            child: None,
            root,
        };
        cluster.child = Some(cluster.spawn_up(nodes, extra));
        cluster.wait_up();
        cluster
    }

    /// `skiff up` for this cluster's directory and prefix, logging to up.log.
    pub fn spawn_up(&self, nodes: usize, extra: &[&str]) -> Child {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.up_log())
            .expect("open up.log");
        Command::new(env!("CARGO_BIN_EXE_skiff"))
            .arg("up")
            .args(["--nodes", &nodes.to_string()])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--prefix", &self.prefix])
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(extra)
            .env("SKIFF_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("start skiff up")
    }

    /// `--data-dir` of the cluster.
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn up_log(&self) -> PathBuf {
        self.root.path().join("up.log")
    }

    /// What `skiff up` printed so far.
    pub fn up_output(&self) -> String {
        std::fs::read_to_string(self.up_log()).unwrap_or_default()
    }

    /// The admin kubeconfig `skiff up` wrote.
    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir().join("admin.kubeconfig")
    }

    /// Node names, `<prefix>-node1` ...
    pub fn node_names(&self) -> Vec<String> {
        (1..=self.nodes)
            .map(|i| format!("{}-node{i}", self.prefix))
            .collect()
    }

    /// The underlay address of node `i` (1-based), as `skiff up` documents it.
    pub fn node_address(&self, i: usize) -> String {
        format!("192.168.77.{}", 10 + i)
    }

    /// The underlay namespace (where "outside the nodes" is).
    pub fn underlay(&self) -> String {
        format!("{}-underlay", self.prefix)
    }

    /// DIR/up.state as JSON.
    pub fn state(&self) -> Value {
        let text = std::fs::read(self.data_dir().join("up.state")).expect("read up.state");
        serde_json::from_slice(&text).expect("up.state is JSON")
    }

    /// PID of the `skiff up` process.
    pub fn up_pid(&self) -> u32 {
        self.child.as_ref().expect("skiff up is running").id()
    }

    /// PID of `node`'s agent, from up.state.
    pub fn agent_pid(&self, node: &str) -> u32 {
        let state = self.state();
        let n = state["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["name"] == node)
            .unwrap_or_else(|| panic!("no node {node} in up.state: {state}"));
        let pid = n["agentPid"].as_u64().expect("agentPid");
        u32::try_from(pid).expect("pid fits u32")
    }

    fn wait_up(&mut self) {
        let deadline = Instant::now() + UP_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!("skiff up exited with {status}:\n{}", self.up_output());
            }
            // skiff up prints its usage once every node is Ready.
            if self.up_output().contains("nodes Ready") {
                let ready = self.ready_nodes();
                assert_eq!(
                    ready.len(),
                    self.nodes,
                    "skiff up said ready, kubectl shows {ready:?}"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "skiff up not ready after {UP_TIMEOUT:?}:\n{}",
                self.up_output()
            );
            thread::sleep(Duration::from_millis(500));
        }
    }

    /// Names of the nodes whose Ready condition is True.
    pub fn ready_nodes(&self) -> Vec<String> {
        let nodes = self.kubectl_json(&["get", "nodes"]);
        nodes["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| {
                n["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    }

    // ----- clients -------------------------------------------------------

    /// A kubectl command for this cluster, run from the repository root.
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

    /// Runs kubectl.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        process::run(self.kubectl_command(args), None, CLIENT_TIMEOUT)
    }

    /// Runs kubectl and returns stdout; panics with its output if it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl with `input` on stdin; stdout, panicking on failure.
    pub fn kubectl_stdin_ok(&self, args: &[&str], input: &str) -> String {
        let out = process::run(
            self.kubectl_command(args),
            Some(input.as_bytes()),
            CLIENT_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "kubectl {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl get ARGS -o json`.
    pub fn kubectl_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&all)).expect("kubectl JSON")
    }

    /// Runs `args` inside network namespace `ns` (`ip netns exec`).
    pub fn netns_exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        process::run(cmd, None, CLIENT_TIMEOUT)
    }

    /// An HTTP GET from the underlay namespace ("outside the nodes"); `None` on failure.
    pub fn get_from_underlay(&self, url: &str) -> Option<String> {
        let out = self.netns_exec(&self.underlay(), &["curl", "-sf", "-m", "3", url]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    // ----- teardown --------------------------------------------------------

    /// Prints what a failing test needs: objects, events, logs.
    fn dump(&self) {
        let show = |args: &[&str]| {
            let out = self.kubectl(args);
            eprintln!(
                "----- kubectl {} -----\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        show(&["get", "nodes,all,endpointslices", "-A", "-o", "wide"]);
        show(&["get", "events", "-A", "--sort-by=.lastTimestamp"]);
        eprintln!("----- skiff up -----\n{}", tail(&self.up_output(), 40));
        let logs = self.data_dir().join("logs");
        for entry in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            eprintln!(
                "----- {} -----\n{}",
                entry.path().display(),
                tail(&text, 60)
            );
        }
    }

    /// Runs `skiff down` and waits for `skiff up` to exit.
    pub fn down(&mut self) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
        cmd.arg("down").arg("--data-dir").arg(self.data_dir());
        let out = process::run(cmd, None, CLIENT_TIMEOUT);
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(60);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        out
    }

    /// Forgets the `skiff up` child (the test killed it itself).
    pub fn take_up_child(&mut self) -> Option<Child> {
        self.child.take()
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failing = thread::panicking();
        if failing {
            self.dump();
        }
        let out = self.down();
        let left = leftovers::find(&self.prefix, &self.data_dir());
        if failing {
            if !left.is_empty() {
                eprintln!("left behind after skiff down: {left:#?}");
            }
            return;
        }
        assert!(
            out.status.success(),
            "skiff down failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            left.is_empty(),
            "skiff down left these behind: {left:#?}\nskiff up said:\n{}",
            tail(&self.up_output(), 20)
        );
    }
}
