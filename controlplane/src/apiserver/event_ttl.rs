//! Expires Events, as kube-apiserver's `--event-ttl` (default one hour)
//! does: an Event is deleted once its last write is older than the TTL.
//! Upstream attaches a fresh etcd lease to every Event write; here a sweep
//! over the stored Events every [`SWEEP`] deletes the expired ones (watchers
//! see DELETED). Without it every Event ever recorded stays: a cluster with
//! thousands of pods that keep failing to schedule grew by tens of MiB an
//! hour.
//!
//! The last write is the latest of the write times in `managedFields` (this
//! server stamps every write there) and `metadata.creationTimestamp`; the
//! Event's own `lastTimestamp`, `eventTime` and `series.lastObservedTime`
//! count too, so an Event whose count keeps going up stays.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;

use super::registry;
use super::server::ApiServer;
use crate::store::{Result, StoreError};

/// How often the stored Events are checked (every TTL / 4 for a TTL under
/// four sweeps, down to once a second).
const SWEEP: Duration = Duration::from_secs(60);
/// Events read per store list call.
const PAGE: usize = 500;

/// Starts the sweeper; it runs as long as the process. A zero `ttl` keeps
/// Events forever.
pub fn spawn(server: Arc<ApiServer>, ttl: Duration) {
    if ttl.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let period = SWEEP.min(ttl / 4).max(Duration::from_secs(1));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match sweep(&server, ttl, Timestamp::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!("event TTL: deleted {n} Events older than {ttl:?}"),
                Err(e) => tracing::warn!("event TTL: sweeping Events failed, retrying later: {e}"),
            }
        }
    });
}

/// Deletes every stored Event whose last occurrence is more than `ttl`
/// before `now`; returns how many were deleted.
pub async fn sweep(server: &ApiServer, ttl: Duration, now: Timestamp) -> Result<usize> {
    let prefix = registry::find("", "v1", "events")
        .map(|r| r.prefix(None))
        .unwrap_or_else(|| "/registry/events/".into());
    let mut deleted = 0;
    let mut after: Option<String> = None;
    loop {
        let page = server.store.list(&prefix, after.as_deref(), PAGE).await?;
        for kv in &page.items {
            let Ok(event) = serde_json::from_slice::<Value>(&kv.value) else {
                continue;
            };
            let expired = last_occurrence(&event)
                .is_some_and(|last| now.duration_since(last).unsigned_abs() > ttl && last < now);
            if !expired {
                continue;
            }
            // Pinned to the revision read: an Event updated meanwhile stays.
            match server.store.delete(&kv.key, Some(kv.mod_revision)).await {
                Ok(_) => deleted += 1,
                Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        match page.items.last() {
            Some(last) if page.more => after = Some(last.key.clone()),
            _ => return Ok(deleted),
        }
    }
}

/// The latest time the Event was written or says it happened.
fn last_occurrence(event: &Value) -> Option<Timestamp> {
    let writes = event["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| &entry["time"]);
    [
        &event["lastTimestamp"],
        &event["eventTime"],
        &event["series"]["lastObservedTime"],
        &event["metadata"]["creationTimestamp"],
    ]
    .into_iter()
    .chain(writes)
    .filter_map(|v| v.as_str()?.parse::<Timestamp>().ok())
    .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_last_occurrence_is_the_latest_time_the_event_carries() {
        let event = json!({
            "metadata": {
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "managedFields": [{"manager": "a", "time": "2026-01-01T02:30:00Z"}, {"manager": "b"}],
            },
            "lastTimestamp": "2026-01-01T02:00:00Z",
            "eventTime": "2026-01-01T01:00:00.123456Z",
            "series": {"lastObservedTime": "2026-01-01T03:00:00.5Z"},
        });
        assert_eq!(
            last_occurrence(&event),
            Some("2026-01-01T03:00:00.5Z".parse().expect("time"))
        );
        let only_created = json!({"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}, "lastTimestamp": null});
        assert_eq!(
            last_occurrence(&only_created),
            Some("2026-01-01T00:00:00Z".parse().expect("time"))
        );
        let rewritten = json!({
            "metadata": {
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "managedFields": [{"manager": "kubectl", "time": "2026-01-01T05:00:00Z"}],
            },
            "lastTimestamp": "2026-01-01T01:00:00Z",
        });
        assert_eq!(
            last_occurrence(&rewritten),
            Some("2026-01-01T05:00:00Z".parse().expect("time")),
            "the last write counts even if the Event's own times are older"
        );
        assert_eq!(last_occurrence(&json!({"metadata": {}})), None);
    }
}
