//! Lab helpers for the node agent tests: a node network namespace with a
//! `skiff agent` for it (its own data dir, runc root and cgroup parent), the
//! project's busybox image imported into the node's image store, and a guard
//! that removes everything the agent made even when a test panics: the agent
//! process (killed by PID), runc containers under its root, mounts under its
//! data dir, its `skiff-<node>` cgroups and the namespace.

#![allow(dead_code)]

#[path = "../cni_support/mod.rs"]
pub mod cni_support;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_nodeagent::image::{builder, ArchiveFormat, ImageStore};
use tempfile::TempDir;

use crate::common::TestServer;
pub use cni_support::NetnsGuard;

/// The image tests run: built from busybox-static by the project's builder.
pub const BUSYBOX: &str = "skiff.test/busybox:1.0";

/// A node: a network namespace and the agent serving it.
pub struct AgentNode {
    pub name: String,
    pub netns: NetnsGuard,
    kubeconfig: PathBuf,
    child: Option<Child>,
    starts: u32,
    /// More `skiff agent` flags (e.g. `--proxy-mode iptables`).
    extra_args: Vec<String>,
    // Removed last (after the agent is killed and mounts are gone).
    dir: TempDir,
}

impl AgentNode {
    /// Creates namespace `name`, imports the busybox image and starts the agent.
    pub fn start(server: &TestServer, name: &str) -> AgentNode {
        AgentNode::start_with(server, name, &[])
    }

    /// As [`AgentNode::start`], with more `skiff agent` flags.
    pub fn start_with(server: &TestServer, name: &str, extra_args: &[&str]) -> AgentNode {
        let netns = NetnsGuard::new(name);
        let dir = tempfile::Builder::new()
            .prefix("skiff-agent-")
            .tempdir()
            .expect("create the agent's directory");
        let mut node = AgentNode {
            name: name.to_string(),
            netns,
            kubeconfig: server.kubeconfig(),
            child: None,
            starts: 0,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            dir,
        };
        node.import_busybox();
        node.spawn();
        node.wait_ready(server);
        node
    }

    /// The agent's `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn import_busybox(&self) {
        let archive = self.dir.path().join("busybox.tar");
        builder::build_busybox(
            Path::new("/bin/busybox"),
            BUSYBOX,
            ArchiveFormat::Oci,
            &archive,
        )
        .expect("build the busybox image");
        let store = ImageStore::open(self.data_dir().join("images"), Vec::new())
            .expect("open the node's image store");
        store
            .import(&archive, None)
            .expect("import the busybox image");
    }

    /// The agent's log over all starts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .expect("open the agent log");
        let child = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .arg("agent")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--node-name", &self.name])
            .arg("--netns")
            .arg(self.netns.path())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen", "127.0.0.1:0"])
            .args(self.proxy_mode_default())
            .args(&self.extra_args)
            .env("SKIFF_LOG", "info,skiff_nodeagent=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("start skiff agent");
        self.child = Some(child);
    }

    /// The tests reach services from the node with `ip netns exec`, outside
    /// the node's cgroup that eBPF socket load balancing serves: unless a
    /// test asks for a mode, its agent runs the iptables data plane.
    fn proxy_mode_default(&self) -> &'static [&'static str] {
        if self
            .extra_args
            .iter()
            .any(|a| a.starts_with("--proxy-mode"))
        {
            &[]
        } else {
            &["--proxy-mode", "iptables"]
        }
    }

    fn wait_ready(&mut self, server: &TestServer) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("skiff agent exited with {status}; log:\n{}", self.log());
                }
            }
            let out = server.kubectl(&["get", "node", &self.name, "-o", "json"]);
            if out.status.success() {
                let node: Value = serde_json::from_slice(&out.stdout).expect("node JSON");
                let ready = node["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                if ready && node["spec"]["podCIDR"].is_string() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {} not Ready in 60 s; agent log:\n{}",
                self.name,
                self.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// `kill -9` of the agent (containers keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the agent again on the same data dir and waits for the node.
    pub fn restart(&mut self, server: &TestServer) {
        self.kill9();
        self.spawn();
        self.wait_ready(server);
    }

    /// IDs of the runc containers under the agent's root.
    pub fn runc_containers(&self) -> Vec<String> {
        let out = Command::new("runc")
            .arg("--root")
            .arg(self.data_dir().join("runc"))
            .args(["list", "-q"])
            .output()
            .expect("runc list");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Mount points under the agent's data dir.
    pub fn mounts(&self) -> Vec<String> {
        let dir = self.data_dir().display().to_string();
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&dir))
            .map(str::to_string)
            .collect()
    }

    /// Pod IPs the node's IPAM still has allocated.
    pub fn allocated_ips(&self) -> usize {
        cni_support::allocations(&self.data_dir().join("cni"), "skiff")
    }

    /// The node's cgroup directories still holding pods.
    pub fn pod_cgroups(&self) -> Vec<PathBuf> {
        cgroup_roots(&self.name)
            .into_iter()
            .flat_map(|root| std::fs::read_dir(root).into_iter().flatten().flatten())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("pod-"))
            })
            .collect()
    }

    /// Entries under `<data-dir>/<sub>`.
    pub fn entries(&self, sub: &str) -> Vec<String> {
        std::fs::read_dir(self.data_dir().join(sub))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// An HTTP GET from the node namespace; `None` if it fails.
    pub fn http_get(&self, url: &str) -> Option<String> {
        let out = self.netns.try_exec(&["curl", "-sf", "-m", "3", url]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// `skiff-<node>` in every cgroup hierarchy.
fn cgroup_roots(node: &str) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .map(|m| m.join(format!("skiff-{node}")))
        .collect()
}

fn rmdir_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            rmdir_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for AgentNode {
    fn drop(&mut self) {
        self.kill9();
        if thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(200)..];
            eprintln!(
                "----- skiff agent {} log -----\n{}\n----- end -----",
                self.name,
                tail.join("\n")
            );
        }
        let root = self.data_dir().join("runc");
        for id in self.runc_containers() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", &id])
                .output();
        }
        let mut mounts = self.mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).output();
        }
        // Shims of killed containers exit by themselves once their container is gone.
        thread::sleep(Duration::from_millis(200));
        for root in cgroup_roots(&self.name) {
            rmdir_tree(&root);
        }
        // eBPF mode pins maps and links so a restarted agent resumes.
        let _ = skiff_proxy::ebpf::detach_and_unpin(
            &skiff_proxy::ebpf::EbpfConfig::default_pin_dir(&self.name),
        );
    }
}

