//! Lab helpers for the CNI tests: network namespaces that delete themselves
//! (even while a test panics), the `skiff-cni` binary run with its whole
//! process inside a node namespace, and a tiny runtime that chains plugins.
//!
//! Safety (DESIGN §6): every namespace carries a per-test prefix; the plugin
//! and the reference plugins only ever run inside namespaces made here; the
//! root namespace gets nothing.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use serde_json::Value;
use skiff_cni::Netns;

/// Where the reference plugins (Debian `containernetworking-plugins`) live.
pub const REF_CNI_DIR: &str = "/usr/lib/cni";

/// Where scripts/setup.sh unpacks Debian sid's containernetworking-plugins
/// (≥ 1.5, spec 1.1.0), beside the bookworm ones in [`REF_CNI_DIR`].
pub const SID_CNI_DIR: &str = "/opt/skiff/cni-plugins-sid/usr/lib/cni";

/// [`SID_CNI_DIR`], which must hold `host-local`.
pub fn sid_cni_dir() -> &'static str {
    assert!(
        Path::new(SID_CNI_DIR).join("host-local").is_file(),
        "{SID_CNI_DIR}/host-local is missing: run scripts/setup.sh (it unpacks Debian sid's containernetworking-plugins there)"
    );
    SID_CNI_DIR
}

/// A short name unique to this test process and call.
pub fn unique(label: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "skc{}x{}-{label}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Installs the tools the CNI tests need when missing (as root, via apt).
pub fn ensure_tools() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let have = |p: &str| Path::new(p).exists();
        let needed = [
            ("/usr/sbin/ip", "iproute2"),
            ("/usr/sbin/iptables", "iptables"),
            ("/usr/bin/ping", "iputils-ping"),
            ("/usr/lib/cni/portmap", "containernetworking-plugins"),
        ];
        let missing: Vec<&str> = needed
            .iter()
            .filter(|(p, _)| !have(p))
            .map(|(_, pkg)| *pkg)
            .collect();
        if missing.is_empty() {
            return;
        }
        let ok = Command::new("apt-get")
            .arg("update")
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            ok,
            "installing {missing:?} with apt-get failed; the CNI tests need them (and root)"
        );
    });
}

/// The `skiff-cni` binary as it ships — the static build of
/// scripts/build-cni.sh, the one cni-bench measures — built (or found up to
/// date) once per test process.
pub fn plugin_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/<profile>/deps/<test> → target/
        let exe = std::env::current_exe().expect("current_exe");
        let target_dir = exe
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .expect("target/<profile>/deps");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-cni.sh");
        let out = Command::new(&script)
            .env("CARGO_TARGET_DIR", target_dir)
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/build-cni.sh");
        assert!(out.status.success(), "scripts/build-cni.sh failed");
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(bin.is_file(), "{} missing after the build", bin.display());
        bin
    })
}

/// A network namespace named `<prefix>`, deleted on drop.
pub struct NetnsGuard {
    name: String,
}

