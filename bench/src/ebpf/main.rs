//! `proxy-ebpf-bench`: the eBPF data plane next to the iptables one, both
//! measured in one run inside lab namespaces this benchmark creates (and
//! deletes on exit):
//!
//! - connection setup latency (TCP connect + one reply) from a client through
//!   a ClusterIP with 1 service and with N installed (goal for eBPF: flat);
//! - requests/s (one connection per request) through the ClusterIP vs straight
//!   to the pod IP (goal for eBPF: ratio ≥ 0.97);
//! - sync time for N services × E endpoints: a full sync into empty tables and
//!   one endpoint change (goal for eBPF: < 1 s full, < 5 ms change at 10k);
//! - NodePort requests/s and CPU per request from outside the node, the tc
//!   programs vs kube-proxy's iptables chains (`nodeport.rs`).
//!
//! The eBPF socket programs serve the processes of one cgroup; this process
//! joins the benchmark's cgroup while it measures eBPF and returns to its own
//! cgroup afterwards. Nothing is asserted (DESIGN §8).

mod nodeport;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use skiff_bench::netlab::{exchanges, netns_path, Backend};
use skiff_bench::stats::{ms, percentile};
use skiff_proxy::ebpf::{cgroup2_mount, EbpfConfig, EbpfDataplane};
use skiff_proxy::model::{
    self, Changes, Endpoint, NodeInfo, Protocol, ServiceMap, ServicePort, ServicePortName,
};
use skiff_proxy::{Config, Dataplane, Mode};

#[derive(Parser)]
#[command(
    about = "eBPF vs iptables service proxy: ClusterIP latency, requests/s, sync time (run as root)"
)]
struct Args {
    /// Service counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,50000")]
    services: Vec<usize>,
    /// Largest service count measured for iptables (its syncs grow long).
    #[arg(long, default_value_t = 10000)]
    iptables_max: usize,
    /// Endpoints per service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Connections per latency figure.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Requests per requests/s figure.
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Partial syncs per size (one endpoint change each).
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// What to measure: clusterip (latency, requests/s, sync time) and/or
    /// nodeport (requests/s and CPU per request).
    #[arg(long, value_delimiter = ',', default_value = "clusterip,nodeport")]
    parts: Vec<String>,
    /// Requests per NodePort round.
    #[arg(long, default_value_t = 2000)]
    nodeport_requests: usize,
    /// NodePort rounds per data plane (alternating eBPF and iptables).
    #[arg(long, default_value_t = 5)]
    nodeport_rounds: usize,
}

/// Everything the run creates, removed on drop (also when it fails midway).
struct Lab {
    namespaces: Vec<String>,
    cgroup: PathBuf,
    home_cgroup: PathBuf,
    bpffs: tempfile::TempDir,
}

impl Lab {
    fn new(prefix: &str) -> Result<Lab> {
        let mount = cgroup2_mount()?;
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let home = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .context("no cgroup v2 line in /proc/self/cgroup")?;
        let cgroup = mount.join("skiff-bench").join(prefix);
        std::fs::create_dir_all(&cgroup)?;
        let bpffs = tempfile::Builder::new()
            .prefix("skiff-bench-bpf-")
            .tempdir()?;
        let mut lab = Lab {
            namespaces: Vec::new(),
            cgroup,
            home_cgroup: mount.join(home.trim_start_matches('/')),
            bpffs,
        };
        run(&[
            "mount",
            "-t",
            "bpf",
            "bpffs",
            &lab.bpffs.path().to_string_lossy(),
        ])?;
        for n in ["client", "backend"] {
            let name = format!("{prefix}-{n}");
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            run(&["ip", "netns", "add", &name])?;
            lab.namespaces.push(name.clone());
            exec(&name, &["ip", "link", "set", "lo", "up"])?;
        }
        let (client, backend) = (lab.namespaces[0].clone(), lab.namespaces[1].clone());
        exec(
            &client,
            &[
                "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
                &backend,
            ],
        )?;
        for (ns, ip) in [(&client, "10.244.1.9/24"), (&backend, "10.244.1.2/24")] {
            exec(ns, &["ip", "addr", "add", ip, "dev", "eth0"])?;
            exec(ns, &["ip", "link", "set", "eth0", "up"])?;
        }
        // iptables DNATs in OUTPUT after the route lookup: the ClusterIP
        // needs a route (inside the client namespace only).
        exec(&client, &["ip", "route", "add", "default", "dev", "eth0"])?;
        Ok(lab)
    }

