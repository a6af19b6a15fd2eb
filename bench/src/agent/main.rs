//! `agent-bench`: the node agent under a full node. It starts `skiff server`
//! on loopback and one `skiff agent` for a node network namespace it creates
//! (the lab of DESIGN §6), imports the project's busybox image so no pull is
//! timed, and then:
//!
//! 1. creates `--pods` pods (default 100) at `--rate` pods/s and times each
//!    from *bound* (the pod watch first shows `spec.nodeName`) to *Running*
//!    (the watch first shows `status.phase: Running`): p50 / p99 / max;
//! 2. fills the node to `--full` pods (default 110, the agent's max-pods)
//!    and reads the agent's memory (VmRSS, VmHWM) and, separately, the
//!    per-container shims' RSS and PSS (shared binary pages counted once);
//! 3. deletes every pod and times the drain.
//!
//! Figures are printed next to issue 5's goals (p99 ≤ 1 s, agent RSS < 60 MB),
//! upstream's pod startup SLO (p99 ≤ 5 s) and k3s' reported agent RSS
//! (275 MB), both printed references that are not run here, and the machine's
//! load average before and after; nothing is asserted (DESIGN §8). Only
//! 127.0.0.1 and the benchmark's own namespace are used; every child is killed
//! by its PID; every wait is bounded; the namespace, runc state, mounts and
//! cgroups are removed on exit, also after an error.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use skiff_bench::https::ApiClient;
use skiff_bench::process::{free_port, memory, ChildGuard};
use skiff_bench::stats::{ms, Summary};
use tokio::sync::mpsc;

mod lab;
use lab::Lab;

/// The image every pod runs, imported before the agent starts.
const IMAGE: &str = "skiff.test/busybox:1.0";
/// Issue 5's startup goal (p99).
const GOAL_P99: Duration = Duration::from_secs(1);
/// Upstream's pod startup SLO (p99, image present), a printed reference.
const UPSTREAM_SLO_P99: Duration = Duration::from_secs(5);
/// Issue 5's agent memory goal, MB.
const GOAL_RSS_MB: f64 = 60.0;
/// k3s' agent RSS as reported, MB, a printed reference (not run here).
const K3S_AGENT_MB: f64 = 275.0;
const MB: f64 = 1_000_000.0;

#[derive(Parser)]
#[command(
    name = "agent-bench",
    about = "Benchmark skiff's node agent: pod startup latency (bound → Running) and agent/shim memory on a full node",
    long_about = "Benchmark skiff's node agent: pod startup latency (bound → Running) and agent/shim memory on a full node.\n\n\
        Starts `skiff server` and one `skiff agent` in a node network namespace (run as root), creates --pods pods at \
        --rate pods/s, fills the node to --full pods, reads the agent's and the shims' memory, then deletes every pod. \
        Prints the figures with issue 5's goals and upstream's references; never asserts. Build the skiff binary first \
        with `cargo build --release`."
)]
struct Args {
    /// The skiff binary [default: `skiff` next to this executable]
    #[arg(long, value_name = "PATH")]
    skiff: Option<PathBuf>,
    /// Pods whose startup is timed
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Pods on the node when memory is read (the agent's max-pods is 110)
    #[arg(long, default_value_t = 110)]
    full: usize,
    /// Pods created per second; 0 creates them all at once
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Seconds to wait for pods to be Running (and for the drain)
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    timeout: u64,
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Waits for the server's credentials and `/readyz`.
async fn connect(server: &mut ChildGuard, addr: SocketAddr, dir: &Path) -> Result<ApiClient> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        server.check_running()?;
        let attempt = async {
            let ca = std::fs::read(dir.join("ca.crt")).context("reading ca.crt")?;
            let token =
                std::fs::read_to_string(dir.join("admin.token")).context("reading admin.token")?;
            let api = ApiClient::new(addr, &ca, &token, false)?;
            api.expect(StatusCode::OK, Method::GET, "/readyz", None, Bytes::new())
                .await?;
            Ok::<_, anyhow::Error>(api)
        };
        match attempt.await {
            Ok(api) => return Ok(api),
            Err(e) if Instant::now() >= deadline => {
                bail!("skiff server not ready: {e:#}\n{}", server.log_tail(40))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until the node is Ready with a podCIDR.
async fn wait_node(api: &ApiClient, agent: &mut ChildGuard, node: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        agent.check_running()?;
        let reply = api
            .send(
                Method::GET,
                &format!("/api/v1/nodes/{node}"),
                None,
                Bytes::new(),
            )
            .await?;
        if reply.status == StatusCode::OK {
            let n: Value = serde_json::from_slice(&reply.body)?;
            let ready = n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            if ready && n["spec"]["podCIDR"].is_string() {
                return Ok(());
            }
        }
        ensure!(
            Instant::now() < deadline,
            "node {node} not Ready after 90 s:\n{}",
            agent.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the pod watch saw of one pod, as local instants.
#[derive(Default, Clone, Copy)]
struct Seen {
    bound: Option<Instant>,
    running: Option<Instant>,
}

/// One observation from the pod watch.
enum Sight {
    Bound(String, Instant),
    Running(String, Instant),
}

/// Starts a task reading the pod watch from now on.
async fn watch_pods(api: &ApiClient) -> Result<mpsc::UnboundedReceiver<Sight>> {
    let path = "/api/v1/namespaces/default/pods";
    let list: Value = serde_json::from_slice(
        &api.expect(StatusCode::OK, Method::GET, path, None, Bytes::new())
            .await?,
    )?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let resp = api
        .open(
            Method::GET,
            &format!("{path}?watch=1&resourceVersion={rv}"),
            None,
            Bytes::new(),
        )
        .await?;
    ensure!(
        resp.status() == StatusCode::OK,
        "pod watch answered {}",
        resp.status()
    );
    let mut body = resp.into_body();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let now = Instant::now();
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let pod = &event["object"];
                let Some(name) = pod["metadata"]["name"].as_str() else {
                    continue;
                };
                if pod["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty())
                {
                    let _ = tx.send(Sight::Bound(name.to_string(), now));
                }
                if pod["status"]["phase"] == "Running" {
                    let _ = tx.send(Sight::Running(name.to_string(), now));
                }
            }
        }
    });
    Ok(rx)
}

fn pod_body(name: &str) -> Bytes {
    Bytes::from(
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                                "command": ["sleep", "3600"]}]
            }
        })
        .to_string(),
    )
}

