//! The scheduling queue: pods waiting for a node, in upstream's three parts.
//!
//! - *active*: ready to be tried, highest `spec.priority` first, then FIFO;
//! - *backoff*: failed recently, retried once their backoff (1 s doubling
//!   per attempt up to 10 s) has passed;
//! - *unschedulable*: fit nowhere; they wait for a cluster change that may
//!   help (a node added or changed, a bound pod gone — [`Queue::move_all`])
//!   or for the periodic flush after [`UNSCHEDULABLE_FLUSH`].
//!
//! A popped pod is *in flight* until the caller reports the outcome. If a
//! cluster change arrives meanwhile, an unschedulable outcome goes to backoff
//! instead of waiting, so the change is not missed. Nothing here sleeps or
//! spins: the owner calls [`Queue::flush`] on a timer.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use super::held::Held;

/// First backoff after a failed attempt (upstream `podInitialBackoffSeconds`).
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest backoff (upstream `podMaxBackoffSeconds`).
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// An unschedulable pod is retried after this long even without a cluster
/// change (upstream waits 5 minutes; a shorter period suits small clusters
/// whose changes the scheduler might not classify as helpful).
pub const UNSCHEDULABLE_FLUSH: Duration = Duration::from_secs(60);
/// Pods kept decoded while they wait for their first attempt; a new pod
/// arriving when this many are queued is packed (see [`Held`]) until it is
/// popped, so a burst of creates the scheduler cannot keep up with costs
/// ~0.75 KB per pod instead of ~8 KB.
pub const KEEP_WHOLE: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    Backoff { until: Instant },
    Unschedulable { since: Instant },
    InFlight { moves_at_pop: u64 },
}

#[derive(Debug)]
struct Entry {
    /// Whole while active or in flight, packed while waiting (see [`Held`]).
    pod: Held,
    /// `spec.priority` of the latest state.
    priority: i32,
    state: State,
    attempts: u32,
    last_attempt: Option<Instant>,
    /// Matches the heap item that represents this entry; stale items are skipped.
    ticket: u64,
}

/// Pods waiting to be scheduled, keyed by UID.
#[derive(Debug, Default)]
pub struct Queue {
    entries: HashMap<String, Entry>,
    active: BinaryHeap<(i32, Reverse<u64>, String)>,
    backoff: BinaryHeap<Reverse<(Instant, u64, String)>>,
    next_ticket: u64,
    moves: u64,
}

/// The backoff after `attempts` failed attempts.
pub fn backoff_for(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    INITIAL_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF)
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

impl Queue {
    /// An empty queue.
    pub fn new() -> Queue {
        Queue::default()
    }

    /// Number of pods in the queue, in flight included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if no pod waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True if a pod is ready to be popped.
    pub fn has_active(&mut self) -> bool {
        // Drop stale heap items (removed or re-queued pods) from the top.
        while let Some((_, Reverse(ticket), uid)) = self.active.peek() {
            let live = self
                .entries
                .get(uid)
                .is_some_and(|e| e.state == State::Active && e.ticket == *ticket);
            if live {
                return true;
            }
            self.active.pop();
        }
        false
    }

    /// True if `uid` is queued (in any state).
    pub fn contains(&self, uid: &str) -> bool {
        self.entries.contains_key(uid)
    }

