//! Upstream's `endpoints.kubernetes.io/last-change-trigger-time`: the time of
//! the earliest change a sync is about to publish, so a proxy can measure
//! network-programming latency (kube-proxy's
//! `network_programming_duration_seconds`).
//!
//! As upstream's `TriggerTimeTracker`: a pod's trigger time is when its
//! Ready condition last changed, a Service's is its creation; the sync's
//! trigger time is the minimum of those that moved since the previous sync
//! of the same Service, or none when nothing with a time changed (a pod
//! deletion has no time of its own, so upstream publishes none for it).

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::ServiceKey;
use crate::controllers::pods::CachedPod;

/// The annotation set on created and updated slices.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

#[derive(Default)]
struct ServiceState {
    pods: HashMap<String, Timestamp>,
    service: Option<Timestamp>,
}

/// Per-Service trigger times seen at the previous sync.
#[derive(Default)]
pub struct TriggerTimes {
    services: Mutex<HashMap<ServiceKey, ServiceState>>,
}

impl TriggerTimes {
    /// The trigger time of a sync of `service` selecting `pods`; remembers
    /// their times for the next sync.
    pub fn compute<'a>(
        &self,
        key: &ServiceKey,
        service: &Service,
        pods: impl IntoIterator<Item = &'a CachedPod>,
    ) -> Option<Timestamp> {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let state = services.entry(key.clone()).or_default();
        let mut earliest: Option<Timestamp> = None;
        let mut seen = HashMap::new();
        for pod in pods {
            let Some(time) = pod.ready.and_then(|r| r.since) else {
                continue;
            };
            if state.pods.get(&*pod.name).is_none_or(|last| time > *last) {
                earliest = Some(earliest.map_or(time, |e| e.min(time)));
            }
            seen.insert(pod.name.to_string(), time);
        }
        let service_time = service.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if let Some(time) = service_time {
            if state.service.is_none_or(|last| time > last) {
                earliest = Some(earliest.map_or(time, |e| e.min(time)));
            }
        }
        state.pods = seen;
        state.service = service_time;
        earliest
    }

    /// Forgets a deleted Service.
    pub fn forget(&self, key: &ServiceKey) {
        self.services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// The annotation's value: RFC 3339 with nanoseconds, in UTC, as upstream.
pub fn format(time: Timestamp) -> String {
    time.to_string()
}

/// Sets (or, with no trigger time, removes) the annotation on the slices a
/// sync creates or updates, as upstream's reconciler does.
pub fn annotate<'a>(
    slices: impl IntoIterator<Item = &'a mut EndpointSlice>,
    triggered: Option<Timestamp>,
) {
    for slice in slices {
        let annotations = slice
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        match triggered {
            Some(time) => {
                annotations.insert(LAST_CHANGE_TRIGGER_TIME.to_string(), format(time));
            }
            None => {
                annotations.remove(LAST_CHANGE_TRIGGER_TIME);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn pod(name: &str, ready_at: Option<i64>) -> CachedPod {
        CachedPod::from(&Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                conditions: ready_at.map(|s| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(at(s))),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn service(created: i64) -> Service {
        Service {
            metadata: ObjectMeta {
                creation_timestamp: Some(Time(at(created))),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_earliest_change_since_the_last_sync_is_the_trigger() {
        let t = TriggerTimes::default();
        let key = ("ns".to_string(), "web".to_string());
        let svc = service(0);
        // First sync: the Service and both pods are new; the earliest wins.
        let first = t.compute(&key, &svc, [&pod("a", Some(10)), &pod("b", Some(5))]);
        assert_eq!(first, Some(at(0)));
        // Nothing moved: no trigger time.
        assert_eq!(
            t.compute(&key, &svc, [&pod("a", Some(10)), &pod("b", Some(5))]),
            None
        );
        // Pod b became ready again later, a new pod c without a Ready
        // condition has no time of its own.
        let next = t.compute(
            &key,
            &svc,
            [&pod("a", Some(10)), &pod("b", Some(30)), &pod("c", None)],
        );
        assert_eq!(next, Some(at(30)));
        // A deletion alone publishes no time.
        assert_eq!(t.compute(&key, &svc, [&pod("b", Some(30))]), None);
        // After the Service is forgotten, everything is new again.
        t.forget(&key);
        assert_eq!(t.compute(&key, &svc, [&pod("b", Some(30))]), Some(at(0)));
    }

    #[test]
    fn the_value_is_rfc3339_utc() {
        let value = format(at(0) + jiff::SignedDuration::from_nanos(5));
        assert_eq!(value, "2023-11-14T22:13:20.000000005Z");
    }
}
