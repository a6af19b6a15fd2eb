//! Controller expectations, as upstream's `UIDTrackingControllerExpectations`:
//! after a sync creates or deletes pods, the controller waits until its pod
//! cache has seen those creations and deletions before it counts pods again,
//! so a cache that lags behind its own writes cannot make it create or
//! delete twice. Expectations expire after [`TTL`] in case an event is lost.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an unfulfilled expectation blocks syncs (upstream's ExpectationsTimeout).
pub(crate) const TTL: Duration = Duration::from_secs(5 * 60);

#[derive(Debug)]
struct Expectation {
    /// Pod creations not yet seen.
    adds: i64,
    /// Keys (`namespace/name`) of pods whose deletion is not yet seen.
    deletes: HashSet<String>,
    set_at: Instant,
}

/// Outstanding creations and deletions per controller key.
#[derive(Debug, Default)]
pub(crate) struct Expectations {
    inner: Mutex<HashMap<String, Expectation>>,
}

impl Expectations {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Expectation>) -> T) -> T {
        // The lock is never held across an await, so poisoning can only come
        // from a panic in this module; the map is still consistent then.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut inner)
    }

    /// True when `key` may act on its cache: nothing outstanding, or expired.
    pub(crate) fn satisfied(&self, key: &str) -> bool {
        self.with(|m| match m.get(key) {
            None => true,
            Some(e) => (e.adds <= 0 && e.deletes.is_empty()) || e.set_at.elapsed() > TTL,
        })
    }

    /// Expects `count` pod creations (replacing earlier expectations).
    pub(crate) fn expect_creations(&self, key: &str, count: usize) {
        let adds = i64::try_from(count).unwrap_or(i64::MAX);
        self.with(|m| {
            m.insert(
                key.to_string(),
                Expectation {
                    adds,
                    deletes: HashSet::new(),
                    set_at: Instant::now(),
                },
            )
        });
    }

    /// Expects the deletion of these pods (replacing earlier expectations).
    pub(crate) fn expect_deletions(&self, key: &str, pods: impl IntoIterator<Item = String>) {
        let deletes = pods.into_iter().collect();
        self.with(|m| {
            m.insert(
                key.to_string(),
                Expectation {
                    adds: 0,
                    deletes,
                    set_at: Instant::now(),
                },
            )
        });
    }

    /// One expected creation was observed (or will never happen).
    pub(crate) fn creation_observed(&self, key: &str) {
        self.with(|m| {
            if let Some(e) = m.get_mut(key) {
                e.adds -= 1;
            }
        });
    }

    /// The deletion of `pod` (`namespace/name`) was observed (or will never happen).
    pub(crate) fn deletion_observed(&self, key: &str, pod: &str) {
        self.with(|m| {
            if let Some(e) = m.get_mut(key) {
                e.deletes.remove(pod);
            }
        });
    }

    /// Drops everything about `key` (its controller was deleted).
    pub(crate) fn forget(&self, key: &str) {
        self.with(|m| m.remove(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creations_block_until_observed() {
        let e = Expectations::default();
        assert!(e.satisfied("ns/rs"), "unknown keys are satisfied");
        e.expect_creations("ns/rs", 2);
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(e.satisfied("ns/rs"));
    }

    #[test]
    fn deletions_are_tracked_by_pod() {
        let e = Expectations::default();
        e.expect_deletions("ns/rs", ["ns/a".to_string(), "ns/b".to_string()]);
        e.deletion_observed("ns/rs", "ns/a");
        e.deletion_observed("ns/rs", "ns/a");
        assert!(
            !e.satisfied("ns/rs"),
            "observing the same pod twice counts once"
        );
        e.deletion_observed("ns/rs", "ns/b");
        assert!(e.satisfied("ns/rs"));
        e.expect_creations("ns/rs", 1);
        e.forget("ns/rs");
        assert!(e.satisfied("ns/rs"));
    }
}
