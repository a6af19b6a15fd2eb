//! Watch: a chunked stream of `{"type": ..., "object": ...}` lines.
//!
//! Semantics as upstream: no resourceVersion (or "0") starts with synthetic
//! ADDED events for current objects; a revision resumes after it; one older
//! than the store's history gets a 410 Expired ERROR event. Selector
//! transitions turn into ADDED/DELETED as upstream's cacher does. Bookmarks
//! when allowed, the initial-events-end bookmark for `sendInitialEvents`,
//! and `timeoutSeconds` ends the stream. Objects are serialised once per
//! revision and served version and shared by all watchers ([`encoded`]).

mod encoded;
mod stamp;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::handlers::ResourceRequest;
use super::list::{list_objects, Selectors};
use super::registry::Resource;
use super::server::ApiServer;
use super::status::ApiError;
use super::strategy;
use super::table::{self, IncludeObject};
use crate::store::{EventKind, KeyValue, StoreError, WatchStream};
use encoded::ObjectId;

/// Interval between bookmarks when the client allows them.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);
/// Longest a watch stays open without `timeoutSeconds` (upstream picks 30-60 min).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// How events are rendered.
#[derive(Clone, Copy)]
struct Render {
    resource: &'static Resource,
    table: bool,
    include: IncludeObject,
    /// The store's address, part of a shared encoding's identity.
    store: usize,
    /// No label or field selector: every event is sent, undecoded when its
    /// encoding is shared.
    unfiltered: bool,
}

impl Render {
    /// An event for a stored object.
    fn event(&self, kind: &str, obj: Value) -> Bytes {
        self.served_event(kind, strategy::from_storage(self.resource, obj))
    }

    /// An event for an object already in the served version.
    fn served_event(&self, kind: &str, obj: Value) -> Bytes {
        let obj = if self.table {
            let rv = obj["metadata"]["resourceVersion"].clone();
            let mut t =
                table::to_table(self.resource, &[obj], self.include, jiff::Timestamp::now());
            t["metadata"] = json!({"resourceVersion": rv});
            t
        } else {
            obj
        };
        line(json!({"type": kind, "object": obj}))
    }

    /// An event for `kv` as stored at its revision (`decoded` if the caller
    /// already parsed it), with the object's encoding shared among watchers.
    fn stored_event(&self, kind: &str, kv: &KeyValue, decoded: Option<Value>) -> Option<Bytes> {
        if self.table {
            let obj = match decoded {
                Some(o) => o,
                None => decode(&kv.value, kv.mod_revision)?,
            };
            return Some(self.event(kind, obj));
        }
        let id = ObjectId {
            store: self.store,
            resource: std::ptr::from_ref(self.resource) as usize,
            revision: kv.mod_revision,
            key: kv.key.clone(),
        };
        let object = encoded::object(id, &kv.value, || {
            if strategy::served_as_stored(self.resource) {
                if let Some(stamped) = stamp::resource_version(&kv.value, kv.mod_revision) {
                    return Some(Bytes::from(stamped));
                }
            }
            let obj = match decoded {
                Some(o) => o,
                None => decode(&kv.value, kv.mod_revision)?,
            };
            let served = strategy::from_storage(self.resource, obj);
            serde_json::to_vec(&served).ok().map(Bytes::from)
        })?;
        Some(encoded::event_line(kind, &object))
    }

    fn bookmark(&self, revision: i64, initial_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(json!({"type": "BOOKMARK", "object": {
            "kind": self.resource.kind, "apiVersion": self.resource.api_version(), "metadata": metadata
        }}))
    }
}

