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

mod report;
mod workload;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use skiff_bench::process::Memory;
use tempfile::TempDir;

use report::report;
use workload::{burst, create_and_schedule};

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
    "horizontalpodautoscaling",
    "podgc",
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
