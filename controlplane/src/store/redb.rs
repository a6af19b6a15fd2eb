//! The embedded backend: one redb file, an in-memory index and a group-commit writer.
//!
//! `RedbStore` owns the database file. Table `kv` maps each key to a record
//! holding (create revision, mod revision, value); table `meta` holds the
//! current revision. The whole keyspace is mirrored in a `BTreeMap` loaded at
//! open, so reads never touch disk. Values are kept compressed on disk, in
//! the index and in the watch history (`pack`); reads and watches unpack
//! them. All writes go through one writer thread:
//! it drains whatever is queued, applies it in one write transaction, commits
//! durably once, and only then updates the index, appends to the watch
//! `History` and answers the callers. It does not keep old revisions on disk:
//! watch history lives in memory only.

mod writer;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::history::{History, DEFAULT_HISTORY_CAPACITY};
use super::{Event, KeyValue, ListResult, Result, Store, StoreError, WatchStream};
use crate::pack;
use writer::Writer;

/// Key → encoded record (see `encode_record`).
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Store-wide counters; holds `REVISION_KEY`.
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
/// The `meta` row holding the current revision.
const REVISION_KEY: &str = "revision";

/// First byte of a `kv` record whose value is stored as written (older
/// databases); loading packs it.
const RECORD_PLAIN: u8 = 1;
/// First byte of a `kv` record whose value is packed (`pack`).
const RECORD_PACKED: u8 = 2;
/// Version byte + create revision + mod revision.
const RECORD_HEADER: usize = 1 + 8 + 8;

/// Most operations committed in one transaction.
const MAX_BATCH: usize = 256;
/// Writes waiting for the writer before callers are back-pressured.
const QUEUE_DEPTH: usize = 1024;

/// redb's page cache. Reads are served from the in-memory index, so the cache
/// only speeds up the writer's B-tree walks, which the OS page cache serves
/// almost as fast; redb's default (1 GiB) would grow to the size of the file
/// (48 MiB measured with 10k pods).
const PAGE_CACHE_BYTES: usize = 8 * 1024 * 1024;

/// Failures of the embedded backend, worded for the operator.
#[derive(Debug, thiserror::Error)]
enum RedbError {
    /// The database file could not be opened or created.
    #[error(
        "cannot open redb database {path}: {source}; check that the directory exists and is \
         writable and that no other skiff server has this file open"
    )]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    /// Reading or writing the file failed.
    #[error(
        "redb database {path} failed: {source}; check free disk space and the disk's health, \
         then restart skiff so redb can repair the file"
    )]
    Io { path: PathBuf, source: redb::Error },
    /// A stored record (or a value in memory) cannot be decoded.
    #[error("redb database {path} is corrupt: {detail}; restore it from a backup")]
    Corrupt { path: PathBuf, detail: String },
    /// The writer thread is gone (the store is shutting down or crashed).
    #[error("the redb writer for {path} has stopped; restart skiff")]
    WriterStopped { path: PathBuf },
    /// The OS refused to start the writer thread.
    #[error("cannot start the redb writer thread for {path}: {source}; check process limits")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<RedbError> for StoreError {
    fn from(e: RedbError) -> StoreError {
        StoreError::Backend(e.to_string())
    }
}

/// The embedded, durable store backed by a single redb file.
pub struct RedbStore {
    shared: Arc<Shared>,
    ops: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    path: PathBuf,
}

/// What readers and the writer thread share.
struct Shared {
    state: RwLock<State>,
    history: History,
}

/// The committed keyspace (values packed) and the revision it reflects.
struct State {
    index: BTreeMap<String, KeyValue>,
    revision: i64,
}

/// A write waiting for the writer thread.
struct Request {
    op: Op,
    reply: oneshot::Sender<Result<KeyValue>>,
}

/// The three kinds of write.
enum Op {
    Create {
        key: String,
        value: Bytes,
    },
    Update {
        key: String,
        value: Bytes,
        expected: i64,
    },
    Delete {
        key: String,
        expected: Option<i64>,
    },
}