fn line(v: Value) -> Bytes {
    let mut b = serde_json::to_vec(&v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

fn error_event(e: &ApiError) -> Bytes {
    line(json!({"type": "ERROR", "object": e.to_status()}))
}

/// Serves a watch request.
pub async fn serve(
    server: &Arc<ApiServer>,
    req: &ResourceRequest<'_>,
) -> Result<Response, ApiError> {
    let selectors = Selectors::from_request(req)?;
    let render = Render {
        resource: req.resource,
        table: req.wants_table(),
        include: req.include_object(),
        store: Arc::as_ptr(&server.store).cast::<()>() as usize,
        unfiltered: ["labelSelector", "fieldSelector"]
            .iter()
            .all(|p| req.param(p).unwrap_or("").is_empty()),
    };
    let bookmarks = req.flag("allowWatchBookmarks");
    let send_initial = req.flag("sendInitialEvents");
    let timeout = match req.param("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => DEFAULT_TIMEOUT,
    };
    let rv = req.param("resourceVersion").unwrap_or("");
    let mut initial = Vec::new();
    let start = if rv.is_empty() || rv == "0" || send_initial {
        let mut list_req_query = req.query.clone();
        list_req_query.remove("limit");
        list_req_query.remove("continue");
        let list_req = ResourceRequest::new(
            req.resource,
            req.namespace.as_deref(),
            None,
            None,
            list_req_query,
            req.headers,
            Bytes::new(),
        );
        let (items, revision, _) = list_objects(server, &list_req, &selectors).await?;
        initial.extend(items.into_iter().map(|o| render.served_event("ADDED", o)));
        if send_initial {
            initial.push(render.bookmark(revision, true));
        }
        revision
    } else {
        rv.parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?
    };
    let prefix = req.resource.prefix(req.namespace.as_deref());
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);
    match server.store.watch(&prefix, start).await {
        Ok(stream) => {
            tokio::spawn(pump(
                stream, tx, initial, selectors, render, bookmarks, timeout, start,
            ));
        }
        Err(StoreError::Compacted { requested, oldest }) => {
            // Upstream answers 200 and an ERROR event so clients relist.
            let _ = tx.try_send(Ok(error_event(&ApiError::gone(requested, oldest))));
        }
        Err(e) => return Err(e.into()),
    }
    let body = Body::from_stream(ReceiverStream::new(rx));
    Ok((
        StatusCode::OK,
        [
            ("content-type", "application/json"),
            ("cache-control", "no-cache"),
        ],
        body,
    )
        .into_response())
}

#[allow(clippy::too_many_arguments)]
async fn pump(
    mut stream: WatchStream,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    initial: Vec<Bytes>,
    selectors: Selectors,
    render: Render,
    bookmarks: bool,
    timeout: Duration,
    start: i64,
) {
    for b in initial {
        if tx.send(Ok(b)).await.is_err() {
            return;
        }
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
    let mut last = start;
    loop {
        let out = tokio::select! {
            _ = &mut deadline => return,
            _ = tx.closed() => return,
            _ = ticker.tick(), if bookmarks => Some(render.bookmark(last, false)),
            ev = stream.next() => match ev {
                None => return,
                Some(Err(StoreError::Compacted { requested, oldest })) => {
                    let _ = tx.send(Ok(error_event(&ApiError::gone(requested, oldest)))).await;
                    return;
                }
                Some(Err(e)) => {
                    let _ = tx.send(Ok(error_event(&ApiError::from(e)))).await;
                    return;
                }
                Some(Ok(ev)) => {
                    last = ev.kv.mod_revision;
                    translate(&ev, &selectors, &render)
                }
            },
        };
        if let Some(b) = out {
            if tx.send(Ok(b)).await.is_err() {
                return;
            }
        }
    }
}

fn decode(value: &[u8], revision: i64) -> Option<Value> {
    let obj: Value = serde_json::from_slice(value).ok()?;
    Some(strategy::with_resource_version(obj, revision))
}

/// Turns a store event into a watch event, honouring selector transitions.
fn translate(ev: &crate::store::Event, selectors: &Selectors, render: &Render) -> Option<Bytes> {
    let rev = ev.kv.mod_revision;
    match ev.kind {
        EventKind::Delete if render.unfiltered => render.stored_event("DELETED", &ev.kv, None),
        EventKind::Delete => {
            let obj = decode(&ev.kv.value, rev)?;
            if !selectors.matches(&obj) {
                return None;
            }
            render.stored_event("DELETED", &ev.kv, Some(obj))
        }
        EventKind::Put if render.unfiltered => {
            let kind = if ev.prev.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            };
            render.stored_event(kind, &ev.kv, None)
        }
        EventKind::Put => {
            let new = decode(&ev.kv.value, rev)?;
            let new_match = selectors.matches(&new);
            let old_match = ev
                .prev
                .as_ref()
                .and_then(|p| serde_json::from_slice::<Value>(&p.value).ok())
                .is_some_and(|old| selectors.matches(&old));
            let kind = match (old_match, new_match) {
                (true, true) => "MODIFIED",
                (false, true) => "ADDED",
                (true, false) => "DELETED",
                (false, false) => return None,
            };
            render.stored_event(kind, &ev.kv, Some(new))
        }
    }
}
