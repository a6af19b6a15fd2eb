//! `apiserver-bench`: the skiff API server on the embedded redb store and on
//! etcd, in one invocation, with the same traffic: creates, random gets,
//! full and paginated lists, a watch fan-out and the server's memory with the
//! pods stored. It prints both stores side by side with the redb/etcd ratio
//! and issue 2's goals marked as met or not met. Nothing is asserted
//! (DESIGN §8). Every child it starts is killed by its PID when it is done,
//! and only 127.0.0.1 is ever contacted.

use std::fmt;
use std::future::Future;
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
use skiff_bench::process::{free_port, memory, wait_for_tcp, ChildGuard, Memory};
use skiff_bench::stats::{ms, Summary};
use tempfile::TempDir;
use tokio::task::JoinSet;

/// Collection path of the pods every phase works on.
const PODS: &str = "/api/v1/namespaces/default/pods";
/// Issue 2's goal for the server's resident memory with 10k pods stored.
const RSS_GOAL_MIB: f64 = 150.0;
/// Number of pods the RSS goal is stated for.
const RSS_GOAL_PODS: usize = 10_000;
/// Issue 2's goal for p99 create latency on redb.
const CREATE_P99_GOAL_MS: f64 = 5.0;

#[derive(Parser)]
#[command(
    name = "apiserver-bench",
    about = "Benchmark the skiff API server on the redb and etcd stores in one run and print both with their ratio",
    long_about = "Benchmark the skiff API server on the redb and etcd stores in one run and print both with their ratio.\n\n\
        For each store it starts `skiff server` on a free 127.0.0.1 port with a temporary data directory \
        (for etcd, first Debian's etcd on free loopback ports), then measures: (1) creating --pods pods with \
        --concurrency workers, (2) --gets GETs of random pods, (3) listing all pods --lists times in one \
        response and paginated with --page-size, (4) --watchers watches each seeing all of --updates label \
        PATCHes, (5) the server's resident memory with the pods stored. Figures are printed, never asserted. \
        Build first with `cargo build --release` so that target/release/skiff exists."
)]
struct Args {
    /// The skiff binary [default: `skiff` next to this executable]
    #[arg(long, value_name = "PATH")]
    skiff: Option<PathBuf>,
    /// The etcd binary used for the etcd store
    #[arg(long, value_name = "PATH", default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Stores to benchmark, in this order
    #[arg(long, value_delimiter = ',', default_value = "redb,etcd")]
    stores: Vec<StoreKind>,
    /// Pods created (and kept) on each store
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Of the --pods, how many are created first by a single worker (latency without queueing)
    #[arg(long, default_value_t = 1_000)]
    serial_creates: usize,
    /// Concurrent client workers for creates, gets and updates
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// GETs of random pods
    #[arg(long, default_value_t = 10_000)]
    gets: usize,
    /// Full lists of all pods, both unpaginated and paginated
    #[arg(long, default_value_t = 3)]
    lists: usize,
    /// `limit` of the paginated lists
    #[arg(long, default_value_t = 500)]
    page_size: usize,
    /// Concurrent watchers in the fan-out phase
    #[arg(long, default_value_t = 50)]
    watchers: usize,
    /// Label updates (JSON merge PATCH) that every watcher must see
    #[arg(long, default_value_t = 500)]
    updates: usize,
    /// Speak HTTP/2 over one multiplexed connection instead of HTTP/1.1 with a keep-alive pool
    #[arg(long)]
    http2: bool,
    /// Seconds to wait for etcd and the server to become ready
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    startup_timeout: u64,
    /// Seconds the watch fan-out may take before the phase is reported as failed
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    watch_timeout: u64,
}

impl Args {
    fn check(&self) -> Result<()> {
        ensure!(self.pods > 0, "--pods must be at least 1");
        ensure!(self.concurrency > 0, "--concurrency must be at least 1");
        ensure!(self.page_size > 0, "--page-size must be at least 1");
        ensure!(self.lists > 0, "--lists must be at least 1");
        ensure!(!self.stores.is_empty(), "--stores needs at least one store");
        Ok(())
    }
}

