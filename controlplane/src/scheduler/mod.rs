//! The scheduler, as kube-scheduler does it: watches pods and nodes, keeps an
//! in-memory [`cache`] of what every node has left, takes pending pods off a
//! [`queue`], decides a node for each ([`placement`]: [`filters`] then
//! [`score`]), assumes the pod there at once and binds it in the background
//! ([`binder`]), with a bounded number of bindings in flight.
//!
//! One task owns the cache and the queue and is the only one to touch them;
//! watchers and binding tasks talk to it through a channel, so there are no
//! locks and a decision always sees every earlier decision. It serves pods
//! whose `schedulerName` is `default-scheduler` (or unset) and leaves pods
//! bound by anyone else alone.

pub mod affinity;
pub mod binder;
pub mod cache;
pub mod diagnosis;
pub mod filters;
mod held;
pub mod placement;
pub mod quantity;
pub mod queue;
pub mod resources;
pub mod score;
pub mod taints;

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::Api;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::controllers::Context;
use binder::{BindOutcome, Binder, SCHEDULER_NAME};
use cache::{Cache, NodeChange};
use filters::Candidate;
use placement::Placer;
use queue::Queue;
use resources::PodDemand;

/// Bindings (and unschedulable reports) in flight at once: enough to fill
/// the store's group commits while each waits for its fsync, without
/// queueing thousands of requests in the API server.
const MAX_IN_FLIGHT: usize = 256;
/// How often backoff and unschedulable pods are checked for a retry.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Messages handled before the loop schedules again, so a burst of watch
/// events cannot starve scheduling and vice versa.
const MESSAGES_PER_TURN: usize = 256;
/// Capacity of the channel from watchers and binding tasks.
const CHANNEL_CAPACITY: usize = 4096;

/// Longest stretch of scheduling decisions between yields to the runtime:
/// long enough that a busy runtime's round trip is not paid per pod, short
/// enough not to stall the API server's tasks on the same workers.
const SCHEDULING_SLICE: Duration = Duration::from_millis(2);
/// How often progress is logged while the scheduler has work.
const STATS_INTERVAL: Duration = Duration::from_secs(10);

/// What the scheduling loop hears about. Watch events are boxed: a Pod is
/// a few KB and the channel holds thousands of messages.
enum Message {
    Pod(Box<watcher::Event<Pod>>),
    Node(Box<watcher::Event<Node>>),
    BindDone {
        uid: String,
        outcome: BindOutcome,
        took: Duration,
    },
}

/// Runs the scheduler until the process ends, on the pod watch events of
/// the controller manager's shared pod informer (whole pods).
pub async fn run(
    ctx: Arc<Context>,
    pods: impl Stream<Item = watcher::Event<Pod>> + Send + Unpin + 'static,
) {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    tokio::spawn(forward(pods, tx.clone(), |e| Message::Pod(Box::new(e))));
    spawn_watch(
        Api::<Node>::all(ctx.client.clone()),
        tx.clone(),
        |e| Message::Node(Box::new(e)),
        "nodes",
    );
    let scheduler = Scheduler {
        cache: Cache::new(),
        queue: Queue::new(),
        placer: Placer::default(),
        binder: Arc::new(Binder::new(ctx.client.clone())),
        permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        tx,
        pods_synced: false,
        nodes_synced: false,
        pod_relist: None,
        node_relist: None,
        cluster_changed: false,
        stats: Stats::new(Instant::now()),
    };
    scheduler.run(rx).await;
}

/// Forwards watch events to the loop until either side ends.
async fn forward<K>(
    mut events: impl Stream<Item = watcher::Event<K>> + Unpin,
    tx: mpsc::Sender<Message>,
    wrap: fn(watcher::Event<K>) -> Message,
) {
    while let Some(event) = events.next().await {
        if tx.send(wrap(event)).await.is_err() {
            return;
        }
    }
}

/// Forwards a watch (list + watch, relist on expiry, with backoff) to the loop.
fn spawn_watch<K>(
    api: Api<K>,
    tx: mpsc::Sender<Message>,
    wrap: fn(watcher::Event<K>) -> Message,
    what: &'static str,
) where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    tokio::spawn(async move {
        // Pending pods wait in the queue; their field ownership is never read.
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(|obj| obj.meta_mut().managed_fields = None)
            .boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    if tx.send(wrap(event)).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!("scheduler: watching {what} failed, retrying: {e}"),
            }
        }
    });
}

