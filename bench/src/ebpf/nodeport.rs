//! NodePort requests/s and CPU per request, eBPF vs iptables, in one run.
//!
//! Three namespaces: an outside client, a node and a pod on that node,
//! joined by veth pairs (client 192.168.77.2 — node 192.168.77.1; node
//! 10.244.7.1 — pod 10.244.7.2). The client opens one connection per request
//! to the node's NodePort (externalTrafficPolicy Cluster, kube-proxy's
//! default) and reads the pod's one-line answer. eBPF: the tc programs on the
//! node's uplink DNAT the flow (a local backend keeps the client address);
//! iptables: kube-proxy's chains in the node namespace (DNAT and masquerade).
//! Straight to the pod IP through the same node is printed as the floor.
//!
//! CPU per request is this process's CPU time (utime + stime from
//! /proc/self/stat) over the requests: the client loop and the backend are
//! threads of this process, and without IRQ time accounting (this kernel)
//! the softirq work of veth delivery — where tc programs and netfilter run —
//! is charged to the task it interrupts, which is nearly always one of ours.
//! Rounds of the two data planes alternate, so both see the same load from
//! the machine's other users; the best requests/s (and every round's, in
//! order) and the median CPU per request of each are reported. Seen here:
//! iptables rounds after the first get slower and slower (SYNs answered
//! after a 1 s retransmit; flushing the node's conntrack table between
//! rounds did not change it) while eBPF and direct rounds do not, so the
//! first round and the CPU per request are the fairer iptables figures.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use skiff_proxy::ebpf::{EbpfConfig, EbpfDataplane};
use skiff_proxy::model::{Changes, IpNetwork, NodeInfo, ServiceMap, ServicePort};
use skiff_proxy::{Config, Dataplane, Mode};

use skiff_cni::Netns;

use super::{endpoint, exec, netns_path, port_name, run, Backend};

const NODE_IP: &str = "192.168.77.1";
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 7, 2);
const NODE_PORT: u16 = 30080;
/// The pod's port behind the NodePort (the port of the bench's endpoints).
const BACKEND_PORT: u16 = 8080;
/// The pod's port for the direct path.
const DIRECT_PORT: u16 = 8081;
/// The proxy's default Maglev table size.
const MAGLEV_SIZE: usize = 16381;

/// The three namespaces, deleted on drop.
pub struct NodeLab {
    client: String,
    node: String,
    pod: String,
}

impl NodeLab {
    /// Creates the namespaces and links.
    pub fn new(prefix: &str) -> Result<NodeLab> {
        let lab = NodeLab {
            client: format!("{prefix}-npc"),
            node: format!("{prefix}-npn"),
            pod: format!("{prefix}-npp"),
        };
        for ns in [&lab.client, &lab.node, &lab.pod] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            run(&["ip", "netns", "add", ns])?;
            exec(ns, &["ip", "link", "set", "lo", "up"])?;
        }
        let pair = |a: &str, a_if: &str, b: &str, b_if: &str| {
            exec(
                a,
                &[
                    "ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b,
                ],
            )
        };
        pair(&lab.client, "eth0", &lab.node, "eth0")?;
        pair(&lab.node, "pod0", &lab.pod, "eth0")?;
        for (ns, dev, ip) in [
            (&lab.client, "eth0", "192.168.77.2/24"),
            (&lab.node, "eth0", "192.168.77.1/24"),
            (&lab.node, "pod0", "10.244.7.1/24"),
            (&lab.pod, "eth0", "10.244.7.2/24"),
        ] {
            exec(ns, &["ip", "addr", "add", ip, "dev", dev])?;
            exec(ns, &["ip", "link", "set", dev, "up"])?;
        }
        exec(
            &lab.pod,
            &["ip", "route", "add", "default", "via", "10.244.7.1"],
        )?;
        // Only for the direct (pod IP) figure; inside the client namespace.
        exec(
            &lab.client,
            &["ip", "route", "add", "10.244.7.0/24", "via", NODE_IP],
        )?;
        exec(&lab.node, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        Ok(lab)
    }

