//! The pod manager: watches the pods bound to this node (field selector
//! `spec.nodeName=<node>`), runs one [`Worker`] per pod UID, and on start
//! cleans up what belongs to pods that no longer exist (adoption after
//! `kill -9`: running containers of live pods are kept and tracked again).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::context::Ctx;
use crate::pod_worker::Worker;

struct Entry {
    tx: watch::Sender<Option<Pod>>,
    task: JoinHandle<()>,
}

/// Runs the pod workers of this node until the watch ends.
pub struct Manager {
    ctx: Arc<Ctx>,
    workers: HashMap<String, Entry>,
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

impl Manager {
    /// A manager with no workers yet.
    pub fn new(ctx: Arc<Ctx>) -> Manager {
        Manager {
            ctx,
            workers: HashMap::new(),
        }
    }

    fn update(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        if let Some(e) = self.workers.get(&uid) {
            if !e.task.is_finished() {
                e.tx.send_replace(Some(pod));
                return;
            }
        }
        let has_state = self.ctx.pod_dir(&uid).exists();
        if is_terminal(&pod) && !has_state && pod.metadata.deletion_timestamp.is_none() {
            return;
        }
        self.spawn(uid, Some(pod));
    }

    fn spawn(&mut self, uid: String, pod: Option<Pod>) {
        let (tx, rx) = watch::channel(pod.clone());
        let worker = Worker::new(self.ctx.clone(), uid.clone(), &pod.unwrap_or_default());
        let task = tokio::spawn(worker.run(rx));
        self.workers.insert(uid, Entry { tx, task });
    }

    fn gone(&mut self, uid: &str) {
        if let Some(e) = self.workers.get(uid) {
            e.tx.send_replace(None);
        }
    }

    /// Pod directories and runc containers whose pod is not in `live`.
    async fn collect_orphans(&mut self, live: &HashSet<String>) {
        let pods_dir = self.ctx.data_dir.join("pods");
        if let Ok(entries) = std::fs::read_dir(&pods_dir) {
            for e in entries.flatten() {
                let uid = e.file_name().to_string_lossy().into_owned();
                if !live.contains(&uid) && !self.workers.contains_key(&uid) {
                    tracing::info!(pod = %uid, "removing the leftovers of a pod that no longer exists");
                    self.spawn(uid, None);
                }
            }
        }
        if let Ok(list) = self.ctx.runc.list().await {
            for s in list {
                let uid = s
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("io.kubernetes.pod.uid").cloned())
                    .unwrap_or_default();
                if !live.contains(&uid) && !self.ctx.pod_dir(&uid).exists() {
                    let _ = self.ctx.runc.delete(&s.id).await;
                }
            }
        }
    }

    /// Watches the node's pods forever (relisting with back-off on errors).
    pub async fn run(mut self) {
        let api: Api<Pod> = Api::all(self.ctx.client.clone());
        let config =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.ctx.node_name));
        let stream = watcher::watcher(api, config).default_backoff();
        futures::pin_mut!(stream);
        let mut listing: Option<HashSet<String>> = None;
        let mut first_list = true;
        while let Some(ev) = stream.next().await {
            self.workers.retain(|_, e| !e.task.is_finished());
            match ev {
                Ok(Event::Init) => listing = Some(HashSet::new()),
                Ok(Event::InitApply(pod)) => {
                    if let (Some(l), Some(uid)) = (listing.as_mut(), pod.metadata.uid.clone()) {
                        l.insert(uid);
                    }
                    self.update(pod);
                }
                Ok(Event::InitDone) => {
                    let live = listing.take().unwrap_or_default();
                    let stale: Vec<String> = self
                        .workers
                        .keys()
                        .filter(|u| !live.contains(*u))
                        .cloned()
                        .collect();
                    for uid in stale {
                        self.gone(&uid);
                    }
                    if first_list {
                        first_list = false;
                        self.collect_orphans(&live).await;
                    }
                }
                Ok(Event::Apply(pod)) => self.update(pod),
                Ok(Event::Delete(pod)) => {
                    if let Some(uid) = pod.metadata.uid.as_deref() {
                        self.gone(uid);
                    }
                }
                Err(e) => tracing::warn!("pod watch: {e}"),
            }
        }
    }
}
