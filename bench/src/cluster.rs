//! `cluster-bench`: a whole `skiff up` cluster (3 node namespaces by default)
//! with the example app scaled to `--replicas` (100): the wall time from
//! `kubectl apply` until every replica is Ready, in the Service's endpoints
//! and answering through the NodePort from the underlay, and the memory of
//! all skiff processes together (server, agents, container shims; PSS, so
//! pages the shims share are counted once). It runs
//! once per proxy mode, so the iptables data plane is the eBPF one's peer in
//! the same invocation, and prints k3s' published figures for scale.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use serde_json::Value;
use skiff_bench::process::{memory, pss};

/// The NodePort examples/web.yaml fixes.
const NODE_PORT: u16 = 30080;
/// How long one cluster may take to start or to roll out the replicas.
const TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Parser)]
#[command(about = "skiff up + a 100-replica Deployment: time to reachable, memory")]
struct Args {
    /// Replicas of the web Deployment.
    #[arg(long, default_value_t = 100)]
    replicas: u32,
    /// Nodes of each cluster.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Proxy modes to run, in order (the first is the ratios' reference).
    #[arg(long, value_delimiter = ',', default_value = "iptables,ebpf")]
    modes: Vec<String>,
    /// The skiff binary (default: next to this executable).
    #[arg(long)]
    skiff: Option<PathBuf>,
}

/// A `skiff up` child, stopped with `skiff down` when dropped.
struct Up {
    skiff: PathBuf,
    dir: tempfile::TempDir,
    child: Child,
}

impl Up {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new(&self.skiff)
            .arg("down")
            .arg("--data-dir")
            .arg(self.data())
            .output();
        let _ = self.child.wait();
    }
}

fn kubectl_path() -> Result<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .context("running python3 to find kubectl (scripts/setup.sh installs it)")?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("kubectl");
    ensure!(
        path.is_file(),
        "no kubectl at {}: run scripts/setup.sh",
        path.display()
    );
    Ok(path)
}

fn kubectl(kubectl: &Path, up: &Up, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut cmd = Command::new(kubectl);
    cmd.arg("--kubeconfig")
        .arg(up.data().join("admin.kubeconfig"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("running kubectl")?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `--prefix` of this run's `n`-th cluster.
fn prefix(n: usize) -> String {
    format!("cb{}x{n}", std::process::id() % 100_000)
}

/// Starts `skiff up` and waits for it to report Ready nodes.
fn start(skiff: &Path, mode: &str, nodes: u32, n: usize) -> Result<Up> {
    let dir = tempfile::Builder::new()
        .prefix("skiff-cluster-bench-")
        .tempdir()?;
    let log = std::fs::File::create(dir.path().join("up.log"))?;
    let port = skiff_bench::process::free_port()?;
    let child = Command::new(skiff)
        .arg("up")
        .args(["--nodes", &nodes.to_string(), "--proxy-mode", mode])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--prefix",
            &format!("cb{}x{n}", std::process::id() % 100_000),
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting skiff up")?;
    let mut up = Up {
        skiff: skiff.to_path_buf(),
        dir,
        child,
    };
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = std::fs::read_to_string(up.dir.path().join("up.log")).unwrap_or_default();
        if text.contains("nodes Ready") {
            return Ok(up);
        }
        if let Some(status) = up.child.try_wait()? {
            bail!("skiff up exited with {status}:\n{text}");
        }
        ensure!(Instant::now() < deadline, "skiff up not ready:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Ready replicas of `web`, and whether the endpoints are exactly them.
fn progress(kc: &Path, up: &Up) -> Result<(usize, bool)> {
    let pods: Value = serde_json::from_str(&kubectl(
        kc,
        up,
        &["get", "pods", "-l", "app=web", "-o", "json"],
        None,
    )?)?;
    let ready: BTreeSet<String> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_string))
        .collect();
    let slices: Value = serde_json::from_str(&kubectl(
        kc,
        up,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "json",
        ],
        None,
    )?)?;
    let endpoints: BTreeSet<String> = slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["conditions"]["ready"] != false)
        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    Ok((ready.len(), endpoints == ready))
}

/// What a skiff process is, from its arguments.
fn role(args: &[&[u8]]) -> &'static str {
    let has = |a: &str| args.contains(&a.as_bytes());
    if has("--shim-log") {
        "shims"
    } else if has("agent") {
        "agents"
    } else if has("server") {
        "server"
    } else {
        "skiff up"
    }
}