    /// The NodePort service with its one local endpoint, as the node sees it.
    fn map(&self) -> ServiceMap {
        let name = port_name("nodeport".into());
        let mut port = ServicePort::cluster_ip(
            name.clone(),
            vec![IpAddr::V4(Ipv4Addr::new(10, 100, 0, 2))],
            80,
            vec![endpoint(POD_IP)],
        );
        port.node_port = Some(NODE_PORT);
        ServiceMap {
            node: NodeInfo {
                name: "bench".into(),
                addresses: vec![NODE_IP.parse().expect("node address")],
                ..NodeInfo::default()
            },
            ports: [(name, port)].into_iter().collect(),
        }
    }

    fn ebpf(&self, pin_dir: &Path, cgroup: &Path) -> Result<Box<dyn Dataplane>> {
        Ok(Box::new(EbpfDataplane::new(EbpfConfig {
            pin_dir: pin_dir.to_path_buf(),
            cgroup: cgroup.to_path_buf(),
            interfaces: vec!["eth0".into()],
            discover_interfaces: false,
            netns: Some(netns_path(&self.node).into()),
            maglev_size: MAGLEV_SIZE,
            tcp_destroy_grace: skiff_proxy::ebpf::TCP_DESTROY_GRACE,
        })?))
    }

    fn iptables(&self) -> Result<Box<dyn Dataplane>> {
        let mut config = Config::new("bench", Mode::Iptables);
        config.netns = Some(netns_path(&self.node).into());
        config.cluster_cidrs = vec!["10.244.0.0/16".parse::<IpNetwork>()?];
        Ok(skiff_proxy::runner::dataplane_for(&config)?)
    }
}

impl Drop for NodeLab {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.node, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// This process's CPU time so far, in seconds (all threads, live and gone).
fn cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line, in clock ticks (USER_HZ, 100).
    let rest = stat.rsplit_once(')').context("/proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

/// One round: requests/s and CPU microseconds per request.
/// `n` requests (connect, read the one-line answer) from `client` to
/// `addr`; returns how many failed. The timeout is generous: the machine is
/// shared, and a SYN lost under load is retransmitted only after 1 s.
fn send_requests(client: &str, addr: SocketAddr, n: usize) -> Result<usize> {
    let netns = Netns::open(netns_path(client))?;
    Ok(netns.run(|| {
        (0..n)
            .filter(|_| {
                let answer = || -> std::io::Result<()> {
                    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                    c.set_read_timeout(Some(Duration::from_secs(5)))?;
                    let mut buf = [0u8; 8];
                    match c.read(&mut buf)? {
                        0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
                        _ => Ok(()),
                    }
                };
                answer().is_err()
            })
            .count()
    })?)
}

/// One round: requests/s, CPU microseconds per request, failed requests.
fn round(client: &str, addr: SocketAddr, n: usize) -> Result<Round> {
    let cpu = cpu_seconds()?;
    let start = Instant::now();
    let failed = send_requests(client, addr, n)?;
    let secs = start.elapsed().as_secs_f64();
    let used = cpu_seconds()? - cpu;
    Ok(Round {
        rps: n as f64 / secs,
        cpu_us: used * 1e6 / n as f64,
        failed,
    })
}

/// What one round measured.
struct Round {
    rps: f64,
    cpu_us: f64,
    failed: usize,
}

/// The rounds of one path.
#[derive(Default)]
struct Rounds {
    rounds: Vec<Round>,
}

/// Smallest and largest of `v`.
fn range(v: impl Iterator<Item = f64>) -> (f64, f64) {
    v.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)))
}

impl Rounds {
    fn best_rps(&self) -> f64 {
        range(self.rounds.iter().map(|r| r.rps)).1
    }