/// Waits until `f` returns `Some`, polling every 300 ms, or panics with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(300));
    }
}

/// `kubectl get pod NAME -o json`, or `None` if it does not exist.
pub fn pod_json(server: &TestServer, name: &str) -> Option<Value> {
    let out = server.kubectl(&["get", "pod", name, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("pod JSON"))
}

/// Runs pod `backend` (busybox httpd on 8080, ready by a TCP probe, serving
/// "`greeting` from backend") behind Service `service` (port 80, `service_type`,
/// selecting `app: <service>`); returns the Service's clusterIP once the pod
/// is Running.
pub fn run_web_backend(
    server: &TestServer,
    service: &str,
    service_type: &str,
    greeting: &str,
) -> String {
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: backend, labels: {{app: {service}}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /www && echo {greeting} from $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"]
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: {service}}}
spec:
  type: {service_type}
  selector: {{app: {service}}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
    );
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &manifest);
    wait_running(server, "backend");
    server
        .kubectl_ok(&[
            "get",
            "service",
            service,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .trim()
        .to_string()
}

/// Waits until the pod is Running with a podIP; returns its JSON.
pub fn wait_running(server: &TestServer, name: &str) -> Value {
    wait_for(
        &format!("pod {name} Running"),
        Duration::from_secs(90),
        || {
            pod_json(server, name)
                .filter(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
        },
    )
}

impl AgentNode {
    /// Asserts the node holds nothing of any pod: runc state, mounts, IP
    /// allocations, pod and log directories, pod cgroups, veths (only the
    /// node bridge and the node-local DNS link stay).
    pub fn assert_no_pod_leftovers(&self) {
        let runc = self.runc_containers();
        assert!(runc.is_empty(), "runc state left: {runc:?}");
        let mounts = self.mounts();
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        assert_eq!(self.allocated_ips(), 0, "pod IPs still allocated");
        for sub in ["pods", "logs"] {
            let left = self.entries(sub);
            assert!(left.is_empty(), "{sub} dirs left: {left:?}");
        }
        let cgroups = self.pod_cgroups();
        assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
        let mut links = self.netns.links();
        links.sort();
        assert_eq!(
            links,
            ["lo", "skiff-dns", "skiff0"],
            "only the node bridge and the node-local DNS link may stay"
        );
    }
}
