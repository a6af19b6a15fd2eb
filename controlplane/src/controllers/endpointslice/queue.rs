//! A deduplicating work queue with client-go's workqueue semantics: a key
//! added many times before a worker takes it is processed once, a key is
//! never processed by two workers at once (an add while it is processed
//! queues it again for afterwards), and failed keys come back after an
//! exponential backoff.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

/// First retry delay of a failing key.
const BASE_DELAY: Duration = Duration::from_millis(50);
/// Longest retry delay of a failing key.
const MAX_DELAY: Duration = Duration::from_secs(30);

struct State<K> {
    queue: VecDeque<K>,
    /// Keys waiting to be processed (queued, or re-added while processing).
    dirty: HashSet<K>,
    processing: HashSet<K>,
    failures: HashMap<K, u32>,
}

/// The queue; share it behind an `Arc`.
pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    ready: Notify,
}

impl<K: Clone + Eq + Hash + Send + 'static> WorkQueue<K> {
    /// An empty queue.
    pub fn new() -> Arc<Self> {
        Arc::new(WorkQueue {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                failures: HashMap::new(),
            }),
            ready: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<K>> {
        // A panic elsewhere cannot leave the sets inconsistent: every
        // critical section is a handful of infallible collection updates.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `key` unless it is already waiting.
    pub fn add(&self, key: K) {
        let mut state = self.lock();
        if !state.dirty.insert(key.clone()) {
            return;
        }
        if !state.processing.contains(&key) {
            state.queue.push_back(key);
            drop(state);
            self.ready.notify_one();
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(self: &Arc<Self>, key: K, delay: Duration) {
        let queue = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(key);
        });
    }

    /// Waits for the next key; the caller must call [`done`](Self::done) with it.
    pub async fn next(&self) -> K {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if let Some(key) = state.queue.pop_front() {
                    state.dirty.remove(&key);
                    state.processing.insert(key.clone());
                    return key;
                }
            }
            notified.await;
        }
    }

    /// Ends processing of `key`; queues it again if it was added meanwhile.
    pub fn done(&self, key: &K) {
        let mut state = self.lock();
        state.processing.remove(key);
        if state.dirty.contains(key) {
            state.queue.push_back(key.clone());
            drop(state);
            self.ready.notify_one();
        }
    }

    /// Queues a failed `key` again after its backoff; returns the delay.
    pub fn retry(self: &Arc<Self>, key: K) -> Duration {
        let delay = {
            let mut state = self.lock();
            let failures = state.failures.entry(key.clone()).or_insert(0);
            *failures = failures.saturating_add(1);
            backoff(*failures)
        };
        self.add_after(key, delay);
        delay
    }

    /// Forgets the failures of `key` after it succeeded.
    pub fn forget(&self, key: &K) {
        self.lock().failures.remove(key);
    }
}

/// Delay before the `failures`-th retry: doubling from [`BASE_DELAY`] up to [`MAX_DELAY`].
fn backoff(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    BASE_DELAY.saturating_mul(factor).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn coalesces_and_serializes_keys() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.next().await, "a");
        // Added while processing: comes back only after done().
        q.add("a");
        assert_eq!(q.next().await, "b");
        assert!(q.lock().queue.is_empty());
        q.done(&"a");
        assert_eq!(q.next().await, "a");
        q.done(&"a");
        q.done(&"b");
        assert!(q.lock().queue.is_empty());
    }

    #[tokio::test]
    async fn wakes_a_waiting_worker() {
        let q: Arc<WorkQueue<u32>> = WorkQueue::new();
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::task::yield_now().await;
        q.add(7);
        let got = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert!(matches!(got, Ok(Ok(7))));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), BASE_DELAY);
        assert_eq!(backoff(2), BASE_DELAY * 2);
        assert_eq!(backoff(40), MAX_DELAY);
    }
}
