//! `dns-bench`: skiff dns against dnsmasq and unbound (Debian), same run,
//! same names, same load generator (dnsperf).
//!
//! A `skiff server` gets N selector-less ClusterIP Services; `skiff dns`
//! serves them from its watch-fed index, dnsmasq from a hosts file
//! (`--addn-hosts`) and unbound from `local-data`, all with the same answers.
//! Each server is pinned to one CPU (`taskset`) and dnsperf to another, so
//! the figures are per core. A second case asks external names that each
//! server forwards to the same origin (a dnsmasq with `--address`) and has
//! cached after a warm-up pass. Printed: qps, p99 latency (from dnsperf -v),
//! skiff/peer ratios, and skiff dns RSS with N Services. Nothing is asserted
//! (DESIGN §8); every process is killed by its PID on exit.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use clap::Parser;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use skiff_bench::https::ApiClient;
use skiff_bench::process::{free_port, memory, ChildGuard};
use tokio::task::JoinSet;

mod dns_update;

/// CoreDNS's published figure: ≈ 33.7k qps on 2 vCPUs.
const COREDNS_QPS_PER_CORE: f64 = 17_000.0;
/// Issue 8's goals.
const QPS_GOAL: f64 = 5.0 * COREDNS_QPS_PER_CORE;
const RSS_GOAL_MB: f64 = 30.0;

#[derive(Parser)]
#[command(
    about = "skiff dns vs dnsmasq and unbound: qps per core, p99, RSS (needs dnsperf, dnsmasq, unbound, dig, taskset)"
)]
struct Args {
    /// Services created and served.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// External names in the cached-forwarding case.
    #[arg(long, default_value_t = 1_000)]
    external: usize,
    /// Seconds of dnsperf load per server and case.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Fixed rate (queries/s) of the latency run that measures p99.
    #[arg(long, default_value_t = 10_000)]
    latency_qps: u32,
    /// dnsperf outstanding queries (-q).
    #[arg(long, default_value_t = 200)]
    outstanding: usize,
    /// The CPU the DNS servers are pinned to.
    #[arg(long, default_value_t = 1)]
    server_cpu: usize,
    /// The CPU dnsperf is pinned to.
    #[arg(long, default_value_t = 0)]
    client_cpu: usize,
    /// Services created one by one (and EndpointSlice changes) whose
    /// API-change→answer latency is measured.
    #[arg(long, default_value_t = 200)]
    update_samples: usize,
    /// The skiff binary [default: `skiff` next to this executable].
    #[arg(long)]
    skiff: Option<PathBuf>,
}

/// One dnsperf run.
struct Load {
    qps: f64,
    p99_ms: f64,
    lost: usize,
    /// Answers whose latency the p99 is taken over.
    completed: usize,
}

fn pinned(cpu: usize, program: &str) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &cpu.to_string(), program]);
    cmd
}

/// Runs dnsperf against 127.0.0.1:`port` with `queries` for the configured
/// time: once flat out for the throughput, once at `--latency-qps` with every
/// answer's latency printed (-v) for the p99. Latency measured at saturation
/// would only measure dnsperf's own queue.
fn dnsperf(args: &Args, port: u16, queries: &Path) -> Result<Load> {
    let throughput = dnsperf_run(args, port, queries, None)?;
    let latency = dnsperf_run(args, port, queries, Some(args.latency_qps))?;
    Ok(Load {
        qps: throughput.qps,
        lost: throughput.lost,
        ..latency
    })
}

