//! `proxy-bench`: what the service proxy's data plane costs, measured inside
//! lab namespaces this benchmark creates (and deletes on exit):
//!
//! - sync time for N services × E endpoints (default 1k and 10k × 10): a full
//!   sync into an empty namespace, then a partial sync after one endpoint of
//!   one service changes;
//! - connection setup latency (TCP connect + one reply) from a pod through a
//!   ClusterIP with 1 service installed vs with N, next to the direct pod-IP
//!   connection as the peer. With iptables the service being used is matched
//!   last in KUBE-SERVICES, so this is the O(n) first-packet cost the eBPF
//!   data plane removes.
//!
//! `--mode` picks the data plane (iptables; ebpf once its backend is wired
//! into `skiff_proxy::runner::dataplane_for`). Nothing is asserted (DESIGN §8).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use skiff_bench::stats::{ms, percentile};
use skiff_cni::Netns;
use skiff_proxy::model::{
    self, Changes, Endpoint, NodeInfo, Protocol, ServiceMap, ServicePort, ServicePortName,
};
use skiff_proxy::{Config, Dataplane, Mode};

#[derive(Parser)]
#[command(
    about = "service proxy: sync time and ClusterIP connection latency vs service count (run as root)"
)]
struct Args {
    /// Data plane: iptables or ebpf.
    #[arg(long, default_value = "iptables")]
    mode: Mode,
    /// Service counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    services: Vec<usize>,
    /// Endpoints per service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Connections per latency measurement.
    #[arg(long, default_value_t = 500)]
    connections: usize,
    /// Partial syncs measured per size (one endpoint change each).
    #[arg(long, default_value_t = 5)]
    changes: usize,
}

/// Network namespaces deleted on drop (also when the run fails midway).
struct Namespaces(Vec<String>);

impl Namespaces {
    fn add(&mut self, name: &str) -> Result<()> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(&["ip", "netns", "add", name])?;
        self.0.push(name.to_string());
        exec(name, &["ip", "link", "set", "lo", "up"])
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.0.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn exec(ns: &str, args: &[&str]) -> Result<()> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    run(&full)
}

fn netns_path(name: &str) -> String {
    format!("/var/run/netns/{name}")
}

/// A node namespace with a pod bridge, one backend pod and one client pod.
fn build_lab(ns: &mut Namespaces, prefix: &str) -> Result<(String, String, String)> {
    let node = format!("{prefix}-node");
    let backend = format!("{prefix}-backend");
    let client = format!("{prefix}-client");
    for n in [&node, &backend, &client] {
        ns.add(n)?;
    }
    exec(&node, &["ip", "link", "add", "cbr0", "type", "bridge"])?;
    exec(
        &node,
        &["ip", "addr", "add", "10.244.1.1/24", "dev", "cbr0"],
    )?;
    exec(&node, &["ip", "link", "set", "cbr0", "up"])?;
    // Routes for service addresses must exist; the default points at the bridge.
    exec(&node, &["ip", "route", "add", "default", "dev", "cbr0"])?;
    exec(&node, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    exec(
        &node,
        &["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"],
    )?;
    for (pod, host, port) in [(&backend, 2, "p2"), (&client, 9, "p9")] {
        exec(
            &node,
            &[
                "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", pod,
            ],
        )?;
        exec(&node, &["ip", "link", "set", port, "master", "cbr0"])?;
        exec(&node, &["ip", "link", "set", port, "up"])?;
        exec(
            pod,
            &[
                "ip",
                "addr",
                "add",
                &format!("10.244.1.{host}/24"),
                "dev",
                "eth0",
            ],
        )?;
        exec(pod, &["ip", "link", "set", "eth0", "up"])?;
        exec(pod, &["ip", "route", "add", "default", "via", "10.244.1.1"])?;
    }
    Ok((node, backend, client))
}

fn port_name(i: usize) -> ServicePortName {
    ServicePortName {
        namespace: "bench".into(),
        // The measured service sorts last ("zz-"), so iptables matches it last.
        name: format!("svc-{i:06}"),
        port: "http".into(),
        protocol: Protocol::Tcp,
    }
}

fn service_port(name: ServicePortName, vip: Ipv4Addr, endpoints: Vec<Endpoint>) -> ServicePort {
    ServicePort::cluster_ip(name, vec![IpAddr::V4(vip)], 80, endpoints)
}

fn endpoint(ip: Ipv4Addr) -> Endpoint {
    Endpoint {
        ip: IpAddr::V4(ip),
        port: 8080,
        ready: true,
        serving: true,
        terminating: false,
        node_name: Some("bench".into()),
        zone: None,
        zone_hints: Vec::new(),
        is_local: true,
    }
}

/// `count` synthetic services of `per` endpoints (addresses that need not
/// exist), plus the real one (VIP 10.100.0.1 → the backend pod) sorting last.
fn service_map(count: usize, per: usize) -> ServiceMap {
    let mut ports = BTreeMap::new();
    for i in 0..count {
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32 + 1);
        let eps = (0..per)
            .map(|e| {
                endpoint(Ipv4Addr::from(
                    u32::from(Ipv4Addr::new(10, 200, 0, 0)) + (i * per + e) as u32,
                ))
            })
            .collect();
        ports.insert(port_name(i), service_port(port_name(i), vip, eps));
    }
    let real = ServicePortName {
        name: "zz-measured".into(),
        ..port_name(0)
    };
    ports.insert(
        real.clone(),
        service_port(
            real,
            Ipv4Addr::new(10, 100, 0, 1),
            vec![endpoint(Ipv4Addr::new(10, 244, 1, 2))],
        ),
    );
    ServiceMap {
        node: NodeInfo {
            name: "bench".into(),
            ..NodeInfo::default()
        },
        ports,
    }
}