    fn client(&self) -> &str {
        &self.namespaces[0]
    }

    fn enter_cgroup(&self, inside: bool) -> Result<()> {
        let dir = if inside {
            &self.cgroup
        } else {
            &self.home_cgroup
        };
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("joining cgroup {}", dir.display()))
    }

    fn ebpf(&self) -> Result<EbpfDataplane> {
        Ok(EbpfDataplane::new(EbpfConfig {
            pin_dir: self.bpffs.path().join("bench"),
            cgroup: self.cgroup.clone(),
            interfaces: Vec::new(),
            discover_interfaces: false,
            netns: None,
            maglev_size: 16381,
            tcp_destroy_grace: skiff_proxy::ebpf::TCP_DESTROY_GRACE,
        })?)
    }

    fn iptables(&self) -> Result<Box<dyn Dataplane>> {
        let mut config = Config::new("bench", Mode::Iptables);
        config.netns = Some(netns_path(self.client()).into());
        Ok(skiff_proxy::runner::dataplane_for(&config)?)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.enter_cgroup(false);
        let _ = skiff_proxy::ebpf::detach_and_unpin(&self.bpffs.path().join("bench"));
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.bpffs.path())
            .output();
        let _ = std::fs::remove_dir(&self.cgroup);
        if let Some(parent) = self.cgroup.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        for n in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn exec(ns: &str, args: &[&str]) -> Result<()> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    run(&full)
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

fn port_name(name: String) -> ServicePortName {
    ServicePortName {
        namespace: "bench".into(),
        name,
        port: "http".into(),
        protocol: Protocol::Tcp,
    }
}

fn service_port(name: ServicePortName, vip: Ipv4Addr, endpoints: Vec<Endpoint>) -> ServicePort {
    ServicePort::cluster_ip(name, vec![IpAddr::V4(vip)], 80, endpoints)
}

/// `count` synthetic services of `per` endpoints, plus the measured one
/// (10.100.0.1 → the backend pod) sorting last, so iptables matches it last.
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
        let name = port_name(format!("svc-{i:06}"));
        ports.insert(name.clone(), service_port(name, vip, eps));
    }
    let real = port_name("zz-measured".into());
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

/// p50 of the exchanges.
fn p50(client: &str, addr: SocketAddr, n: usize) -> Result<Duration> {
    let mut s = exchanges(client, addr, n)?;
    s.sort_unstable();
    Ok(percentile(&s, 0.5))
}

