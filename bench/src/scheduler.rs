//! `scheduler-bench`: skiff's scheduler on fake nodes. It writes `--nodes`
//! Node objects (Ready, 4 cpu, 32 GiB, 110 pods, as upstream's
//! scheduler_perf `node-default.yaml`) and `--pods` pods owned by one
//! ReplicaSet (100m cpu, 500 MiB each, as `pod-default.yaml`), and measures
//! two ways in one invocation:
//!
//! 1. *burst*: every pod is already stored and pending when the scheduler
//!    starts (the pods are written with the scheduler disabled, then the
//!    server restarts on the same data with it enabled): pure scheduling
//!    throughput, from the server answering `/readyz` to the last binding;
//! 2. *create + schedule*: the pods are created while the scheduler runs,
//!    as a Deployment's ReplicaSet would (or by a real Deployment with
//!    `--workload deployment`): wall time from the first create to the
//!    last binding, and the server's memory afterwards.
//!
//! Bindings are observed through a watch on pods. Figures are printed with
//! upstream's published scheduler_perf range (680–810 pods/s at 5000 nodes,
//! a printed reference, not run here) and issue 3's goals marked met or not
//! met; nothing is asserted (DESIGN §8). Every child is killed by its PID;
//! only 127.0.0.1 is contacted; every wait is bounded.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use skiff_bench::https::ApiClient;
use skiff_bench::process::{free_port, memory, ChildGuard, Memory};
use tempfile::TempDir;
use tokio::task::JoinSet;

/// Namespace the pods live in.
const NAMESPACE: &str = "default";
/// Upstream scheduler_perf's accepted throughput at 5000 nodes (pods/s), as published.
const UPSTREAM_PODS_PER_SEC: (f64, f64) = (680.0, 810.0);
/// Issue 3's throughput goal.
const GOAL_PODS_PER_SEC: f64 = 2000.0;
/// Issue 3's memory goal for the server.
const GOAL_RSS_MIB: f64 = 300.0;
/// Every controller of `skiff server` besides the scheduler (see
/// `controlplane/src/controllers/mod.rs`); all are disabled unless the
/// workload needs them, so only the scheduler works on the fake nodes.
const OTHER_CONTROLLERS: &[&str] = &[
    "deployment",
    "replicaset",
    "endpointslice",
    "nodeipam",
    "nodelifecycle",
    "namespace",
    "garbagecollector",
    "daemonset",
    "statefulset",
    "job",
];

#[derive(Parser)]
#[command(
    name = "scheduler-bench",
    about = "Benchmark skiff's scheduler on fake nodes: pods bound per second, wall time, server RSS",
    long_about = "Benchmark skiff's scheduler on fake nodes: pods bound per second, wall time, server RSS.\n\n\
        Starts `skiff server` (release build) on a free 127.0.0.1 port with a temporary data directory, writes \
        --nodes fake Ready nodes and --pods pods, and measures (1) a burst: all pods pending when the scheduler \
        starts, and (2) pods created while the scheduler runs. Prints the figures with upstream's published \
        scheduler_perf range and issue 3's goals; never asserts. Build first with `cargo build --release`."
)]
struct Args {
    /// The skiff binary [default: `skiff` next to this executable]
    #[arg(long, value_name = "PATH")]
    skiff: Option<PathBuf>,
    /// Fake nodes
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Pods to schedule
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Concurrent client workers creating nodes and pods
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Who creates the pods in the create + schedule run
    #[arg(long, value_enum, default_value_t = Workload::Pods)]
    workload: Workload,
    /// Runs to do
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "burst,create"
    )]
    runs: Vec<Run>,
    /// Seconds to wait for the server to become ready
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    startup_timeout: u64,
    /// Seconds to wait for all pods to be bound before reporting what was bound
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    bind_timeout: u64,
    /// Keep the servers' data directories and logs (the path is printed)
    #[arg(long)]
    keep: bool,
}

/// Who creates the pods.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// The benchmark creates pods with a ReplicaSet ownerReference itself.
    Pods,
    /// One Deployment; skiff's deployment and replicaset controllers create the pods.
    Deployment,
}

/// One measurement.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Run {
    /// All pods pending when the scheduler starts.
    Burst,
    /// Pods created while the scheduler runs.
    Create,
}

/// `skiff server` on a free loopback port over `data_dir`.
struct Server {
    child: ChildGuard,
    addr: SocketAddr,
}

