//! `cni-bench`: ADD and DEL latency of `skiff-cni` against the reference
//! `bridge` + `host-local` plugins (Debian `containernetworking-plugins`),
//! same machine, same run, same pod count, equivalent configs.
//!
//! Each plugin runs as a separate process whose whole process sits in its own
//! node namespace, spawned by a long-lived thread that entered it once,
//! exactly as a runtime living there would exec it; the timed part is the
//! plugin's exec, run and exit. Pod namespaces are created before the timed
//! part for both plugins alike: the printed latencies exclude netns creation,
//! whose own cost is printed separately. ADDs of the two plugins alternate pod
//! by pod so machine noise hits both; each run's CPU time (the plugin's and
//! its waited-for children's) is printed too, as it suffers less than wall
//! time from other load on the machine. Nothing is asserted (DESIGN §8); every
//! namespace is deleted on exit, also when the run fails midway. By default
//! it measures the binary users install, the static build of
//! scripts/build-cni.sh (the reference plugins are static Go binaries too),
//! and its first line says which binary ran.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use nix::sys::resource::{getrusage, UsageWho};
use serde_json::{json, Value};
use skiff_bench::stats::{ms, percentile};
use skiff_cni::Netns;

/// Where Debian installs the reference plugins.
const REF_DIR: &str = "/usr/lib/cni";
/// Issue 4's goal: skiff ADD at least this many times faster than the reference.
const ADD_GOAL: f64 = 5.0;

#[derive(Parser)]
#[command(about = "skiff-cni vs reference bridge+host-local: ADD/DEL p50/p99 (run as root)")]
struct Args {
    /// Pods added (then deleted) per plugin.
    #[arg(long, default_value_t = 200)]
    pods: usize,
    /// Turn on ipMasq for both plugins (adds iptables to every ADD and DEL).
    #[arg(long)]
    ip_masq: bool,
    /// The skiff-cni binary; default: the static build of
    /// scripts/build-cni.sh (target/<host triple>/release/skiff-cni) when it
    /// exists, else the one next to this benchmark's binary.
    #[arg(long)]
    plugin: Option<PathBuf>,
}

/// Network namespaces deleted on drop.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn add(&mut self, name: &str) -> Result<Duration> {
        let start = Instant::now();
        let out = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .context("running ip netns add")?;
        ensure!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.0.push(name.to_string());
        Ok(start.elapsed())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.0.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(name)
}

/// What one plugin run cost.
struct Cost {
    /// Exec to exit, as the runtime waits for it.
    wall: Duration,
    /// CPU time (user + system) of the plugin and of the children it waited
    /// for (the reference bridge runs host-local): less disturbed by other
    /// load on the machine than wall time.
    cpu: Duration,
}

/// One command to run: the prepared plugin command, its stdin, and where to
/// send its cost and output.
type Job = (
    Command,
    String,
    mpsc::Sender<std::io::Result<(Cost, Output)>>,
);

/// A thread that entered a node namespace once and runs plugin commands from
/// there, as a runtime living in that namespace would: nothing but the
/// plugin's own exec, run and exit is inside the timed part.
struct Launcher {
    jobs: Option<mpsc::Sender<Job>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Launcher {
    fn new(node: Netns) -> Launcher {
        let (tx, rx) = mpsc::channel::<Job>();
        let worker = std::thread::spawn(move || {
            let _ = node.run(move || {
                for (mut cmd, input, reply) in rx {
                    let _ = reply.send(time(&mut cmd, &input));
                }
            });
        });
        Launcher {
            jobs: Some(tx),
            worker: Some(worker),
        }
    }

    fn run(&self, cmd: Command, input: &str) -> Result<(Cost, Output)> {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .context("launcher stopped")?
            .send((cmd, input.to_string(), tx))
            .ok()
            .context("the launcher thread is gone (could it enter the namespace?)")?;
        Ok(rx.recv().context("the launcher thread is gone")??)
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn time(cmd: &mut Command, input: &str) -> std::io::Result<(Cost, Output)> {
    // Children's CPU time grows by exactly this child's once it is reaped:
    // one command runs at a time, and nothing else of this process has
    // children then.
    let before = children_cpu()?;
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let wall = start.elapsed();
    let cpu = children_cpu()?.saturating_sub(before);
    Ok((Cost { wall, cpu }, out))
}

/// User + system time of every reaped child of this process.
fn children_cpu() -> std::io::Result<Duration> {
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).map_err(std::io::Error::from)?;
    let d = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec().max(0) as u64)
            + Duration::from_micros(t.tv_usec().max(0) as u64)
    };
    Ok(d(u.user_time()) + d(u.system_time()))
}