fn dataplane(mode: Mode, node: &str) -> Result<Box<dyn Dataplane>> {
    let mut config = Config::new("bench", mode);
    config.netns = Some(netns_path(node).into());
    config.cluster_cidrs = vec!["10.244.0.0/16".parse()?];
    Ok(skiff_proxy::runner::dataplane_for(&config)?)
}

/// A backend answering one line per connection, on a thread, until dropped.
struct Backend(Arc<AtomicBool>);

impl Backend {
    fn start(pod: &str) -> Result<Backend> {
        let listener =
            Netns::open(netns_path(pod))?.run(|| TcpListener::bind("0.0.0.0:8080"))??;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.write_all(b"ok\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
            }
        });
        Ok(Backend(stop))
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// p50 and p99 of connect + read-one-reply from `client` to `addr`.
fn latency(client: &str, addr: SocketAddr, n: usize) -> Result<(Duration, Duration)> {
    let netns = Netns::open(netns_path(client))?;
    let samples = netns.run(|| -> std::io::Result<Vec<Duration>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            let mut buf = [0u8; 8];
            let _ = c.read(&mut buf)?;
            out.push(start.elapsed());
        }
        Ok(out)
    })??;
    let mut sorted = samples;
    sorted.sort_unstable();
    Ok((percentile(&sorted, 0.5), percentile(&sorted, 0.99)))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let prefix = format!("skpb{}", std::process::id() % 100_000);
    let mut namespaces = Namespaces(Vec::new());
    let (node, backend_pod, client) = build_lab(&mut namespaces, &prefix)?;
    let _backend = Backend::start(&backend_pod)?;
    let vip: SocketAddr = "10.100.0.1:80".parse()?;
    let direct: SocketAddr = "10.244.1.2:8080".parse()?;
    println!(
        "proxy-bench: mode {:?}, {} endpoints per service, {} connections per latency figure",
        args.mode, args.endpoints, args.connections
    );

    let (direct_p50, direct_p99) = latency(&client, direct, args.connections)?;
    let mut dp = dataplane(args.mode, &node)?;
    let one = service_map(0, args.endpoints);
    dp.sync(&one, &Changes::full(&one))?;
    let (one_p50, one_p99) = latency(&client, vip, args.connections)?;
    println!(
        "connection setup, direct pod IP (peer): p50 {} ms p99 {} ms",
        ms(direct_p50),
        ms(direct_p99)
    );
    println!(
        "connection setup, ClusterIP with 1 service: p50 {} ms p99 {} ms (x{:.2} of direct p50)",
        ms(one_p50),
        ms(one_p99),
        one_p50.as_secs_f64() / direct_p50.as_secs_f64()
    );
    dp.cleanup()?;
    drop(dp);

    for &count in &args.services {
        let mut dp = dataplane(args.mode, &node)?;
        let mut map = service_map(count, args.endpoints);
        let started = Instant::now();
        let stats = dp.sync(&map, &Changes::full(&map))?;
        let full = started.elapsed();
        let mut partial = Vec::new();
        for round in 0..args.changes {
            let name = port_name(round % count.max(1));
            let mut next = map.clone();
            if let Some(p) = next.ports.get_mut(&name) {
                let changed = endpoint(Ipv4Addr::new(
                    10,
                    201,
                    (round / 250) as u8,
                    (round % 250) as u8 + 1,
                ));
                p.endpoints[0] = changed.clone();
                p.cluster_endpoints[0] = changed.clone();
                p.external_endpoints[0] = changed;
            }
            let changes = model::diff(&map, &next);
            let started = Instant::now();
            dp.sync(&next, &changes)?;
            partial.push(started.elapsed());
            map = next;
        }
        partial.sort_unstable();
        let (p50, p99) = latency(&client, vip, args.connections)?;
        println!(
            "{count} services x {}: full sync {} ms ({} rules), one endpoint change p50 {} ms",
            args.endpoints,
            ms(full),
            stats.rules,
            ms(percentile(&partial, 0.5)),
        );
        println!(
            "connection setup, ClusterIP with {count} services: p50 {} ms p99 {} ms (x{:.2} of 1 service, x{:.2} of direct)",
            ms(p50),
            ms(p99),
            p50.as_secs_f64() / one_p50.as_secs_f64(),
            p50.as_secs_f64() / direct_p50.as_secs_f64()
        );
        dp.cleanup()?;
    }
    Ok(())
}
