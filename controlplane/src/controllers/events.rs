//! Event recording for the scheduler and controllers: core/v1 Events about
//! an object, as `kubectl describe` and `kubectl get events` show them.
//! Repeats of the same reason and message on the same object bump `count`
//! and `lastTimestamp` instead of creating new objects, as upstream's
//! correlator does, so a retry loop cannot flood the store.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Resource;

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Routine progress.
    Normal,
    /// Something the user should look at.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// What correlates repeats: namespace, object uid, reason and message.
type EventKey = (String, String, String, String);

/// Records Events as one component (e.g. `default-scheduler`).
pub struct Recorder {
    client: kube::Client,
    component: String,
    /// (namespace, uid, reason, message) → (event name, count) of recent events.
    recent: Mutex<HashMap<EventKey, (String, i32)>>,
}

/// Bound on remembered events before the correlation map is reset.
const MAX_REMEMBERED: usize = 4096;

/// An ObjectReference to a typed object.
pub fn reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    let meta = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        field_path: None,
    }
}

impl Recorder {
    /// A recorder for `component`.
    pub fn new(client: kube::Client, component: &str) -> Self {
        Recorder {
            client,
            component: component.to_string(),
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event about `about`; failures are logged, never fatal.
    pub async fn record(
        &self,
        about: &ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        let namespace = about
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let uid = about.uid.clone().unwrap_or_default();
        let key = (
            namespace.clone(),
            uid,
            reason.to_string(),
            message.to_string(),
        );
        let now = jiff::Timestamp::now();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let existing = {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() > MAX_REMEMBERED {
                recent.clear();
            }
            recent.get(&key).cloned()
        };
        if let Some((name, count)) = existing {
            let patch = serde_json::json!({"count": count + 1, "lastTimestamp": Time(now)});
            if api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                self.recent
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, (name, count + 1));
                return;
            }
        }
        let object_name = about.name.clone().unwrap_or_default();
        let name = format!("{}.{:x}", object_name, now.as_nanosecond());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: about.clone(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            type_: Some(kind.as_str().to_string()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: None,
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.component.clone()),
            action: Some(reason.to_string()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                self.recent
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, (name, 1));
            }
            Err(e) => tracing::debug!("cannot record event {reason} on {object_name}: {e}"),
        }
    }
}