fn dnsperf_run(args: &Args, port: u16, queries: &Path, rate: Option<u32>) -> Result<Load> {
    let mut cmd = pinned(args.client_cpu, "dnsperf");
    cmd.args(["-s", "127.0.0.1", "-p", &port.to_string(), "-d"])
        .arg(queries)
        .args([
            "-l",
            &args.duration.to_string(),
            "-q",
            &args.outstanding.to_string(),
            "-c",
            "4",
            "-t",
            "2",
        ]);
    if let Some(rate) = rate {
        cmd.args(["-v", "-Q", &rate.to_string()]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("running dnsperf (apt-get install dnsperf)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "dnsperf failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut latencies: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    latencies.sort_by(f64::total_cmp);
    let field = |name: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.trim_start().starts_with(name))?;
        line.split(':')
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let qps = field("Queries per second").context("dnsperf printed no qps")?;
    let p99 = latencies
        .get((latencies.len() * 99 / 100).min(latencies.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN);
    Ok(Load {
        qps,
        p99_ms: p99 * 1000.0,
        lost: field("Queries lost").unwrap_or(0.0) as usize,
        completed: latencies.len(),
    })
}

/// Polls `dig name @port` until it answers `want` (or fails after `timeout`).
async fn wait_answer(port: u16, name: &str, want: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &port.to_string(),
                "+short",
                "+time=1",
                "+tries=1",
                name,
            ])
            .output()
            .context("running dig (apt-get install dnsutils)")?;
        if String::from_utf8_lossy(&out.stdout).trim() == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{name} on port {port} did not answer {want} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `skiff server` plus an admin client.
async fn start_api(skiff: &Path, dir: &Path) -> Result<(ChildGuard, ApiClient, PathBuf)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let data = dir.join("data");
    let mut cmd = Command::new(skiff);
    cmd.arg("server")
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", &addr.to_string()])
        .env("SKIFF_LOG", "warn");
    let mut child = ChildGuard::spawn("skiff server", cmd, &dir.join("server.log"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        child.check_running()?;
        let attempt = async {
            let ca = std::fs::read(data.join("ca.crt"))?;
            let token = std::fs::read_to_string(data.join("admin.token"))?;
            ensure!(!token.trim().is_empty(), "empty token");
            let api = ApiClient::new(addr, &ca, &token, true)?;
            api.expect(StatusCode::OK, Method::GET, "/readyz", None, Bytes::new())
                .await?;
            Ok(api)
        };
        match attempt.await {
            Ok(api) => return Ok((child, api, data.join("admin.kubeconfig"))),
            Err(e) if Instant::now() >= deadline => return Err(e.context("skiff server not ready")),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Creates `n` ClusterIP Services in namespace `bench`; returns (fqdn, ip).
async fn create_services(api: &ApiClient, n: usize) -> Result<Vec<(String, String)>> {
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}});
    api.expect(
        StatusCode::CREATED,
        Method::POST,
        "/api/v1/namespaces",
        Some("application/json"),
        Bytes::from(ns.to_string()),
    )
    .await?;
    let api = Arc::new(api.clone());
    let mut out = Vec::with_capacity(n);
    let mut tasks = JoinSet::new();
    let mut next = 0;
    while next < n || !tasks.is_empty() {
        while next < n && tasks.len() < 32 {
            let api = api.clone();
            let i = next;
            tasks.spawn(async move {
                let body = json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
                    "spec": {"ports": [{"name": "http", "port": 80}]}});
                let reply = api
                    .expect(
                        StatusCode::CREATED,
                        Method::POST,
                        "/api/v1/namespaces/bench/services",
                        Some("application/json"),
                        Bytes::from(body.to_string()),
                    )
                    .await?;
                let v: Value = serde_json::from_slice(&reply)?;
                let ip = v["spec"]["clusterIP"]
                    .as_str()
                    .context("service without clusterIP")?
                    .to_string();
                anyhow::Ok((format!("svc-{i}.bench.svc.cluster.local"), ip))
            });
            next += 1;
        }
        if let Some(done) = tasks.join_next().await {
            out.push(done??);
        }
    }
    Ok(out)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let skiff = match &args.skiff {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("executable without a directory")?
            .join("skiff"),
    };
    let tmp = tempfile::Builder::new()
        .prefix("skiff-dns-bench-")
        .tempdir()?;
    let dir = tmp.path();
    let report = run(&args, &skiff, dir).await;
    drop(tmp);
    report
}

