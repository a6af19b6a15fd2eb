//! The lab (DESIGN §6) for service-proxy tests: node namespaces on an
//! underlay bridge, pod namespaces on each node's bridge, clients outside the
//! nodes, in-process TCP/UDP servers and clients inside any of them, and the
//! `skiff proxy` process run against a node.
//!
//! Layout (addresses live only inside the lab's namespaces):
//!
//! ```text
//!  <p>-u   bridge ul0 192.168.50.254/24  ── the "physical" network
//!   ├─ <p>-n<i>   eth0 192.168.50.<i>, bridge cbr0 10.244.<i>.1/24, forwarding,
//!   │    │        routes to the other nodes' pod CIDRs, default via .254
//!   │    └─ <p>-n<i>-<pod>  eth0 10.244.<i>.<h>, default via 10.244.<i>.1
//!   └─ <p>-c-<name>  eth0 192.168.50.<h> (a client outside the cluster)
//! ```
//!
//! Every namespace is deleted when its guard drops (also on panic); the lab
//! never adds anything to the root namespace.

#![allow(dead_code)]

pub mod ebpf;
pub mod proxy;
pub mod sctp;
pub mod services;
pub mod sockets;
pub mod v6;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use skiff_cni::Netns;

/// The underlay subnet's first three octets.
pub const UNDERLAY: [u8; 3] = [192, 168, 50];
/// The underlay gateway (the underlay namespace's own address).
pub const UNDERLAY_GW: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 254);
/// The pod network all nodes' pod CIDRs come from.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// A short, process-unique prefix for namespace names.
pub fn unique(label: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "skl{}x{}-{label}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `args` (in the current namespace) and requires success.
fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop.
pub struct Ns {
    name: String,
}

impl Ns {
    /// Creates `name` (replacing a stale one) with `lo` up.
    pub fn new(name: &str) -> Ns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        sh(&["ip", "netns", "add", name]);
        let ns = Ns {
            name: name.to_string(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// A handle for in-process work inside the namespace.
    pub fn netns(&self) -> Netns {
        Netns::open(self.path()).expect("open netns")
    }

    /// Runs `f` on a thread inside the namespace (sockets made there stay there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.netns().run(f).expect("enter netns")
    }

    /// Runs a command inside the namespace.
    pub fn try_exec(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(args[0]);
        cmd.args(&args[1..]);
        self.run(|| cmd.output())
            .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
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

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")]);
    }

    /// Creates a veth pair: `local` here, `remote` in `other`; both up.
    fn veth(&self, local: &str, other: &Ns, remote: &str) {
        self.exec(&[
            "ip",
            "link",
            "add",
            local,
            "type",
            "veth",
            "peer",
            "name",
            remote,
            "netns",
            &other.name,
        ]);
        self.exec(&["ip", "link", "set", local, "up"]);
        other.exec(&["ip", "link", "set", remote, "up"]);
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        // Deleting the namespace removes its links, routes, rules and conntrack.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A node: a namespace with an underlay address and a pod bridge.
pub struct Node {
    /// Node name (also the `nodeName` of its endpoints).
    pub name: String,
    /// Index `i`: address 192.168.50.i, pod CIDR 10.244.i.0/24.
    pub index: u8,
    /// The node's namespace.
    pub ns: Ns,
}

impl Node {
    /// The node's underlay address.
    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(UNDERLAY[0], UNDERLAY[1], UNDERLAY[2], self.index)
    }

    /// `10.244.<i>.<host>`.
    pub fn pod_ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.index, host)
    }

    /// Adds a pod namespace `<node>-<name>` with address 10.244.<i>.<host>.
    pub fn add_pod(&self, name: &str, host: u8) -> Pod {
        assert!(
            (2..=250).contains(&host),
            "pod host part {host} out of range"
        );
        let ns = Ns::new(&format!("{}-{name}", self.ns.name()));
        let port = format!("p{host}");
        self.ns.veth(&port, &ns, "eth0");
        self.ns
            .exec(&["ip", "link", "set", &port, "master", "cbr0"]);
        // As the CNI plugin's hairpinMode: a pod's connection to its own
        // service is DNATed back to it while bridged, so leaves by the port
        // it came in on.
        self.ns.exec(&[
            "ip",
            "link",
            "set",
            &port,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ]);
        let ip = self.pod_ip(host);
        ns.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &self.pod_ip(1).to_string(),
        ]);
        Pod {
            name: name.to_string(),
            ip,
            node: self.name.clone(),
            ns,
        }
    }
}