/// True for pods this scheduler is responsible for.
fn is_ours(pod: &Pod) -> bool {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .unwrap_or_default();
    name.is_empty() || name == SCHEDULER_NAME
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

struct Scheduler {
    cache: Cache,
    queue: Queue,
    placer: Placer,
    binder: Arc<Binder>,
    permits: Arc<Semaphore>,
    tx: mpsc::Sender<Message>,
    pods_synced: bool,
    nodes_synced: bool,
    /// UIDs seen during a pod relist, to drop the ones that vanished.
    pod_relist: Option<HashSet<String>>,
    /// Names seen during a node relist.
    node_relist: Option<HashSet<String>>,
    /// A node appeared or changed, or a bound pod went, since the last turn.
    cluster_changed: bool,
    stats: Stats,
}

/// Progress since the last log line, for operators reading the server log.
struct Stats {
    since: Instant,
    bound: u64,
    failed: u64,
    unschedulable: u64,
    binding_time: Duration,
}

impl Stats {
    fn new(now: Instant) -> Stats {
        Stats {
            since: now,
            bound: 0,
            failed: 0,
            unschedulable: 0,
            binding_time: Duration::ZERO,
        }
    }

    fn binding(&mut self, outcome: BindOutcome, took: Duration) {
        if outcome == BindOutcome::Bound {
            self.bound += 1;
            self.binding_time += took;
        } else {
            self.failed += 1;
        }
    }

    /// Logs and resets every [`STATS_INTERVAL`] if bindings happened
    /// (unschedulable pods are explained by their events instead).
    fn log_if_due(&mut self, now: Instant, queued: usize, in_flight: usize) {
        let elapsed = now.duration_since(self.since);
        if elapsed < STATS_INTERVAL {
            return;
        }
        if self.bound + self.failed > 0 {
            let mean_ms = self.binding_time.as_secs_f64() * 1000.0 / self.bound.max(1) as f64;
            tracing::info!(
                "scheduler: bound {} pods in {:.1}s ({:.0}/s, mean binding {mean_ms:.0} ms), \
                 {} unschedulable attempts, {} failed bindings; {queued} queued, {in_flight} in flight",
                self.bound,
                elapsed.as_secs_f64(),
                self.bound as f64 / elapsed.as_secs_f64(),
                self.unschedulable,
                self.failed,
            );
        }
        *self = Stats::new(now);
    }
}

impl Scheduler {
    async fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        let mut next_flush = Instant::now() + FLUSH_INTERVAL;
        loop {
            for _ in 0..MESSAGES_PER_TURN {
                match rx.try_recv() {
                    Ok(message) => self.handle(message),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            if self.cluster_changed {
                self.cluster_changed = false;
                self.queue.move_all(now);
            }
            if now >= next_flush {
                self.queue.flush(now);
                let in_flight = MAX_IN_FLIGHT - self.permits.available_permits();
                self.stats.log_if_due(now, self.queue.len(), in_flight);
                next_flush = now + FLUSH_INTERVAL;
            }
            let ready = self.pods_synced && self.nodes_synced && self.queue.has_active();
            if ready {
                let slice_end = now + SCHEDULING_SLICE;
                let mut scheduled = false;
                while let Ok(permit) = self.permits.clone().try_acquire_owned() {
                    self.schedule_one(permit);
                    scheduled = true;
                    if !self.queue.has_active() || Instant::now() >= slice_end {
                        break;
                    }
                }
                if scheduled {
                    // Share the runtime with the API server serving our bindings.
                    tokio::task::yield_now().await;
                    continue;
                }
            }
            tokio::select! {
                message = rx.recv() => match message {
                    Some(message) => self.handle(message),
                    None => return,
                },
                permit = self.permits.clone().acquire_owned(), if ready => {
                    if let Ok(permit) = permit {
                        self.schedule_one(permit);
                    }
                }
                () = tokio::time::sleep_until(next_flush.into()) => {}
            }
        }
    }

    fn handle(&mut self, message: Message) {
        match message {
            Message::Pod(event) => self.on_pod_event(*event),
            Message::Node(event) => self.on_node_event(*event),
            Message::BindDone { uid, outcome, took } => {
                self.stats.binding(outcome, took);
                self.on_bind_done(&uid, outcome)
            }
        }
    }

    fn on_pod_event(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.pod_relist = Some(HashSet::new()),
            watcher::Event::InitApply(pod) => {
                if let (Some(seen), Some(uid)) =
                    (self.pod_relist.as_mut(), pod.metadata.uid.as_ref())
                {
                    seen.insert(uid.clone());
                }
                self.on_pod(pod);
            }
            watcher::Event::InitDone => {
                let seen = self.pod_relist.take().unwrap_or_default();
                let gone_queued: Vec<String> = self
                    .queue
                    .uids()
                    .filter(|u| !seen.contains(*u))
                    .map(str::to_string)
                    .collect();
                for uid in gone_queued {
                    self.queue.remove(&uid);
                }
                let gone_bound: Vec<String> = self
                    .cache
                    .bound_pod_uids()
                    .filter(|u| !seen.contains(*u))
                    .map(str::to_string)
                    .collect();
                for uid in gone_bound {
                    self.cache.remove_pod(&uid);
                    self.cluster_changed = true;
                }
                if !self.pods_synced {
                    tracing::info!(
                        "scheduler: pods synced, {} waiting to be scheduled",
                        self.queue.len()
                    );
                }
                self.pods_synced = true;
            }
            watcher::Event::Apply(pod) => self.on_pod(pod),
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    self.queue.remove(uid);
                    if self.cache.remove_pod(uid) {
                        self.cluster_changed = true;
                    }
                }
            }
        }
    }

    fn on_pod(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        if let Some(node) = node {
            // Bound (by us or anyone): it takes up room, and leaves the queue.
            self.queue.remove(&uid);
            if is_terminal(&pod) {
                if self.cache.remove_pod(&uid) {
                    self.cluster_changed = true;
                }
                return;
            }
            let demand = PodDemand::of(&pod).unwrap_or_else(|e| {
                tracing::warn!(
                    "scheduler: pod {} on {node}: {e}; counting it as requesting nothing",
                    pod_key(&pod)
                );
                PodDemand::default()
            });
            self.cache.add_pod(&uid, &node, demand);
            return;
        }
        if !is_ours(&pod) || is_terminal(&pod) || pod.metadata.deletion_timestamp.is_some() {
            self.queue.remove(&uid);
            return;
        }
        if self.cache.is_assumed(&uid) {
            // Our binding is on its way; this is an older state of the pod.
            return;
        }
        self.queue
            .add_or_update(&uid, Arc::new(pod), Instant::now());
    }

    fn on_node_event(&mut self, event: watcher::Event<Node>) {
        match event {
            watcher::Event::Init => self.node_relist = Some(HashSet::new()),
            watcher::Event::InitApply(node) => {
                if let (Some(seen), Some(name)) =
                    (self.node_relist.as_mut(), node.metadata.name.as_ref())
                {
                    seen.insert(name.clone());
                }
                self.on_node(&node);
            }
            watcher::Event::InitDone => {
                let seen = self.node_relist.take().unwrap_or_default();
                let gone: Vec<String> = self
                    .cache
                    .node_names()
                    .filter(|n| !seen.contains(*n))
                    .map(str::to_string)
                    .collect();
                for name in gone {
                    self.cache.remove_node(&name);
                }
                if !self.nodes_synced {
                    tracing::info!("scheduler: nodes synced, {} nodes", self.cache.node_count());
                }
                self.nodes_synced = true;
            }
            watcher::Event::Apply(node) => self.on_node(&node),
            watcher::Event::Delete(node) => {
                if let Some(name) = node.metadata.name.as_deref() {
                    self.cache.remove_node(name);
                }
            }
        }
    }

    fn on_node(&mut self, node: &Node) {
        if self.cache.upsert_node(node) != NodeChange::Unchanged {
            self.cluster_changed = true;
        }
    }

    fn on_bind_done(&mut self, uid: &str, outcome: BindOutcome) {
        match outcome {
            // The cache keeps the pod assumed until the watch confirms it.
            BindOutcome::Bound => self.queue.remove(uid),
            BindOutcome::Dropped => {
                self.cache.forget(uid);
                self.queue.remove(uid);
            }
            BindOutcome::Retry => {
                self.cache.forget(uid);
                self.queue.backoff(uid, Instant::now());
            }
        }
    }

    /// Pops one pod, decides, assumes and starts its binding (or its
    /// failure report) in the background under `permit`.
    fn schedule_one(&mut self, permit: OwnedSemaphorePermit) {
        let now = Instant::now();
        let Some((uid, pod)) = self.queue.pop(now) else {
            return;
        };
        let Some(spec) = pod.spec.as_ref() else {
            self.queue.remove(&uid);
            return;
        };
        let decision = match PodDemand::of(&pod) {
            Ok(demand) => {
                let demand = Arc::new(demand);
                self.placer
                    .place(
                        Candidate {
                            spec,
                            demand: &demand,
                        },
                        &self.cache,
                    )
                    .map(|node| (node, demand))
            }
            Err(e) => Err(format!("the pod's resource requests cannot be read: {e}")),
        };
        let binder = self.binder.clone();
        match decision {
            Ok((node, demand)) => {
                tracing::debug!("scheduler: assigning {} to {node}", pod_key(&pod));
                self.cache.assume(&uid, &node, demand);
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let result = binder.bind(&pod, &node).await;
                    let took = started.elapsed();
                    // The binding is answered: free its slot before the event.
                    drop(permit);
                    let (outcome, event) = match &result {
                        Ok(()) => (
                            BindOutcome::Bound,
                            Some(Binder::scheduled_event(&pod, &node)),
                        ),
                        Err(e) => {
                            tracing::warn!("scheduler: {e}");
                            let retry = e.outcome() == BindOutcome::Retry;
                            (
                                e.outcome(),
                                retry.then(|| Binder::bind_failure_event(&pod, e)),
                            )
                        }
                    };
                    drop(pod);
                    if let Some(event) = event {
                        binder.record(event);
                    }
                    let _ = tx.send(Message::BindDone { uid, outcome, took }).await;
                });
            }
            Err(message) => {
                tracing::debug!("scheduler: {} is unschedulable: {message}", pod_key(&pod));
                self.queue.unschedulable(&uid, now);
                self.stats.unschedulable += 1;
                tokio::spawn(async move {
                    binder.record_unschedulable(&pod, &message).await;
                    drop(permit);
                });
            }
        }
    }
}
