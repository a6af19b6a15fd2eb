//! The report, with upstream's published range and issue 3's goals.

use std::path::Path;
use std::time::Duration;

use super::workload::{mib, per_second};
use super::{
    Args, Burst, Created, Workload, GOAL_PODS_PER_SEC, GOAL_RSS_MIB, UPSTREAM_PODS_PER_SEC,
};

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

pub(super) fn report(args: &Args, skiff: &Path, burst: Option<&Burst>, created: Option<&Created>) {
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
