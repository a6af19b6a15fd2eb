//! `skiff proxy` against a lab node, and the API objects the proxy tests
//! create (Services without selectors plus hand-written EndpointSlices: no
//! node agent runs, so nothing else makes endpoints).
//!
//! Test files using this module also declare `mod common;` (the TestServer).

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::sockets::{eventually, http_get};
use super::{Node, Ns, CLUSTER_CIDR};
use crate::common::TestServer;

/// Where the proxy serves /healthz and /metrics inside the node namespace.
pub const HEALTHZ: &str = "127.0.0.1:10256";

/// The node a proxy serves: its name, namespace and pod network.
#[derive(Clone)]
struct Target {
    name: String,
    netns: PathBuf,
    cluster_cidr: String,
    /// More `skiff proxy` flags.
    extra_args: Vec<String>,
}

/// A running `skiff proxy`, killed by its PID on drop (its log printed on panic).
pub struct ProxyProcess {
    child: Child,
    log: PathBuf,
    mode: String,
    target: Target,
    _dir: tempfile::TempDir,
    /// ebpf mode: the node's cgroup and pins, removed after the proxy stops.
    ebpf: Option<super::ebpf::EbpfNode>,
}

impl ProxyProcess {
    /// Starts `skiff proxy --mode <mode>` for `node` and waits for its first sync.
    pub fn start(server: &TestServer, node: &Node, mode: &str) -> ProxyProcess {
        ProxyProcess::start_with_args(server, node, mode, &[])
    }

    /// As [`ProxyProcess::start`], with more `skiff proxy` flags.
    pub fn start_with_args(
        server: &TestServer,
        node: &Node,
        mode: &str,
        extra_args: &[&str],
    ) -> ProxyProcess {
        let ebpf = (mode == "ebpf").then(|| super::ebpf::EbpfNode::new(node));
        let target = Target {
            name: node.name.clone(),
            netns: node.ns.path(),
            cluster_cidr: CLUSTER_CIDR.to_string(),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        };
        ProxyProcess::start_target(server, &node.ns, mode, ebpf, target)
    }

    /// Starts `skiff proxy --mode iptables` for a node `name` living in `ns`
    /// with the pod network `cluster_cidr` (e.g. the IPv6 lab's node).
    pub fn start_iptables_in(
        server: &TestServer,
        name: &str,
        ns: &Ns,
        cluster_cidr: &str,
    ) -> ProxyProcess {
        let target = Target {
            name: name.to_string(),
            netns: ns.path(),
            cluster_cidr: cluster_cidr.to_string(),
            extra_args: Vec::new(),
        };
        ProxyProcess::start_target(server, ns, "iptables", None, target)
    }

    fn start_target(
        server: &TestServer,
        ns: &Ns,
        mode: &str,
        ebpf: Option<super::ebpf::EbpfNode>,
        target: Target,
    ) -> ProxyProcess {
        let dir = tempfile::Builder::new()
            .prefix("skiff-proxy-")
            .tempdir()
            .expect("temp dir");
        let log = dir.path().join("proxy.log");
        let child = spawn(server, &target, mode, ebpf.as_ref(), &log);
        let proxy = ProxyProcess {
            child,
            log,
            mode: mode.to_string(),
            target,
            _dir: dir,
            ebpf,
        };
        proxy.wait_synced(ns);
        proxy
    }

    /// Kills the proxy (its data plane state stays: pinned maps and links, or
    /// iptables rules) and starts it again; waits for the new first sync.
    pub fn restart(&mut self, server: &TestServer, node: &Node) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(
            server,
            &self.target,
            &self.mode,
            self.ebpf.as_ref(),
            &self.log,
        );
        self.wait_synced(&node.ns);
    }

    fn wait_synced(&self, ns: &Ns) {
        let addr: SocketAddr = HEALTHZ.parse().expect("address");
        eventually(
            Duration::from_secs(30),
            "the proxy's first sync (/healthz 200)",
            || {
                http_get(ns, addr, "/healthz")
                    .ok()
                    .filter(|(status, _)| *status == 200)
            },
        );
        if let Some(e) = &self.ebpf {
            e.assert_attached();
        }
    }

    /// What the proxy logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/metrics` as seen inside the node.
    pub fn metrics(node: &Node) -> String {
        ProxyProcess::metrics_in(&node.ns)
    }

    /// `/metrics` of the proxy serving in `ns`.
    pub fn metrics_in(ns: &Ns) -> String {
        http_get(ns, HEALTHZ.parse().expect("address"), "/metrics")
            .expect("GET /metrics")
            .1
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- skiff proxy log\n{}", self.log());
        }
    }
}