impl Server {
    fn start(skiff: &Path, data_dir: &Path, disabled: &[&str]) -> Result<Server> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let mut cmd = Command::new(skiff);
        cmd.arg("server")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", &addr.to_string()]);
        if !disabled.is_empty() {
            cmd.args(["--disable-controllers", &disabled.join(",")]);
        }
        // Per-request logging would cost the server time the benchmark measures.
        if std::env::var_os("SKIFF_LOG").is_none() {
            cmd.env("SKIFF_LOG", "warn");
        }
        let log = data_dir.with_extension(format!("{}.log", addr.port()));
        let child = ChildGuard::spawn("skiff server", cmd, &log)?;
        Ok(Server { child, addr })
    }

    /// Waits for the CA and token files and for `GET /readyz` to answer 200.
    async fn connect(&mut self, data_dir: &Path, timeout: Duration) -> Result<ApiClient> {
        let deadline = Instant::now() + timeout;
        loop {
            self.child.check_running()?;
            let attempt = async {
                let ca = std::fs::read(data_dir.join("ca.crt")).context("reading ca.crt")?;
                let token = std::fs::read_to_string(data_dir.join("admin.token"))
                    .context("reading admin.token")?;
                ensure!(!token.trim().is_empty(), "admin.token is empty");
                let api = ApiClient::new(self.addr, &ca, &token, false)?;
                api.expect(StatusCode::OK, Method::GET, "/readyz", None, Bytes::new())
                    .await?;
                Ok(api)
            };
            let last = match attempt.await {
                Ok(api) => return Ok(api),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                bail!(
                    "skiff server on {} is not ready after {timeout:?}: {last:#}\nend of its log:\n{}",
                    self.addr,
                    self.child.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn node_json(i: usize) -> Bytes {
    let name = format!("fake-node-{i:04}");
    Bytes::from(
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": format!("zone-{}", i % 3)}},
            "status": {
                "capacity": {"cpu": "4", "memory": "32Gi", "pods": "110"},
                "allocatable": {"cpu": "4", "memory": "32Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            },
        })
        .to_string(),
    )
}

fn pod_template() -> Value {
    json!({
        "metadata": {"labels": {"app": "bench"}},
        "spec": {"containers": [{
            "name": "pause", "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}},
        }]},
    })
}

fn pod_json(i: usize) -> Bytes {
    let mut pod = pod_template();
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    pod["metadata"]["name"] = json!(format!("bench-{i:05}"));
    pod["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "bench-5d8c7b",
        "uid": "9b1f3c2e-5a6d-4e7f-8a9b-0c1d2e3f4a5b", "controller": true,
    }]);
    Bytes::from(pod.to_string())
}

fn deployment_json(replicas: usize) -> Bytes {
    let mut template = pod_template();
    template["metadata"]["labels"] = json!({"app": "bench"});
    Bytes::from(
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "bench"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "bench"}}, "template": template},
        })
        .to_string(),
    )
}

/// POSTs `body(i)` for `i in 0..total` to `path` from `concurrency` workers.
async fn create_all(
    api: &ApiClient,
    path: &str,
    total: usize,
    concurrency: usize,
    body: fn(usize) -> Bytes,
) -> Result<Duration> {
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.clamp(1, total.max(1)) {
        let (api, next, path) = (api.clone(), next.clone(), path.to_string());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                api.expect(
                    StatusCode::CREATED,
                    Method::POST,
                    &path,
                    Some("application/json"),
                    body(i),
                )
                .await?;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.context("a create worker panicked")??;
    }
    Ok(start.elapsed())
}

/// Bindings seen on a pod watch.
struct Bindings {
    /// When all `want` pods were bound (or the timeout hit).
    end: Instant,
    /// First binding seen by the watch.
    first: Option<Instant>,
    /// Pods bound.
    bound: usize,
}

/// Opens a watch on the namespace's pods from the current state; returns the
/// names already bound and the stream.
async fn open_pod_watch(api: &ApiClient) -> Result<(HashSet<String>, hyper::body::Incoming)> {
    let path = format!("/api/v1/namespaces/{NAMESPACE}/pods");
    // Only the bound pods (`spec.nodeName!=`): serialising all 10k pending
    // ones would spend the server's CPU the measurement is about.
    let bound_only = format!("{path}?fieldSelector=spec.nodeName%21%3D");
    let body = api
        .expect(StatusCode::OK, Method::GET, &bound_only, None, Bytes::new())
        .await?;
    let list: Value = serde_json::from_slice(&body)
        .with_context(|| format!("GET {bound_only} did not return JSON"))?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .with_context(|| format!("GET {bound_only} returned no metadata.resourceVersion"))?;
    let bound = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
        })
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    let watch = format!("{path}?watch=1&resourceVersion={rv}");
    let resp = api.open(Method::GET, &watch, None, Bytes::new()).await?;
    ensure!(
        resp.status() == StatusCode::OK,
        "GET {watch} answered {}",
        resp.status()
    );
    Ok((bound, resp.into_body()))
}

