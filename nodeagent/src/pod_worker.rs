//! One task per pod: drives the pod toward its spec (sandbox, volumes, init
//! containers in order, containers with restartPolicy and CrashLoopBackOff,
//! liveness kills), reports status, and on deletion terminates gracefully,
//! removes everything the pod had on the node and deletes the Pod object with
//! gracePeriodSeconds=0, as the kubelet does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::Api;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::container::{self, PodRef, Record};
use crate::context::Ctx;
use crate::env::Lookup;
use crate::events;
use crate::sandbox::{self, SandboxInfo, SandboxPaths};
use crate::status::{self, Slot, View};

/// First CrashLoopBackOff delay.
pub const BACKOFF_START: Duration = Duration::from_secs(10);
/// Longest CrashLoopBackOff delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long resets its back-off.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How often volumes from ConfigMaps/Secrets are refreshed.
const VOLUME_REFRESH: Duration = Duration::from_secs(10);
/// Sync period when nothing changes.
const RESYNC: Duration = Duration::from_millis(500);

/// The worker's view of one pod.
pub struct Worker {
    ctx: Arc<Ctx>,
    uid: String,
    pod_dir: PathBuf,
    sandbox: Option<SandboxInfo>,
    network_released: bool,
    slots: BTreeMap<String, Slot>,
    init_slots: BTreeMap<String, Slot>,
    init_failed: bool,
    start_time: String,
    cond_times: BTreeMap<String, (bool, String)>,
    last_status: Option<Value>,
    last_volume_sync: Option<Instant>,
    /// When the last FailedMount event was written (one per refresh period).
    last_mount_event: Option<Instant>,
}

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