impl RedbStore {
    /// Opens (or creates) the database at `path` with the default watch history window.
    pub fn open(path: &Path) -> Result<RedbStore> {
        RedbStore::open_with_history(path, DEFAULT_HISTORY_CAPACITY)
    }

    /// Opens (or creates) the database at `path`, keeping `history_capacity` events for watches.
    pub fn open_with_history(path: &Path, history_capacity: usize) -> Result<RedbStore> {
        let path = path.to_path_buf();
        let db = redb::Builder::new()
            .set_cache_size(PAGE_CACHE_BYTES)
            .create(&path)
            .map_err(|source| RedbError::Open {
                path: path.clone(),
                source,
            })?;
        RedbStore::start(db, path, history_capacity)
    }

    /// Loads the index from an opened database and starts the writer; `path` names it in errors.
    fn start(db: Database, path: PathBuf, history_capacity: usize) -> Result<RedbStore> {
        let state = load(&db, &path)?;
        let shared = Arc::new(Shared {
            history: History::new(history_capacity, state.revision),
            state: RwLock::new(state),
        });
        let (ops, queue) = mpsc::channel(QUEUE_DEPTH);
        let writer = Writer {
            db,
            shared: Arc::clone(&shared),
            path: path.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("redb-writer".to_owned())
            .spawn(move || writer.run(queue))
            .map_err(|source| RedbError::Spawn {
                path: path.clone(),
                source,
            })?;
        Ok(RedbStore {
            shared,
            ops: Some(ops),
            writer: Some(writer),
            path,
        })
    }

    /// Hands `op` to the writer and waits until it is durable (or failed).
    async fn submit(&self, op: Op) -> Result<KeyValue> {
        let stopped = || RedbError::WriterStopped {
            path: self.path.clone(),
        };
        let ops = self.ops.as_ref().ok_or_else(stopped)?;
        let (reply, answer) = oneshot::channel();
        ops.send(Request { op, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    fn state(&self) -> RwLockReadGuard<'_, State> {
        self.shared.read_state()
    }

    /// `kv` with its packed value replaced by the plain one.
    fn unpacked(&self, kv: KeyValue) -> Result<KeyValue> {
        unpack_kv(&self.path, kv)
    }
}

impl Drop for RedbStore {
    /// Lets the writer finish queued batches and close the file, so it can be reopened at once.
    fn drop(&mut self) {
        self.ops.take();
        if let Some(writer) = self.writer.take() {
            // A panicked writer has nothing left to flush; the file is still consistent.
            let _ = writer.join();
        }
    }
}

impl Shared {
    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        // Only the writer takes the write lock, and it never panics while holding it.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let found = self.state().index.get(key).cloned();
        found.map(|kv| self.unpacked(kv)).transpose()
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListResult> {
        let state = self.state();
        let start = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let limit = if limit == 0 { usize::MAX } else { limit };
        let mut matching = state
            .index
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(_, kv)| kv);
        let packed: Vec<KeyValue> = matching.by_ref().take(limit).cloned().collect();
        let more = matching.next().is_some();
        let revision = state.revision;
        drop(state);
        let items = packed
            .into_iter()
            .map(|kv| self.unpacked(kv))
            .collect::<Result<_>>()?;
        Ok(ListResult {
            items,
            revision,
            more,
        })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let op = Op::Create {
            key: key.to_owned(),
            value: pack::pack(&value),
        };
        let kv = self.submit(op).await?;
        Ok(KeyValue { value, ..kv })
    }

    async fn update(&self, key: &str, value: Bytes, expected_revision: i64) -> Result<KeyValue> {
        let op = Op::Update {
            key: key.to_owned(),
            value: pack::pack(&value),
            expected: expected_revision,
        };
        let kv = self.submit(op).await?;
        Ok(KeyValue { value, ..kv })
    }

    async fn delete(&self, key: &str, expected_revision: Option<i64>) -> Result<KeyValue> {
        let key = key.to_owned();
        let expected = expected_revision;
        let kv = self.submit(Op::Delete { key, expected }).await?;
        self.unpacked(kv)
    }

    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchStream> {
        let path = self.path.clone();
        let events = self.shared.history.watch(prefix, after_revision)?;
        Ok(events
            .map(move |event| event.and_then(|event| unpack_event(&path, event)))
            .boxed())
    }

    async fn current_revision(&self) -> Result<i64> {
        Ok(self.state().revision)
    }
}

/// `kv` with its packed value replaced by the plain one; a value that does
/// not unpack is reported as corruption of the database at `path`.
fn unpack_kv(path: &Path, kv: KeyValue) -> Result<KeyValue> {
    let value = pack::unpack(&kv.value).map_err(|detail| RedbError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("value of {}: {detail}", kv.key),
    })?;
    Ok(KeyValue { value, ..kv })
}

/// A history event (packed values) as watchers see it (plain values).
fn unpack_event(path: &Path, event: Event) -> Result<Event> {
    Ok(Event {
        kind: event.kind,
        kv: unpack_kv(path, event.kv)?,
        prev: event.prev.map(|prev| unpack_kv(path, prev)).transpose()?,
    })
}

/// Creates the tables if needed and loads every record into memory.
fn load(db: &Database, path: &Path) -> Result<State, RedbError> {
    let io = |source: redb::Error| RedbError::Io {
        path: path.to_path_buf(),
        source,
    };
    let corrupt = |detail: String| RedbError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    // A write transaction, so a fresh file gets both tables.
    let txn = db.begin_write().map_err(|e| io(e.into()))?;
    let mut index = BTreeMap::new();
    let revision = {
        let kv = txn.open_table(KV).map_err(|e| io(e.into()))?;
        for entry in kv.iter().map_err(|e| io(e.into()))? {
            let (key, record) = entry.map_err(|e| io(e.into()))?;
            let key = key.value().to_owned();
            let kv = decode_record(&key, record.value()).map_err(corrupt)?;
            index.insert(key, kv);
        }
        let meta = txn.open_table(META).map_err(|e| io(e.into()))?;
        let stored = meta.get(REVISION_KEY).map_err(|e| io(e.into()))?;
        stored.map_or(0, |guard| guard.value())
    };
    txn.commit().map_err(|e| io(e.into()))?;
    if let Some(newest) = index.values().map(|kv| kv.mod_revision).max() {
        if newest > revision {
            return Err(corrupt(format!(
                "a key has revision {newest} but the stored revision is {revision}"
            )));
        }
    }
    Ok(State { index, revision })
}

/// Serializes a KeyValue's revisions and (packed) value for the `kv` table.
fn encode_record(kv: &KeyValue) -> Vec<u8> {
    let mut record = Vec::with_capacity(RECORD_HEADER + kv.value.len());
    record.push(RECORD_PACKED);
    record.extend_from_slice(&kv.create_revision.to_le_bytes());
    record.extend_from_slice(&kv.mod_revision.to_le_bytes());
    record.extend_from_slice(&kv.value);
    record
}

/// Parses a `kv` table record into a KeyValue with a packed value; the error
/// says what is wrong with it.
fn decode_record(key: &str, record: &[u8]) -> std::result::Result<KeyValue, String> {
    let short = || format!("record for {key} has only {} bytes", record.len());
    let (&[version], rest) = record.split_first_chunk::<1>().ok_or_else(short)?;
    let (create, rest) = rest.split_first_chunk::<8>().ok_or_else(short)?;
    let (modified, value) = rest.split_first_chunk::<8>().ok_or_else(short)?;
    let value = match version {
        RECORD_PLAIN => pack::pack(value),
        RECORD_PACKED => {
            pack::unpack(value).map_err(|e| format!("record for {key}: {e}"))?;
            Bytes::copy_from_slice(value)
        }
        _ => {
            return Err(format!(
                "record for {key} has unknown format version {version}"
            ))
        }
    };
    Ok(KeyValue {
        key: key.to_owned(),
        value,
        create_revision: i64::from_le_bytes(*create),
        mod_revision: i64::from_le_bytes(*modified),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::backends::InMemoryBackend;
    use redb::StorageBackend;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// An in-memory disk whose writes and syncs fail while `failing` is set.
    #[derive(Debug)]
    struct FlakyDisk {
        inner: InMemoryBackend,
        failing: Arc<AtomicBool>,
    }

    impl FlakyDisk {
        fn check(&self) -> std::io::Result<()> {
            if self.failing.load(Ordering::SeqCst) {
                Err(std::io::Error::other("injected disk failure"))
            } else {
                Ok(())
            }
        }
    }

    impl StorageBackend for FlakyDisk {
        fn len(&self) -> std::io::Result<u64> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.check()?;
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.check()?;
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.inner.write(offset, data)
        }
    }

    #[tokio::test]
    async fn a_failed_commit_fails_the_whole_batch_and_changes_nothing() {
        let failing = Arc::new(AtomicBool::new(false));
        let disk = FlakyDisk {
            inner: InMemoryBackend::new(),
            failing: Arc::clone(&failing),
        };
        let db = redb::Builder::new()
            .create_with_backend(disk)
            .expect("in-memory database");
        let store = RedbStore::start(db, PathBuf::from("flaky-disk"), 16).expect("start");
        let kept = store
            .create("/registry/pods/default/kept", Bytes::from_static(b"v1"))
            .await
            .expect("create before the failure");

        failing.store(true, Ordering::SeqCst);
        let (created, updated) = tokio::join!(
            store.create("/registry/pods/default/new", Bytes::from_static(b"x")),
            store.update(&kept.key, Bytes::from_static(b"v2"), kept.mod_revision),
        );
        for outcome in [created, updated] {
            match outcome {
                Err(StoreError::Backend(message)) => {
                    assert!(message.contains("flaky-disk"), "{message}")
                }
                other => panic!("expected Backend, got {other:?}"),
            }
        }
        assert_eq!(store.current_revision().await.ok(), Some(kept.mod_revision));
        assert_eq!(store.get(&kept.key).await.ok(), Some(Some(kept)));
        let listed = store.list("/registry/", None, 0).await.expect("list");
        assert_eq!(
            listed.items.len(),
            1,
            "a failed commit leaked into the index"
        );
    }

    #[test]
    fn records_round_trip_and_damage_is_reported() {
        let plain = Bytes::from_static(b"{\"kind\":\"Pod\"}");
        let kv = KeyValue {
            key: "/registry/pods/default/web".to_owned(),
            value: pack::pack(&plain),
            create_revision: 7,
            mod_revision: 42,
        };
        let mut record = encode_record(&kv);
        assert_eq!(decode_record(&kv.key, &record), Ok(kv.clone()));
        assert!(decode_record(&kv.key, &record[..RECORD_HEADER - 1]).is_err());
        let mut cut = record.clone();
        cut.truncate(RECORD_HEADER + 2);
        let error = decode_record(&kv.key, &cut).expect_err("truncated value");
        assert!(error.contains(&kv.key), "{error}");
        record[0] = 99;
        let error = decode_record(&kv.key, &record).expect_err("unknown version");
        assert!(error.contains("format version 99"), "{error}");
    }

    /// Databases written before values were packed still load, and their
    /// values read back as written.
    #[tokio::test]
    async fn plain_records_of_older_databases_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.redb");
        let plain = b"{\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"old\"}}";
        {
            let db = Database::create(&path).expect("create");
            let txn = db.begin_write().expect("write");
            {
                let mut record = vec![RECORD_PLAIN];
                record.extend_from_slice(&3i64.to_le_bytes());
                record.extend_from_slice(&5i64.to_le_bytes());
                record.extend_from_slice(plain);
                let mut kv = txn.open_table(KV).expect("kv");
                kv.insert("/registry/configmaps/default/old", record.as_slice())
                    .expect("insert");
                let mut meta = txn.open_table(META).expect("meta");
                meta.insert(REVISION_KEY, 5).expect("revision");
            }
            txn.commit().expect("commit");
        }
        let store = RedbStore::open(&path).expect("open");
        let kv = store
            .get("/registry/configmaps/default/old")
            .await
            .expect("get")
            .expect("present");
        assert_eq!(&kv.value[..], &plain[..]);
        assert_eq!((kv.create_revision, kv.mod_revision), (3, 5));
        let updated = store
            .update(&kv.key, Bytes::from_static(b"{}"), 5)
            .await
            .expect("update");
        assert_eq!(&updated.value[..], b"{}");
    }
}
