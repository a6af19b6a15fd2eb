//! Durable key-value storage for API objects, behind one trait with two
//! backends: embedded redb (the default) and etcd.
//!
//! Keys are `/registry/<resource>/<namespace>/<name>` (cluster-scoped objects
//! omit the namespace). Every write bumps one global revision, which the API
//! server exposes as `resourceVersion`. A write is durable before it returns.
//! Watches replay history after a revision and then follow live changes; a
//! revision older than the kept history window is `Compacted` (HTTP 410).
//! Values are opaque bytes here: the store never parses objects.

mod etcd;
mod history;
mod redb;

pub use self::etcd::EtcdStore;
pub use self::history::{History, DEFAULT_HISTORY_CAPACITY};
pub use self::redb::RedbStore;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

/// One stored object with its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// Full key, e.g. `/registry/pods/default/web-0`.
    pub key: String,
    /// Serialized object.
    pub value: Bytes,
    /// Revision of the write that created this key (unchanged by updates).
    pub create_revision: i64,
    /// Revision of the last write to this key; the object's resourceVersion.
    pub mod_revision: i64,
}

/// What happened to a key in one revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or updated; `kv` holds the new value.
    Put,
    /// The key was deleted; `kv.mod_revision` is the deleting revision and
    /// `kv.value` the last value before deletion.
    Delete,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or Delete.
    pub kind: EventKind,
    /// New value (Put) or last value with the delete revision (Delete).
    pub kv: KeyValue,
    /// The value before this change, if the key existed.
    pub prev: Option<KeyValue>,
}

/// A page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResult {
    /// Objects in key order.
    pub items: Vec<KeyValue>,
    /// The store revision the list reflects.
    pub revision: i64,
    /// True when more keys under the prefix follow the last item.
    pub more: bool,
}

/// Errors every backend reports in the same terms, so the API server can map
/// them to Kubernetes Status codes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Create of a key that exists (HTTP 409 AlreadyExists).
    #[error("key {0} already exists")]
    AlreadyExists(String),
    /// Update or delete of a key that does not exist (HTTP 404).
    #[error("key {0} not found")]
    NotFound(String),
    /// Compare-and-swap failed: the key's mod revision is not the expected one (HTTP 409).
    #[error("key {key} was modified: expected revision {expected}, found {actual}")]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: i64,
        /// The revision found.
        actual: i64,
    },
    /// The requested revision is older than the kept history (HTTP 410 Gone).
    #[error("revision {requested} has been compacted; oldest available is {oldest}")]
    Compacted {
        /// What the caller asked for.
        requested: i64,
        /// Oldest revision a watch can start after.
        oldest: i64,
    },
    /// The backend failed (disk, database or network); nothing was acknowledged.
    #[error("storage backend failed: {0}")]
    Backend(String),
}

/// Result alias for store calls.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stream of watch events, in revision order. It ends with an error item if
/// the backend fails or the watcher falls too far behind (Compacted).
pub type WatchStream = BoxStream<'static, Result<Event>>;

/// The storage contract shared by the redb and etcd backends.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key at the current revision.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Lists keys starting with `prefix` in key order, beginning strictly after
    /// `start_after` when given, at most `limit` items (0 = no limit).
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListResult>;

    /// Creates `key`; fails with `AlreadyExists` if present. Returns the new KeyValue.
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue>;

    /// Replaces `key` if its mod revision equals `expected_revision`
    /// (`Conflict` otherwise, `NotFound` if absent). Returns the new KeyValue.
    async fn update(&self, key: &str, value: Bytes, expected_revision: i64) -> Result<KeyValue>;

    /// Deletes `key`, only if its mod revision equals `expected_revision` when
    /// given. Returns the deleted KeyValue with `mod_revision` set to the
    /// deleting revision.
    async fn delete(&self, key: &str, expected_revision: Option<i64>) -> Result<KeyValue>;

    /// Watches keys under `prefix` for every change with revision greater than
    /// `after_revision`. Fails with `Compacted` if that history is gone.
    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchStream>;

    /// The latest revision.
    async fn current_revision(&self) -> Result<i64>;
}
