//! The in-memory watch history window of the embedded backend.
//!
//! `History` owns a bounded ring of the most recent events plus a broadcast
//! channel that carries new events to live watchers. It never touches disk:
//! after a restart the window starts empty at the recovered revision, and
//! older revisions are `Compacted`. The ring is bounded both in events and in
//! the bytes of the values it holds, so a stream of Lease renewals or of pod
//! status updates costs a fixed amount of memory instead of a growing log.
//!
//! Every committed revision produces exactly one event, so revisions in the
//! ring and on the broadcast channel are consecutive.
//!
//! A watcher that falls behind the live channel (a burst of writes while it
//! is busy) catches up from the ring instead of failing: upstream's watch
//! cache resumes such a watcher too, and failing it would make every
//! in-process informer relist all pods at once after a burst of creates.
//! Only a watcher behind the ring itself gets `Compacted`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::StreamExt;
use tokio::sync::broadcast;

use super::{Event, EventKind, Result, StoreError, WatchStream};

/// Events kept for watch replay when no capacity is given.
pub const DEFAULT_HISTORY_CAPACITY: usize = 100_000;

/// Bytes of superseded values (see `event_bytes`) the ring may pin. Current
/// values are shared with the store's index, but an update's previous value
/// lives on only here, so without this bound 100k updates of pods would pin
/// ~80 MiB even packed (the redb store keeps values compressed, ~800 bytes
/// for a 2.6 KB pod). 8 MiB keeps the last ~10k updates of such pods:
/// watchers (in-process informers included) stay far closer than that, and
/// one that falls further behind gets 410 Gone and relists, as upstream's
/// watch cache (a bounded window of recent events) makes it.
pub const HISTORY_BYTES_BUDGET: usize = 8 * 1024 * 1024;

/// Upper bound of the live channel: a watcher further behind than this
/// catches up from the ring (or is `Compacted` if the ring moved past it).
/// Every slot keeps its event (value and previous value) until it is
/// overwritten, so 4096 slots of pod updates pinned ~16 MiB; catching up
/// from the ring instead costs only a lock per event.
const MAX_LIVE_BUFFER: usize = 1024;

/// Lower bound of the live channel, so a tiny replay window (tests) does not
/// make ordinary watchers lag.
const MIN_LIVE_BUFFER: usize = 64;

/// Bounded replay window plus live fan-out of store events.
pub struct History {
    ring: Arc<Mutex<Ring>>,
    live: broadcast::Sender<Event>,
}

/// The kept events and the revisions that bound them.
struct Ring {
    events: VecDeque<Event>,
    capacity: usize,
    /// Value bytes of the kept events (see `event_bytes`).
    bytes: usize,
    /// Most value bytes kept; the oldest events go first when exceeded.
    bytes_budget: usize,
    /// Revision just before the oldest kept event: a watch may start after it.
    compacted: i64,
}

impl History {
    /// An empty window at `revision` (the store's revision when opened), keeping up to `capacity` events.
    pub fn new(capacity: usize, revision: i64) -> History {
        History::with_budget(capacity, HISTORY_BYTES_BUDGET, revision)
    }

    /// Like `new`, also evicting the oldest events while the kept values exceed `bytes_budget`.
    pub fn with_budget(capacity: usize, bytes_budget: usize, revision: i64) -> History {
        let capacity = capacity.max(1);
        let (live, _) = broadcast::channel(capacity.clamp(MIN_LIVE_BUFFER, MAX_LIVE_BUFFER));
        let ring = Ring {
            events: VecDeque::with_capacity(capacity.min(1024)),
            capacity,
            bytes: 0,
            bytes_budget,
            compacted: revision,
        };
        History {
            ring: Arc::new(Mutex::new(ring)),
            live,
        }
    }

    /// Records committed events (in revision order) and sends them to live watchers.
    pub fn append(&self, events: Vec<Event>) {
        let mut ring = lock(&self.ring);
        for event in events {
            let size = event_bytes(&event);
            // The newest event is always kept, so a watch can resume after the current revision.
            while !ring.events.is_empty()
                && (ring.events.len() == ring.capacity
                    || ring.bytes.saturating_add(size) > ring.bytes_budget)
            {
                ring.evict_oldest();
            }
            // No receiver is not an error: nobody is watching right now.
            let _ = self.live.send(event.clone());
            ring.bytes = ring.bytes.saturating_add(size);
            ring.events.push_back(event);
        }
    }

    /// The oldest revision a watch can start after.
    pub fn compacted_revision(&self) -> i64 {
        lock(&self.ring).compacted
    }

