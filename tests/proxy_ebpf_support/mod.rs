//! Lab pieces for the eBPF data-plane tests: a private bpffs, a cgroup v2
//! subtree, network namespaces and a service map builder — each removed on
//! drop, even while a test panics (DESIGN §6). Names carry a per-process,
//! per-call prefix so tests run in parallel.

#![allow(dead_code)]

pub mod packets;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use skiff_proxy::ebpf::{cgroup2_mount, EbpfConfig, EbpfDataplane};
use skiff_proxy::model::{
    Endpoint, NodeInfo, Protocol, ServiceMap, ServicePort, ServicePortName, TrafficPolicy,
};

/// A short name unique to this test process and call.
pub fn unique(label: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "skb{}x{}{label}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn run(cmd: &[&str]) -> Output {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn must(cmd: &[&str]) {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bpffs mounted on a temporary directory, unmounted on drop; pins made
/// under it vanish with it.
pub struct Bpffs {
    dir: tempfile::TempDir,
}

impl Bpffs {
    /// Mounts a fresh bpffs instance.
    pub fn new() -> Bpffs {
        let dir = tempfile::Builder::new()
            .prefix("skiff-bpffs-")
            .tempdir()
            .expect("tempdir");
        must(&["mount", "-t", "bpf", "bpffs", &dir.path().to_string_lossy()]);
        Bpffs { dir }
    }

    /// The pin directory of `node` on this bpffs.
    pub fn pin_dir(&self, node: &str) -> PathBuf {
        self.dir.path().join(node)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = run(&["umount", "-l", &self.dir.path().to_string_lossy()]);
    }
}

/// A cgroup v2 directory `skiff-test/<name>`; on drop the processes this test
/// put in it are killed (by PID) and the directory removed.
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates the cgroup.
    pub fn new(name: &str) -> Cgroup {
        let path = cgroup2_mount()
            .expect("cgroup v2 mount")
            .join("skiff-test")
            .join(name);
        std::fs::create_dir_all(&path).expect("creating the test cgroup");
        Cgroup { path }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let procs = std::fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace() {
                let _ = run(&["kill", "-9", pid]);
            }
            if std::fs::remove_dir(&self.path).is_ok() || Instant::now() > deadline {
                // The shared parent goes too once the last test left it.
                if let Some(parent) = self.path.parent() {
                    let _ = std::fs::remove_dir(parent);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace with loopback up.
    pub fn new(name: &str) -> Netns {
        let _ = run(&["ip", "netns", "del", name]);
        must(&["ip", "netns", "add", name]);
        let ns = Netns {
            name: name.to_string(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside and requires success.
    pub fn exec(&self, args: &[&str]) {
        let mut cmd = vec!["ip", "netns", "exec", &self.name];
        cmd.extend_from_slice(args);
        must(&cmd);
    }

    /// Starts a long-running process inside (killed by [`Proc`]'s drop).
    pub fn spawn(&self, args: &[&str]) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn in netns");
        Proc(child)
    }

    /// A command running `script` with `sh` inside the namespace, and inside
    /// `cgroup` if given. The shell joins the cgroup *before* `ip netns exec`,
    /// which remounts /sys (and so hides the cgroup mount) in its own mount
    /// namespace; children inherit the cgroup.
    pub fn command_in_cgroup(&self, cgroup: Option<&Cgroup>, script: &str) -> Command {
        let mut cmd = Command::new("sh");
        match cgroup {
            Some(cg) => cmd
                .arg("-c")
                .arg(r#"echo $$ > "$0/cgroup.procs" && exec ip netns exec "$1" sh -c "$2""#)
                .arg(cg.path())
                .arg(&self.name)
                .arg(script),
            None => cmd
                .arg("-c")
                .arg(r#"exec ip netns exec "$0" sh -c "$1""#)
                .arg(&self.name)
                .arg(script),
        };
        cmd
    }

    /// Runs `script` (see [`Netns::command_in_cgroup`]) to completion.
    pub fn run_in_cgroup(&self, cgroup: Option<&Cgroup>, script: &str) -> Output {
        self.command_in_cgroup(cgroup, script)
            .output()
            .expect("client")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// A child process killed (by PID) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Links two namespaces with a veth pair: `a` gets `a_ip/24`, `b` gets `b_ip/24`.
pub fn veth(a: &Netns, a_ip: &str, b: &Netns, b_ip: &str) {
    a.exec(&[
        "ip",
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        b.name(),
    ]);
    for (ns, ip) in [(a, a_ip), (b, b_ip)] {
        ns.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.exec(&["ip", "link", "set", "eth0", "up"]);
    }
}

/// An HTTP server in `ns` on `port` answering `body` (busybox httpd).
pub fn http_server(ns: &Netns, port: u16, body: &str) -> (Proc, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("index.html"), body).expect("index.html");
    let p = ns.spawn(&[
        "busybox",
        "httpd",
        "-f",
        "-p",
        &port.to_string(),
        "-h",
        &dir.path().to_string_lossy(),
    ]);
    (p, dir)
}

/// A UDP server in `ns` on `port` answering every datagram with `label`.
pub fn udp_server(ns: &Netns, port: u16, label: &str) -> Proc {
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         s.bind(('0.0.0.0',{port}))\nwhile True:\n d,a=s.recvfrom(2048)\n s.sendto(b'{label}',a)\n"
    );
    ns.spawn(&["python3", "-c", &script])
}

/// Waits until `f` holds (servers starting up), at most 10 s.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The eBPF data plane plus the bpffs and cgroup it lives on; detached and
/// unpinned on drop.
pub struct Plane {
    pub dp: Option<EbpfDataplane>,
    pub cfg: EbpfConfig,
    pub cgroup: Cgroup,
    pub bpffs: Bpffs,
}

impl Plane {
    /// Loads the data plane on a fresh bpffs and cgroup.
    pub fn new(label: &str) -> Plane {
        Plane::with(label, |_| {})
    }

    /// As [`Plane::new`], with `adjust` changing the configuration first
    /// (the namespace and interfaces of the tc programs, say).
    pub fn with(label: &str, adjust: impl FnOnce(&mut EbpfConfig)) -> Plane {
        let name = unique(label);
        let bpffs = Bpffs::new();
        let cgroup = Cgroup::new(&name);
        let mut cfg = EbpfConfig {
            pin_dir: bpffs.pin_dir(&name),
            cgroup: cgroup.path().to_path_buf(),
            interfaces: Vec::new(),
            discover_interfaces: false,
            netns: None,
            maglev_size: 251,
            tcp_destroy_grace: Duration::from_secs(1),
        };
        adjust(&mut cfg);
        let dp = EbpfDataplane::new(cfg.clone()).expect("loading the eBPF data plane");
        Plane {
            dp: Some(dp),
            cfg,
            cgroup,
            bpffs,
        }
    }

    /// The loaded data plane.
    pub fn dp(&mut self) -> &mut EbpfDataplane {
        self.dp.as_mut().expect("data plane loaded")
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        self.dp = None;
        let _ = skiff_proxy::ebpf::detach_and_unpin(&self.cfg.pin_dir);
    }
}

/// An endpoint at `ip:port`.
pub fn endpoint(ip: &str, port: u16, local: bool) -> Endpoint {
    Endpoint {
        ip: ip.parse().expect("ip"),
        port,
        ready: true,
        serving: true,
        terminating: false,
        node_name: None,
        zone: None,
        zone_hints: Vec::new(),
        is_local: local,
    }
}

/// A ClusterIP service port `name` on `ip:port/proto` with `endpoints`.
pub fn service(
    name: &str,
    ip: &str,
    port: u16,
    proto: Protocol,
    eps: Vec<Endpoint>,
) -> ServicePort {
    ServicePort {
        name: ServicePortName {
            namespace: "default".into(),
            name: name.into(),
            port: String::new(),
            protocol: proto,
        },
        cluster_ips: vec![ip.parse().expect("ip")],
        port,
        node_port: None,
        external_ips: Vec::new(),
        load_balancer_ips: Vec::new(),
        load_balancer_source_ranges: Vec::new(),
        affinity_timeout_secs: None,
        external_policy: TrafficPolicy::Cluster,
        internal_policy: TrafficPolicy::Cluster,
        prefer_close: false,
        health_check_node_port: None,
        endpoints: eps.clone(),
        cluster_endpoints: eps.clone(),
        external_endpoints: eps,
        local_ready_endpoints: 0,
    }
}

/// A service map of `ports` for a node with `addrs`.
pub fn map_of(addrs: &[&str], ports: Vec<ServicePort>) -> ServiceMap {
    ServiceMap {
        node: NodeInfo {
            name: "node-a".into(),
            zone: None,
            addresses: addrs
                .iter()
                .map(|a| a.parse::<IpAddr>().expect("ip"))
                .collect(),
        },
        ports: ports
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect::<BTreeMap<_, _>>(),
    }
}