    fn cpu_median(&self) -> f64 {
        let mut v: Vec<f64> = self.rounds.iter().map(|r| r.cpu_us).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }

    fn print(&self, name: &str) {
        let (clo, chi) = range(self.rounds.iter().map(|r| r.cpu_us));
        let failed: usize = self.rounds.iter().map(|r| r.failed).sum();
        let each: Vec<String> = self
            .rounds
            .iter()
            .map(|r| format!("{:.0}", r.rps))
            .collect();
        println!(
            "{name:>9}: requests/s best {:.0} (rounds in order: {}); CPU per request median {:.1} µs (rounds {clo:.1}..{chi:.1}); {failed} failed",
            self.best_rps(),
            each.join(", "),
            self.cpu_median()
        );
    }
}

/// Measures the NodePort through both data planes and the pod IP directly,
/// `rounds` alternating rounds of `requests` requests each.
pub fn measure(
    prefix: &str,
    pin_dir: &Path,
    cgroup: &Path,
    requests: usize,
    rounds: usize,
) -> Result<()> {
    let lab = NodeLab::new(prefix)?;
    // The direct path gets its own server port. On one port, the pod's
    // TIME_WAIT sockets of NodePort flows (the eBPF path keeps the client's
    // address and port) would meet the direct path's new connections from
    // the same client ports, whose TCP timestamps start elsewhere (the client
    // offsets them per destination address); the pod then answers their SYN
    // with an ACK instead of a SYN-ACK and the client retries after 1 s.
    let _backends = [
        Backend::start(&lab.pod, BACKEND_PORT)?,
        Backend::start(&lab.pod, DIRECT_PORT)?,
    ];
    let node_port: SocketAddr = format!("{NODE_IP}:{NODE_PORT}").parse()?;
    let direct = SocketAddr::new(IpAddr::V4(POD_IP), DIRECT_PORT);
    let map = lab.map();
    let (mut ebpf, mut ipt, mut pod) = (Rounds::default(), Rounds::default(), Rounds::default());
    println!(
        "NodePort: {rounds} alternating rounds of {requests} requests (one connection each) per data plane"
    );
    for _ in 0..rounds {
        for (which, results) in [("ebpf", &mut ebpf), ("iptables", &mut ipt)] {
            let mut dp = if which == "ebpf" {
                lab.ebpf(pin_dir, cgroup)?
            } else {
                lab.iptables()?
            };
            dp.sync(&map, &Changes::full(&map))?;
            send_requests(&lab.client, node_port, 100)
                .with_context(|| format!("warming up the {which} NodePort"))?;
            let r = round(&lab.client, node_port, requests)
                .with_context(|| format!("requests to the {which} NodePort"))?;
            results.rounds.push(r);
            dp.cleanup()?;
        }
        send_requests(&lab.client, direct, 100).context("warming up the pod IP path")?;
        let r = round(&lab.client, direct, requests).context("requests to the pod IP")?;
        pod.rounds.push(r);
    }
    ebpf.print("ebpf");
    ipt.print("iptables");
    pod.print("pod IP");
    println!(
        "NodePort ebpf/iptables: requests/s x{:.3}, CPU per request x{:.3}; ebpf/pod IP requests/s x{:.3}",
        ebpf.best_rps() / ipt.best_rps(),
        ebpf.cpu_median() / ipt.cpu_median(),
        ebpf.best_rps() / pod.best_rps()
    );
    // What the proxy adds to a request: the CPU above the direct path's
    // (the TCP stacks and both programs' own work are the same in all three).
    let (e, i) = (
        ebpf.cpu_median() - pod.cpu_median(),
        ipt.cpu_median() - pod.cpu_median(),
    );
    println!(
        "NodePort CPU per request above the pod IP path: ebpf {e:.1} µs, iptables {i:.1} µs (x{:.3})",
        e / i
    );
    Ok(())
}
