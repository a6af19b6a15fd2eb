//! The etcd backend: the `Store` contract mapped onto etcd v3 transactions and watches.
//!
//! `EtcdStore` owns one etcd client. Revisions are etcd's own: a KeyValue's
//! create and mod revisions come straight from etcd and list/watch revisions
//! from response headers. Every conditional write is a single etcd
//! transaction whose failure branch reads the key, so the error (NotFound,
//! AlreadyExists, Conflict) is decided atomically with the compare. History
//! and compaction are etcd's business; this module only reports `Compacted`.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions, WatchResponse,
};
use futures::StreamExt;

use super::{Event, EventKind, KeyValue, ListResult, Result, Store, StoreError, WatchStream};

/// How long `connect` waits for the first answer before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keep-alive, so a dead etcd ends watches instead of hanging them.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a keep-alive ping may go unanswered.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for etcd to name the compaction revision of a stale watch.
const COMPACTION_REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Failures of the etcd backend, worded for the operator.
#[derive(Debug, thiserror::Error)]
enum EtcdError {
    /// A request failed (connection, timeout or server error).
    #[error(
        "etcd {operation} failed (endpoints {endpoints}): {source}; check that etcd is running, \
         reachable from this host and that the endpoints are its client URLs"
    )]
    Request {
        operation: &'static str,
        endpoints: String,
        source: etcd_client::Error,
    },
    /// etcd answered with something this backend cannot use.
    #[error("etcd (endpoints {endpoints}) sent an unexpected reply to {operation}: {detail}")]
    Unexpected {
        operation: &'static str,
        endpoints: String,
        detail: String,
    },
}

impl From<EtcdError> for StoreError {
    fn from(e: EtcdError) -> StoreError {
        StoreError::Backend(e.to_string())
    }
}