struct Plugin {
    label: &'static str,
    bin: PathBuf,
    launcher: Launcher,
    conf: String,
    cni_path: String,
}

impl Plugin {
    /// Runs one command for pod `i`; returns what it cost.
    fn run(&self, command: &str, i: usize, pod: &Path) -> Result<Cost> {
        let mut cmd = Command::new(&self.bin);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("bench{i}"))
            .env("CNI_NETNS", pod)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (took, out) = self
            .launcher
            .run(cmd, &self.conf)
            .with_context(|| format!("running {}", self.bin.display()))?;
        if !out.status.success() {
            bail!(
                "{} {command} for pod {i} failed: {}{}",
                self.label,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(took)
    }
}

/// The skiff-cni binary to measure and how it was chosen.
fn plugin_binary(args: &Args) -> Result<(PathBuf, &'static str)> {
    if let Some(p) = &args.plugin {
        return Ok((p.clone(), "--plugin"));
    }
    // target/release/cni-bench → target/
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .context("the benchmark binary has no directory")?;
    let target_dir = profile_dir.parent().unwrap_or(profile_dir);
    // What users install: the static build, like the reference plugins (static Go binaries).
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let shipped = target_dir.join(triple).join("release").join("skiff-cni");
    let bin = profile_dir.join("skiff-cni");
    if shipped.is_file() {
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        if modified(&bin) > modified(&shipped) {
            eprintln!(
                "note: {} is older than {}: run scripts/build-cni.sh to measure the current code",
                shipped.display(),
                bin.display()
            );
        }
        return Ok((shipped, "static build of scripts/build-cni.sh"));
    }
    ensure!(
        bin.is_file(),
        "{} not found: build it first (scripts/build-cni.sh, or cargo build --release -p skiff-cni) or pass --plugin",
        bin.display()
    );
    Ok((
        bin,
        "dynamically linked cargo build; scripts/build-cni.sh makes the static one users get",
    ))
}

fn conf(kind: &str, bridge: &str, subnet: &str, data: &Path, ip_masq: bool) -> String {
    let ipam_type = if kind == "skiff" {
        "skiff"
    } else {
        "host-local"
    };
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": format!("bench-{kind}"),
        "type": kind,
        "bridge": bridge,
        "mtu": 1400,
        "hairpinMode": true,
        "ipMasq": ip_masq,
        "ipam": {"type": ipam_type, "ranges": [[{"subnet": subnet}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data},
    });
    if kind == "bridge" {
        // The reference bridge only puts the gateway on the bridge when asked.
        c["isGateway"] = Value::Bool(true);
    }
    c.to_string()
}

fn line(name: &str, d: &[Duration]) -> String {
    format!(
        "{name:<26} p50 {:>7.2} ms   p99 {:>7.2} ms",
        ms(percentile(d, 0.50)),
        ms(percentile(d, 0.99))
    )
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        is_root(),
        "cni-bench creates network namespaces: run it as root"
    );
    ensure!(
        Path::new(REF_DIR).join("bridge").is_file(),
        "install containernetworking-plugins ({REF_DIR}/bridge missing)"
    );
    ensure!(
        args.pods <= 250,
        "at most 250 pods: each plugin uses one /24"
    );
    let (bin, chosen) = plugin_binary(&args)?;
    let prefix = format!("skbench{}", std::process::id());
    let data = tempfile::tempdir()?;
    let mut ns = Namespaces(Vec::new());
    ns.add(&format!("{prefix}-skiff"))?;
    ns.add(&format!("{prefix}-ref"))?;
    let mut netns_cost = Vec::new();
    for i in 0..args.pods {
        netns_cost.push(ns.add(&format!("{prefix}-s{i}"))?);
        netns_cost.push(ns.add(&format!("{prefix}-r{i}"))?);
    }
    let plugins = [
        Plugin {
            label: "skiff",
            bin,
            launcher: Launcher::new(Netns::open(netns_path(&format!("{prefix}-skiff")))?),
            conf: conf(
                "skiff",
                "skb0",
                "10.250.0.0/24",
                &data.path().join("skiff"),
                args.ip_masq,
            ),
            cni_path: REF_DIR.to_string(),
        },
        Plugin {
            label: "bridge+host-local",
            bin: Path::new(REF_DIR).join("bridge"),
            launcher: Launcher::new(Netns::open(netns_path(&format!("{prefix}-ref")))?),
            conf: conf(
                "bridge",
                "refbr0",
                "10.251.0.0/24",
                &data.path().join("ref"),
                args.ip_masq,
            ),
            cni_path: REF_DIR.to_string(),
        },
    ];
    let pod =
        |p: usize, i: usize| netns_path(&format!("{prefix}-{}{i}", if p == 0 { "s" } else { "r" }));