/// Memory of every live process with an argument under `dir`, by role:
/// `(role, processes, summed RSS, summed PSS)`.
fn skiff_memory(dir: &Path) -> Vec<(&'static str, usize, u64, u64)> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let mut by_role: Vec<(&'static str, usize, u64, u64)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if !args.iter().any(|a| a.starts_with(needle)) {
            continue;
        }
        let (Ok(m), Some(p)) = (memory(pid), pss(pid)) else {
            continue;
        };
        let r = role(&args);
        match by_role.iter_mut().find(|x| x.0 == r) {
            Some(x) => {
                x.1 += 1;
                x.2 += m.rss;
                x.3 += p;
            }
            None => by_role.push((r, 1, m.rss, p)),
        }
    }
    by_role.sort();
    by_role
}

struct Figures {
    mode: String,
    wall: Duration,
    /// Summed PSS of all skiff processes.
    pss: u64,
    memory: Vec<(&'static str, usize, u64, u64)>,
}

fn run_mode(skiff: &Path, kc: &Path, args: &Args, mode: &str, n: usize) -> Result<Figures> {
    let up = start(skiff, mode, args.nodes, n)?;
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/web.yaml"),
    )?
    .replace("replicas: 3", &format!("replicas: {}", args.replicas));
    let want = usize::try_from(args.replicas)?;
    let started = Instant::now();
    kubectl(kc, &up, &["apply", "-f", "-"], Some(&manifest))?;
    loop {
        let (ready, follows) = progress(kc, &up)?;
        if ready == want && follows {
            break;
        }
        ensure!(
            started.elapsed() < TIMEOUT,
            "{ready}/{want} replicas ready after {TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Reachable through the Service: the NodePort answers from outside the nodes.
    let underlay = format!("{}-underlay", prefix(n));
    loop {
        let ok = Command::new("ip")
            .args(["netns", "exec", &underlay, "curl", "-sf", "-m", "2"])
            .arg(format!("http://192.168.77.11:{NODE_PORT}/"))
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            break;
        }
        ensure!(started.elapsed() < TIMEOUT, "the NodePort does not answer");
        std::thread::sleep(Duration::from_millis(100));
    }
    let wall = started.elapsed();
    let memory = skiff_memory(up.dir.path());
    Ok(Figures {
        mode: mode.to_string(),
        wall,
        pss: memory.iter().map(|m| m.3).sum(),
        memory,
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.replicas > 0 && args.nodes > 0,
        "--replicas and --nodes must be positive"
    );
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
    let kc = kubectl_path()?;
    let mut results = Vec::new();
    for (n, mode) in args.modes.iter().enumerate() {
        let f = run_mode(&skiff, &kc, &args, mode, n)?;
        println!(
            "{:<9} {} replicas on {} nodes Ready and reachable in {:.2} s; all skiff processes: {:.1} MiB PSS",
            f.mode,
            args.replicas,
            args.nodes,
            f.wall.as_secs_f64(),
            mib(f.pss)
        );
        for (role, count, rss, pss) in &f.memory {
            println!(
                "          {role:<9} x{count:<4} {:>8.1} MiB PSS ({:.1} MiB summed RSS, shared pages counted each time)",
                mib(*pss),
                mib(*rss)
            );
        }
        results.push(f);
    }
    if let Some(base) = results.first() {
        for f in &results[1..] {
            println!(
                "{} / {}: time x{:.2}, memory x{:.2}",
                f.mode,
                base.mode,
                f.wall.as_secs_f64() / base.wall.as_secs_f64(),
                f.pss as f64 / base.pss.max(1) as f64
            );
        }
    }
    println!(
        "for scale (published, not measured here): k3s ~1600 MiB for a server with a workload \
         + ~275 MiB per agent = ~{} MiB for {} nodes",
        1600 + 275 * args.nodes,
        args.nodes
    );
    Ok(())
}
