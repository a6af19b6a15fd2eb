//! Events about pods and their containers, as upstream's kubelet writes them:
//! core/v1 Events from source component `kubelet` on this host, the pod as
//! involvedObject (with `spec.containers{NAME}` as fieldPath for a container).
//! Like upstream's event correlator, a repeat of the same event bumps `count`
//! and `lastTimestamp` of the Event already written instead of adding one, and
//! a per-pod token bucket (burst 25, one more every 5 minutes) keeps a
//! crash-looping pod from flooding the API server. Recording never blocks a
//! pod worker: events are queued to one writer task and dropped when the
//! queue is full; they are best effort, as upstream's are.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::mpsc;

/// Event type of routine happenings.
pub const NORMAL: &str = "Normal";
/// Event type of something an operator may need to look at.
pub const WARNING: &str = "Warning";

/// Events one object may emit at once before the bucket throttles it.
const BURST: f64 = 25.0;
/// One more event per object is allowed every this long once the burst is spent.
const REFILL_EVERY: Duration = Duration::from_secs(300);
/// Events waiting for the writer; more are dropped.
const QUEUE: usize = 1024;
/// Remembered events and buckets; past this the memory is cleared (no growth).
const MEMORY: usize = 4096;

/// One event to write.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pending {
    pub namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub field_path: Option<String>,
    pub type_: String,
    pub reason: String,
    pub message: String,
}

/// Hands events to the writer task.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Pending>,
}

/// The fieldPath of a container of a pod.
pub fn container_field_path(name: &str, init: bool) -> String {
    if init {
        format!("spec.initContainers{{{name}}}")
    } else {
        format!("spec.containers{{{name}}}")
    }
}

impl Recorder {
    /// Starts the writer task (needs a tokio runtime) for node `host`.
    pub fn start(client: Client, host: &str) -> Recorder {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(client, host.to_string(), rx));
        Recorder { tx }
    }

    /// An event about the pod itself.
    pub fn pod(&self, pod: &Pod, type_: &str, reason: &str, message: impl Into<String>) {
        self.send(pod, None, type_, reason, message.into());
    }

    /// An event about one container of the pod.
    pub fn container(
        &self,
        pod: &Pod,
        container: &str,
        init: bool,
        type_: &str,
        reason: &str,
        message: impl Into<String>,
    ) {
        let path = container_field_path(container, init);
        self.send(pod, Some(path), type_, reason, message.into());
    }

    fn send(
        &self,
        pod: &Pod,
        field_path: Option<String>,
        type_: &str,
        reason: &str,
        message: String,
    ) {
        let m = &pod.metadata;
        let pending = Pending {
            namespace: m.namespace.clone().unwrap_or_else(|| "default".into()),
            pod_name: m.name.clone().unwrap_or_default(),
            pod_uid: m.uid.clone().unwrap_or_default(),
            field_path,
            type_: type_.to_string(),
            reason: reason.to_string(),
            message,
        };
        if self.tx.try_send(pending).is_err() {
            tracing::debug!("event queue full, event dropped");
        }
    }
}

/// What the writer does with an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Write a new Event with this name.
    Create(String),
    /// Bump the Event of this name to this count.
    Bump(String, i32),
    /// The object's bucket is empty: drop it.
    Throttle,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Decides create / bump / throttle for each event (upstream's correlator and spam filter).
#[derive(Default)]
pub struct Correlator {
    seen: HashMap<Pending, (String, i32)>,
    buckets: HashMap<String, Bucket>,
}

impl Correlator {
    /// The action for `ev` at `now`, remembering it.
    pub fn observe(&mut self, ev: &Pending, now: Instant) -> Action {
        if self.buckets.len() > MEMORY {
            self.buckets.clear();
        }
        let bucket = self.buckets.entry(ev.pod_uid.clone()).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        let refill =
            now.saturating_duration_since(bucket.at).as_secs_f64() / REFILL_EVERY.as_secs_f64();
        bucket.tokens = (bucket.tokens + refill).min(BURST);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return Action::Throttle;
        }
        bucket.tokens -= 1.0;
        if self.seen.len() > MEMORY {
            self.seen.clear();
        }
        match self.seen.get_mut(ev) {
            Some((name, count)) => {
                *count += 1;
                Action::Bump(name.clone(), *count)
            }
            None => {
                let nanos = jiff::Timestamp::now().as_nanosecond();
                let name = format!("{}.{nanos:x}", ev.pod_name);
                self.seen.insert(ev.clone(), (name.clone(), 1));
                Action::Create(name)
            }
        }
    }

    /// Forgets `ev` (its Event is gone from the API).
    pub fn forget(&mut self, ev: &Pending) {
        self.seen.remove(ev);
    }
}

