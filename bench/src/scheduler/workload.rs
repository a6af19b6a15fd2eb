//! The runs: the server, the objects written and the bindings observed.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use skiff_bench::https::ApiClient;
use skiff_bench::process::{free_port, memory, ChildGuard};
use tokio::task::JoinSet;

use super::{Args, Burst, Created, Workload, NAMESPACE, OTHER_CONTROLLERS};

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

pub(super) fn per_second(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(f64::EPSILON)
}

pub(super) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub(super) async fn burst(args: &Args, skiff: &Path, dir: &Path) -> Result<Burst> {
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

pub(super) async fn create_and_schedule(args: &Args, skiff: &Path, dir: &Path) -> Result<Created> {
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