/// The store backed by an external etcd cluster.
pub struct EtcdStore {
    client: Client,
    endpoints: String,
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (e.g. `http://127.0.0.1:2379`) and checks that it answers.
    pub async fn connect(endpoints: &[String]) -> Result<EtcdStore> {
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT);
        let joined = endpoints.join(",");
        let request = |source| EtcdError::Request {
            operation: "connect",
            endpoints: joined.clone(),
            source,
        };
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(request)?;
        let store = EtcdStore {
            client,
            endpoints: joined.clone(),
        };
        // The client connects lazily; one read proves etcd is there.
        match tokio::time::timeout(CONNECT_TIMEOUT, store.current_revision()).await {
            Ok(revision) => revision.map(|_| store),
            Err(_) => Err(StoreError::Backend(format!(
                "etcd at {joined} did not answer within {CONNECT_TIMEOUT:?}; check that etcd is \
                 running and that the endpoints are its client URLs"
            ))),
        }
    }

    fn failed(&self, operation: &'static str) -> impl Fn(etcd_client::Error) -> StoreError + '_ {
        move |source| {
            EtcdError::Request {
                operation,
                endpoints: self.endpoints.clone(),
                source,
            }
            .into()
        }
    }

    fn unexpected(&self, operation: &'static str, detail: impl Into<String>) -> StoreError {
        EtcdError::Unexpected {
            operation,
            endpoints: self.endpoints.clone(),
            detail: detail.into(),
        }
        .into()
    }

    async fn txn(&self, operation: &'static str, txn: Txn) -> Result<TxnResponse> {
        self.client
            .clone()
            .txn(txn)
            .await
            .map_err(self.failed(operation))
    }

    /// The revision in a response header; etcd always sends one.
    fn header_revision(
        &self,
        operation: &'static str,
        header: Option<&etcd_client::ResponseHeader>,
    ) -> Result<i64> {
        header
            .map(etcd_client::ResponseHeader::revision)
            .ok_or_else(|| self.unexpected(operation, "response without a header"))
    }

    /// The key read by a transaction's failure branch (a single `TxnOp::get`).
    fn failure_read(
        &self,
        operation: &'static str,
        response: &TxnResponse,
    ) -> Result<Option<KeyValue>> {
        match response.op_responses().into_iter().next() {
            Some(TxnOpResponse::Get(get)) => get
                .kvs()
                .first()
                .map(|kv| convert(kv).map_err(|d| self.unexpected(operation, d)))
                .transpose(),
            _ => Err(self.unexpected(operation, "failed transaction without its read")),
        }
    }

    /// Whether `revision` is older than etcd's compaction point.
    async fn is_compacted(&self, prefix: &str, revision: i64) -> Result<bool> {
        if revision <= 0 {
            return Ok(false);
        }
        let options = GetOptions::new()
            .with_revision(revision)
            .with_keys_only()
            .with_limit(1);
        match self.client.clone().get(prefix, Some(options)).await {
            Ok(_) => Ok(false),
            Err(etcd_client::Error::GRpcStatus(status))
                if status.message().contains("compacted") =>
            {
                Ok(true)
            }
            // A revision newer than the store cannot be compacted.
            Err(etcd_client::Error::GRpcStatus(status)) if status.message().contains("future") => {
                Ok(false)
            }
            Err(e) => Err(self.failed("watch")(e)),
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let response = self
            .client
            .clone()
            .get(key, None)
            .await
            .map_err(self.failed("get"))?;
        response
            .kvs()
            .first()
            .map(|kv| convert(kv).map_err(|d| self.unexpected("get", d)))
            .transpose()
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListResult> {
        // etcd (and its gRPC client's 4 MiB message limit) caps one response,
        // so large ranges are read in pages pinned to the first page's revision.
        const PAGE: usize = 500;
        let mut start = match start_after {
            Some(after) if after >= prefix => format!("{after}\0"),
            _ => prefix.to_owned(),
        };
        let mut items = Vec::new();
        let mut revision = 0;
        loop {
            let want = if limit == 0 {
                PAGE
            } else {
                (limit - items.len()).min(PAGE)
            };
            let mut options = GetOptions::new()
                .with_range(prefix_end(prefix))
                .with_limit(i64::try_from(want).unwrap_or(i64::MAX));
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let response = self
                .client
                .clone()
                .get(start.clone(), Some(options))
                .await
                .map_err(self.failed("list"))?;
            if revision == 0 {
                revision = self.header_revision("list", response.header())?;
            }
            for kv in response.kvs() {
                items.push(convert(kv).map_err(|d| self.unexpected("list", d))?);
            }
            let more = response.more();
            let done = limit != 0 && items.len() >= limit;
            match items.last() {
                Some(last) if more && !done => start = format!("{}\0", last.key),
                _ => {
                    return Ok(ListResult {
                        items,
                        revision,
                        more,
                    })
                }
            }
        }
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.to_vec(), None)])
            .or_else([TxnOp::get(key, None)]);
        let response = self.txn("create", txn).await?;
        if !response.succeeded() {
            return Err(StoreError::AlreadyExists(key.to_owned()));
        }
        let revision = self.header_revision("create", response.header())?;
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision: revision,
            mod_revision: revision,
        })
    }

    async fn update(&self, key: &str, value: Bytes, expected_revision: i64) -> Result<KeyValue> {
        let put = PutOptions::new().with_prev_key();
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key,
                CompareOp::Equal,
                expected_revision,
            )])
            .and_then([TxnOp::put(key, value.to_vec(), Some(put))])
            .or_else([TxnOp::get(key, None)]);
        let response = self.txn("update", txn).await?;
        if !response.succeeded() {
            return Err(match self.failure_read("update", &response)? {
                None => StoreError::NotFound(key.to_owned()),
                Some(current) => StoreError::Conflict {
                    key: key.to_owned(),
                    expected: expected_revision,
                    actual: current.mod_revision,
                },
            });
        }
        let prev = match response.op_responses().into_iter().next() {
            Some(TxnOpResponse::Put(put)) => put.prev_key().map(|kv| kv.create_revision()),
            _ => None,
        };
        // A matching mod revision means the key existed, so its previous value is there.
        let create_revision =
            prev.ok_or_else(|| self.unexpected("update", "put without the previous value"))?;
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision,
            mod_revision: self.header_revision("update", response.header())?,
        })
    }

    async fn delete(&self, key: &str, expected_revision: Option<i64>) -> Result<KeyValue> {
        let delete = TxnOp::delete(key, Some(DeleteOptions::new().with_prev_key()));
        let txn = match expected_revision {
            Some(expected) => Txn::new()
                .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
                .and_then([delete])
                .or_else([TxnOp::get(key, None)]),
            None => Txn::new().and_then([delete]),
        };
        let response = self.txn("delete", txn).await?;
        if !response.succeeded() {
            return Err(match self.failure_read("delete", &response)? {
                None => StoreError::NotFound(key.to_owned()),
                Some(current) => StoreError::Conflict {
                    key: key.to_owned(),
                    expected: expected_revision.unwrap_or_default(),
                    actual: current.mod_revision,
                },
            });
        }
        let deleted = match response.op_responses().into_iter().next() {
            Some(TxnOpResponse::Delete(delete)) => delete.prev_kvs().first().cloned(),
            _ => None,
        };
        let deleted = deleted.ok_or_else(|| StoreError::NotFound(key.to_owned()))?;
        let deleted = convert(&deleted).map_err(|d| self.unexpected("delete", d))?;
        Ok(KeyValue {
            mod_revision: self.header_revision("delete", response.header())?,
            ..deleted
        })
    }

    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchStream> {
        let options = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_start_revision(after_revision + 1)
            .with_prev_key();
        let stream = self
            .client
            .clone()
            .watch(prefix, Some(options))
            .await
            .map_err(self.failed("watch"))?;
        if self.is_compacted(prefix, after_revision + 1).await? {
            // etcd names its compaction revision only on the watch itself.
            let first =
                tokio::time::timeout(COMPACTION_REPORT_TIMEOUT, compaction_revision(stream)).await;
            let oldest = first
                .ok()
                .flatten()
                .map_or(after_revision + 1, |rev| rev - 1);
            return Err(StoreError::Compacted {
                requested: after_revision,
                oldest,
            });
        }
        let endpoints = self.endpoints.clone();
        let events = stream
            .map(move |response| match response {
                Ok(response) => watch_events(response, after_revision),
                Err(source) => vec![Err(EtcdError::Request {
                    operation: "watch",
                    endpoints: endpoints.clone(),
                    source,
                }
                .into())],
            })
            .flat_map(futures::stream::iter)
            // Stop after the first error: the watch is over.
            .scan(false, |failed, item| {
                if *failed {
                    return futures::future::ready(None);
                }
                *failed = item.is_err();
                futures::future::ready(Some(item))
            });
        Ok(events.boxed())
    }

    async fn current_revision(&self) -> Result<i64> {
        let options = GetOptions::new().with_count_only();
        let response = self
            .client
            .clone()
            .get("/", Some(options))
            .await
            .map_err(self.failed("read revision"))?;
        self.header_revision("read revision", response.header())
    }
}