/// Requests (one connection each) per second.
fn rps(client: &str, addr: SocketAddr, n: usize) -> Result<f64> {
    let start = Instant::now();
    exchanges(client, addr, n)?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// What one data plane measured.
#[derive(Default)]
struct Figures {
    one_p50: Duration,
    rps_vip: f64,
    rps_direct: f64,
    /// count → (full sync, one-change p50, latency p50 with `count` services)
    sizes: BTreeMap<usize, (Duration, Duration, Duration)>,
}

fn measure(
    lab: &Lab,
    args: &Args,
    mut fresh: impl FnMut() -> Result<Box<dyn Dataplane>>,
    max: usize,
) -> Result<Figures> {
    let vip: SocketAddr = "10.100.0.1:80".parse()?;
    let direct: SocketAddr = "10.244.1.2:8080".parse()?;
    let mut f = Figures::default();
    let mut dp = fresh()?;
    let one = service_map(0, args.endpoints);
    dp.sync(&one, &Changes::full(&one))?;
    f.one_p50 = p50(lab.client(), vip, args.connections)?;
    // Warm up both paths, then interleave rounds so both see the same
    // machine load (the host is shared); keep each path's best round.
    exchanges(lab.client(), direct, 200)?;
    exchanges(lab.client(), vip, 200)?;
    let round = (args.requests / 5).max(1);
    for _ in 0..5 {
        f.rps_direct = f.rps_direct.max(rps(lab.client(), direct, round)?);
        f.rps_vip = f.rps_vip.max(rps(lab.client(), vip, round)?);
    }
    dp.cleanup()?;
    drop(dp);
    for &count in args.services.iter().filter(|c| **c <= max) {
        let mut dp = fresh()?;
        let mut map = service_map(count, args.endpoints);
        let started = Instant::now();
        dp.sync(&map, &Changes::full(&map))?;
        let full = started.elapsed();
        let mut partial = Vec::new();
        for round in 0..args.changes {
            let name = port_name(format!("svc-{:06}", round % count.max(1)));
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
        let lat = p50(lab.client(), vip, args.connections)?;
        f.sizes
            .insert(count, (full, percentile(&partial, 0.5), lat));
        dp.cleanup()?;
    }
    Ok(f)
}

fn report(name: &str, f: &Figures, args: &Args) {
    println!(
        "{name:>8}: ClusterIP with 1 service p50 {} ms; requests/s ClusterIP {:.0} vs pod IP {:.0} (ratio {:.3})",
        ms(f.one_p50),
        f.rps_vip,
        f.rps_direct,
        f.rps_vip / f.rps_direct
    );
    for (count, (full, change, lat)) in &f.sizes {
        println!(
            "{name:>8}: {count} services x {}: full sync {} ms, one endpoint change p50 {} ms, ClusterIP p50 {} ms (x{:.2} of 1 service)",
            args.endpoints,
            ms(*full),
            ms(*change),
            ms(*lat),
            ratio(*lat, f.one_p50)
        );
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let prefix = format!("skeb{}", std::process::id() % 100_000);
    let lab = Lab::new(&prefix)?;
    if args.parts.iter().any(|p| p == "clusterip") {
        cluster_ip(&lab, &args)?;
    }
    if args.parts.iter().any(|p| p == "nodeport") {
        nodeport::measure(
            &prefix,
            &lab.bpffs.path().join("nodeport"),
            &lab.cgroup,
            args.nodeport_requests,
            args.nodeport_rounds,
        )?;
    }
    Ok(())
}

/// ClusterIP latency, requests/s and sync time, both data planes.
fn cluster_ip(lab: &Lab, args: &Args) -> Result<()> {
    let _backend = Backend::start(&lab.namespaces[1], 8080)?;
    println!(
        "proxy-ebpf-bench: {} endpoints per service, {} connections per latency, {} requests per rate",
        args.endpoints, args.connections, args.requests
    );
    lab.enter_cgroup(true)?;
    let ebpf = measure(lab, args, || Ok(Box::new(lab.ebpf()?)), usize::MAX);
    lab.enter_cgroup(false)?;
    let ebpf = ebpf?;
    report("ebpf", &ebpf, args);
    let ipt = measure(lab, args, || lab.iptables(), args.iptables_max)?;
    report("iptables", &ipt, args);
    for (count, (efull, echange, elat)) in &ebpf.sizes {
        if let Some((ifull, ichange, ilat)) = ipt.sizes.get(count) {
            println!(
                "ebpf/iptables at {count} services: full sync x{:.3}, one change x{:.3}, ClusterIP latency x{:.3}",
                ratio(*efull, *ifull),
                ratio(*echange, *ichange),
                ratio(*elat, *ilat)
            );
        }
    }
    Ok(())
}