impl NetnsGuard {
    /// Creates the namespace (removing a stale one of the same name first).
    pub fn new(name: &str) -> NetnsGuard {
        ensure_tools();
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        sh(&["ip", "netns", "add", name]);
        let g = NetnsGuard {
            name: name.to_string(),
        };
        g.exec(&["ip", "link", "set", "lo", "up"]);
        g
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// A handle for the in-process library API.
    pub fn netns(&self) -> Netns {
        Netns::open(self.path()).expect("open netns")
    }

    /// Runs a command inside the namespace and requires success.
    pub fn exec(&self, args: &[&str]) -> String {
        let out = self.try_exec(args);
        assert!(
            out.status.success(),
            "in {}: {args:?} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command inside the namespace.
    pub fn try_exec(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(args[0]);
        cmd.args(&args[1..]);
        self.netns()
            .run(|| cmd.output())
            .expect("enter netns")
            .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
    }

    /// Whether `ip` answers a ping from here: up to 5 single probes of 1 s
    /// each, so neighbour discovery on fresh links has time to settle.
    pub fn ping(&self, ip: &str) -> bool {
        (0..5).any(|_| {
            self.try_exec(&["ping", "-n", "-q", "-c", "1", "-W", "1", ip])
                .status
                .success()
        })
    }

    /// Whether `ip` stays silent: 2 probes, 1 s each (for "must not reach").
    pub fn unreachable(&self, ip: &str) -> bool {
        !self
            .try_exec(&["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", ip])
            .status
            .success()
    }

    /// Link names in the namespace.
    pub fn links(&self) -> Vec<String> {
        self.exec(&["ip", "-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    /// The nat table inside the namespace (`iptables-save -t nat`, nft and legacy).
    pub fn nat_rules(&self) -> String {
        // Both implementations: the CNI plugins write through `iptables`
        // (nft on Debian), the service proxy may pick legacy
        // (`--iptables-backend auto`).
        let mut rules = self.exec(&["iptables-nft-save", "-t", "nat"]);
        rules.push_str(&self.exec(&["iptables-legacy-save", "-t", "nat"]));
        rules
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // Deleting the namespace removes every link, route and iptables rule in it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a plugin run produced.
#[derive(Debug)]
pub struct Run {
    /// Exit status code.
    pub status: Option<i32>,
    /// Stdout.
    pub stdout: String,
    /// Stderr.
    pub stderr: String,
}

impl Run {
    /// Stdout parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// The CNI error code (panics if the run succeeded).
    pub fn code(&self) -> i64 {
        assert_ne!(self.status, Some(0), "expected a failure: {self:?}");
        self.json()["code"].as_i64().expect("code")
    }

    /// Panics unless the run succeeded.
    pub fn ok(self) -> Run {
        assert_eq!(self.status, Some(0), "plugin failed: {self:?}");
        self
    }
}

/// A CNI invocation: plugin binary, command and `CNI_*` values.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub bin: PathBuf,
    pub command: String,
    pub container_id: String,
    pub ifname: String,
    pub netns: Option<PathBuf>,
    pub cni_path: String,
    pub extra_env: Vec<(String, String)>,
}

impl Invocation {
    /// skiff-cni with `command` for `container_id`/eth0 in `pod`.
    pub fn skiff(command: &str, container_id: &str, pod: Option<&NetnsGuard>) -> Invocation {
        Invocation {
            bin: plugin_bin().clone(),
            command: command.to_string(),
            container_id: container_id.to_string(),
            ifname: "eth0".to_string(),
            netns: pod.map(NetnsGuard::path),
            cni_path: format!("{}:{REF_CNI_DIR}", plugin_bin().parent().unwrap().display()),
            extra_env: Vec::new(),
        }
    }

    /// The command with its environment, stdin/stdout/stderr piped.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env("CNI_COMMAND", &self.command)
            .env("CNI_CONTAINERID", &self.container_id)
            .env("CNI_IFNAME", &self.ifname)
            .env("CNI_PATH", &self.cni_path)
            .env("CNI_NETNS", self.netns.as_deref().unwrap_or(Path::new("")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts the plugin with its whole process inside `node`, writing `stdin`.
    pub fn spawn_in(&self, node: &NetnsGuard, stdin: &str) -> Child {
        let mut cmd = self.command();
        let mut child = node
            .netns()
            .run(|| cmd.spawn())
            .expect("enter node netns")
            .expect("spawn plugin");
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(stdin.as_bytes()).expect("write config");
        drop(pipe);
        child
    }

    /// Runs the plugin inside `node` to completion.
    pub fn run_in(&self, node: &NetnsGuard, stdin: &str) -> Run {
        finish(self.spawn_in(node, stdin))
    }
}

/// Waits for a plugin process and collects its output.
pub fn finish(child: Child) -> Run {
    let out = child.wait_with_output().expect("wait plugin");
    Run {
        status: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A skiff network config for `subnets` with its store under `data_dir`.
pub fn skiff_conf(
    version: &str,
    name: &str,
    bridge: &str,
    subnets: &[&str],
    data_dir: &Path,
) -> Value {
    let ranges: Vec<Value> = subnets
        .iter()
        .map(|s| serde_json::json!([{ "subnet": s }]))
        .collect();
    let mut routes = vec![serde_json::json!({"dst": "0.0.0.0/0"})];
    if subnets.iter().any(|s| s.contains(':')) {
        routes.push(serde_json::json!({"dst": "::/0"}));
    }
    serde_json::json!({
        "cniVersion": version,
        "name": name,
        "type": "skiff",
        "bridge": bridge,
        "mtu": 1400,
        "hairpinMode": true,
        "ipam": {"type": "skiff", "ranges": ranges, "routes": routes, "dataDir": data_dir},
    })
}

/// The IPv4 address (without prefix) of the pod interface in an ADD result.
pub fn result_ip(result: &Value, v4: bool) -> String {
    result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .filter_map(|ip| ip["address"].as_str())
        .find(|a| a.contains('.') == v4)
        .and_then(|a| a.split('/').next())
        .expect("address of the family")
        .to_string()
}

/// Allocations recorded in the built-in IPAM store of `network`.
pub fn allocations(data_dir: &Path, network: &str) -> usize {
    match std::fs::read_dir(data_dir.join(network)) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("ip-"))
            .count(),
        Err(_) => 0,
    }
}