/// Creates `names` at `rate` pods/s (0: all at once).
async fn create(api: &ApiClient, names: &[String], rate: f64) -> Result<()> {
    let path = "/api/v1/namespaces/default/pods";
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, name) in names.iter().enumerate() {
        if rate > 0.0 {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(at.into()).await;
        }
        let (api, body) = (api.clone(), pod_body(name));
        set.spawn(async move {
            api.expect(
                StatusCode::CREATED,
                Method::POST,
                path,
                Some("application/json"),
                body,
            )
            .await
            .map(drop)
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("create task")??;
    }
    Ok(())
}

/// Folds sightings into `seen` until every name in `names` is Running.
async fn wait_running(
    rx: &mut mpsc::UnboundedReceiver<Sight>,
    seen: &mut HashMap<String, Seen>,
    names: &[String],
    timeout: Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let missing = |seen: &HashMap<String, Seen>| {
        names
            .iter()
            .filter(|n| seen.get(*n).and_then(|s| s.running).is_none())
            .count()
    };
    while missing(seen) > 0 {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => bail!(
                "{} of {} pods not Running after {timeout:?}",
                missing(seen),
                names.len()
            ),
            Ok(None) => bail!("the pod watch ended"),
            Ok(Some(Sight::Bound(n, t))) => {
                seen.entry(n).or_default().bound.get_or_insert(t);
            }
            Ok(Some(Sight::Running(n, t))) => {
                let s = seen.entry(n).or_default();
                s.bound.get_or_insert(t);
                s.running.get_or_insert(t);
            }
        }
    }
    Ok(())
}

/// RSS and PSS (bytes) of every shim of the agent whose data dir is `dir`.
fn shims(dir: &Path) -> (usize, u64, u64) {
    let needle = dir.display().to_string();
    let (mut n, mut rss, mut pss) = (0, 0, 0);
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains("--shim-exit") || !cmdline.contains(&needle) {
            continue;
        }
        let Ok(m) = memory(pid) else { continue };
        n += 1;
        rss += m.rss;
        pss += skiff_bench::process::pss(pid).unwrap_or(0);
    }
    (n, rss, pss)
}