    /// UIDs of every queued pod.
    pub fn uids(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Adds a new pending pod, or refreshes a queued one. An unschedulable
    /// pod whose spec or labels changed is tried again.
    pub fn add_or_update(&mut self, uid: &str, pod: Arc<Pod>, now: Instant) {
        let Some(entry) = self.entries.get_mut(uid) else {
            let priority = priority(&pod);
            let mut pod = Held::Whole(pod);
            if self.entries.len() >= KEEP_WHOLE {
                pod.pack();
            }
            self.entries.insert(
                uid.to_string(),
                Entry {
                    priority,
                    pod,
                    state: State::Active,
                    attempts: 0,
                    last_attempt: None,
                    ticket: 0,
                },
            );
            self.activate(uid, now);
            return;
        };
        entry.priority = priority(&pod);
        let changed = entry.pod.replace(pod);
        let state = entry.state;
        match state {
            State::Unschedulable { .. } if changed => self.retry(uid, now),
            State::Unschedulable { .. } | State::Backoff { .. } => entry.pod.pack(),
            State::Active | State::InFlight { .. } => {}
        }
    }

    /// Drops a pod (bound, deleted, or no longer ours).
    pub fn remove(&mut self, uid: &str) {
        self.entries.remove(uid);
    }

    /// Takes the next pod to schedule; it stays in flight until one of
    /// [`remove`](Self::remove), [`unschedulable`](Self::unschedulable) or
    /// [`backoff`](Self::backoff) is called for it.
    pub fn pop(&mut self, now: Instant) -> Option<(String, Arc<Pod>)> {
        while let Some((_, Reverse(ticket), uid)) = self.active.pop() {
            let Some(entry) = self.entries.get_mut(&uid) else {
                continue;
            };
            if entry.state != State::Active || entry.ticket != ticket {
                continue;
            }
            let pod = match entry.pod.unpack() {
                Ok(pod) => pod,
                Err(e) => {
                    // Cannot happen for JSON this queue wrote; the pod comes
                    // back with its next watch event.
                    tracing::error!(
                        "scheduler: dropping queued pod {uid}: decoding it failed: {e}"
                    );
                    self.entries.remove(&uid);
                    continue;
                }
            };
            entry.state = State::InFlight {
                moves_at_pop: self.moves,
            };
            entry.attempts = entry.attempts.saturating_add(1);
            entry.last_attempt = Some(now);
            return Some((uid, pod));
        }
        None
    }

    /// An in-flight pod fit nowhere: it waits for a cluster change, or goes
    /// to backoff if a change already happened while it was tried.
    pub fn unschedulable(&mut self, uid: &str, now: Instant) {
        let moves = self.moves;
        let Some(entry) = self.entries.get_mut(uid) else {
            return;
        };
        match entry.state {
            State::InFlight { moves_at_pop } if moves_at_pop != moves => self.back_off(uid, now),
            _ => {
                entry.state = State::Unschedulable { since: now };
                entry.pod.pack();
            }
        }
    }

    /// An in-flight pod failed for a transient reason (a binding error): retry after backoff.
    pub fn backoff(&mut self, uid: &str, now: Instant) {
        if self.entries.contains_key(uid) {
            self.back_off(uid, now);
        }
    }

    /// A cluster change that may make unschedulable pods fit: retry them all
    /// (each after its own backoff).
    pub fn move_all(&mut self, now: Instant) {
        self.moves += 1;
        let waiting: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.state, State::Unschedulable { .. }))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in waiting {
            self.retry(&uid, now);
        }
    }

    /// Moves pods whose backoff has passed to active, and retries pods that
    /// have been unschedulable for [`UNSCHEDULABLE_FLUSH`].
    pub fn flush(&mut self, now: Instant) {
        while let Some(Reverse((until, ticket, _))) = self.backoff.peek() {
            if *until > now {
                break;
            }
            let ticket = *ticket;
            let Some(Reverse((_, _, uid))) = self.backoff.pop() else {
                break;
            };
            let due = self
                .entries
                .get(&uid)
                .is_some_and(|e| e.ticket == ticket && matches!(e.state, State::Backoff { .. }));
            if due {
                self.activate(&uid, now);
            }
        }
        let stale: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.state, State::Unschedulable { since } if now.duration_since(since) >= UNSCHEDULABLE_FLUSH))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in stale {
            self.activate(&uid, now);
        }
    }

    /// Active if its backoff has passed, else backoff.
    fn retry(&mut self, uid: &str, now: Instant) {
        let Some(entry) = self.entries.get(uid) else {
            return;
        };
        let backed_off = entry
            .last_attempt
            .is_none_or(|at| now.duration_since(at) >= backoff_for(entry.attempts));
        if backed_off {
            self.activate(uid, now);
        } else {
            self.back_off(uid, now);
        }
    }

    fn activate(&mut self, uid: &str, _now: Instant) {
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        if let Some(entry) = self.entries.get_mut(uid) {
            entry.state = State::Active;
            entry.ticket = ticket;
            self.active
                .push((entry.priority, Reverse(ticket), uid.to_string()));
        }
    }

    fn back_off(&mut self, uid: &str, now: Instant) {
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        if let Some(entry) = self.entries.get_mut(uid) {
            let from = entry.last_attempt.unwrap_or(now);
            let until = from + backoff_for(entry.attempts);
            entry.state = State::Backoff { until };
            entry.ticket = ticket;
            entry.pod.pack();
            self.backoff.push(Reverse((until, ticket, uid.to_string())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, priority: i32) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "uid": name},
                "spec": {"containers": [], "priority": priority},
            }))
            .expect("valid pod"),
        )
    }

    fn popped(q: &mut Queue, now: Instant) -> Option<String> {
        q.pop(now).map(|(uid, _)| uid)
    }

    #[test]
    fn priority_then_fifo() {
        let now = Instant::now();
        let mut q = Queue::new();
        q.add_or_update("a", pod("a", 0), now);
        q.add_or_update("b", pod("b", 10), now);
        q.add_or_update("c", pod("c", 0), now);
        assert_eq!(popped(&mut q, now).as_deref(), Some("b"));
        assert_eq!(popped(&mut q, now).as_deref(), Some("a"));
        assert_eq!(popped(&mut q, now).as_deref(), Some("c"));
        assert_eq!(popped(&mut q, now), None);
        assert_eq!(
            q.len(),
            3,
            "in-flight pods stay until their outcome is known"
        );
    }

    #[test]
    fn unschedulable_waits_for_a_change_then_backs_off() {
        let t0 = Instant::now();
        let mut q = Queue::new();
        q.add_or_update("a", pod("a", 0), t0);
        popped(&mut q, t0);
        q.unschedulable("a", t0);
        q.flush(t0 + Duration::from_secs(5));
        assert!(!q.has_active(), "no busy retry");
        // A change within the backoff goes through backoff.
        q.move_all(t0 + Duration::from_millis(100));
        assert!(!q.has_active());
        q.flush(t0 + Duration::from_millis(1100));
        assert_eq!(
            popped(&mut q, t0 + Duration::from_millis(1100)).as_deref(),
            Some("a")
        );
        q.unschedulable("a", t0 + Duration::from_millis(1100));
        // A change after the backoff (2 s for the second attempt) activates at once.
        q.move_all(t0 + Duration::from_secs(4));
        assert!(q.has_active());
    }

    #[test]
    fn change_while_in_flight_is_not_missed() {
        let t0 = Instant::now();
        let mut q = Queue::new();
        q.add_or_update("a", pod("a", 0), t0);
        popped(&mut q, t0);
        q.move_all(t0);
        q.unschedulable("a", t0);
        q.flush(t0 + Duration::from_secs(1));
        assert_eq!(
            popped(&mut q, t0 + Duration::from_secs(1)).as_deref(),
            Some("a")
        );
    }

    #[test]
    fn periodic_flush_retries_unschedulable() {
        let t0 = Instant::now();
        let mut q = Queue::new();
        q.add_or_update("a", pod("a", 0), t0);
        popped(&mut q, t0);
        q.unschedulable("a", t0);
        q.flush(t0 + UNSCHEDULABLE_FLUSH - Duration::from_secs(1));
        assert!(!q.has_active());
        q.flush(t0 + UNSCHEDULABLE_FLUSH);
        assert!(q.has_active());
    }

    #[test]
    fn spec_update_retries_but_status_update_does_not() {
        let t0 = Instant::now();
        let mut q = Queue::new();
        q.add_or_update("a", pod("a", 0), t0);
        popped(&mut q, t0);
        q.unschedulable("a", t0);
        let mut status_only = (*pod("a", 0)).clone();
        status_only.status = Some(Default::default());
        q.add_or_update("a", Arc::new(status_only), t0 + Duration::from_secs(3));
        assert!(!q.has_active());
        let mut relabelled = (*pod("a", 0)).clone();
        relabelled.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
        q.add_or_update("a", Arc::new(relabelled), t0 + Duration::from_secs(3));
        assert!(q.has_active());
    }

    #[test]
    fn a_backlog_beyond_keep_whole_pops_unchanged_in_order() {
        let now = Instant::now();
        let mut q = Queue::new();
        let total = KEEP_WHOLE + 10;
        for i in 0..total {
            q.add_or_update(&format!("p{i}"), pod(&format!("p{i}"), 0), now);
        }
        let packed = q
            .entries
            .values()
            .filter(|e| matches!(e.pod, Held::Packed { .. }))
            .count();
        assert_eq!(
            packed, 10,
            "only the pods beyond the first KEEP_WHOLE are packed"
        );
        for i in 0..total {
            let (uid, p) = q.pop(now).expect("queued");
            assert_eq!(uid, format!("p{i}"));
            assert_eq!(p, pod(&uid, 0));
        }
    }

    #[test]
    fn removed_pods_are_skipped() {
        let now = Instant::now();
        let mut q = Queue::new();
        q.add_or_update("a", pod("a", 0), now);
        q.add_or_update("b", pod("b", 0), now);
        q.remove("a");
        assert_eq!(popped(&mut q, now).as_deref(), Some("b"));
        assert_eq!(popped(&mut q, now), None);
        q.backoff("b", now);
        q.flush(now + MAX_BACKOFF);
        assert_eq!(popped(&mut q, now + MAX_BACKOFF).as_deref(), Some("b"));
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff_for(1), Duration::from_secs(1));
        assert_eq!(backoff_for(2), Duration::from_secs(2));
        assert_eq!(backoff_for(4), Duration::from_secs(8));
        assert_eq!(backoff_for(5), MAX_BACKOFF);
        assert_eq!(backoff_for(100), MAX_BACKOFF);
    }
}
