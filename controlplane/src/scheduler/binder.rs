//! The scheduler's writes to the API: the binding (`POST pods/<name>/binding`),
//! the Events users read in `kubectl describe` (`Scheduled`,
//! `FailedScheduling`) and the pod's `PodScheduled=False/Unschedulable`
//! condition. Decisions are made elsewhere; this only reports them.

use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use std::sync::Arc;

use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::{mpsc, Semaphore};

use crate::controllers::events::{self, EventType, Recorder};

/// Name the scheduler records events as, and the `schedulerName` it serves.
pub const SCHEDULER_NAME: &str = "default-scheduler";

/// A binding the API server did not accept.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The pod was deleted before it could be bound.
    #[error("pod {pod} was deleted before it could be bound to {node}")]
    Gone {
        /// `namespace/name` of the pod.
        pod: String,
        /// The chosen node.
        node: String,
    },
    /// The pod is already bound (by someone else) or is being deleted.
    #[error("binding pod {pod} to {node} was refused: {message}")]
    Refused {
        /// `namespace/name` of the pod.
        pod: String,
        /// The chosen node.
        node: String,
        /// The API server's explanation.
        message: String,
    },
    /// Any other failure; the pod is retried after a backoff.
    #[error("cannot bind pod {pod} to {node}: {source}; check that the API server is up and accepts pods/binding")]
    Api {
        /// `namespace/name` of the pod.
        pod: String,
        /// The chosen node.
        node: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
}

/// An event waiting for a free event slot; holds only what the event needs.
pub struct PendingEvent {
    about: ObjectReference,
    kind: EventType,
    reason: &'static str,
    message: String,
}

/// What a binding attempt ended in, as the scheduling loop needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindOutcome {
    /// The pod is bound.
    Bound,
    /// The pod is gone or bound elsewhere: drop it from the queue.
    Dropped,
    /// Transient failure: retry after backoff.
    Retry,
}

impl BindError {
    /// How the scheduling loop should treat this failure.
    pub fn outcome(&self) -> BindOutcome {
        match self {
            BindError::Gone { .. } | BindError::Refused { .. } => BindOutcome::Dropped,
            BindError::Api { .. } => BindOutcome::Retry,
        }
    }
}

/// Event writes in flight at once. Events are best effort and come after
/// bindings: upstream's broadcaster drops events when its queue is full;
/// here a burst of scheduled pods leaves a backlog of small pending reports
/// (no pod objects) that a few writers work off while the bindings, which
/// get 256 slots, go first. Eight still fill the store's group commits when
/// the scheduler is idle.
const EVENTS_IN_FLIGHT: usize = 8;

/// Writes bindings, events and conditions for the scheduler.
pub struct Binder {
    client: kube::Client,
    recorder: Arc<Recorder>,
    events: mpsc::UnboundedSender<PendingEvent>,
}

fn key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

impl Binder {
    /// A binder using `client`; its event writers run on the current runtime
    /// until the binder is dropped and the backlog is written.
    pub fn new(client: kube::Client) -> Binder {
        let recorder = Arc::new(Recorder::new(client.clone(), SCHEDULER_NAME));
        let (events, backlog) = mpsc::unbounded_channel();
        tokio::spawn(write_events(recorder.clone(), backlog));
        Binder {
            recorder,
            client,
            events,
        }
    }

    fn pods(&self, pod: &Pod) -> Api<Pod> {
        Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        )
    }

    /// Binds `pod` to `node`.
    pub async fn bind(&self, pod: &Pod, node: &str) -> Result<(), BindError> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: pod.metadata.namespace.clone(),
                uid: pod.metadata.uid.clone(),
                ..ObjectMeta::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.to_string()),
                ..ObjectReference::default()
            },
        };
        let result: Result<serde_json::Value, kube::Error> = self
            .pods(pod)
            .create_subresource("binding", &name, &PostParams::default(), &binding)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Err(BindError::Gone {
                pod: key(pod),
                node: node.to_string(),
            }),
            Err(kube::Error::Api(status)) if status.code == 409 => Err(BindError::Refused {
                pod: key(pod),
                node: node.to_string(),
                message: status.message,
            }),
            Err(source) => Err(BindError::Api {
                pod: key(pod),
                node: node.to_string(),
                source,
            }),
        }
    }

    /// The `Scheduled` event of a pod bound to `node`, to [`record`](Self::record).
    pub fn scheduled_event(pod: &Pod, node: &str) -> PendingEvent {
        PendingEvent {
            about: events::reference(pod),
            kind: EventType::Normal,
            reason: "Scheduled",
            message: format!("Successfully assigned {} to {node}", key(pod)),
        }
    }

    /// The `FailedScheduling` event of a rejected binding, to [`record`](Self::record).
    pub fn bind_failure_event(pod: &Pod, error: &BindError) -> PendingEvent {
        PendingEvent {
            about: events::reference(pod),
            kind: EventType::Warning,
            reason: "FailedScheduling",
            message: format!("Binding rejected: {error}"),
        }
    }

    /// Queues an event; it is written once one of the event slots is free.
    pub fn record(&self, event: PendingEvent) {
        if self.events.send(event).is_err() {
            tracing::debug!("scheduler: event writer stopped, event not recorded");
        }
    }

    /// Reports a pod that fits nowhere: a `FailedScheduling` event, and the
    /// `PodScheduled` condition set to False/Unschedulable with `message`
    /// (left alone when it already says so).
    pub async fn record_unschedulable(&self, pod: &Pod, message: &str) {
        // The Event and the status patch go out together, so that the
        // store's writer commits them in one transaction (one fsync) more
        // often than not; upstream's event recorder is asynchronous as well.
        let about = events::reference(pod);
        let event = self
            .recorder
            .record(&about, EventType::Warning, "FailedScheduling", message);
        tokio::join!(event, self.set_unschedulable(pod, message));
    }

    /// Sets PodScheduled=False (reason Unschedulable) unless it says so.
    async fn set_unschedulable(&self, pod: &Pod, message: &str) {
        let current = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
        if current.is_some_and(|c| {
            c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
                && c.message.as_deref() == Some(message)
        }) {
            return;
        }
        let since = current
            .filter(|c| c.status == "False")
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| Time(jiff::Timestamp::now()));
        let condition = PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some(message.to_string()),
            last_transition_time: Some(since),
            ..PodCondition::default()
        };
        let patch = serde_json::json!({"status": {"conditions": [condition]}});
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        if let Err(e) = self
            .pods(pod)
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            tracing::debug!("cannot set PodScheduled=False on {}: {e}", key(pod));
        }
    }
}

/// Writes queued events, at most [`EVENTS_IN_FLIGHT`] at once, in the order
/// they were queued.
async fn write_events(recorder: Arc<Recorder>, mut backlog: mpsc::UnboundedReceiver<PendingEvent>) {
    let slots = Arc::new(Semaphore::new(EVENTS_IN_FLIGHT));
    while let Some(event) = backlog.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let recorder = recorder.clone();
        tokio::spawn(async move {
            recorder
                .record(&event.about, event.kind, event.reason, &event.message)
                .await;
            drop(slot);
        });
    }
}
