//! One container start and stop: image → overlay rootfs → OCI bundle → shim
//! (`runc create`) → move into the pod's cgroup v2 → `runc start`; and
//! preStop → SIGTERM → grace → SIGKILL → `runc delete` → rootfs unmount.
//! Each start is a new runc container `<pod-uid>-<name>-<restartCount>` with
//! its own directory, so a restart never reuses state of the previous run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;

use crate::context::Ctx;
use crate::env::Lookup;
use crate::events;
use crate::image::{ImageStore, RegistryCredential};
use crate::probe::{self, ProbeStatus, ProbeTasks};
use crate::runtime::bundle::{self, BindMount, ContainerPlan};
use crate::runtime::cgroup::oom_kills;
use crate::runtime::shim::{ExitRecord, CREATED};
use crate::sandbox::{SandboxInfo, SandboxPaths};

/// Why a container could not be started: the waiting reason and message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct StartError {
    pub reason: String,
    pub message: String,
}

impl StartError {
    pub(crate) fn new(reason: &str, message: impl ToString) -> StartError {
        StartError {
            reason: reason.to_string(),
            message: message.to_string(),
        }
    }
}

/// What survives an agent restart about a started container (`meta.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    pub name: String,
    pub init: bool,
    pub attempt: u32,
    pub runc_id: String,
    pub image: String,
    pub image_id: String,
    pub started_at: String,
    pub log_path: PathBuf,
    /// The cgroup file counting OOM kills of this container.
    #[serde(default)]
    pub oom_counter: Option<PathBuf>,
}

/// A started container as the pod worker tracks it.
#[derive(Debug)]
pub struct Record {
    pub meta: Meta,
    pub dir: PathBuf,
    pub exit: Option<ExitRecord>,
    pub probes: Arc<ProbeStatus>,
    pub probe_tasks: Option<ProbeTasks>,
    /// Set when the agent killed it (liveness failure, pod deletion).
    pub kill_reason: Option<String>,
    /// Readiness failures already written as Unhealthy events.
    pub readiness_failures_reported: u32,
}

impl Record {
    /// Refreshes the exit state from the shim's exit file.
    pub fn poll_exit(&mut self) -> Option<&ExitRecord> {
        if self.exit.is_none() {
            self.exit = ExitRecord::read(&self.dir.join("exit"));
            if self.exit.is_some() {
                self.probe_tasks = None;
                // The cgroup is still there: `runc delete` comes after this.
                let oom = self.meta.oom_counter.as_deref().and_then(oom_kills);
                if self.kill_reason.is_none() && oom.is_some_and(|n| n > 0) {
                    self.kill_reason = Some("OOMKilled".into());
                }
            }
        }
        self.exit.as_ref()
    }

    /// Loads a record from a container directory (adoption after a restart).
    pub fn load(dir: &Path) -> Option<Record> {
        let meta: Meta =
            serde_json::from_slice(&std::fs::read(dir.join("meta.json")).ok()?).ok()?;
        let mut rec = Record {
            meta,
            dir: dir.to_path_buf(),
            exit: None,
            probes: Arc::new(ProbeStatus::default()),
            probe_tasks: None,
            kill_reason: None,
            readiness_failures_reported: 0,
        };
        rec.poll_exit();
        Some(rec)
    }
}

/// `uid[:gid]` of an image `USER`, names resolved in the rootfs' passwd/group.
fn image_user(user: &str, rootfs: &Path) -> (u32, u32) {
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let lookup_user = |name: &str| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == name)
                .then(|| (f[2].parse().unwrap_or(0), f[3].parse().unwrap_or(0)))
        })
    };
    let (uid, mut gid) = match u.parse::<u32>() {
        Ok(n) => (n, n),
        Err(_) => lookup_user(u).unwrap_or((0, 0)),
    };
    if !g.is_empty() {
        gid = g.parse().unwrap_or_else(|_| {
            std::fs::read_to_string(rootfs.join("etc/group"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() > 2 && f[0] == g).then(|| f[2].parse().unwrap_or(0))
                })
                .unwrap_or(0)
        });
    }
    (uid, gid)
}

/// The runc container ID of a container start.
pub fn runc_id(pod_uid: &str, name: &str, attempt: u32) -> String {
    format!("{pod_uid}-{name}-{attempt}")
}