/// The value of the sample `series` (name and labels exactly as exposed,
/// e.g. `skiff_proxy_syncs_total{kind="full"}`) in a `/metrics` text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .find_map(|v| v.split_whitespace().next()?.parse().ok())
}

/// Starts `skiff proxy` for `target`, appending to `log`.
fn spawn(
    server: &TestServer,
    target: &Target,
    mode: &str,
    ebpf: Option<&super::ebpf::EbpfNode>,
    log: &std::path::Path,
) -> Child {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let err = out.try_clone().expect("log file");
    Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["proxy", "--kubeconfig"])
        .arg(server.kubeconfig())
        .args(["--mode", mode, "--node-name", &target.name, "--netns"])
        .arg(&target.netns)
        .args(["--healthz-listen", HEALTHZ, "--metrics-listen", HEALTHZ])
        .args(["--cluster-cidr", &target.cluster_cidr])
        .args(["--sync-period-secs", "10"])
        .args(&target.extra_args)
        .args(ebpf.map(|e| e.proxy_args()).unwrap_or_default())
        .env("SKIFF_LOG", "info,skiff_proxy=debug")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start skiff proxy")
}

/// Creates or updates objects with `kubectl apply`.
pub fn apply(server: &TestServer, object: &Value) {
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &object.to_string());
}

/// One endpoint of a hand-written EndpointSlice.
#[derive(Debug, Clone)]
pub struct Ep {
    /// Pod address.
    pub ip: String,
    /// Node name.
    pub node: String,
    /// conditions.ready.
    pub ready: bool,
    /// conditions.serving.
    pub serving: bool,
    /// conditions.terminating.
    pub terminating: bool,
}

impl Ep {
    /// A ready endpoint.
    pub fn ready(ip: impl ToString, node: &str) -> Ep {
        Ep {
            ip: ip.to_string(),
            node: node.to_string(),
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    /// A terminating endpoint that still serves (or not).
    pub fn terminating(ip: impl ToString, node: &str, serving: bool) -> Ep {
        Ep {
            ip: ip.to_string(),
            node: node.to_string(),
            ready: false,
            serving,
            terminating: true,
        }
    }
}

/// A Service without a selector in `default`. `ports`: (name, protocol, port,
/// nodePort); `extra` is merged into the spec.
pub fn service(
    name: &str,
    cluster_ip: &str,
    ports: &[(&str, &str, u16, Option<u16>)],
    extra: Value,
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(pname, proto, port, node_port)| {
            let mut p = json!({"name": pname, "protocol": proto, "port": port});
            if let Some(np) = node_port {
                p["nodePort"] = json!(np);
            }
            p
        })
        .collect();
    let mut spec = json!({"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": ports});
    if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
        spec.extend(extra);
    }
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    })
}

/// An IPv4 EndpointSlice for `service`. `ports`: (name, protocol, target port).
pub fn endpoint_slice(service: &str, ports: &[(&str, &str, u16)], eps: &[Ep]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, proto, port)| json!({"name": n, "protocol": proto, "port": port}))
        .collect();
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|e| {
            json!({
                "addresses": [e.ip],
                "nodeName": e.node,
                "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-manual"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    })
}

/// Service `name` at `cluster_ip` port 80 ("http", TCP) with one ready
/// backend `ip` on `node` listening on 8080: the lab's smallest service.
pub fn apply_web_service(
    server: &TestServer,
    name: &str,
    cluster_ip: &str,
    ip: impl ToString,
    node: &str,
) {
    apply(
        server,
        &service(name, cluster_ip, &[("http", "TCP", 80, None)], json!({})),
    );
    apply(
        server,
        &endpoint_slice(name, &[("http", "TCP", 8080)], &[Ep::ready(ip, node)]),
    );
}

/// `iptables-legacy` or `iptables-nft`: whichever holds the proxy's KUBE-SERVICES.
pub fn implementation_in_use(node: &Ns) -> &'static str {
    let has = |tool: &str| {
        let out = node.try_exec(&[tool, "-t", "nat", "-S", "KUBE-SERVICES"]);
        out.status.success()
    };
    match (has("iptables-legacy"), has("iptables-nft")) {
        (true, false) => "iptables-legacy",
        (false, true) => "iptables-nft",
        other => panic!("KUBE-SERVICES in (legacy, nft): {other:?}; expected exactly one"),
    }
}

/// Lines of both tables of one implementation's `save` tool that belong to
/// the proxy (`KUBE-` chains, their rules, and jumps into them).
pub fn kube_lines(node: &Ns, save: &str) -> Vec<String> {
    ["nat", "filter"]
        .iter()
        .flat_map(|t| {
            node.exec(&[save, "-t", t])
                .lines()
                .filter(|l| l.contains("KUBE-"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}