/// Reads the watch until `want` pods are bound or `timeout` passes.
async fn wait_bound(
    mut bound: HashSet<String>,
    mut body: hyper::body::Incoming,
    want: usize,
    timeout: Duration,
) -> Result<Bindings> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut first = (!bound.is_empty()).then(Instant::now);
    let mut buf: Vec<u8> = Vec::new();
    let mut last_report = Instant::now();
    while bound.len() < want {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                eprintln!(
                    "  timed out after {timeout:?} with {} of {want} pods bound",
                    bound.len()
                );
                break;
            }
            Ok(None) => bail!(
                "the pod watch ended with {} of {want} pods bound",
                bound.len()
            ),
            Ok(Some(frame)) => frame.context("reading the pod watch")?,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let event: Value = serde_json::from_slice(&line)
                .context("the pod watch sent a line that is not JSON")?;
            let pod = &event["object"];
            if pod["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
            {
                if let Some(name) = pod["metadata"]["name"].as_str() {
                    if bound.insert(name.to_string()) && first.is_none() {
                        first = Some(Instant::now());
                    }
                }
            }
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            eprintln!("  {} of {want} pods bound", bound.len());
            last_report = Instant::now();
        }
    }
    Ok(Bindings {
        end: Instant::now(),
        first,
        bound: bound.len(),
    })
}

/// Figures of the burst run.
struct Burst {
    create: Duration,
    /// Server CPU time from ready to all bound.
    cpu: Duration,
    ready_to_bound: Duration,
    first_bind_after_ready: Option<Duration>,
    bound: usize,
    rss: Memory,
}

/// Figures of the create + schedule run.
struct Created {
    create: Duration,
    /// Server CPU time from the first create to all bound.
    cpu: Duration,
    wall: Duration,
    bound: usize,
    rss: Memory,
}

/// CPU time (user + system, all threads) `pid` has used so far.
fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the parenthesised command name, which may contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("unexpected {path}: {stat}"))
    };
    // utime and stime are fields 14 and 15 of the line, 12th and 13th after the name.
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(
        total as f64 / clock_ticks_per_second(),
    ))
}

/// `getconf CLK_TCK` (100 on Linux unless configured otherwise).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|t: &f64| *t > 0.0)
        .unwrap_or(100.0)
}

