//! Event recording for the scheduler and controllers: core/v1 Events about
//! an object, as `kubectl describe` and `kubectl get events` show them.
//! As upstream's EventCorrelator: repeats of the same reason and message on
//! the same object bump `count` and `lastTimestamp` instead of creating new
//! objects; after ten similar events (same object, type and reason,
//! differing messages) within ten minutes they combine into one Event
//! "(combined from similar events): ..."; and a token bucket per object and
//! type (burst 25, then one per five minutes) drops floods, so a retry loop
//! cannot flood the store.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// What correlates repeats: namespace, object uid, reason and message
/// (the message is empty for a combined event).
type EventKey = (String, String, String, String);
/// What similar events share: namespace, object uid, type and reason.
type AggregateKey = (String, String, &'static str, String);

/// Similar events (differing messages) on one object before they combine.
const MAX_SIMILAR: usize = 10;
/// Window in which similar events are counted.
const SIMILAR_WINDOW: Duration = Duration::from_secs(600);
/// Prefix of a combined event's message, as upstream writes it.
const COMBINED_PREFIX: &str = "(combined from similar events): ";
/// Events about one object a component may send in a burst.
const SPAM_BURST: f64 = 25.0;
/// Sustained rate after the burst: one event per five minutes.
const SPAM_QPS: f64 = 1.0 / 300.0;

/// Records Events as one component (e.g. `default-scheduler`).
pub struct Recorder {
    client: kube::Client,
    component: String,
    state: Mutex<Correlator>,
}

/// Bound on remembered keys before a map is reset. It must exceed the
/// objects a component reports on repeatedly: with 10k pending pods and a
/// bound of 4096 (upstream's old LRU size) every retry round forgot the
/// pods' events and spam buckets, so each round created 10k *new* Events
/// instead of counting up the existing ones, and the store grew without
/// end. ~200 bytes per key: 64k keys cost at most ~13 MiB.
const MAX_REMEMBERED: usize = 65_536;

/// What to do with one event, as upstream's EventCorrelator decides.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Over the spam filter's rate: not sent.
    Drop,
    /// A new Event object with this message.
    Create { key: EventKey, message: String },
    /// A repeat: the existing Event gets this count and message.
    Bump {
        key: EventKey,
        name: String,
        count: i32,
        message: String,
    },
}

/// A token bucket.
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Dedup, aggregation and spam filter state of one recorder.
#[derive(Default)]
struct Correlator {
    /// Event key → (event name, count) of events sent.
    recent: HashMap<EventKey, (String, i32)>,
    /// Similar events: the distinct messages seen and when the window began.
    similar: HashMap<AggregateKey, (HashSet<String>, Instant)>,
    /// Spam filter per (namespace, object uid, type), as upstream's spam key.
    buckets: HashMap<(String, String, &'static str), Bucket>,
}

impl Correlator {
    fn decide(
        &mut self,
        namespace: &str,
        uid: &str,
        kind: EventType,
        reason: &str,
        message: &str,
        now: Instant,
    ) -> Decision {
        for len in [self.recent.len(), self.similar.len(), self.buckets.len()] {
            if len > MAX_REMEMBERED {
                *self = Correlator::default();
                break;
            }
        }
        let bucket = self
            .buckets
            .entry((namespace.to_string(), uid.to_string(), kind.as_str()))
            .or_insert(Bucket {
                tokens: SPAM_BURST,
                last: now,
            });
        let refill = now.duration_since(bucket.last).as_secs_f64() * SPAM_QPS;
        bucket.tokens = (bucket.tokens + refill).min(SPAM_BURST);
        bucket.last = now;
        if bucket.tokens < 1.0 {
            return Decision::Drop;
        }
        bucket.tokens -= 1.0;

        let aggregate = (
            namespace.to_string(),
            uid.to_string(),
            kind.as_str(),
            reason.to_string(),
        );
        let (messages, since) = self
            .similar
            .entry(aggregate)
            .or_insert_with(|| (HashSet::new(), now));
        if now.duration_since(*since) > SIMILAR_WINDOW {
            messages.clear();
            *since = now;
        }
        messages.insert(message.to_string());
        let (message, key_message) = if messages.len() >= MAX_SIMILAR {
            (format!("{COMBINED_PREFIX}{message}"), String::new())
        } else {
            (message.to_string(), message.to_string())
        };
        let key = (
            namespace.to_string(),
            uid.to_string(),
            reason.to_string(),
            key_message,
        );
        match self.recent.get(&key) {
            Some((name, count)) => Decision::Bump {
                name: name.clone(),
                count: count + 1,
                key,
                message,
            },
            None => Decision::Create { key, message },
        }
    }

