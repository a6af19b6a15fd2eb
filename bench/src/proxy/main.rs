//! `proxy-bench`: what the service proxy's data plane costs, measured inside
//! lab namespaces this benchmark creates (and deletes on exit):
//!
//! - sync time for N services × E endpoints (default 1k and 10k × 10): a full
//!   sync into an empty namespace, then partial syncs after one endpoint of
//!   one service changes, with the rules installed and the restore input sent;
//! - connection setup latency (TCP connect + one reply) from a pod through a
//!   ClusterIP with 1 service installed vs with N, next to the direct pod-IP
//!   connection as the peer. With iptables the service being used is matched
//!   last in KUBE-SERVICES, so this is the O(n) first-packet cost the eBPF
//!   data plane removes.
//!
//! `--mode iptables` runs every `--backends` implementation (legacy and nft
//! by default) one after the other in the same lab and prints legacy's figures
//! as ratios of nft's: nft is the peer (kube-proxy's default on Debian, and
//! what skiff used before `--iptables-backend`; its full restore of 10k
//! services x 10 then did not finish in 25 min, one transaction being
//! quadratic, and is now sent in chunks). Only IPv4 rules are written.
//! `--mode ebpf` measures the eBPF data plane through
//! `skiff_proxy::runner::dataplane_for`. Nothing is asserted (DESIGN §8).

mod lab;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use skiff_bench::stats::{ms, percentile};
use skiff_cni::Netns;
use skiff_proxy::iptables::{render_port, Backend, Family, Iptables, RuleOptions, Transaction};
use skiff_proxy::model::{
    self, Changes, Endpoint, IpNetwork, NodeInfo, Protocol, ServiceMap, ServicePort,
    ServicePortName,
};
use skiff_proxy::{Config, Dataplane, Mode};

use lab::{build_lab, latency, netns_path, Namespaces};

#[derive(Parser)]
#[command(
    about = "service proxy: sync time and ClusterIP connection latency vs service count (run as root)"
)]
struct Args {
    /// Data plane: iptables or ebpf.
    #[arg(long, default_value = "iptables")]
    mode: Mode,
    /// iptables implementations to measure, comma-separated (legacy, nft).
    #[arg(long, value_delimiter = ',', default_value = "legacy,nft")]
    backends: Vec<String>,
    /// Service counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    services: Vec<usize>,
    /// Largest service count measured with nft (to bound a run: its full
    /// sync time grows faster than linearly with the rule count).
    #[arg(long, default_value_t = 10000)]
    nft_max_services: usize,
    /// Endpoints per service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Connections per latency measurement.
    #[arg(long, default_value_t = 500)]
    connections: usize,
    /// Partial syncs measured per size (one endpoint change each).
    #[arg(long, default_value_t = 5)]
    changes: usize,
    /// Write each size's full restore input to `<DIR>/restore-<count>.txt`
    /// (to replay it with iptables-restore by hand).
    #[arg(long)]
    dump_dir: Option<std::path::PathBuf>,
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

/// The data plane under test: an iptables implementation (whose restore
/// input size is known) or the eBPF one.
enum Subject {
    Iptables(Iptables),
    Other(Box<dyn Dataplane>),
}

impl Subject {
    fn new(mode: Mode, backend: Option<Backend>, node: &str) -> Result<Subject> {
        let cidrs = vec!["10.244.0.0/16".parse()?];
        if let (Mode::Iptables, Some(backend)) = (mode, backend) {
            let options = RuleOptions {
                cluster_cidrs: cidrs,
                masquerade_all: false,
            };
            let netns = Netns::open(netns_path(node))?;
            return Ok(Subject::Iptables(Iptables::new(
                netns,
                options,
                vec![Family::V4],
                backend,
            )));
        }
        let mut config = Config::new("bench", mode);
        config.netns = Some(netns_path(node).into());
        config.cluster_cidrs = cidrs;
        Ok(Subject::Other(skiff_proxy::runner::dataplane_for(&config)?))
    }

    fn dp(&mut self) -> &mut dyn Dataplane {
        match self {
            Subject::Iptables(i) => i,
            Subject::Other(d) => d.as_mut(),
        }
    }