    /// Streams events for keys under `prefix` with revision above
    /// `after_revision`: kept history first, then live events, with no gap or
    /// duplicate between the two. `Compacted` if that history was evicted.
    pub fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchStream> {
        // Subscribing under the lock that `append` holds means every event is
        // either in the replay copy or delivered live, never both or neither.
        let (replay, live, position) = {
            let ring = lock(&self.ring);
            if after_revision < ring.compacted {
                return Err(StoreError::Compacted {
                    requested: after_revision,
                    oldest: ring.compacted,
                });
            }
            let replay = ring.replay(prefix, after_revision);
            (
                replay,
                self.live.subscribe(),
                ring.newest().max(after_revision),
            )
        };
        let follower = Follower {
            live,
            ring: Arc::clone(&self.ring),
            prefix: prefix.to_owned(),
            position,
            replay,
        };
        let stream = futures::stream::unfold(Some(follower), |state| async move {
            let mut follower = state?;
            let item = follower.next().await?;
            let keep_going = item.is_ok();
            Some((item, keep_going.then_some(follower)))
        });
        Ok(stream.boxed())
    }
}

fn lock(ring: &Mutex<Ring>) -> MutexGuard<'_, Ring> {
    // The lock is only held for in-memory bookkeeping that cannot leave
    // the ring half-updated, so a poisoned lock is still consistent.
    ring.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Ring {
    /// Kept events under `prefix` with revision above `after_revision`.
    fn replay(&self, prefix: &str, after_revision: i64) -> VecDeque<Event> {
        self.events
            .iter()
            .filter(|e| e.kv.mod_revision > after_revision && e.kv.key.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// The revision of the newest kept event (the compacted one if none is kept).
    fn newest(&self) -> i64 {
        self.events
            .back()
            .map_or(self.compacted, |e| e.kv.mod_revision)
    }

    fn evict_oldest(&mut self) {
        if let Some(evicted) = self.events.pop_front() {
            self.compacted = evicted.kv.mod_revision;
            self.bytes = self.bytes.saturating_sub(event_bytes(&evicted));
        }
    }
}

/// The bytes an event pins beyond the store's index: the value an update
/// replaced, or the value a delete removed. A put's new value is the index's
/// (until it is replaced, and then counted with the event that replaced it).
fn event_bytes(event: &Event) -> usize {
    match event.kind {
        EventKind::Put => event.prev.as_ref().map_or(0, |prev| prev.value.len()),
        EventKind::Delete => event.kv.value.len(),
    }
}

/// One watcher's view of the live channel.
struct Follower {
    live: broadcast::Receiver<Event>,
    /// The ring to catch up from after lagging behind `live`.
    ring: Arc<Mutex<Ring>>,
    prefix: String,
    /// Highest revision this watcher has seen or skipped.
    position: i64,
    /// Events taken from the ring while catching up, delivered before `live`.
    replay: VecDeque<Event>,
}

impl Follower {
    /// The next matching event, `Compacted` once after falling behind the
    /// ring, `None` when the store closed.
    async fn next(&mut self) -> Option<Result<Event>> {
        loop {
            if let Some(event) = self.replay.pop_front() {
                return Some(Ok(event));
            }
            match self.live.recv().await {
                Ok(event) => {
                    let revision = event.kv.mod_revision;
                    if revision <= self.position {
                        continue;
                    }
                    self.position = revision;
                    if event.kv.key.starts_with(&self.prefix) {
                        return Some(Ok(event));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if let Err(e) = self.catch_up() {
                        return Some(Err(e));
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Queues the kept events this watcher missed and re-subscribes at the
    /// live channel's tail, both under the lock `append` holds, so nothing
    /// is missed or repeated between the two.
    fn catch_up(&mut self) -> Result<()> {
        let ring = lock(&self.ring);
        if self.position < ring.compacted {
            return Err(StoreError::Compacted {
                requested: self.position,
                oldest: ring.compacted,
            });
        }
        self.live = self.live.resubscribe();
        self.replay = ring.replay(&self.prefix, self.position);
        self.position = ring.newest().max(self.position);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EventKind, KeyValue};
    use bytes::Bytes;
    use std::time::Duration;

    fn put(key: &str, revision: i64) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.to_owned(),
                value: Bytes::from(format!("v{revision}")),
                create_revision: revision,
                mod_revision: revision,
            },
            prev: None,
        }
    }

    async fn next(stream: &mut WatchStream) -> Option<Result<Event>> {
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("watch stream stalled")
    }

    fn revision(item: Option<Result<Event>>) -> i64 {
        item.expect("stream ended")
            .expect("watch error")
            .kv
            .mod_revision
    }

    #[tokio::test]
    async fn replays_then_follows_live_without_gap_or_duplicate() {
        let history = History::new(10, 0);
        history.append(vec![put("/a/1", 1), put("/b/1", 2), put("/a/2", 3)]);
        let mut stream = history.watch("/a/", 1).expect("watch");
        history.append(vec![put("/a/3", 4), put("/b/2", 5), put("/a/4", 6)]);
        assert_eq!(revision(next(&mut stream).await), 3);
        assert_eq!(revision(next(&mut stream).await), 4);
        assert_eq!(revision(next(&mut stream).await), 6);
    }

    #[tokio::test]
    async fn revisions_before_the_window_are_compacted() {
        let history = History::new(3, 10);
        assert!(matches!(
            history.watch("/", 9),
            Err(StoreError::Compacted {
                requested: 9,
                oldest: 10
            })
        ));
        history.append((11..=15).map(|r| put("/k", r)).collect());
        assert_eq!(history.compacted_revision(), 12);
        assert!(matches!(
            history.watch("/", 11),
            Err(StoreError::Compacted {
                requested: 11,
                oldest: 12
            })
        ));
        let mut stream = history.watch("/", 12).expect("watch at the window edge");
        assert_eq!(revision(next(&mut stream).await), 13);
    }

    /// An update of `key` at `revision` that replaced the value written just before.
    fn update(key: &str, revision: i64) -> Event {
        Event {
            prev: Some(put(key, revision - 1).kv),
            ..put(key, revision)
        }
    }

    #[tokio::test]
    async fn the_byte_budget_evicts_the_oldest_events() {
        // Each update pins its previous value "v<revision - 1>": 3 bytes here.
        let history = History::with_budget(100, 9, 10);
        history.append(vec![put("/k", 11)]);
        history.append((12..=15).map(|r| update("/k", r)).collect());
        assert_eq!(history.compacted_revision(), 12);
        assert!(matches!(
            history.watch("/", 11),
            Err(StoreError::Compacted {
                requested: 11,
                oldest: 12
            })
        ));
        let mut stream = history.watch("/", 12).expect("watch inside the budget");
        assert_eq!(revision(next(&mut stream).await), 13);
        assert_eq!(revision(next(&mut stream).await), 14);
        assert_eq!(revision(next(&mut stream).await), 15);
    }

    #[tokio::test]
    async fn new_values_do_not_count_against_the_budget() {
        let history = History::with_budget(100, 1, 0);
        history.append((1..=50).map(|r| put(&format!("/k{r}"), r)).collect());
        assert_eq!(history.compacted_revision(), 0);
        history.append(vec![update("/k1", 51), update("/k1", 52)]);
        assert_eq!(history.compacted_revision(), 51);
        let mut stream = history.watch("/", 51).expect("the newest event is kept");
        assert_eq!(revision(next(&mut stream).await), 52);
    }

    #[tokio::test]
    async fn a_watcher_behind_the_live_channel_catches_up_from_the_ring() {
        // The ring outlives a burst twice the live channel's size.
        let history = History::new(MAX_LIVE_BUFFER * 4, 0);
        let mut stream = history.watch("/a/", 0).expect("watch");
        let burst = i64::try_from(MAX_LIVE_BUFFER * 2).expect("small");
        let key = |r: i64| if r % 2 == 0 { "/a/k" } else { "/b/k" };
        history.append((1..=burst).map(|r| put(key(r), r)).collect());
        for expected in (2..=burst).step_by(2) {
            assert_eq!(revision(next(&mut stream).await), expected);
        }
        history.append(vec![put("/a/k", burst + 1), put("/a/k", burst + 2)]);
        assert_eq!(revision(next(&mut stream).await), burst + 1);
        assert_eq!(revision(next(&mut stream).await), burst + 2);
    }

    #[tokio::test]
    async fn a_watcher_behind_the_ring_gets_compacted_and_ends() {
        let history = History::new(1, 0);
        let mut stream = history.watch("/", 0).expect("watch");
        let burst = i64::try_from(MIN_LIVE_BUFFER).expect("small") + 5;
        history.append((1..=burst).map(|r| put("/k", r)).collect());
        match next(&mut stream).await {
            Some(Err(StoreError::Compacted {
                requested: 0,
                oldest,
            })) => assert_eq!(oldest, burst - 1),
            other => panic!("expected Compacted, got {other:?}"),
        }
        assert!(next(&mut stream).await.is_none());
    }

    #[tokio::test]
    async fn stream_ends_when_history_is_dropped() {
        let history = History::new(4, 0);
        let mut stream = history.watch("/", 0).expect("watch");
        drop(history);
        assert!(next(&mut stream).await.is_none());
    }
}