fn event(ev: &Pending, name: &str, host: &str) -> Event {
    let now = Time(jiff::Timestamp::now());
    Event {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ev.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(ev.namespace.clone()),
            name: Some(ev.pod_name.clone()),
            uid: Some(ev.pod_uid.clone()),
            field_path: ev.field_path.clone(),
            ..Default::default()
        },
        type_: Some(ev.type_.clone()),
        reason: Some(ev.reason.clone()),
        message: Some(ev.message.clone()),
        source: Some(EventSource {
            component: Some("kubelet".into()),
            host: Some(host.to_string()),
        }),
        reporting_component: Some("kubelet".into()),
        reporting_instance: Some(host.to_string()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Default::default()
    }
}

async fn write_loop(client: Client, host: String, mut rx: mpsc::Receiver<Pending>) {
    let mut correlator = Correlator::default();
    while let Some(ev) = rx.recv().await {
        let api: Api<Event> = Api::namespaced(client.clone(), &ev.namespace);
        match correlator.observe(&ev, Instant::now()) {
            Action::Throttle => {
                tracing::debug!(pod = %ev.pod_name, reason = %ev.reason, "event throttled")
            }
            Action::Create(name) => {
                if let Err(e) = api
                    .create(&PostParams::default(), &event(&ev, &name, &host))
                    .await
                {
                    tracing::debug!(pod = %ev.pod_name, "writing event {}: {e}", ev.reason);
                    correlator.forget(&ev);
                }
            }
            Action::Bump(name, count) => {
                let patch = json!({
                    "count": count,
                    "lastTimestamp": Time(jiff::Timestamp::now()),
                });
                let res = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
                if res.is_err() {
                    // Gone (expired or deleted): start a new one.
                    correlator.forget(&ev);
                    if let Action::Create(name) = correlator.observe(&ev, Instant::now()) {
                        let _ = api
                            .create(&PostParams::default(), &event(&ev, &name, &host))
                            .await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(uid: &str, reason: &str, message: &str) -> Pending {
        Pending {
            namespace: "default".into(),
            pod_name: "web".into(),
            pod_uid: uid.into(),
            field_path: Some(container_field_path("main", false)),
            type_: WARNING.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }

    #[test]
    fn repeats_bump_the_count_of_one_event_and_differences_make_new_ones() {
        let mut c = Correlator::default();
        let now = Instant::now();
        let back_off = ev("u1", "BackOff", "Back-off restarting failed container main");
        let Action::Create(name) = c.observe(&back_off, now) else {
            panic!("first event must be created");
        };
        assert!(name.starts_with("web."), "{name}");
        assert_eq!(c.observe(&back_off, now), Action::Bump(name.clone(), 2));
        assert_eq!(c.observe(&back_off, now), Action::Bump(name.clone(), 3));
        let other = ev("u1", "Unhealthy", "Liveness probe failed");
        assert!(matches!(c.observe(&other, now), Action::Create(n) if n != name));
        let other_pod = ev("u2", "BackOff", "Back-off restarting failed container main");
        assert!(matches!(c.observe(&other_pod, now), Action::Create(_)));
    }

    #[test]
    fn a_pod_is_throttled_after_its_burst_and_refills_slowly() {
        let mut c = Correlator::default();
        let now = Instant::now();
        let spam = ev("u1", "BackOff", "again");
        for _ in 0..25 {
            assert_ne!(c.observe(&spam, now), Action::Throttle);
        }
        assert_eq!(c.observe(&spam, now), Action::Throttle);
        // Another pod has its own bucket.
        assert!(matches!(
            c.observe(&ev("u2", "Started", "x"), now),
            Action::Create(_)
        ));
        // One token back after five minutes.
        let later = now + REFILL_EVERY;
        assert!(matches!(c.observe(&spam, later), Action::Bump(_, 26)));
        assert_eq!(c.observe(&spam, later), Action::Throttle);
        assert_eq!(
            container_field_path("init", true),
            "spec.initContainers{init}"
        );
    }
}