/// A storage backend of the server.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    Redb,
    Etcd,
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreKind::Redb => "redb",
            StoreKind::Etcd => "etcd",
        })
    }
}

/// Debian's etcd on free loopback ports with a temporary data directory.
struct Etcd {
    // Fields drop in order: the process is killed before its directory goes.
    child: ChildGuard,
    client_url: String,
    _dir: TempDir,
}

impl Etcd {
    async fn start(binary: &Path, timeout: Duration) -> Result<Etcd> {
        let dir = temp_dir("skiff-bench-etcd-")?;
        let client_port = free_port()?;
        let mut peer_port = free_port()?;
        while peer_port == client_port {
            peer_port = free_port()?;
        }
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(binary);
        cmd.arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("default={peer_url}")]);
        let mut child = ChildGuard::spawn("etcd", cmd, &dir.path().join("etcd.log"))?;
        wait_for_tcp(
            &mut child,
            SocketAddr::from((Ipv4Addr::LOCALHOST, client_port)),
            timeout,
        )
        .await?;
        Ok(Etcd {
            child,
            client_url,
            _dir: dir,
        })
    }
}

/// `skiff server` on a free loopback port with a temporary data directory.
struct Server {
    // Fields drop in order: the process is killed before its directory goes.
    child: ChildGuard,
    addr: SocketAddr,
    data_dir: PathBuf,
    store: StoreKind,
    _dir: TempDir,
}

impl Server {
    fn start(binary: &Path, store: StoreKind, etcd: Option<&Etcd>) -> Result<Server> {
        let dir = temp_dir("skiff-bench-server-")?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let data_dir = dir.path().join("data");
        let mut cmd = Command::new(binary);
        cmd.arg("server").arg("--data-dir").arg(&data_dir).args([
            "--listen",
            &addr.to_string(),
            "--store",
            &store.to_string(),
        ]);
        if let Some(etcd) = etcd {
            cmd.args(["--etcd-endpoints", &etcd.client_url]);
        }
        // Per-request logging would cost the server time the benchmark measures.
        if std::env::var_os("SKIFF_LOG").is_none() {
            cmd.env("SKIFF_LOG", "warn");
        }
        let child = ChildGuard::spawn("skiff server", cmd, &dir.path().join("server.log"))?;
        Ok(Server {
            child,
            addr,
            data_dir,
            store,
            _dir: dir,
        })
    }

    /// Waits for the CA and token files and for `GET /readyz` to answer 200.
    async fn connect(&mut self, http2: bool, timeout: Duration) -> Result<ApiClient> {
        let deadline = Instant::now() + timeout;
        loop {
            self.child.check_running()?;
            let last = match self.try_ready(http2).await {
                Ok(api) => return Ok(api),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                bail!(
                    "skiff server ({}) on {} is not ready after {timeout:?}; last attempt: {last:#}\nend of its log:\n{}",
                    self.store,
                    self.addr,
                    self.child.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn try_ready(&self, http2: bool) -> Result<ApiClient> {
        let ca_path = self.data_dir.join("ca.crt");
        let token_path = self.data_dir.join("admin.token");
        let ca =
            std::fs::read(&ca_path).with_context(|| format!("reading {}", ca_path.display()))?;
        let token = std::fs::read_to_string(&token_path)
            .with_context(|| format!("reading {}", token_path.display()))?;
        ensure!(
            !token.trim().is_empty(),
            "{} is empty",
            token_path.display()
        );
        let api = ApiClient::new(self.addr, &ca, &token, http2)?;
        api.expect(StatusCode::OK, Method::GET, "/readyz", None, Bytes::new())
            .await?;
        Ok(api)
    }
}

fn temp_dir(prefix: &str) -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("creating a temporary directory")
}

/// Everything measured on one store. A phase after the creates that failed
/// is `None`, and its failing request is in `failed`.
struct Figures {
    /// Creates from a single worker: latency without queueing behind others.
    create_serial: Summary,
    /// Creates from `--concurrency` workers.
    create: Summary,
    rss_after_create: Memory,
    get: Option<Summary>,
    list_full: Option<FullList>,
    list_paged: Option<Duration>,
    rss_after_lists: Memory,
    watch: Option<Watch>,
    rss_end: Memory,
    etcd_rss_end: Option<Memory>,
    /// Observations that are not figures (e.g. a list missing pods).
    notes: Vec<String>,
    /// Phases that failed, with the request and response that failed them.
    failed: Vec<String>,
}

impl Figures {
    /// The largest RSS sample taken with all pods stored.
    fn rss_with_pods(&self) -> u64 {
        self.rss_after_create
            .rss
            .max(self.rss_after_lists.rss)
            .max(self.rss_end.rss)
    }
}

/// Keeps a phase's figures, or records why it failed so the other phases
/// still run.
fn phase<T>(
    store: StoreKind,
    name: &str,
    result: Result<T>,
    failed: &mut Vec<String>,
) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("[{store}] {name} failed: {e:#}");
            failed.push(format!("{name}: {e:#}"));
            None
        }
    }
}