async fn bench(args: &Args, skiff: &Path) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("skiff-agent-bench-")
        .tempdir()?;
    let (server_dir, agent_dir) = (dir.path().join("server"), dir.path().join("agent"));
    let node = format!("agentbench-{}", std::process::id() % 100_000);
    let lab = Lab::new(&node, &agent_dir)?;
    let load_before = loadavg();

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let mut cmd = Command::new(skiff);
    cmd.arg("server")
        .arg("--data-dir")
        .arg(&server_dir)
        .args(["--listen", &addr.to_string()]);
    cmd.env("SKIFF_LOG", "warn");
    let mut server = ChildGuard::spawn("skiff server", cmd, &dir.path().join("server.log"))?;
    let api = connect(&mut server, addr, &server_dir).await?;

    let archive = dir.path().join("busybox.tar");
    run(Command::new(skiff)
        .args(["image", "build-busybox", "--output"])
        .arg(&archive)
        .args(["--name", IMAGE]))?;
    run(Command::new(skiff)
        .args(["image", "import"])
        .arg(&archive)
        .arg("--data-dir")
        .arg(&agent_dir))?;

    let mut cmd = Command::new(skiff);
    cmd.arg("agent")
        .arg("--kubeconfig")
        .arg(server_dir.join("admin.kubeconfig"))
        .args(["--node-name", &node])
        .arg("--netns")
        .arg(lab.netns_path())
        .arg("--data-dir")
        .arg(&agent_dir)
        .args(["--listen", "127.0.0.1:0"])
        .env("SKIFF_LOG", "warn");
    let mut agent = ChildGuard::spawn("skiff agent", cmd, &dir.path().join("agent.log"))?;
    wait_node(&api, &mut agent, &node).await?;
    let idle = memory(agent.pid())?;

    let timeout = Duration::from_secs(args.timeout);
    let mut rx = watch_pods(&api).await?;
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let timed: Vec<String> = (0..args.pods).map(|i| format!("bench-{i:03}")).collect();
    println!(
        "creating {} pods at {} ...",
        timed.len(),
        rate_text(args.rate)
    );
    let t0 = Instant::now();
    create(&api, &timed, args.rate).await?;
    wait_running(&mut rx, &mut seen, &timed, timeout).await?;
    let wall = t0.elapsed();
    let latencies: Vec<Duration> = timed
        .iter()
        .filter_map(|n| seen.get(n))
        .filter_map(|s| Some(s.running?.saturating_duration_since(s.bound?)))
        .collect();
    let startup = Summary::new(latencies, wall);

    let extra: Vec<String> = (args.pods..args.full.max(args.pods))
        .map(|i| format!("bench-{i:03}"))
        .collect();
    create(&api, &extra, args.rate).await?;
    wait_running(&mut rx, &mut seen, &extra, timeout).await?;
    // Let the status writes and probes of the last pods settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    agent.check_running()?;
    let full = memory(agent.pid())?;
    let (shim_count, shim_rss, shim_pss) = shims(&agent_dir);
    let on_node = timed.len() + extra.len();

    let t1 = Instant::now();
    api.expect(
        StatusCode::OK,
        Method::DELETE,
        "/api/v1/namespaces/default/pods",
        None,
        Bytes::new(),
    )
    .await?;
    let drain_deadline = Instant::now() + timeout;
    loop {
        let list: Value = serde_json::from_slice(
            &api.expect(
                StatusCode::OK,
                Method::GET,
                "/api/v1/namespaces/default/pods",
                None,
                Bytes::new(),
            )
            .await?,
        )?;
        if list["items"].as_array().is_none_or(|a| a.is_empty()) {
            break;
        }
        ensure!(
            Instant::now() < drain_deadline,
            "pods not gone after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drain = t1.elapsed();
    let load_after = loadavg();

    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "\nskiff agent-bench ({} CPUs, load average before {load_before}, after {load_after})",
        cpus()
    );
    println!(
        "\npod startup, bound → Running, image present, {} pods created at {}:",
        startup.count,
        rate_text(args.rate)
    );
    println!(
        "  p50 {:.0} ms   p99 {:.0} ms   max {:.0} ms   (all Running {:.1} s after the first create)",
        ms(startup.p50),
        ms(startup.p99),
        ms(startup.max),
        wall.as_secs_f64()
    );
    println!(
        "  goal p99 ≤ {:.0} ms: {} (p99 = {:.2}× the goal)",
        ms(GOAL_P99),
        met(startup.p99 <= GOAL_P99),
        startup.p99.as_secs_f64() / GOAL_P99.as_secs_f64()
    );
    println!(
        "  upstream SLO p99 ≤ {:.0} s (printed reference): {} (p99 = {:.2}× the SLO)",
        UPSTREAM_SLO_P99.as_secs_f64(),
        met(startup.p99 <= UPSTREAM_SLO_P99),
        startup.p99.as_secs_f64() / UPSTREAM_SLO_P99.as_secs_f64()
    );
    let rss_mb = full.rss as f64 / MB;
    println!("\nmemory with {on_node} pods Running on the node:");
    println!(
        "  agent RSS {rss_mb:.1} MB (peak {:.1} MB; {:.1} MB idle before any pod)",
        full.peak as f64 / MB,
        idle.rss as f64 / MB
    );
    println!(
        "  goal < {GOAL_RSS_MB:.0} MB: {}; {:.2}× k3s' reported agent {K3S_AGENT_MB:.0} MB (printed reference, not run here)",
        met(rss_mb < GOAL_RSS_MB),
        rss_mb / K3S_AGENT_MB
    );
    println!(
        "  shims: {shim_count} processes, RSS {:.1} MB total ({:.2} MB each), PSS {:.1} MB total (shared pages counted once)",
        shim_rss as f64 / MB,
        shim_rss as f64 / MB / shim_count.max(1) as f64,
        shim_pss as f64 / MB
    );
    println!(
        "\nteardown: {on_node} pods deleted and gone from the API in {:.1} s",
        drain.as_secs_f64()
    );
    drop(agent);
    drop(server);
    drop(lab);
    Ok(())
}

fn rate_text(rate: f64) -> String {
    if rate > 0.0 {
        format!("{rate} pods/s")
    } else {
        "once (all at the same time)".into()
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.pods > 0, "--pods must be at least 1");
    ensure!(args.rate >= 0.0, "--rate must not be negative");
    let skiff = match &args.skiff {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this executable has no directory")?
            .join("skiff"),
    };
    ensure!(
        skiff.exists(),
        "{} not found: run `cargo build --release` first",
        skiff.display()
    );
    bench(&args, &skiff).await
}
