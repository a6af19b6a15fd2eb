//! `apiserver-bench`: the skiff API server on the embedded redb store and on
//! etcd, in one invocation, with the same traffic: creates, random gets,
//! full and paginated lists, a watch fan-out and the server's memory with the
//! pods stored. It prints both stores side by side with the redb/etcd ratio
//! and issue 2's goals marked as met or not met. Nothing is asserted
//! (DESIGN §8). Every child it starts is killed by its PID when it is done,
//! and only 127.0.0.1 is ever contacted.

mod report;
mod server;
mod workload;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use skiff_bench::process::Memory;
use skiff_bench::stats::Summary;

use report::report;
use workload::bench_store;

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
        (for etcd, first Debian's etcd on free loopback ports), then measures: (1) creating --pods pods: \
        --serial-creates from one worker, --paced-creates at --paced-rate and the rest at full speed from \
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
    /// Of the --pods, how many are created next at a steady --paced-rate by
    /// --concurrency workers (latency under a concurrent load the server
    /// can keep up with)
    #[arg(long, default_value_t = 2_000)]
    paced_creates: usize,
    /// Creates per second offered in the paced phase; each create is timed
    /// from when it was due, so a server falling behind shows in the figures
    #[arg(long, value_name = "PER_SECOND", default_value_t = 500.0)]
    paced_rate: f64,
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
    /// Controllers (and `scheduler`) the server does not run, passed to its
    /// `--disable-controllers`: disabling them all measures the API server
    /// and store without their in-process informer caches
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    disable_controllers: Vec<String>,
    /// Seconds to wait for etcd and the server to become ready
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    startup_timeout: u64,
    /// Seconds the watch fan-out may take before the phase is reported as failed
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    watch_timeout: u64,
}

impl Args {
    /// How many of the --pods each create phase makes: one at a time,
    /// paced, and at full speed.
    fn create_phases(&self) -> (usize, usize, usize) {
        let serial = self.serial_creates.min(self.pods);
        let paced = self.paced_creates.min(self.pods - serial);
        (serial, paced, self.pods - serial - paced)
    }

    fn check(&self) -> Result<()> {
        ensure!(self.pods > 0, "--pods must be at least 1");
        ensure!(self.concurrency > 0, "--concurrency must be at least 1");
        ensure!(
            self.paced_rate.is_finite() && self.paced_rate > 0.0,
            "--paced-rate must be a positive number of creates per second"
        );
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

/// Everything measured on one store. A phase after the creates that failed
/// is `None`, and its failing request is in `failed`.
struct Figures {
    /// Creates from a single worker: latency without queueing behind others.
    create_serial: Summary,
    /// Creates from `--concurrency` workers at `--paced-rate`.
    create_paced: Summary,
    /// Creates from `--concurrency` workers as fast as the server answers.
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

/// Unpaginated lists of all pods.
struct FullList {
    /// Mean time of one list.
    per_list: Duration,
    /// Size of one response body.
    bytes: usize,
}

struct Watch {
    all_seen: Duration,
    events_per_second: f64,
    update: Summary,
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