impl Worker {
    /// A worker for pod `uid`, adopting whatever an earlier agent left on disk.
    pub fn new(ctx: Arc<Ctx>, uid: String, pod: &Pod) -> Worker {
        let pod_dir = ctx.pod_dir(&uid);
        let mut w = Worker {
            sandbox: SandboxPaths::new(&pod_dir).load(),
            ctx,
            uid,
            pod_dir,
            network_released: false,
            slots: BTreeMap::new(),
            init_slots: BTreeMap::new(),
            init_failed: false,
            start_time: pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0.to_string())
                .unwrap_or_else(now),
            cond_times: BTreeMap::new(),
            last_status: None,
            last_volume_sync: None,
            last_mount_event: None,
        };
        w.adopt(pod);
        w
    }

    /// Rebuilds container records from `<pod-dir>/containers/*/meta.json`.
    fn adopt(&mut self, pod: &Pod) {
        let Ok(entries) = std::fs::read_dir(self.pod_dir.join("containers")) else {
            return;
        };
        let mut recs: Vec<Record> = entries
            .flatten()
            .filter_map(|e| Record::load(&e.path()))
            .collect();
        recs.sort_by_key(|r| r.meta.attempt);
        let spec = pod.spec.clone().unwrap_or_default();
        for mut rec in recs {
            let slots = if rec.meta.init {
                &mut self.init_slots
            } else {
                &mut self.slots
            };
            let slot = slots.entry(rec.meta.name.clone()).or_default();
            slot.restart_count = rec.meta.attempt;
            if !rec.meta.init && rec.exit.is_none() {
                if let (Some(c), Some(sb)) = (
                    spec.containers.iter().find(|c| c.name == rec.meta.name),
                    self.sandbox.as_ref(),
                ) {
                    container::start_probes(&self.ctx, &mut rec, c, sb);
                }
            }
            slot.previous = slot.current.replace(rec);
        }
        if !self.slots.is_empty() || !self.init_slots.is_empty() {
            tracing::info!(pod = %self.uid, "adopted containers left by an earlier agent");
        }
    }

    fn pod_api(&self, pod: &Pod) -> Api<Pod> {
        Api::namespaced(
            self.ctx.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        )
    }

    /// Runs until the pod is gone from the node.
    pub async fn run(mut self, mut rx: watch::Receiver<Option<Pod>>) {
        let mut last_pod: Option<Pod> = None;
        loop {
            let current = rx.borrow_and_update().clone();
            match current {
                Some(pod) if pod.metadata.deletion_timestamp.is_none() => {
                    self.sync(&pod).await;
                    last_pod = Some(pod);
                }
                Some(pod) => {
                    let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(30);
                    self.terminate(&pod, Duration::from_secs(grace.max(0) as u64))
                        .await;
                    let api = self.pod_api(&pod);
                    let dp = DeleteParams {
                        grace_period_seconds: Some(0),
                        preconditions: Some(Preconditions {
                            uid: Some(self.uid.clone()),
                            resource_version: None,
                        }),
                        ..Default::default()
                    };
                    if let Some(name) = &pod.metadata.name {
                        if let Err(e) = api.delete(name, &dp).await {
                            tracing::debug!(pod = %name, "final delete: {e}");
                        }
                    }
                    return;
                }
                None => {
                    // Deleted from the API without us (force delete): stop at once.
                    if let Some(pod) = last_pod.take() {
                        self.terminate(&pod, Duration::from_secs(2)).await;
                    } else {
                        self.cleanup().await;
                    }
                    return;
                }
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(RESYNC) => {}
            }
        }
    }

    async fn sync(&mut self, pod: &Pod) {
        let lookup = Lookup::new(
            self.ctx.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let due = self
            .last_volume_sync
            .is_none_or(|t| t.elapsed() >= VOLUME_REFRESH);
        let mut blocked: Option<(String, String)> = None;
        if due {
            match crate::volume::sync(pod, &self.pod_dir, &lookup).await {
                Ok(()) => self.last_volume_sync = Some(Instant::now()),
                Err(e) => {
                    if self
                        .last_mount_event
                        .is_none_or(|t| t.elapsed() >= VOLUME_REFRESH)
                    {
                        self.last_mount_event = Some(Instant::now());
                        self.ctx.events.pod(
                            pod,
                            events::WARNING,
                            "FailedMount",
                            format!("MountVolume.SetUp failed: {e}"),
                        );
                    }
                    blocked = Some(("CreateContainerConfigError".into(), e.to_string()))
                }
            }
        }
        let terminal = matches!(
            self.last_status.as_ref().and_then(|s| s["phase"].as_str()),
            Some("Succeeded" | "Failed")
        );
        if self.sandbox.is_none() && blocked.is_none() && !terminal {
            let node = self.ctx.node_netns();
            let host = sandbox::HostNet {
                netns: self
                    .ctx
                    .node_netns
                    .clone()
                    .unwrap_or_else(|| "/proc/self/ns/net".into()),
                ip: self.ctx.host_ip,
            };
            let created = match node {
                Ok(node) => sandbox::create(
                    &SandboxPaths::new(&self.pod_dir),
                    pod,
                    &self.ctx.netconf,
                    &node,
                    &self.ctx.dns,
                    &host,
                )
                .await
                .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match created {
                Ok(info) => self.sandbox = Some(info),
                Err(e) => {
                    tracing::warn!(pod = %self.uid, "sandbox: {e}");
                    blocked = Some(("ContainerCreating".into(), e));
                }
            }
        }
        if let (Some(sb), None, false) = (self.sandbox.clone(), &blocked, terminal) {
            let creds = crate::pull::pull_credentials(pod, &lookup).await;
            let (uid, pod_dir) = (self.uid.clone(), self.pod_dir.clone());
            let p = PodRef {
                pod,
                uid: &uid,
                pod_dir: &pod_dir,
                sandbox: &sb,
                lookup: &lookup,
                creds: &creds,
            };
            self.sync_containers(pod, &p).await;
        }
        if let Some((reason, message)) = blocked {
            for c in &pod.spec.clone().unwrap_or_default().containers {
                let slot = self.slots.entry(c.name.clone()).or_default();
                if slot.current.is_none() {
                    slot.waiting = Some((reason.clone(), message.clone()));
                }
            }
        }
        self.report(pod).await;
        let now_terminal = matches!(
            self.last_status.as_ref().and_then(|s| s["phase"].as_str()),
            Some("Succeeded" | "Failed")
        );
        if now_terminal && !self.network_released {
            // A finished pod keeps its logs but gives its address back.
            self.network_released = true;
            self.release_network().await;
        }
    }

    fn initialized(&self, pod: &Pod) -> bool {
        pod.spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten()
            .all(|c| self.init_slots.get(&c.name).and_then(Slot::exit_code) == Some(0))
    }

    async fn sync_containers(&mut self, pod: &Pod, p: &PodRef<'_>) {
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        for c in spec.init_containers.iter().flatten() {
            let slot = self.init_slots.entry(c.name.clone()).or_default();
            if let Some(r) = slot.current.as_mut() {
                r.poll_exit();
            }
            match (slot.running(), slot.exit_code()) {
                (true, _) => return,
                (false, Some(0)) => continue,
                (false, Some(_)) if policy == "Never" => {
                    self.init_failed = true;
                    return;
                }
                _ => {
                    start_or_backoff(&self.ctx, p, c, true, slot).await;
                    return;
                }
            }
        }
        for c in &spec.containers {
            let slot = self.slots.entry(c.name.clone()).or_default();
            if let Some(r) = slot.current.as_mut() {
                r.poll_exit();
                let failures = r.probes.readiness_failures.load(Ordering::SeqCst);
                if r.exit.is_none() && failures > r.readiness_failures_reported {
                    r.readiness_failures_reported = failures;
                    self.ctx.events.container(
                        pod,
                        &c.name,
                        false,
                        events::WARNING,
                        "Unhealthy",
                        "Readiness probe failed",
                    );
                }
                if r.exit.is_none() && r.probes.failed.load(Ordering::SeqCst) {
                    let why = r.probes.failed_by.get().cloned().unwrap_or_default();
                    tracing::info!(pod = %p.uid, container = %c.name, "{why}, restarting");
                    let probe = if why.starts_with("Startup") {
                        "startup"
                    } else {
                        "liveness"
                    };
                    let ev = &self.ctx.events;
                    ev.container(
                        pod,
                        &c.name,
                        false,
                        events::WARNING,
                        "Unhealthy",
                        why.clone(),
                    );
                    ev.container(
                        pod,
                        &c.name,
                        false,
                        events::NORMAL,
                        "Killing",
                        format!(
                            "Container {} failed {probe} probe, will be restarted",
                            c.name
                        ),
                    );
                    let grace = Duration::from_secs(
                        spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64,
                    );
                    container::stop(&self.ctx, r, Some(c), Some(p.sandbox), grace, &why).await;
                }
            }
            if slot.running() {
                continue;
            }
            let restart = match slot.exit_code() {
                None => true,
                Some(code) => policy == "Always" || (policy == "OnFailure" && code != 0),
            };
            if restart {
                start_or_backoff(&self.ctx, p, c, false, slot).await;
            } else {
                slot.waiting = None;
            }
        }
    }

    /// Computes the status and PATCHes it when it changed.
    async fn report(&mut self, pod: &Pod) {
        let initialized = self.initialized(pod);
        let view = View {
            pod,
            sandbox: self.sandbox.as_ref(),
            slots: &self.slots,
            init_slots: &self.init_slots,
            host_ip: self.ctx.host_ip.to_string(),
            start_time: &self.start_time,
            initialized,
            init_failed: self.init_failed,
        };
        let status = status::pod_status(&view, &mut self.cond_times);
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        let Some(name) = pod.metadata.name.as_deref() else {
            return;
        };
        let patch = json!({"status": status});
        match self
            .pod_api(pod)
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => self.last_status = Some(status),
            Err(e) => tracing::warn!(pod = %name, "status update: {e}"),
        }
    }

    async fn release_network(&mut self) {
        if let Ok(node) = self.ctx.node_netns() {
            let paths = SandboxPaths::new(&self.pod_dir);
            if let Err(e) = sandbox::remove(&paths, &self.uid, &self.ctx.netconf, &node).await {
                tracing::warn!(pod = %self.uid, "{e}");
            }
        }
    }

    /// Graceful termination of every container, then [`Self::cleanup`].
    async fn terminate(&mut self, pod: &Pod, grace: Duration) {
        let spec = pod.spec.clone().unwrap_or_default();
        let ctx = self.ctx.clone();
        let sandbox = self.sandbox.clone();
        let stops = self
            .slots
            .iter_mut()
            .chain(self.init_slots.iter_mut())
            .filter_map(|(name, slot)| {
                let c: Option<&Container> = spec.containers.iter().find(|c| &c.name == name);
                let rec = slot.current.as_mut()?;
                if rec.poll_exit().is_none() {
                    ctx.events.container(
                        pod,
                        name,
                        rec.meta.init,
                        events::NORMAL,
                        "Killing",
                        format!("Stopping container {name}"),
                    );
                }
                Some(container::stop(
                    &ctx,
                    rec,
                    c,
                    sandbox.as_ref(),
                    grace,
                    "Killing",
                ))
            });
        futures::future::join_all(stops).await;
        self.cleanup().await;
    }

    /// Removes everything of the pod: containers, mounts, sandbox (CNI DEL),
    /// volumes, cgroups, the pod and log directories. Idempotent.
    async fn cleanup(&mut self) {
        let mut recs: Vec<Record> = Vec::new();
        for slot in self.slots.values_mut().chain(self.init_slots.values_mut()) {
            recs.extend(slot.current.take());
            recs.extend(slot.previous.take());
        }
        for rec in &recs {
            container::remove(&self.ctx, rec).await;
        }
        // Anything else runc still has of this pod (a start that crashed half-way).
        if let Ok(list) = self.ctx.runc.list().await {
            for s in list.iter().filter(|s| s.id.starts_with(&self.uid)) {
                let _ = self.ctx.runc.delete(&s.id).await;
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.pod_dir.join("containers")) {
            for e in entries.flatten() {
                let _ = crate::image::ImageStore::unmount_rootfs(&e.path());
            }
        }
        self.release_network().await;
        crate::volume::remove_all(&self.pod_dir);
        for _ in 0..20 {
            if self.ctx.cgroups.remove_pod(&self.uid).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = std::fs::remove_dir_all(&self.pod_dir);
        remove_log_dir(&self.ctx.log_root(), &self.uid);
        self.sandbox = None;
    }
}

/// Removes `<logs>/<ns>_<name>_<uid>`.
fn remove_log_dir(root: &std::path::Path, uid: &str) {
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .ends_with(&format!("_{uid}"))
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Starts the container now, or waits out its back-off.
async fn start_or_backoff(ctx: &Ctx, p: &PodRef<'_>, c: &Container, init: bool, slot: &mut Slot) {
    let now = Instant::now();
    let crashed = slot.current.as_ref().is_some_and(|r| r.exit.is_some());
    if crashed && slot.next_start.is_none() {
        let ran = slot
            .current
            .as_ref()
            .and_then(|r| jiff::Timestamp::from_str_opt(&r.meta.started_at))
            .map(|t| jiff::Timestamp::now().duration_since(t).unsigned_abs())
            .unwrap_or_default();
        if ran >= BACKOFF_RESET {
            slot.backoff = Duration::ZERO;
        }
        // The first restart is immediate; then 10 s doubling up to 5 min.
        slot.next_start = Some(now + slot.backoff);
        if !slot.backoff.is_zero() {
            let (pod_name, ns) = (
                p.pod.metadata.name.as_deref().unwrap_or(""),
                p.pod.metadata.namespace.as_deref().unwrap_or(""),
            );
            slot.waiting = Some((
                "CrashLoopBackOff".into(),
                format!(
                    "back-off {}s restarting failed container={} pod={pod_name}_{ns}({})",
                    slot.backoff.as_secs(),
                    c.name,
                    p.uid
                ),
            ));
            ctx.events.container(
                p.pod,
                &c.name,
                init,
                events::WARNING,
                "BackOff",
                format!(
                    "Back-off restarting failed container {} in pod {pod_name}_{ns}({})",
                    c.name, p.uid
                ),
            );
        }
        slot.backoff = (slot.backoff * 2).clamp(BACKOFF_START, BACKOFF_MAX);
    }
    if slot.next_start.is_some_and(|t| now < t) {
        return;
    }
    let attempt = slot.current.as_ref().map_or(0, |r| r.meta.attempt + 1);
    match container::start(ctx, p, c, init, attempt).await {
        Ok(rec) => {
            if let Some(old) = slot.current.take() {
                container::remove(ctx, &old).await;
                if let Some(older) = slot.previous.replace(old) {
                    let _ = std::fs::remove_file(&older.meta.log_path);
                }
            }
            slot.restart_count = attempt;
            slot.current = Some(rec);
            slot.waiting = None;
            slot.next_start = None;
        }
        Err(e) => {
            tracing::warn!(pod = %p.uid, container = %c.name, "{e}");
            let reason = match (e.reason.as_str(), &slot.waiting) {
                ("ErrImagePull", Some((r, _)))
                    if r == "ErrImagePull" || r == "ImagePullBackOff" =>
                {
                    "ImagePullBackOff".to_string()
                }
                _ => e.reason.clone(),
            };
            if reason == "ImagePullBackOff" {
                let image = c.image.as_deref().unwrap_or("");
                let event = |type_: &str, reason: &str, message: String| {
                    ctx.events
                        .container(p.pod, &c.name, init, type_, reason, message)
                };
                event(
                    events::NORMAL,
                    "BackOff",
                    format!("Back-off pulling image \"{image}\""),
                );
                event(events::WARNING, "Failed", "Error: ImagePullBackOff".into());
            }
            slot.waiting = Some((reason, e.message));
            slot.backoff = (slot.backoff * 2).clamp(BACKOFF_START, BACKOFF_MAX);
            slot.next_start = Some(now + slot.backoff);
        }
    }
}

trait FromStrOpt {
    fn from_str_opt(s: &str) -> Option<jiff::Timestamp>;
}

impl FromStrOpt for jiff::Timestamp {
    fn from_str_opt(s: &str) -> Option<jiff::Timestamp> {
        s.parse().ok()
    }
}