/// Everything `start` needs about the pod.
pub struct PodRef<'a> {
    pub pod: &'a Pod,
    pub uid: &'a str,
    pub pod_dir: &'a Path,
    pub sandbox: &'a SandboxInfo,
    pub lookup: &'a Lookup,
    pub creds: &'a [RegistryCredential],
}

/// Starts `container` as restart number `attempt`.
pub async fn start(
    ctx: &Ctx,
    p: &PodRef<'_>,
    container: &Container,
    init: bool,
    attempt: u32,
) -> Result<Record, StartError> {
    let image_name = container.image.clone().unwrap_or_default();
    let image = crate::pull::pull_image(ctx, p.pod, container, init, p.creds).await?;
    let id = runc_id(p.uid, &container.name, attempt);
    let dir = p
        .pod_dir
        .join("containers")
        .join(format!("{}-{attempt}", container.name));
    // A leftover from a start that crashed half-way is cleared first.
    let _ = ctx.runc.delete(&id).await;
    let _ = ImageStore::unmount_rootfs(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| StartError::new("CreateContainerError", e))?;
    let rootfs = ctx
        .images
        .mount_rootfs(&image, &dir)
        .map_err(|e| StartError::new("CreateContainerError", e))?;
    let env = crate::env::build(p.pod, container, &image.config.env, p.lookup)
        .await
        .map_err(|e| StartError::new("CreateContainerConfigError", e))?;
    let vars: BTreeMap<String, String> = env
        .iter()
        .filter_map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let expand = |v: &Vec<String>| -> Vec<String> {
        v.iter().map(|s| crate::env::expand(s, &vars)).collect()
    };
    let args = match (&container.command, &container.args) {
        (Some(cmd), args) => [expand(cmd), expand(&args.clone().unwrap_or_default())].concat(),
        (None, Some(args)) => [image.config.entrypoint.clone(), expand(args)].concat(),
        (None, None) => [image.config.entrypoint.clone(), image.config.cmd.clone()].concat(),
    };
    if args.is_empty() {
        return Err(StartError::new(
            "CreateContainerError",
            "no command specified: the container has no command and the image no entrypoint/cmd",
        ));
    }
    let pod_spec = p.pod.spec.clone().unwrap_or_default();
    let psc = pod_spec.security_context.clone().unwrap_or_default();
    let sc = container.security_context.clone().unwrap_or_default();
    let (img_uid, img_gid) = image
        .config
        .user
        .as_deref()
        .filter(|u| !u.is_empty())
        .map_or((0, 0), |u| image_user(u, &rootfs));
    let uid = sc
        .run_as_user
        .or(psc.run_as_user)
        .map_or(img_uid, |u| u as u32);
    let gid = sc
        .run_as_group
        .or(psc.run_as_group)
        .map_or(img_gid, |g| g as u32);
    let mut additional_gids: Vec<u32> = psc
        .supplemental_groups
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|g| g as u32)
        .collect();
    additional_gids.extend(psc.fs_group.map(|g| g as u32));
    let mut mounts = crate::volume::mounts(p.pod, p.pod_dir, container)
        .map_err(|e| StartError::new("CreateContainerConfigError", e))?;
    let sb = SandboxPaths::new(p.pod_dir);
    for (src, dst) in [
        (sb.hosts(), "/etc/hosts"),
        (sb.hostname(), "/etc/hostname"),
        (sb.resolv_conf(), "/etc/resolv.conf"),
    ] {
        if !mounts.iter().any(|m| m.destination == dst) {
            mounts.push(BindMount {
                source: src,
                destination: dst.into(),
                readonly: false,
            });
        }
    }
    let res = container.resources.clone().unwrap_or_default();
    let q =
        |m: &Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
         k: &str| { m.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone()) };
    let caps = sc.capabilities.clone().unwrap_or_default();
    let log_dir = crate::logs::pod_dir(
        &ctx.log_root(),
        p.pod.metadata.namespace.as_deref().unwrap_or("default"),
        p.pod.metadata.name.as_deref().unwrap_or(""),
        p.uid,
    )
    .join(&container.name);
    std::fs::create_dir_all(&log_dir).map_err(|e| StartError::new("CreateContainerError", e))?;
    let log_path = log_dir.join(format!("{attempt}.log"));
    let mut annotations = BTreeMap::new();
    annotations.insert("io.kubernetes.pod.uid".to_string(), p.uid.to_string());
    annotations.insert(
        "io.kubernetes.container.name".to_string(),
        container.name.clone(),
    );
    let plan = ContainerPlan {
        id: id.clone(),
        rootfs,
        args,
        env,
        cwd: container
            .working_dir
            .clone()
            .or(image.config.working_dir.clone())
            .unwrap_or_else(|| "/".into()),
        uid,
        gid,
        additional_gids,
        readonly_rootfs: sc.read_only_root_filesystem == Some(true),
        privileged: sc.privileged == Some(true),
        add_capabilities: caps.add.unwrap_or_default(),
        drop_capabilities: caps.drop.unwrap_or_default(),
        mounts,
        netns: sb.netns(),
        ipcns: sb.ipcns(),
        utsns: sb.utsns(),
        cgroups_path: ctx.cgroups.container_path(p.uid, &id),
        annotations,
        memory_limit: q(&res.limits, "memory")
            .as_deref()
            .and_then(crate::quantity::bytes),
        cpu_limit_millis: q(&res.limits, "cpu")
            .as_deref()
            .and_then(crate::quantity::cpu_millis),
        cpu_request_millis: q(&res.requests, "cpu")
            .or(q(&res.limits, "cpu"))
            .as_deref()
            .and_then(crate::quantity::cpu_millis),
    };
    bundle::write(&dir, &plan).map_err(|e| StartError::new("CreateContainerError", e))?;
    let pid_file = dir.join("init.pid");
    let event = |type_: &str, reason: &str, message: String| {
        ctx.events
            .container(p.pod, &container.name, init, type_, reason, message)
    };
    if let Err(e) = spawn_shim(ctx, &id, &dir, &log_path, &pid_file).await {
        event(events::WARNING, "Failed", format!("Error: {}", e.message));
        return Err(e);
    }
    event(
        events::NORMAL,
        "Created",
        format!("Created container: {}", container.name),
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| StartError::new("CreateContainerError", "runc wrote no init PID"))?;
    if let Err(e) = ctx.cgroups.enter_v2(p.uid, pid) {
        let _ = ctx.runc.delete(&id).await;
        return Err(StartError::new("CreateContainerError", e));
    }
    if let Err(e) = ctx.runc.start(&id).await {
        let _ = ctx.runc.delete(&id).await;
        event(events::WARNING, "Failed", format!("Error: {e}"));
        return Err(StartError::new("RunContainerError", e));
    }
    event(
        events::NORMAL,
        "Started",
        format!("Started container {}", container.name),
    );
    let meta = Meta {
        name: container.name.clone(),
        init,
        attempt,
        runc_id: id.clone(),
        image: image_name,
        image_id: if image.repo_digest.is_empty() {
            image.id.clone()
        } else {
            image.repo_digest.clone()
        },
        started_at: jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .map(|t| t.to_string())
            .unwrap_or_default(),
        log_path,
        oom_counter: ctx.cgroups.oom_counter(p.uid, &id),
    };
    let meta_path = dir.join("meta.json");
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap_or_default())
        .map_err(|e| StartError::new("RunContainerError", e))?;
    let mut rec = Record {
        meta,
        dir,
        exit: None,
        probes: Arc::new(ProbeStatus::default()),
        probe_tasks: None,
        kill_reason: None,
        readiness_failures_reported: 0,
    };
    if !init {
        start_probes(ctx, &mut rec, container, p.sandbox);
    }
    Ok(rec)
}