/// Waits for etcd's compaction notice on a watch that started too early.
async fn compaction_revision(mut stream: etcd_client::WatchStream) -> Option<i64> {
    while let Ok(Some(response)) = stream.message().await {
        if response.compact_revision() != 0 {
            return Some(response.compact_revision());
        }
    }
    None
}

/// Converts one watch response into events, or a final error if etcd ended the watch.
fn watch_events(response: WatchResponse, after_revision: i64) -> Vec<Result<Event>> {
    if response.compact_revision() != 0 {
        return vec![Err(StoreError::Compacted {
            requested: after_revision,
            oldest: response.compact_revision() - 1,
        })];
    }
    if response.canceled() {
        return vec![Err(StoreError::Backend(format!(
            "etcd cancelled the watch: {}",
            response.cancel_reason()
        )))];
    }
    response.events().iter().map(convert_event).collect()
}

/// Maps an etcd event to ours; a Delete carries the last value, as in the redb backend.
fn convert_event(event: &etcd_client::Event) -> Result<Event> {
    let invalid =
        |detail: String| StoreError::Backend(format!("etcd sent an invalid watch event: {detail}"));
    let kv = event
        .kv()
        .ok_or_else(|| invalid("event without a key".to_owned()))?;
    let kv = convert(kv).map_err(invalid)?;
    let prev = event.prev_kv().map(convert).transpose().map_err(invalid)?;
    match event.event_type() {
        EventType::Put => Ok(Event {
            kind: EventKind::Put,
            kv,
            prev,
        }),
        EventType::Delete => {
            let kv = match &prev {
                Some(prev) => KeyValue {
                    mod_revision: kv.mod_revision,
                    ..prev.clone()
                },
                None => kv,
            };
            Ok(Event {
                kind: EventKind::Delete,
                kv,
                prev,
            })
        }
    }
}

/// Converts an etcd KeyValue; keys must be UTF-8 since they are our paths.
fn convert(kv: &etcd_client::KeyValue) -> std::result::Result<KeyValue, String> {
    let key = kv.key_str().map_err(|e| {
        format!(
            "key {:?} is not UTF-8: {e}",
            String::from_utf8_lossy(kv.key())
        )
    })?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

/// The smallest key greater than every key starting with `prefix` (etcd's range end).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Empty prefix (or all 0xff): "\0" means "to the end of the keyspace".
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_excludes_longer_siblings() {
        assert_eq!(
            prefix_end("/registry/pods/a/"),
            b"/registry/pods/a0".to_vec()
        );
        assert_eq!(prefix_end(""), vec![0]);
    }
}