/// A pod: a namespace on a node's bridge.
pub struct Pod {
    /// Pod name.
    pub name: String,
    /// Pod address.
    pub ip: Ipv4Addr,
    /// The node it runs on.
    pub node: String,
    /// Its namespace.
    pub ns: Ns,
}

/// A machine outside the cluster on the underlay.
pub struct Client {
    /// Its underlay address.
    pub ip: Ipv4Addr,
    /// Its namespace.
    pub ns: Ns,
}

impl Client {
    /// Routes `cidr` (service, external or LoadBalancer addresses) via `node`,
    /// as a router in front of the cluster would.
    pub fn route_via(&self, cidr: &str, node: &Node) {
        self.ns.exec(&[
            "ip",
            "route",
            "replace",
            cidr,
            "via",
            &node.ip().to_string(),
        ]);
    }
}

/// The whole lab: the underlay and its nodes. Drop order tears down pods
/// (owned by tests) first, then nodes, then the underlay.
pub struct Lab {
    prefix: String,
    /// Nodes, in the order added.
    pub nodes: Vec<Node>,
    underlay: Ns,
}

impl Lab {
    /// An empty underlay named after `label`.
    pub fn new(label: &str) -> Lab {
        let prefix = unique(label);
        let underlay = Ns::new(&format!("{prefix}-u"));
        underlay.exec(&["ip", "link", "add", "ul0", "type", "bridge"]);
        underlay.exec(&["ip", "link", "set", "ul0", "up"]);
        underlay.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{UNDERLAY_GW}/24"),
            "dev",
            "ul0",
        ]);
        Lab {
            prefix,
            nodes: Vec::new(),
            underlay,
        }
    }

    /// The per-test name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn attach_to_underlay(&self, ns: &Ns, port: &str, ip: Ipv4Addr) {
        ns.veth("eth0", &self.underlay, port);
        self.underlay
            .exec(&["ip", "link", "set", port, "master", "ul0"]);
        ns.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    }

    /// Adds node `name` with index `i` (1..=200), routed to every other node's pods.
    pub fn add_node(&mut self, name: &str, index: u8) -> &Node {
        assert!(
            (1..=200).contains(&index),
            "node index {index} out of range"
        );
        let ns = Ns::new(&format!("{}-n{index}", self.prefix));
        let node = Node {
            name: name.to_string(),
            index,
            ns,
        };
        self.attach_to_underlay(&node.ns, &format!("n{index}"), node.ip());
        let ns = &node.ns;
        ns.exec(&["ip", "link", "add", "cbr0", "type", "bridge"]);
        ns.exec(&["ip", "link", "set", "cbr0", "up"]);
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", node.pod_ip(1)),
            "dev",
            "cbr0",
        ]);
        ns.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &UNDERLAY_GW.to_string(),
        ]);
        ns.sysctl("net.ipv4.ip_forward", "1");
        // Pod-to-service replies between pods on one bridge must pass
        // iptables for the reverse NAT (kube-proxy's br_netfilter requirement).
        ns.sysctl("net.bridge.bridge-nf-call-iptables", "1");
        for other in &self.nodes {
            ns.exec(&[
                "ip",
                "route",
                "add",
                &format!("10.244.{}.0/24", other.index),
                "via",
                &other.ip().to_string(),
            ]);
            other.ns.exec(&[
                "ip",
                "route",
                "add",
                &format!("10.244.{}.0/24", node.index),
                "via",
                &node.ip().to_string(),
            ]);
        }
        self.nodes.push(node);
        self.nodes.last().expect("just pushed")
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in the lab"))
    }

    /// Adds a client outside the cluster at 192.168.50.<host>.
    pub fn add_client(&self, name: &str, host: u8) -> Client {
        assert!(
            (201..=250).contains(&host),
            "client host part {host}: use 201..=250"
        );
        let ns = Ns::new(&format!("{}-c-{name}", self.prefix));
        let ip = Ipv4Addr::new(UNDERLAY[0], UNDERLAY[1], UNDERLAY[2], host);
        self.attach_to_underlay(&ns, &format!("c{host}"), ip);
        Client { ip, ns }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Nodes first (their veths into the underlay go with them).
        self.nodes.clear();
    }
}