fn per_second(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(f64::EPSILON)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn burst(args: &Args, skiff: &Path, dir: &Path) -> Result<Burst> {
    let data_dir = dir.join("burst");
    let startup = Duration::from_secs(args.startup_timeout);
    let mut all: Vec<&str> = OTHER_CONTROLLERS.to_vec();
    all.push("scheduler");
    let create = {
        let mut server = Server::start(skiff, &data_dir, &all)?;
        let api = server.connect(&data_dir, startup).await?;
        eprintln!(
            "[burst] creating {} nodes and {} pods with the scheduler off",
            args.nodes, args.pods
        );
        create_all(
            &api,
            "/api/v1/nodes",
            args.nodes,
            args.concurrency,
            node_json,
        )
        .await?;
        let pods = format!("/api/v1/namespaces/{NAMESPACE}/pods");
        create_all(&api, &pods, args.pods, args.concurrency, pod_json).await?
        // Dropping the guard kills the server (SIGKILL by PID); writes were durable.
    };
    eprintln!("[burst] restarting the server with the scheduler on");
    let mut server = Server::start(skiff, &data_dir, OTHER_CONTROLLERS)?;
    let api = server.connect(&data_dir, startup).await?;
    let ready = Instant::now();
    let cpu_before = cpu_time(server.child.pid())?;
    let (bound, stream) = open_pod_watch(&api).await?;
    let seen = wait_bound(
        bound,
        stream,
        args.pods,
        Duration::from_secs(args.bind_timeout),
    )
    .await?;
    let cpu = cpu_time(server.child.pid())?.saturating_sub(cpu_before);
    let rss = memory(server.child.pid())?;
    Ok(Burst {
        create,
        cpu,
        ready_to_bound: seen.end - ready,
        first_bind_after_ready: seen.first.map(|f| f - ready),
        bound: seen.bound,
        rss,
    })
}

async fn create_and_schedule(args: &Args, skiff: &Path, dir: &Path) -> Result<Created> {
    let data_dir = dir.join("create");
    let disabled: Vec<&str> = match args.workload {
        Workload::Pods => OTHER_CONTROLLERS.to_vec(),
        Workload::Deployment => OTHER_CONTROLLERS
            .iter()
            .copied()
            .filter(|c| !["deployment", "replicaset"].contains(c))
            .collect(),
    };
    let mut server = Server::start(skiff, &data_dir, &disabled)?;
    let api = server
        .connect(&data_dir, Duration::from_secs(args.startup_timeout))
        .await?;
    eprintln!("[create] creating {} nodes", args.nodes);
    create_all(
        &api,
        "/api/v1/nodes",
        args.nodes,
        args.concurrency,
        node_json,
    )
    .await?;
    let (bound, stream) = open_pod_watch(&api).await?;
    let cpu_before = cpu_time(server.child.pid())?;
    let start = Instant::now();
    let waiter = tokio::spawn(wait_bound(
        bound,
        stream,
        args.pods,
        Duration::from_secs(args.bind_timeout),
    ));
    let create = match args.workload {
        Workload::Pods => {
            eprintln!(
                "[create] creating {} pods while the scheduler runs",
                args.pods
            );
            let pods = format!("/api/v1/namespaces/{NAMESPACE}/pods");
            create_all(&api, &pods, args.pods, args.concurrency, pod_json).await?
        }
        Workload::Deployment => {
            eprintln!("[create] creating a Deployment of {} replicas", args.pods);
            let path = format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments");
            api.expect(
                StatusCode::CREATED,
                Method::POST,
                &path,
                Some("application/json"),
                deployment_json(args.pods),
            )
            .await?;
            start.elapsed()
        }
    };
    let seen = waiter.await.context("the watch task panicked")??;
    let cpu = cpu_time(server.child.pid())?.saturating_sub(cpu_before);
    let rss = memory(server.child.pid())?;
    Ok(Created {
        create,
        cpu,
        wall: seen.end - start,
        bound: seen.bound,
        rss,
    })
}

fn against_upstream(pods_per_sec: f64) -> String {
    let (lo, hi) = UPSTREAM_PODS_PER_SEC;
    format!(
        "{:.1}x-{:.1}x upstream's {lo:.0}-{hi:.0} pods/s",
        pods_per_sec / hi,
        pods_per_sec / lo
    )
}

/// The server's CPU time for `pods` pods, and the rate that CPU cost would
/// allow if the server had every core to itself: on a busy machine the
/// measured rate says more about the neighbours than about skiff.
fn cpu_lines(cpu: Duration, pods: usize, cores: usize) {
    let per_pod_ms = cpu.as_secs_f64() * 1000.0 / pods.max(1) as f64;
    println!(
        "  server CPU time (user + system)            {:>9.2} s ({per_pod_ms:.2} ms per pod)",
        cpu.as_secs_f64()
    );
    if per_pod_ms > 0.0 {
        println!(
            "  CPU-bound ceiling on {cores} idle cores          {:>9.0} pods/s (not a measurement)",
            cores as f64 * 1000.0 / per_pod_ms
        );
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn report(args: &Args, skiff: &Path, burst: Option<&Burst>, created: Option<&Created>) {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!();
    println!("skiff scheduler benchmark ({cores} cores, server and benchmark on the same machine)");
    println!("  server: {}", skiff.display());
    println!(
        "  {} fake nodes (4 cpu, 32Gi, 110 pods), {} pods (100m cpu, 500Mi) of one owner, {} client workers",
        args.nodes, args.pods, args.concurrency
    );
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        println!(
            "  load average at the end (1, 5, 15 min): {}",
            load.join(" ")
        );
    }
    println!(
        "  reference: upstream scheduler_perf accepts {:.0}-{:.0} pods/s at 5000 nodes (published figure, not run here)",
        UPSTREAM_PODS_PER_SEC.0, UPSTREAM_PODS_PER_SEC.1
    );
    let complete = |bound: usize| {
        if bound == args.pods {
            String::new()
        } else {
            format!(" (only {bound} of {} bound)", args.pods)
        }
    };
    let mut throughputs = Vec::new();
    if let Some(b) = burst {
        let rate = per_second(b.bound, b.ready_to_bound);
        throughputs.push(("burst", rate, b.bound == args.pods));
        println!();
        println!(
            "burst: all {} pods pending when the scheduler starts",
            args.pods
        );
        println!(
            "  pods written with the scheduler off        {:>9.2} s ({:.0} pods/s)",
            b.create.as_secs_f64(),
            per_second(args.pods, b.create)
        );
        if let Some(first) = b.first_bind_after_ready {
            println!(
                "  /readyz to first binding seen              {:>9.2} s",
                first.as_secs_f64()
            );
        }
        println!(
            "  /readyz to all pods bound                  {:>9.2} s{}",
            b.ready_to_bound.as_secs_f64(),
            complete(b.bound)
        );
        println!(
            "  pods bound per second                      {rate:>9.0}    {}",
            against_upstream(rate)
        );
        println!(
            "  server RSS after                           {:>9.1} MiB (peak {:.1} MiB)",
            mib(b.rss.rss),
            mib(b.rss.peak)
        );
        cpu_lines(b.cpu, b.bound, cores);
    }
    if let Some(c) = created {
        let rate = per_second(c.bound, c.wall);
        throughputs.push(("create + schedule", rate, c.bound == args.pods));
        println!();
        match args.workload {
            Workload::Pods => println!(
                "create + schedule: {} pods created while the scheduler runs",
                args.pods
            ),
            Workload::Deployment => println!(
                "create + schedule: one Deployment of {} replicas",
                args.pods
            ),
        }
        if args.workload == Workload::Pods {
            println!(
                "  creates done after                         {:>9.2} s",
                c.create.as_secs_f64()
            );
        }
        println!(
            "  first create to all pods bound (wall)      {:>9.2} s{}",
            c.wall.as_secs_f64(),
            complete(c.bound)
        );
        println!(
            "  pods bound per second (over the wall time) {rate:>9.0}    {}",
            against_upstream(rate)
        );
        println!(
            "  server RSS after                           {:>9.1} MiB (peak {:.1} MiB)",
            mib(c.rss.rss),
            mib(c.rss.peak)
        );
        cpu_lines(c.cpu, c.bound, cores);
    }
    println!();
    println!("Goals from issue 3 (measured here, not asserted):");
    let scale_note = if args.nodes == 1000 && args.pods == 10_000 {
        ""
    } else {
        " [not the issue's 1000 nodes / 10k pods]"
    };
    for (name, rate, all) in throughputs {
        let verdict = if all {
            met(rate >= GOAL_PODS_PER_SEC)
        } else {
            "NOT met (not all pods bound)"
        };
        println!(
            "  >= {GOAL_PODS_PER_SEC:.0} pods/s, {name}: {rate:.0} pods/s -> {verdict}{scale_note}"
        );
    }
    let rss = [burst.map(|b| b.rss.rss), created.map(|c| c.rss.rss)]
        .into_iter()
        .flatten()
        .max();
    if let Some(rss) = rss {
        println!(
            "  server RSS < {GOAL_RSS_MIB:.0} MiB: {:.1} MiB (largest sample) -> {}{scale_note}",
            mib(rss),
            met(mib(rss) < GOAL_RSS_MIB)
        );
    }
}

fn default_skiff() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this executable's path")?;
    let dir = exe
        .parent()
        .with_context(|| format!("{} has no parent directory", exe.display()))?;
    Ok(dir.join("skiff"))
}

async fn run(args: &Args, skiff: &Path) -> Result<()> {
    let dir: TempDir = tempfile::Builder::new()
        .prefix("skiff-scheduler-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    let mut failures = Vec::new();
    let burst = if args.runs.contains(&Run::Burst) {
        burst(args, skiff, dir.path())
            .await
            .map_err(|e| failures.push(format!("burst: {e:#}")))
            .ok()
    } else {
        None
    };
    let created = if args.runs.contains(&Run::Create) {
        create_and_schedule(args, skiff, dir.path())
            .await
            .map_err(|e| failures.push(format!("create + schedule: {e:#}")))
            .ok()
    } else {
        None
    };
    report(args, skiff, burst.as_ref(), created.as_ref());
    if args.keep {
        let kept = dir.keep();
        println!(
            "\nServer data directories and logs kept in {}",
            kept.display()
        );
    }
    if !failures.is_empty() {
        bail!("not everything could be measured:\n{}", failures.join("\n"));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.nodes > 0 && args.pods > 0,
        "--nodes and --pods must be at least 1"
    );
    ensure!(
        !args.runs.is_empty(),
        "--runs needs at least one of burst, create"
    );
    let skiff = match &args.skiff {
        Some(path) => path.clone(),
        None => default_skiff()?,
    };
    ensure!(
        skiff.is_file(),
        "{} does not exist: run `cargo build --release` first, or pass --skiff PATH",
        skiff.display()
    );
    // Dropping `run` on Ctrl-C drops its process guards, which kill the children.
    tokio::select! {
        result = run(&args, &skiff) => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}