async fn bench_store(store: StoreKind, args: &Args, skiff: &Path) -> Result<Figures> {
    let startup = Duration::from_secs(args.startup_timeout);
    // Declared before the server so that it is dropped (killed) after it.
    let etcd = match store {
        StoreKind::Etcd => {
            progress(store, &format!("starting {}", args.etcd.display()));
            Some(Etcd::start(&args.etcd, startup).await?)
        }
        StoreKind::Redb => None,
    };
    progress(store, &format!("starting {} server", skiff.display()));
    let mut server = Server::start(skiff, store, etcd.as_ref())?;
    let api = server.connect(args.http2, startup).await?;
    let mut notes = Vec::new();
    let mut failed = Vec::new();

    // Every later phase needs the pods, so a failed create ends this store.
    let serial = args.serial_creates.min(args.pods);
    progress(
        store,
        &format!(
            "creating {} pods: {serial} one at a time, the rest with {} workers",
            args.pods, args.concurrency
        ),
    );
    let create_serial = create_pods(&api, 0, serial, 1).await?;
    let create = create_pods(&api, serial, args.pods - serial, args.concurrency).await?;
    let rss_after_create = memory(server.child.pid())?;

    progress(store, &format!("{} GETs of random pods", args.gets));
    let get = phase(store, "get", get_pods(&api, args).await, &mut failed);
    server.child.check_running()?;

    progress(
        store,
        &format!("{} unpaginated lists of all pods", args.lists),
    );
    let full = list_full(&api, args, &mut notes).await;
    let list_full = phase(store, "unpaginated list", full, &mut failed);
    server.child.check_running()?;

    progress(
        store,
        &format!(
            "{} lists of all pods with limit={}",
            args.lists, args.page_size
        ),
    );
    let paged = list_paged(&api, args, &mut notes).await;
    let list_paged = phase(store, "paginated list", paged, &mut failed);
    server.child.check_running()?;
    let rss_after_lists = memory(server.child.pid())?;
    if list_full.is_none() {
        notes.push(
            "the unpaginated lists failed, so the RSS after them does not include their cost"
                .to_string(),
        );
    }

    progress(
        store,
        &format!("{} watchers, {} updates", args.watchers, args.updates),
    );
    let watch = phase(
        store,
        "watch fan-out",
        watch_fanout(&api, args).await,
        &mut failed,
    );
    server.child.check_running()?;

    let rss_end = memory(server.child.pid())?;
    let etcd_rss_end = etcd.as_ref().map(|e| memory(e.child.pid())).transpose()?;
    Ok(Figures {
        create_serial,
        create,
        rss_after_create,
        get,
        list_full,
        list_paged,
        rss_after_lists,
        watch,
        rss_end,
        etcd_rss_end,
        notes,
        failed,
    })
}