/// Starts the probes of a running (or adopted) container.
pub fn start_probes(ctx: &Ctx, rec: &mut Record, container: &Container, sandbox: &SandboxInfo) {
    let target = probe::Target {
        runc: ctx.runc.clone(),
        runc_id: rec.meta.runc_id.clone(),
        pod_ip: sandbox.ips.first().copied(),
        node_netns: ctx.node_netns.clone(),
        ports: container.ports.clone().unwrap_or_default(),
    };
    rec.probe_tasks = Some(probe::start(
        container.startup_probe.clone(),
        container.liveness_probe.clone(),
        container.readiness_probe.clone(),
        target,
        rec.probes.clone(),
    ));
}

async fn spawn_shim(
    ctx: &Ctx,
    id: &str,
    dir: &Path,
    log_path: &Path,
    pid_file: &Path,
) -> Result<(), StartError> {
    let Some((prog, prefix)) = ctx.shim_command.split_first() else {
        return Err(StartError::new(
            "CreateContainerError",
            "no shim command configured",
        ));
    };
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(prefix)
        .arg("--shim-log")
        .arg(log_path)
        .arg("--shim-exit")
        .arg(dir.join("exit"))
        .arg("--shim-pid-file")
        .arg(pid_file)
        .arg("--")
        .args(ctx.runc.create_command(id, dir, pid_file))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = cmd
        .spawn()
        .map_err(|e| StartError::new("CreateContainerError", format!("starting the shim: {e}")))?;
    let Some(out) = child.stdout.take() else {
        return Err(StartError::new(
            "CreateContainerError",
            "shim has no stdout",
        ));
    };
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(out);
    let read = tokio::time::timeout(Duration::from_secs(60), reader.read_line(&mut line)).await;
    if matches!(read, Ok(Ok(_))) && line.trim() == CREATED {
        return Ok(());
    }
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    let rendered = crate::logs::render(log.as_bytes(), false);
    let detail: String = rendered
        .split(|b| *b == b'\n')
        .rfind(|l| !l.is_empty())
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .unwrap_or_default();
    Err(StartError::new(
        "RunContainerError",
        format!("{} {detail}", line.trim()),
    ))
}