    /// Bytes of restore input the last sync sent (iptables only).
    fn input_bytes(&self) -> Option<u64> {
        match self {
            Subject::Iptables(i) => Some(i.last_input_bytes()),
            Subject::Other(_) => None,
        }
    }
}

fn size(bytes: Option<u64>) -> String {
    match bytes {
        Some(b) if b >= 1 << 20 => format!(", {:.1} MiB input", b as f64 / f64::from(1 << 20)),
        Some(b) => format!(", {b} B input"),
        None => String::new(),
    }
}

/// How long turning `map` into the full restore input takes (the part of a
/// full sync spent in skiff rather than in iptables-restore).
fn render_time(map: &ServiceMap) -> (Duration, String) {
    let started = Instant::now();
    let options = RuleOptions {
        cluster_cidrs: vec![IpNetwork::V4(
            "10.244.0.0/16".parse().expect("constant CIDR"),
        )],
        masquerade_all: false,
    };
    let mut tx = Transaction::with_base_chains();
    for p in map.ports.values() {
        let r = render_port(p, Family::V4, &options);
        tx.write_port(&r);
        tx.append_entries(&r.entries);
    }
    tx.finish_base();
    let text = tx.text();
    (started.elapsed(), text)
}

/// What one size measured.
#[derive(Clone, Copy)]
struct Figures {
    full: Duration,
    change_p50: Duration,
    conn_p50: Duration,
}

/// Measures one data plane at one service count.
fn measure(
    args: &Args,
    label: &str,
    subject: &mut Subject,
    count: usize,
    client: &str,
    one_p50: Duration,
    direct_p50: Duration,
) -> Result<Figures> {
    let vip: SocketAddr = "10.100.0.1:80".parse()?;
    let mut map = service_map(count, args.endpoints);
    let started = Instant::now();
    let stats = subject.dp().sync(&map, &Changes::full(&map))?;
    let full = started.elapsed();
    let full_bytes = subject.input_bytes();
    let (render, text) = render_time(&map);
    if let Some(dir) = &args.dump_dir {
        std::fs::write(dir.join(format!("restore-{count}.txt")), text)?;
    }
    let mut partial = Vec::new();
    let mut change_written = 0;
    let mut change_bytes = None;
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
        change_written = subject.dp().sync(&next, &changes)?.written;
        partial.push(started.elapsed());
        change_bytes = subject.input_bytes();
        map = next;
    }
    partial.sort_unstable();
    let (p50, p99) = latency(client, vip, args.connections)?;
    let change_p50 = percentile(&partial, 0.5);
    println!(
        "{label} {count} services x {}: full sync {} ms (rendering {} ms; {} rules{}), one endpoint change p50 {} ms ({} rules{})",
        args.endpoints,
        ms(full),
        ms(render),
        stats.rules,
        size(full_bytes),
        ms(change_p50),
        change_written,
        size(change_bytes),
    );
    println!(
        "{label} connection setup, ClusterIP with {count} services: p50 {} ms p99 {} ms (x{:.2} of 1 service, x{:.2} of direct)",
        ms(p50),
        ms(p99),
        p50.as_secs_f64() / one_p50.as_secs_f64(),
        p50.as_secs_f64() / direct_p50.as_secs_f64()
    );
    subject.dp().cleanup()?;
    Ok(Figures {
        full,
        change_p50,
        conn_p50: p50,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let prefix = format!("skpb{}", std::process::id() % 100_000);
    let mut namespaces = Namespaces(Vec::new());
    let (node, backend_pod, client) = build_lab(&mut namespaces, &prefix)?;
    let _backend = skiff_bench::netlab::Backend::start(&backend_pod, 8080)?;
    let vip: SocketAddr = "10.100.0.1:80".parse()?;
    let direct: SocketAddr = "10.244.1.2:8080".parse()?;
    let subjects: Vec<(String, Option<Backend>)> = match args.mode {
        Mode::Iptables => args
            .backends
            .iter()
            .map(|b| match b.as_str() {
                "legacy" => Ok((b.clone(), Some(Backend::Legacy))),
                "nft" => Ok((b.clone(), Some(Backend::Nft))),
                other => Err(anyhow::anyhow!("unknown backend {other}: legacy or nft")),
            })
            .collect::<Result<_>>()?,
        Mode::Ebpf => vec![("ebpf".to_string(), None)],
    };
    println!(
        "proxy-bench: mode {:?}, {} endpoints per service, {} connections per latency figure",
        args.mode, args.endpoints, args.connections
    );
    let (direct_p50, direct_p99) = latency(&client, direct, args.connections)?;
    println!(
        "connection setup, direct pod IP (peer): p50 {} ms p99 {} ms",
        ms(direct_p50),
        ms(direct_p99)
    );

    let mut results: BTreeMap<(usize, String), Figures> = BTreeMap::new();
    for (label, backend) in &subjects {
        let mut subject = Subject::new(args.mode, *backend, &node)?;
        let one = service_map(0, args.endpoints);
        subject.dp().sync(&one, &Changes::full(&one))?;
        let (one_p50, one_p99) = latency(&client, vip, args.connections)?;
        println!(
            "{label} connection setup, ClusterIP with 1 service: p50 {} ms p99 {} ms (x{:.2} of direct p50)",
            ms(one_p50),
            ms(one_p99),
            one_p50.as_secs_f64() / direct_p50.as_secs_f64()
        );
        subject.dp().cleanup()?;
        for &count in &args.services {
            if *backend == Some(Backend::Nft) && count > args.nft_max_services {
                println!(
                    "{label} {count} services: skipped (over --nft-max-services {})",
                    args.nft_max_services
                );
                continue;
            }
            let mut subject = Subject::new(args.mode, *backend, &node)?;
            let f = measure(
                &args,
                label,
                &mut subject,
                count,
                &client,
                one_p50,
                direct_p50,
            )?;
            results.insert((count, label.clone()), f);
        }
    }
    for &count in &args.services {
        let (Some(l), Some(n)) = (
            results.get(&(count, "legacy".to_string())),
            results.get(&(count, "nft".to_string())),
        ) else {
            if results.contains_key(&(count, "legacy".to_string()))
                && args.backends.iter().any(|b| b == "nft")
            {
                println!(
                    "{count} services, legacy vs nft (peer): nft not measured (over --nft-max-services)"
                );
            }
            continue;
        };
        println!(
            "{count} services, legacy vs nft (peer): full sync x{:.2}, one endpoint change x{:.2}, connection setup x{:.2} (below 1: legacy faster)",
            l.full.as_secs_f64() / n.full.as_secs_f64(),
            l.change_p50.as_secs_f64() / n.change_p50.as_secs_f64(),
            l.conn_p50.as_secs_f64() / n.conn_p50.as_secs_f64(),
        );
    }
    Ok(())
}
