//! The redb writer thread and its group commit: it drains queued writes,
//! validates them against the index, persists a batch in one durable
//! transaction, then publishes it to the index and the watch history before
//! answering the callers. A failed commit fails the whole batch.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError};

use redb::Database;
use tokio::sync::mpsc;

use super::{encode_record, Op, RedbError, Request, Shared, KV, MAX_BATCH, META, REVISION_KEY};
use crate::store::{Event, EventKind, KeyValue, Result, StoreError};

/// The single thread that turns queued writes into durable transactions.
pub(super) struct Writer {
    pub(super) db: Database,
    pub(super) shared: Arc<Shared>,
    pub(super) path: PathBuf,
}

/// A validated write: what to reply, what to store, what watchers see.
struct Planned {
    kv: KeyValue,
    event: Event,
}

/// Keys a batch changes: the new value, or `None` for a delete.
type Overlay = HashMap<String, Option<KeyValue>>;

/// A validated batch, ready to persist.
struct Plan {
    /// One per request, in order.
    outcomes: Vec<Result<Planned>>,
    /// The final value of every changed key.
    overlay: Overlay,
    /// The revision after the batch.
    revision: i64,
}

impl Writer {
    /// Commits batches until every sender is dropped, then closes the file.
    pub(super) fn run(self, mut queue: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = queue.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch);
        }
    }

    /// Validates, persists and publishes one batch, then answers every caller.
    fn commit_batch(&self, batch: &mut Vec<Request>) {
        let Plan {
            outcomes,
            overlay,
            revision,
        } = self.plan(batch);
        let events: Vec<Event> = outcomes
            .iter()
            .filter_map(|o| o.as_ref().ok().map(|p| p.event.clone()))
            .collect();
        if !events.is_empty() {
            if let Err(source) = self.persist(&overlay, revision) {
                let error = RedbError::Io {
                    path: self.path.clone(),
                    source,
                }
                .to_string();
                for request in batch.drain(..) {
                    let _ = request.reply.send(Err(StoreError::Backend(error.clone())));
                }
                return;
            }
            {
                let mut state = self
                    .shared
                    .state
                    .write()
                    .unwrap_or_else(PoisonError::into_inner);
                for (key, kv) in overlay {
                    match kv {
                        Some(kv) => state.index.insert(key, kv),
                        None => state.index.remove(&key),
                    };
                }
                state.revision = revision;
            }
            self.shared.history.append(events);
        }
        for (request, outcome) in batch.drain(..).zip(outcomes) {
            // The caller may have given up waiting; the write stands regardless.
            let _ = request.reply.send(outcome.map(|planned| planned.kv));
        }
    }

    /// Checks each op against the index plus earlier ops of the batch; a failed
    /// op consumes no revision.
    fn plan(&self, batch: &[Request]) -> Plan {
        let state = self.shared.read_state();
        let mut revision = state.revision;
        let mut overlay = Overlay::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        for request in batch {
            let key = match &request.op {
                Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => key,
            };
            let current = match overlay.get(key) {
                Some(pending) => pending.clone(),
                None => state.index.get(key).cloned(),
            };
            let outcome = plan_op(&request.op, current, revision + 1);
            if let Ok(planned) = &outcome {
                revision += 1;
                let after = (planned.event.kind == EventKind::Put).then(|| planned.kv.clone());
                overlay.insert(key.clone(), after);
            }
            outcomes.push(outcome);
        }
        Plan {
            outcomes,
            overlay,
            revision,
        }
    }

    /// Writes the changed keys and the new revision in one durable transaction.
    fn persist(&self, overlay: &Overlay, revision: i64) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        {
            let mut kv = txn.open_table(KV)?;
            for (key, value) in overlay {
                match value {
                    Some(value) => {
                        kv.insert(key.as_str(), encode_record(value).as_slice())?;
                    }
                    None => {
                        kv.remove(key.as_str())?;
                    }
                }
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(REVISION_KEY, revision)?;
        }
        // Default durability is Immediate: the commit returns after fsync.
        txn.commit()?;
        Ok(())
    }
}

/// Decides one op given the key's current value and the revision it would get.
fn plan_op(op: &Op, current: Option<KeyValue>, revision: i64) -> Result<Planned> {
    match (op, current) {
        (Op::Create { key, .. }, Some(_)) => Err(StoreError::AlreadyExists(key.clone())),
        (Op::Create { key, value }, None) => {
            let kv = KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: revision,
                mod_revision: revision,
            };
            Ok(planned(EventKind::Put, kv, None))
        }
        (Op::Update { key, .. } | Op::Delete { key, .. }, None) => {
            Err(StoreError::NotFound(key.clone()))
        }
        (
            Op::Update {
                key,
                value,
                expected,
            },
            Some(prev),
        ) => {
            check_revision(key, *expected, &prev)?;
            let kv = KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: prev.create_revision,
                mod_revision: revision,
            };
            Ok(planned(EventKind::Put, kv, Some(prev)))
        }
        (Op::Delete { key, expected }, Some(prev)) => {
            if let Some(expected) = expected {
                check_revision(key, *expected, &prev)?;
            }
            let kv = KeyValue {
                mod_revision: revision,
                ..prev.clone()
            };
            Ok(planned(EventKind::Delete, kv, Some(prev)))
        }
    }
}

fn planned(kind: EventKind, kv: KeyValue, prev: Option<KeyValue>) -> Planned {
    let event = Event {
        kind,
        kv: kv.clone(),
        prev,
    };
    Planned { kv, event }
}

/// `Conflict` unless `current` is at the `expected` mod revision.
fn check_revision(key: &str, expected: i64, current: &KeyValue) -> Result<()> {
    if current.mod_revision == expected {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            key: key.to_owned(),
            expected,
            actual: current.mod_revision,
        })
    }
}
