//! The contract between the service model and a data plane (iptables, eBPF).
//!
//! The runner calls [`Dataplane::sync`] from one blocking thread with the
//! whole desired state and what changed since the previous successful call.
//! A data plane may use `changes` to touch only what changed, or ignore it and
//! rewrite everything; it must do a complete rewrite when `changes.full` is
//! set (first sync, periodic resync that repairs drift). If `sync` fails, the
//! runner retries later with `Changes::full` so no partial state survives.

use crate::model::{Changes, ServiceMap};

/// What a sync did, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Rules (iptables) or map entries (eBPF) now installed.
    pub rules: u64,
    /// Rules or entries written by this sync.
    pub written: u64,
}

/// A failed sync.
#[derive(Debug, thiserror::Error)]
#[error("{backend} data plane: {source}")]
pub struct DataplaneError {
    /// Which data plane failed (`iptables`, `ebpf`).
    pub backend: &'static str,
    /// What went wrong.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl DataplaneError {
    /// Wraps a backend's own error.
    pub fn new(
        backend: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> DataplaneError {
        DataplaneError {
            backend,
            source: source.into(),
        }
    }
}

/// A backend that turns the service model into packet handling on a node.
pub trait Dataplane: Send {
    /// Short name for logs and metrics (`iptables`, `ebpf`).
    fn name(&self) -> &'static str;

    /// Makes the data plane match `map`; `changes` says what differs from the
    /// map of the previous successful sync.
    fn sync(&mut self, map: &ServiceMap, changes: &Changes) -> Result<SyncStats, DataplaneError>;

    /// Removes everything this data plane installed (on `--cleanup` or shutdown
    /// when asked). Default: nothing to remove.
    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        Ok(())
    }
}