/// How long to wait for a killed container's exit.
const KILL_WAIT: Duration = Duration::from_secs(10);

async fn wait_exit(rec: &mut Record, until: Instant) -> bool {
    while Instant::now() < until {
        if rec.poll_exit().is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rec.poll_exit().is_some()
}

async fn run_hook(
    ctx: &Ctx,
    rec: &Record,
    hook: &LifecycleHandler,
    sandbox: Option<&SandboxInfo>,
    deadline: Instant,
) {
    let left = deadline.saturating_duration_since(Instant::now());
    if let Some(exec) = &hook.exec {
        let cmd = exec.command.clone().unwrap_or_default();
        let _ = ctx.runc.exec(&rec.meta.runc_id, &cmd, left).await;
    } else if let Some(http) = &hook.http_get {
        let probe = k8s_openapi::api::core::v1::Probe {
            http_get: Some(http.clone()),
            timeout_seconds: Some(left.as_secs().max(1) as i32),
            ..Default::default()
        };
        let target = probe::Target {
            runc: ctx.runc.clone(),
            runc_id: rec.meta.runc_id.clone(),
            pod_ip: sandbox.and_then(|s| s.ips.first().copied()),
            node_netns: ctx.node_netns.clone(),
            ports: Vec::new(),
        };
        let _ = tokio::time::timeout(left, probe::run_once(&probe, &target)).await;
    } else if let Some(sleep) = &hook.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(left)).await;
    }
}

/// Stops a container: preStop, SIGTERM, up to `grace`, SIGKILL.
pub async fn stop(
    ctx: &Ctx,
    rec: &mut Record,
    container: Option<&Container>,
    sandbox: Option<&SandboxInfo>,
    grace: Duration,
    reason: &str,
) {
    rec.probe_tasks = None;
    if rec.poll_exit().is_some() {
        return;
    }
    rec.kill_reason.get_or_insert_with(|| reason.to_string());
    let deadline = Instant::now() + grace;
    if let Some(hook) = container
        .and_then(|c| c.lifecycle.as_ref())
        .and_then(|l| l.pre_stop.as_ref())
    {
        run_hook(ctx, rec, hook, sandbox, deadline).await;
    }
    let id = rec.meta.runc_id.clone();
    if ctx.runc.kill(&id, "TERM", false).await.is_ok() && wait_exit(rec, deadline).await {
        return;
    }
    let _ = ctx.runc.kill(&id, "KILL", true).await;
    if !wait_exit(rec, Instant::now() + KILL_WAIT).await {
        // No exit file: the shim is gone. runc's own view decides.
        if !matches!(ctx.runc.state(&id).await, Ok(Some(s)) if s.status == "running") {
            rec.exit = Some(ExitRecord {
                exit_code: 137,
                signal: Some(9),
                finished_at: crate::logs::now_rfc3339(),
            });
        }
    }
}

/// Deletes the runc container and unmounts its rootfs (keeps the log file).
pub async fn remove(ctx: &Ctx, rec: &Record) {
    let _ = ctx.runc.delete(&rec.meta.runc_id).await;
    let _ = ImageStore::unmount_rootfs(&rec.dir);
    let _ = std::fs::remove_dir_all(&rec.dir);
}