fn progress(store: StoreKind, what: &str) {
    eprintln!("[{store}] {what}");
}

/// Runs `op(0..total)` on `concurrency` workers, timing each call.
async fn run_workers<F, Fut>(concurrency: usize, total: usize, op: F) -> Result<Summary>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.min(total) {
        let (op, next) = (Arc::clone(&op), Arc::clone(&next));
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let t = Instant::now();
                op(i).await?;
                latencies.push(t.elapsed());
            }
        });
    }
    let mut all = Vec::with_capacity(total);
    // Returning early on the first error drops the set, which aborts the rest.
    while let Some(done) = workers.join_next().await {
        all.extend(done.context("a benchmark worker panicked")??);
    }
    Ok(Summary::new(all, start.elapsed()))
}

fn pod_name(i: usize) -> String {
    format!("bench-{i:05}")
}

/// A small pod of the kind users write: labels, one container with a port
/// and resources.
fn pod_json(i: usize) -> Bytes {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(i),
            "labels": {"app": "bench", "tier": if i.is_multiple_of(4) { "db" } else { "web" }, "shard": format!("s{}", i % 16)},
            "annotations": {"bench.skiff.dev/index": i.to_string()}
        },
        "spec": {
            "containers": [{
                "name": "web",
                "image": "nginx:1.27",
                "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}],
                "env": [{"name": "SHARD", "value": format!("s{}", i % 16)}],
                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}
            }]
        }
    });
    Bytes::from(pod.to_string())
}

/// Creates pods `first..first + count` with `concurrency` workers.
async fn create_pods(
    api: &ApiClient,
    first: usize,
    count: usize,
    concurrency: usize,
) -> Result<Summary> {
    let api = api.clone();
    run_workers(concurrency, count, move |i| {
        let api = api.clone();
        let i = first + i;
        async move {
            api.expect(
                StatusCode::CREATED,
                Method::POST,
                PODS,
                Some("application/json"),
                pod_json(i),
            )
            .await?;
            Ok(())
        }
    })
    .await
}

