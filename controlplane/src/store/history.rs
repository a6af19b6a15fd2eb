//! The in-memory watch history window of the embedded backend.
//!
//! `History` owns a bounded ring of the most recent events plus a broadcast
//! channel that carries new events to live watchers. It never touches disk:
//! after a restart the window starts empty at the recovered revision, and
//! older revisions are `Compacted`. Because the ring is bounded, a stream of
//! Lease renewals costs a fixed amount of memory instead of a growing log.
//!
//! Every committed revision produces exactly one event, so revisions in the
//! ring and on the broadcast channel are consecutive.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use futures::StreamExt;
use tokio::sync::broadcast;

use super::{Event, Result, StoreError, WatchStream};

/// Events kept for watch replay when no capacity is given.
pub const DEFAULT_HISTORY_CAPACITY: usize = 100_000;

/// Upper bound of the live channel: a watcher further behind than this is
/// cut off with `Compacted` and relists, instead of pinning memory.
const MAX_LIVE_BUFFER: usize = 4096;

/// Lower bound of the live channel, so a tiny replay window (tests) does not
/// make ordinary watchers lag.
const MIN_LIVE_BUFFER: usize = 64;

/// Bounded replay window plus live fan-out of store events.
pub struct History {
    ring: Mutex<Ring>,
    live: broadcast::Sender<Event>,
}

/// The kept events and the revisions that bound them.
struct Ring {
    events: VecDeque<Event>,
    capacity: usize,
    /// Revision just before the oldest kept event: a watch may start after it.
    compacted: i64,
}

impl History {
    /// An empty window at `revision` (the store's revision when opened), keeping up to `capacity` events.
    pub fn new(capacity: usize, revision: i64) -> History {
        let capacity = capacity.max(1);
        let (live, _) = broadcast::channel(capacity.clamp(MIN_LIVE_BUFFER, MAX_LIVE_BUFFER));
        let ring = Ring {
            events: VecDeque::with_capacity(capacity.min(1024)),
            capacity,
            compacted: revision,
        };
        History {
            ring: Mutex::new(ring),
            live,
        }
    }

    /// Records committed events (in revision order) and sends them to live watchers.
    pub fn append(&self, events: Vec<Event>) {
        let mut ring = self.lock();
        for event in events {
            if ring.events.len() == ring.capacity {
                if let Some(evicted) = ring.events.pop_front() {
                    ring.compacted = evicted.kv.mod_revision;
                }
            }
            // No receiver is not an error: nobody is watching right now.
            let _ = self.live.send(event.clone());
            ring.events.push_back(event);
        }
    }

    /// The oldest revision a watch can start after.
    pub fn compacted_revision(&self) -> i64 {
        self.lock().compacted
    }

    /// Streams events for keys under `prefix` with revision above
    /// `after_revision`: kept history first, then live events, with no gap or
    /// duplicate between the two. `Compacted` if that history was evicted.
    pub fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchStream> {
        // Subscribing under the lock that `append` holds means every event is
        // either in the replay copy or delivered live, never both or neither.
        let (replay, live, position) = {
            let ring = self.lock();
            if after_revision < ring.compacted {
                return Err(StoreError::Compacted {
                    requested: after_revision,
                    oldest: ring.compacted,
                });
            }
            let replay: Vec<Event> = ring
                .events
                .iter()
                .filter(|e| e.kv.mod_revision > after_revision && e.kv.key.starts_with(prefix))
                .cloned()
                .collect();
            let newest = ring
                .events
                .back()
                .map_or(ring.compacted, |e| e.kv.mod_revision);
            (replay, self.live.subscribe(), newest.max(after_revision))
        };
        let follower = Follower {
            live,
            prefix: prefix.to_owned(),
            position,
        };
        let live = futures::stream::unfold(Some(follower), |state| async move {
            let mut follower = state?;
            let item = follower.next().await?;
            let keep_going = item.is_ok();
            Some((item, keep_going.then_some(follower)))
        });
        Ok(futures::stream::iter(replay.into_iter().map(Ok))
            .chain(live)
            .boxed())
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        // The lock is only held for in-memory bookkeeping that cannot leave
        // the ring half-updated, so a poisoned lock is still consistent.
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One watcher's view of the live channel.
struct Follower {
    live: broadcast::Receiver<Event>,
    prefix: String,
    /// Highest revision this watcher has seen or skipped.
    position: i64,
}

impl Follower {
    /// The next matching event, `Compacted` once after lagging, `None` when the store closed.
    async fn next(&mut self) -> Option<Result<Event>> {
        loop {
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
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    // One event per revision: the skipped ones are the next `skipped` revisions.
                    let skipped = i64::try_from(skipped).unwrap_or(i64::MAX);
                    return Some(Err(StoreError::Compacted {
                        requested: self.position,
                        oldest: self.position.saturating_add(skipped),
                    }));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
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

    #[tokio::test]
    async fn lagging_watcher_gets_compacted_and_ends() {
        let history = History::new(1, 0);
        let mut stream = history.watch("/", 0).expect("watch");
        let burst = i64::try_from(MIN_LIVE_BUFFER).expect("small") + 5;
        history.append((1..=burst).map(|r| put("/k", r)).collect());
        match next(&mut stream).await {
            Some(Err(StoreError::Compacted {
                requested: 0,
                oldest,
            })) => assert_eq!(oldest, 5),
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