    let mut add = [Vec::new(), Vec::new()];
    let mut add_cpu = [Vec::new(), Vec::new()];
    let mut del = [Vec::new(), Vec::new()];
    for i in 0..args.pods {
        for (p, plugin) in plugins.iter().enumerate() {
            let cost = plugin.run("ADD", i, &pod(p, i))?;
            add[p].push(cost.wall);
            add_cpu[p].push(cost.cpu);
        }
    }
    for i in 0..args.pods {
        for (p, plugin) in plugins.iter().enumerate() {
            del[p].push(plugin.run("DEL", i, &pod(p, i))?.wall);
        }
    }
    for v in add
        .iter_mut()
        .chain(del.iter_mut())
        .chain(add_cpu.iter_mut())
    {
        v.sort_unstable();
    }
    netns_cost.sort_unstable();

    println!(
        "cni-bench: {} pods per plugin, ipMasq {}, skiff-cni {} ({chosen})",
        args.pods,
        args.ip_masq,
        plugins[0].bin.display()
    );
    println!(
        "timings exclude netns creation for both plugins (created beforehand; its cost is below)"
    );
    println!("{}", line("netns creation (ip netns add)", &netns_cost));
    for (p, plugin) in plugins.iter().enumerate() {
        println!("{}", line(&format!("{} ADD", plugin.label), &add[p]));
        println!("{}", line(&format!("{} DEL", plugin.label), &del[p]));
    }
    for (p, plugin) in plugins.iter().enumerate() {
        println!(
            "{}",
            line(&format!("{} ADD CPU", plugin.label), &add_cpu[p])
        );
    }
    let ratio =
        |v: &[Vec<Duration>; 2], q| ms(percentile(&v[1], q)) / ms(percentile(&v[0], q)).max(1e-9);
    println!(
        "ratio reference/skiff: ADD p50 {:.1}x  p99 {:.1}x   DEL p50 {:.1}x  p99 {:.1}x",
        ratio(&add, 0.50),
        ratio(&add, 0.99),
        ratio(&del, 0.50),
        ratio(&del, 0.99)
    );
    println!(
        "ratio reference/skiff, CPU time per ADD: p50 {:.1}x",
        ratio(&add_cpu, 0.50)
    );
    let with_netns = |v: &[Duration]| ms(percentile(v, 0.50)) + ms(percentile(&netns_cost, 0.50));
    println!(
        "ratio with netns creation added to both: ADD p50 {:.1}x",
        with_netns(&add[1]) / with_netns(&add[0]).max(1e-9)
    );
    let met = ratio(&add, 0.50) >= ADD_GOAL;
    println!(
        "goal: skiff ADD >= {ADD_GOAL}x faster (p50): {}",
        if met { "met" } else { "not met" }
    );
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