async fn run(args: &Args, skiff: &Path, dir: &Path) -> Result<()> {
    eprintln!(
        "[dns-bench] starting skiff server and creating {} services",
        args.services
    );
    let (_api_child, api, kubeconfig) = start_api(skiff, dir).await?;
    let t = Instant::now();
    let services = create_services(&api, args.services).await?;
    eprintln!(
        "[dns-bench] created {} services in {:.1?}",
        services.len(),
        t.elapsed()
    );

    // The origin of external names, shared by every forwarder.
    let origin_port = free_port()?;
    let mut origin_cmd = Command::new("dnsmasq");
    origin_cmd
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--pid-file=",
            "--user=root",
            "--local-ttl=300",
            "--address=/ext.test/192.0.2.1",
        ])
        .arg(format!("--port={origin_port}"));
    let _origin = ChildGuard::spawn("origin dnsmasq", origin_cmd, &dir.join("origin.log"))?;

    // skiff dns.
    let skiff_port = free_port()?;
    let mut cmd = pinned(args.server_cpu, &skiff.display().to_string());
    cmd.arg("dns")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--listen", &format!("127.0.0.1:{skiff_port}")])
        .args(["--upstream", &format!("127.0.0.1:{origin_port}")])
        .env("SKIFF_LOG", "warn");
    let skiff_dns = ChildGuard::spawn("skiff dns", cmd, &dir.join("skiff-dns.log"))?;
    let (last_name, last_ip) = services.last().context("no services")?.clone();
    let t = Instant::now();
    wait_answer(skiff_port, &last_name, &last_ip, Duration::from_secs(120)).await?;
    eprintln!(
        "[dns-bench] skiff dns serving all services {:.1?} after start",
        t.elapsed()
    );

    eprintln!(
        "[dns-bench] update latency: {} services and {} endpoint changes",
        args.update_samples, args.update_samples
    );
    let skiff_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, skiff_port));
    let created = dns_update::services(&api, skiff_addr, "bench", args.update_samples).await?;
    let scaled = dns_update::endpoints(&api, skiff_addr, "bench", args.update_samples).await?;

    // dnsmasq with the same names from a hosts file.
    let mut hosts = String::new();
    let mut local_data = String::new();
    let mut queries = String::new();
    for (name, ip) in &services {
        let _ = writeln!(hosts, "{ip} {name}");
        let _ = writeln!(local_data, "  local-data: \"{name}. 5 IN A {ip}\"");
        let _ = writeln!(queries, "{name} A");
    }
    write(&dir.join("hosts"), &hosts)?;
    write(&dir.join("cluster.queries"), &queries)?;
    let mut external = String::new();
    for i in 0..args.external {
        let _ = writeln!(external, "host-{i}.ext.test A");
    }
    write(&dir.join("external.queries"), &external)?;

    let dnsmasq_port = free_port()?;
    let mut cmd = pinned(args.server_cpu, "dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        "--pid-file=",
        "--user=root",
        "--local-ttl=5",
        "--cache-size=10000",
    ])
    .arg(format!("--addn-hosts={}", dir.join("hosts").display()))
    .arg(format!("--port={dnsmasq_port}"))
    .arg(format!("--server=/ext.test/127.0.0.1#{origin_port}"));
    let _dnsmasq = ChildGuard::spawn("dnsmasq", cmd, &dir.join("dnsmasq.log"))?;

    let unbound_port = free_port()?;
    let conf = format!(
        "server:\n  interface: 127.0.0.1@{unbound_port}\n  port: {unbound_port}\n  do-daemonize: no\n  chroot: \"\"\n  username: \"\"\n  pidfile: \"{}\"\n  num-threads: 1\n  use-syslog: no\n  verbosity: 0\n  do-not-query-localhost: no\n  local-zone: \"cluster.local.\" static\n{local_data}  domain-insecure: \"ext.test.\"\n  module-config: \"iterator\"\nforward-zone:\n  name: \"ext.test.\"\n  forward-addr: 127.0.0.1@{origin_port}\n",
        dir.join("unbound.pid").display()
    );
    write(&dir.join("unbound.conf"), &conf)?;
    let mut cmd = pinned(args.server_cpu, "unbound");
    cmd.arg("-d").arg("-c").arg(dir.join("unbound.conf"));
    let _unbound = ChildGuard::spawn("unbound", cmd, &dir.join("unbound.log"))?;

    for (what, port) in [("dnsmasq", dnsmasq_port), ("unbound", unbound_port)] {
        wait_answer(port, &last_name, &last_ip, Duration::from_secs(30))
            .await
            .with_context(|| format!("{what} not serving"))?;
    }
    let rss_idle = memory(skiff_dns.pid())?;

    let servers = [
        ("skiff dns", skiff_port),
        ("dnsmasq", dnsmasq_port),
        ("unbound", unbound_port),
    ];
    let mut results = Vec::new();
    for (case, file) in [
        ("cluster names", "cluster.queries"),
        ("cached external names", "external.queries"),
    ] {
        for (server, port) in servers {
            if case.starts_with("cached") {
                // Warm-up pass so the timed run measures the cache.
                let _ = warm(port, &dir.join(file));
            }
            eprintln!("[dns-bench] {case}: {server}");
            let load = dnsperf(args, port, &dir.join(file))?;
            results.push((case, server, load));
        }
    }
    let rss_after = memory(skiff_dns.pid())?;
    let (anon, file) = rss_split(skiff_dns.pid())?;

    println!(
        "skiff dns benchmark: {} services, {} external names, {} s per run, servers on CPU {}, dnsperf on CPU {}",
        args.services, args.external, args.duration, args.server_cpu, args.client_cpu
    );
    for case in ["cluster names", "cached external names"] {
        println!("\n  {case}:");
        println!(
            "    {:<10} {:>12} {:>10} {:>10} {:>14}",
            "server", "qps/core", "p99 ms", "lost", "skiff/peer"
        );
        let skiff_qps = results
            .iter()
            .find(|(c, s, _)| *c == case && *s == "skiff dns")
            .map_or(f64::NAN, |(_, _, l)| l.qps);
        for (c, server, load) in &results {
            if *c != case {
                continue;
            }
            let ratio = if *server == "skiff dns" {
                String::from("-")
            } else {
                format!("{:.2}x", skiff_qps / load.qps)
            };
            println!(
                "    {:<10} {:>12.0} {:>10.3} {:>10} {:>14}   (p99 over {} answers at a fixed rate)",
                server, load.qps, load.p99_ms, load.lost, ratio, load.completed
            );
        }
    }
    println!(
        "\n  update latency (API change → skiff dns answers it; polled over UDP every 0.5 ms; goal ≤ 100 ms):"
    );
    for (what, l) in [
        ("service created", &created),
        ("headless endpoints changed", &scaled),
    ] {
        let p99 = dns_update::quantile_ms(&l.from_request, 0.99);
        println!(
            "    {what:<27} from request: p50 {:.1} ms p99 {p99:.1} ms max {:.1} ms; from API reply: p50 {:.1} ms p99 {:.1} ms  ({} samples; goal: {})",
            dns_update::quantile_ms(&l.from_request, 0.5),
            dns_update::quantile_ms(&l.from_request, 1.0),
            dns_update::quantile_ms(&l.from_reply, 0.5),
            dns_update::quantile_ms(&l.from_reply, 0.99),
            l.from_request.len(),
            if p99 <= 100.0 { "met" } else { "NOT met" }
        );
    }
    let cluster_qps = results
        .iter()
        .find(|(c, s, _)| *c == "cluster names" && *s == "skiff dns")
        .map_or(f64::NAN, |(_, _, l)| l.qps);
    println!(
        "\n  skiff dns vs CoreDNS (≈{COREDNS_QPS_PER_CORE:.0} qps per vCPU, published): {:.2}x  (goal ≥ 5x: {})",
        cluster_qps / COREDNS_QPS_PER_CORE,
        if cluster_qps >= QPS_GOAL { "met" } else { "NOT met" }
    );
    println!(
        "  skiff dns RSS with {} services: {:.1} MB after sync, {:.1} MB after load, peak {:.1} MB  (goal < {RSS_GOAL_MB} MB: {})",
        args.services,
        mb(rss_idle.rss),
        mb(rss_after.rss),
        mb(rss_after.peak),
        if mb(rss_after.peak) < RSS_GOAL_MB { "met" } else { "NOT met" }
    );
    println!(
        "    after load: {:.1} MB anonymous (heap, stacks), {:.1} MB mapped from the skiff binary and libraries",
        mb(anon),
        mb(file)
    );
    Ok(())
}

/// `RssAnon` and `RssFile` of `pid` in bytes: what the process allocated
/// versus the pages of its executable (shared with other skiff processes).
fn rss_split(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(kib * 1024)
    };
    Ok((field("RssAnon:")?, field("RssFile:")?))
}

/// Sends every query of `file` once (dnsperf -n 1) so forwarders cache them.
fn warm(port: u16, file: &Path) -> Result<()> {
    Command::new("dnsperf")
        .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-d"])
        .arg(file)
        .args(["-n", "1", "-q", "50"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("dnsperf warm-up")?;
    Ok(())
}
