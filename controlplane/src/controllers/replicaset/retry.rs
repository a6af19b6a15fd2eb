//! Per-object exponential backoff for failed syncs, like the rate-limited
//! work queue upstream controllers requeue failures on: quick retries for
//! the common optimistic-concurrency conflict, slower ones for a failure
//! that keeps happening.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// First retry delay.
const BASE: Duration = Duration::from_millis(50);
/// Longest retry delay.
const MAX: Duration = Duration::from_secs(60);

/// Failure counts per object key.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// Records a failure of `key` and returns how long to wait before retrying.
    pub(crate) fn next(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key.to_string()).or_insert(0);
        let delay = BASE.saturating_mul(1u32 << (*n).min(20)).min(MAX);
        *n = n.saturating_add(1);
        delay
    }

    /// Forgets the failures of `key` after a successful sync.
    pub(crate) fn reset(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let b = Backoff::default();
        assert_eq!(b.next("a"), BASE);
        assert_eq!(b.next("a"), BASE * 2);
        assert_eq!(b.next("b"), BASE, "keys are independent");
        for _ in 0..30 {
            b.next("a");
        }
        assert_eq!(b.next("a"), MAX);
        b.reset("a");
        assert_eq!(b.next("a"), BASE);
    }
}