    fn sent(&mut self, key: EventKey, name: String, count: i32) {
        self.recent.insert(key, (name, count));
    }
}

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
            state: Mutex::new(Correlator::default()),
        }
    }

    /// Records an event about `about`; failures are logged, never fatal.
    /// Repeats bump the existing Event, similar events combine, and a
    /// flood about one object is dropped (upstream's EventCorrelator).
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
        let object_name = about.name.clone().unwrap_or_default();
        let decision = self
            .lock()
            .decide(&namespace, &uid, kind, reason, message, Instant::now());
        let now = jiff::Timestamp::now();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let (key, message) = match decision {
            Decision::Drop => {
                tracing::debug!("event {reason} on {object_name} dropped by the spam filter");
                return;
            }
            Decision::Bump {
                key,
                name,
                count,
                message,
            } => {
                let patch = serde_json::json!({
                    "count": count, "lastTimestamp": Time(now), "message": message,
                });
                if api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .is_ok()
                {
                    self.lock().sent(key, name, count);
                    return;
                }
                (key, message)
            }
            Decision::Create { key, message } => (key, message),
        };
        let name = format!("{}.{:x}", object_name, now.as_nanosecond());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: about.clone(),
            reason: Some(reason.to_string()),
            message: Some(message),
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
            Ok(_) => self.lock().sent(key, name, 1),
            Err(e) => tracing::debug!("cannot record event {reason} on {object_name}: {e}"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Correlator> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(c: &mut Correlator, message: &str, now: Instant) -> Decision {
        c.decide(
            "ns",
            "uid-1",
            EventType::Warning,
            "FailedScheduling",
            message,
            now,
        )
    }

    /// Feeds a decision back as the recorder does after a successful write.
    fn send(c: &mut Correlator, d: &Decision) {
        match d {
            Decision::Create { key, .. } => c.sent(key.clone(), "ev".into(), 1),
            Decision::Bump {
                key, name, count, ..
            } => c.sent(key.clone(), name.clone(), *count),
            Decision::Drop => {}
        }
    }

    #[test]
    fn repeats_bump_the_count() {
        let mut c = Correlator::default();
        let t = Instant::now();
        let first = decide(&mut c, "0/1 nodes", t);
        assert!(matches!(first, Decision::Create { .. }));
        send(&mut c, &first);
        for want in 2..5 {
            let d = decide(&mut c, "0/1 nodes", t);
            assert!(
                matches!(&d, Decision::Bump { count, .. } if *count == want),
                "{d:?}"
            );
            send(&mut c, &d);
        }
    }

    #[test]
    fn ten_thousand_objects_retried_bump_their_events_instead_of_creating_new_ones() {
        // The scheduler retrying 10k pending pods: each pod's second
        // FailedScheduling must count up its Event, not mint another.
        let mut c = Correlator::default();
        let t = Instant::now();
        let pods: Vec<String> = (0..10_000).map(|i| format!("uid-{i}")).collect();
        for round in 1..=2 {
            for uid in &pods {
                let d = c.decide(
                    "ns",
                    uid,
                    EventType::Warning,
                    "FailedScheduling",
                    "0/0 nodes",
                    t,
                );
                match (&d, round) {
                    (Decision::Create { .. }, 1) => {}
                    (Decision::Bump { count: 2, .. }, 2) => {}
                    _ => panic!("round {round}, pod {uid}: {d:?}"),
                }
                send(&mut c, &d);
            }
        }
    }

    #[test]
    fn similar_events_combine_after_ten_messages() {
        let mut c = Correlator::default();
        let t = Instant::now();
        for i in 0..MAX_SIMILAR - 1 {
            let d = decide(&mut c, &format!("message {i}"), t);
            assert!(
                matches!(&d, Decision::Create { message, .. } if *message == format!("message {i}"))
            );
            send(&mut c, &d);
        }
        let d = decide(&mut c, "message 9", t);
        assert!(
            matches!(&d, Decision::Create { message, .. } if message == "(combined from similar events): message 9"),
            "{d:?}"
        );
        send(&mut c, &d);
        let d = decide(&mut c, "message 10", t);
        assert!(
            matches!(&d, Decision::Bump { message, count: 2, .. } if message == "(combined from similar events): message 10"),
            "{d:?}"
        );
        // After the window, messages are distinct events again.
        let later = t + SIMILAR_WINDOW + Duration::from_secs(1);
        let d = decide(&mut c, "message 11", later);
        assert!(
            matches!(&d, Decision::Create { message, .. } if message == "message 11"),
            "{d:?}"
        );
    }

    #[test]
    fn spam_filter_drops_a_flood_and_refills_slowly() {
        let mut c = Correlator::default();
        let t = Instant::now();
        for _ in 0..25 {
            let d = decide(&mut c, "same", t);
            assert_ne!(d, Decision::Drop);
            send(&mut c, &d);
        }
        assert_eq!(decide(&mut c, "same", t), Decision::Drop);
        // Another object is not affected.
        let other = c.decide(
            "ns",
            "uid-2",
            EventType::Warning,
            "FailedScheduling",
            "same",
            t,
        );
        assert!(matches!(other, Decision::Create { .. }));
        // One token returns after five minutes.
        let later = t + Duration::from_secs(301);
        assert!(matches!(
            decide(&mut c, "same", later),
            Decision::Bump { .. }
        ));
        assert_eq!(decide(&mut c, "same", later), Decision::Drop);
    }
}