/// A well-mixed index (splitmix64), so both stores see the same "random"
/// sequence of pods.
fn spread(i: usize) -> u64 {
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

async fn get_pods(api: &ApiClient, args: &Args) -> Result<Summary> {
    let api = api.clone();
    let pods = args.pods as u64;
    run_workers(args.concurrency, args.gets, move |i| {
        let api = api.clone();
        // The modulus is below `args.pods`, so it fits in usize.
        let path = format!("{PODS}/{}", pod_name((spread(i) % pods) as usize));
        async move {
            api.expect(StatusCode::OK, Method::GET, &path, None, Bytes::new())
                .await?;
            Ok(())
        }
    })
    .await
}

/// Unpaginated lists of all pods.
struct FullList {
    /// Mean time of one list.
    per_list: Duration,
    /// Size of one response body.
    bytes: usize,
}

fn item_count(body: &[u8], path: &str) -> Result<(usize, Option<String>)> {
    let list: Value =
        serde_json::from_slice(body).with_context(|| format!("GET {path} did not return JSON"))?;
    let items = list["items"]
        .as_array()
        .with_context(|| format!("GET {path} returned no items array"))?;
    let cont = list["metadata"]["continue"]
        .as_str()
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    Ok((items.len(), cont))
}

fn lists_divisor(args: &Args) -> Result<u32> {
    u32::try_from(args.lists).context("--lists is too large")
}

/// Lists all pods in one response `--lists` times.
async fn list_full(api: &ApiClient, args: &Args, notes: &mut Vec<String>) -> Result<FullList> {
    let mut total = Duration::ZERO;
    let mut bytes = 0;
    for _ in 0..args.lists {
        let t = Instant::now();
        let body = api
            .expect(StatusCode::OK, Method::GET, PODS, None, Bytes::new())
            .await?;
        let (count, _) = item_count(&body, PODS)?;
        total += t.elapsed();
        bytes = body.len();
        if count != args.pods {
            notes.push(format!(
                "GET {PODS} returned {count} pods, {} were created",
                args.pods
            ));
        }
    }
    Ok(FullList {
        per_list: total / lists_divisor(args)?,
        bytes,
    })
}

/// Lists all pods `--lists` times in pages of `--page-size`, following
/// `continue`; returns the mean time of one whole list.
async fn list_paged(api: &ApiClient, args: &Args, notes: &mut Vec<String>) -> Result<Duration> {
    let mut total = Duration::ZERO;
    for _ in 0..args.lists {
        let t = Instant::now();
        let mut count = 0;
        let mut pages = 0;
        let mut cont: Option<String> = None;
        loop {
            let mut path = format!("{PODS}?limit={}", args.page_size);
            if let Some(c) = &cont {
                path.push_str("&continue=");
                path.push_str(&query_escape(c));
            }
            let body = api
                .expect(StatusCode::OK, Method::GET, &path, None, Bytes::new())
                .await?;
            let (n, next) = item_count(&body, &path)?;
            count += n;
            pages += 1;
            match next {
                Some(c) => cont = Some(c),
                None => break,
            }
            ensure!(
                pages <= args.pods / args.page_size + 2,
                "paginated list of {PODS} does not end (at {path})"
            );
        }
        total += t.elapsed();
        if count != args.pods {
            notes.push(format!(
                "paginated GET {PODS} returned {count} pods, {} were created",
                args.pods
            ));
        }
    }
    Ok(total / lists_divisor(args)?)
}

/// Percent-encodes a query parameter value.
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

struct Watch {
    all_seen: Duration,
    events_per_second: f64,
    update: Summary,
}

/// Opens the watchers at the current revision, patches a label `updates`
/// times and measures until every watcher has seen every MODIFIED event.
async fn watch_fanout(api: &ApiClient, args: &Args) -> Result<Watch> {
    let probe = format!("{PODS}?limit=1");
    let body = api
        .expect(StatusCode::OK, Method::GET, &probe, None, Bytes::new())
        .await?;
    let list: Value = serde_json::from_slice(&body)
        .with_context(|| format!("GET {probe} did not return JSON"))?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .with_context(|| format!("GET {probe} returned no metadata.resourceVersion"))?
        .to_string();
    let path = format!("{PODS}?watch=1&resourceVersion={rv}");

    let mut opening = JoinSet::new();
    for _ in 0..args.watchers {
        let (api, path) = (api.clone(), path.clone());
        opening.spawn(async move { api.open(Method::GET, &path, None, Bytes::new()).await });
    }
    let mut streams = Vec::with_capacity(args.watchers);
    while let Some(opened) = opening.join_next().await {
        let resp = opened.context("opening a watch panicked")??;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            bail!(
                "GET {path} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        streams.push(resp.into_body());
    }

    let seen: Arc<Vec<AtomicUsize>> =
        Arc::new((0..args.watchers).map(|_| AtomicUsize::new(0)).collect());
    let start = Instant::now();
    let mut watchers = JoinSet::new();
    for (w, mut body) in streams.into_iter().enumerate() {
        let (seen, path, want) = (Arc::clone(&seen), path.clone(), args.updates);
        watchers.spawn(async move {
            let mut buf: Vec<u8> = Vec::new();
            while seen[w].load(Ordering::Relaxed) < want {
                let frame = match body.frame().await {
                    Some(frame) => frame.with_context(|| format!("reading watch GET {path}"))?,
                    None => bail!(
                        "watch GET {path} ended after {} of {want} events",
                        seen[w].load(Ordering::Relaxed)
                    ),
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
                    let event: Value = serde_json::from_slice(&line).with_context(|| {
                        format!(
                            "watch GET {path} sent a line that is not JSON: {}",
                            String::from_utf8_lossy(&line)
                        )
                    })?;
                    match event["type"].as_str() {
                        Some("MODIFIED") => {
                            seen[w].fetch_add(1, Ordering::Relaxed);
                        }
                        Some("BOOKMARK") => {}
                        _ => bail!(
                            "watch GET {path} sent an unexpected event: {}",
                            String::from_utf8_lossy(&line)
                        ),
                    }
                }
            }
            Ok(start.elapsed())
        });
    }

    let update = {
        let api = api.clone();
        let pods = args.pods;
        run_workers(args.concurrency, args.updates, move |j| {
            let api = api.clone();
            let path = format!("{PODS}/{}", pod_name(j % pods));
            let patch = Bytes::from(
                json!({"metadata": {"labels": {"bench-update": format!("u{j}")}}}).to_string(),
            );
            async move {
                api.expect(
                    StatusCode::OK,
                    Method::PATCH,
                    &path,
                    Some("application/merge-patch+json"),
                    patch,
                )
                .await?;
                Ok(())
            }
        })
        .await?
    };

    let timeout = Duration::from_secs(args.watch_timeout);
    let mut all_seen = Duration::ZERO;
    let waited = tokio::time::timeout(timeout, async {
        while let Some(done) = watchers.join_next().await {
            all_seen = all_seen.max(done.context("a watcher panicked")??);
        }
        Ok::<_, anyhow::Error>(())
    })
    .await;
    match waited {
        Ok(result) => result?,
        Err(_) => {
            let counts: Vec<usize> = seen.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            let done = counts.iter().filter(|&&c| c >= args.updates).count();
            let least = counts.iter().min().copied().unwrap_or(0);
            bail!(
                "after {timeout:?}, {done} of {} watchers (GET {path}) had seen all {} updates; the slowest had seen {least}",
                args.watchers,
                args.updates
            );
        }
    }
    let events = (args.watchers * args.updates) as f64;
    Ok(Watch {
        all_seen,
        events_per_second: events / all_seen.as_secs_f64().max(f64::EPSILON),
        update,
    })
}

/// Which direction of a figure is the good one.
#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
    Neither,
}

/// One line of the report.
struct Row {
    label: &'static str,
    better: Better,
    value: fn(&Figures) -> Option<f64>,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `value` when `summary` has requests in it (a phase may be configured empty).
fn measured(summary: &Summary, value: f64) -> Option<f64> {
    (summary.count > 0).then_some(value)
}

const ROWS: &[Row] = &[
    Row {
        label: "create, 1 worker (req/s)",
        better: Better::Higher,
        value: |f| measured(&f.create_serial, f.create_serial.per_second),
    },
    Row {
        label: "create, 1 worker p50 (ms)",
        better: Better::Lower,
        value: |f| measured(&f.create_serial, ms(f.create_serial.p50)),
    },
    Row {
        label: "create, 1 worker p99 (ms)",
        better: Better::Lower,
        value: |f| measured(&f.create_serial, ms(f.create_serial.p99)),
    },
    Row {
        label: "create, concurrent (req/s)",
        better: Better::Higher,
        value: |f| measured(&f.create, f.create.per_second),
    },
    Row {
        label: "create, concurrent p50 (ms)",
        better: Better::Lower,
        value: |f| measured(&f.create, ms(f.create.p50)),
    },
    Row {
        label: "create, concurrent p99 (ms)",
        better: Better::Lower,
        value: |f| measured(&f.create, ms(f.create.p99)),
    },
    Row {
        label: "create, concurrent max (ms)",
        better: Better::Lower,
        value: |f| measured(&f.create, ms(f.create.max)),
    },
    Row {
        label: "get throughput (req/s)",
        better: Better::Higher,
        value: |f| f.get.as_ref().and_then(|g| measured(g, g.per_second)),
    },
    Row {
        label: "get p50 (ms)",
        better: Better::Lower,
        value: |f| f.get.as_ref().and_then(|g| measured(g, ms(g.p50))),
    },
    Row {
        label: "get p99 (ms)",
        better: Better::Lower,
        value: |f| f.get.as_ref().and_then(|g| measured(g, ms(g.p99))),
    },
    Row {
        label: "list all, one response (ms/list)",
        better: Better::Lower,
        value: |f| f.list_full.as_ref().map(|l| ms(l.per_list)),
    },
    Row {
        label: "list all, paginated (ms/list)",
        better: Better::Lower,
        value: |f| f.list_paged.map(ms),
    },
    Row {
        label: "list body size (MiB)",
        better: Better::Neither,
        value: |f| f.list_full.as_ref().map(|l| mib(l.bytes as u64)),
    },
    Row {
        label: "update (PATCH) throughput (req/s)",
        better: Better::Higher,
        value: |f| {
            f.watch
                .as_ref()
                .and_then(|w| measured(&w.update, w.update.per_second))
        },
    },
    Row {
        label: "update p99 (ms)",
        better: Better::Lower,
        value: |f| {
            f.watch
                .as_ref()
                .and_then(|w| measured(&w.update, ms(w.update.p99)))
        },
    },
    Row {
        label: "watch: all watchers saw all (ms)",
        better: Better::Lower,
        value: |f| f.watch.as_ref().map(|w| ms(w.all_seen)),
    },
    Row {
        label: "watch events delivered (events/s)",
        better: Better::Higher,
        value: |f| f.watch.as_ref().map(|w| w.events_per_second),
    },
    Row {
        label: "server RSS after creates (MiB)",
        better: Better::Lower,
        value: |f| Some(mib(f.rss_after_create.rss)),
    },
    Row {
        label: "server RSS after lists (MiB)",
        better: Better::Lower,
        value: |f| Some(mib(f.rss_after_lists.rss)),
    },
    Row {
        label: "server RSS at end (MiB)",
        better: Better::Lower,
        value: |f| Some(mib(f.rss_end.rss)),
    },
    Row {
        label: "server peak RSS, VmHWM (MiB)",
        better: Better::Lower,
        value: |f| Some(mib(f.rss_end.peak)),
    },
    Row {
        label: "etcd RSS at end (MiB)",
        better: Better::Lower,
        value: |f| f.etcd_rss_end.map(|m| mib(m.rss)),
    },
    Row {
        label: "server + etcd RSS at end (MiB)",
        better: Better::Lower,
        value: |f| Some(mib(f.rss_end.rss + f.etcd_rss_end.map_or(0, |m| m.rss))),
    },
];

fn number(v: Option<f64>) -> String {
    match v {
        None => "-".to_string(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn report(args: &Args, skiff: &Path, results: &[(StoreKind, Figures)]) {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!();
    println!(
        "skiff API server benchmark ({cores} cores, {})",
        if args.http2 {
            "HTTP/2"
        } else {
            "HTTP/1.1 keep-alive"
        }
    );
    println!("  server: {}", skiff.display());
    println!(
        "  {} pods ({} created by 1 worker, the rest by {} workers); {} random gets; {} lists each way (page size {}); {} watchers x {} updates",
        args.pods,
        args.serial_creates.min(args.pods),
        args.concurrency,
        args.gets,
        args.lists,
        args.page_size,
        args.watchers,
        args.updates
    );
    // Other work on the machine shows in every figure; say how busy it was.
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        println!(
            "  load average at the end (1, 5, 15 min): {}",
            load.join(" ")
        );
    }
    println!();
    let redb = results
        .iter()
        .find(|(s, _)| *s == StoreKind::Redb)
        .map(|(_, f)| f);
    let etcd = results
        .iter()
        .find(|(s, _)| *s == StoreKind::Etcd)
        .map(|(_, f)| f);
    let with_ratio = redb.is_some() && etcd.is_some();
    let mut header = format!("{:<38}", "figure");
    for (store, _) in results {
        header.push_str(&format!("{:>12}", store.to_string()));
    }
    if with_ratio {
        header.push_str(&format!("{:>12}", "redb/etcd"));
    }
    header.push_str("  better");
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for row in ROWS {
        let mut line = format!("{:<38}", row.label);
        for (_, f) in results {
            line.push_str(&format!("{:>12}", number((row.value)(f))));
        }
        if let (Some(r), Some(e)) = (redb, etcd) {
            let ratio = match ((row.value)(r), (row.value)(e)) {
                (Some(r), Some(e)) if e > 0.0 => format!("{:.2}x", r / e),
                _ => "-".to_string(),
            };
            line.push_str(&format!("{ratio:>12}"));
        }
        line.push_str(match row.better {
            Better::Higher => "  higher",
            Better::Lower => "  lower",
            Better::Neither => "",
        });
        println!("{line}");
    }

    println!();
    println!("Goals from issue 2 (measured here, not asserted):");
    for (store, f) in results {
        let rss = mib(f.rss_with_pods());
        let verdict = if args.pods < RSS_GOAL_PODS {
            format!(
                "not evaluated: only {} pods stored (use --pods {RSS_GOAL_PODS})",
                args.pods
            )
        } else {
            met(rss < RSS_GOAL_MIB).to_string()
        };
        println!(
            "  server RSS < {RSS_GOAL_MIB:.0} MiB with {RSS_GOAL_PODS} pods, {store}: {rss:.1} MiB (largest sample) -> {verdict}"
        );
    }
    let concurrent = format!("{} concurrent workers", args.concurrency);
    let create_goals = [
        ("1 worker", redb.map(|f| f.create_serial)),
        (concurrent.as_str(), redb.map(|f| f.create)),
    ];
    for (how, summary) in create_goals {
        let verdict = match summary {
            None => "not evaluated (redb not run)".to_string(),
            Some(s) if s.count == 0 => "not evaluated (no creates in this phase)".to_string(),
            Some(s) => format!(
                "{:.2} ms -> {}",
                ms(s.p99),
                met(ms(s.p99) < CREATE_P99_GOAL_MS)
            ),
        };
        println!("  p99 create < {CREATE_P99_GOAL_MS:.0} ms on redb, {how}: {verdict}");
    }
    let notes: Vec<String> = results
        .iter()
        .flat_map(|(store, f)| f.notes.iter().map(move |n| format!("  {store}: {n}")))
        .collect();
    if !notes.is_empty() {
        println!();
        println!("Observations:");
        for n in notes {
            println!("{n}");
        }
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
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
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for &store in &args.stores {
        match bench_store(store, args, skiff).await {
            Ok(figures) => results.push((store, figures)),
            Err(e) => {
                eprintln!("[{store}] failed: {e:#}");
                failures.push(format!("{store}: {e:#}"));
            }
        }
    }
    if !results.is_empty() {
        report(args, skiff, &results);
    }
    for (store, figures) in &results {
        failures.extend(figures.failed.iter().map(|f| format!("{store}: {f}")));
    }
    if !failures.is_empty() {
        bail!(
            "not everything could be measured (missing figures show as -):\n{}",
            failures.join("\n")
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    args.check()?;
    let skiff = match &args.skiff {
        Some(path) => path.clone(),
        None => default_skiff()?,
    };
    ensure!(
        skiff.is_file(),
        "{} does not exist: run `cargo build --release` first, or pass --skiff PATH",
        skiff.display()
    );
    if args.stores.contains(&StoreKind::Etcd) {
        ensure!(
            args.etcd.is_file(),
            "{} does not exist: install Debian's etcd (apt-get install etcd-server), pass --etcd PATH, or use --stores redb",
            args.etcd.display()
        );
    }
    // Dropping `run` on Ctrl-C drops its process guards, which kill the children.
    tokio::select! {
        result = run(&args, &skiff) => result,
        signal = tokio::signal::ctrl_c() => {
            signal.context("listening for Ctrl-C")?;
            bail!("interrupted; the server and etcd were stopped")
        }
    }
}
