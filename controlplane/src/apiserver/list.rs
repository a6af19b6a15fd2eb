//! Reading collections: `list` with label and field selectors and
//! `limit`/`continue` pagination, read from the store in pages and answered
//! as a body streamed page by page, so a large list is never held whole in
//! memory. Watches and deletecollection reuse it.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::StreamExt;
use serde_json::{json, Value};

use super::handlers::{respond, ResourceRequest};
use super::registry::Resource;
use super::selector::{FieldSelector, LabelSelector};
use super::server::ApiServer;
use super::status::ApiError;
use super::strategy;
use super::table;
use crate::store::Store;

/// Label and field selectors of a list, watch or deletecollection.
pub struct Selectors {
    label: LabelSelector,
    field: FieldSelector,
    plural: &'static str,
}

impl Selectors {
    /// Parses `labelSelector` and `fieldSelector`; bad selectors are 400s.
    pub fn from_request(req: &ResourceRequest<'_>) -> Result<Self, ApiError> {
        let label = LabelSelector::parse(req.param("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let field = FieldSelector::parse(req.param("fieldSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        field
            .validate(req.resource.plural)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(Selectors {
            label,
            field,
            plural: req.resource.plural,
        })
    }

    /// True when the object matches both selectors.
    pub fn matches(&self, obj: &Value) -> bool {
        self.label.matches(obj["metadata"].get("labels"))
            && self.field.matches(self.plural, obj).unwrap_or(false)
    }
}

/// A continue token: where the next page starts and the list's revision.
fn encode_continue(key: &str, revision: i64) -> String {
    let raw = json!({"v": "meta.k8s.io/v1", "rv": revision, "start": key}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_continue(token: &str) -> Result<(String, i64), ApiError> {
    let bad =
        || ApiError::bad_request("continue key is not valid: please re-list from the beginning");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    Ok((
        v["start"].as_str().ok_or_else(bad)?.to_string(),
        v["rv"].as_i64().ok_or_else(bad)?,
    ))
}

/// Lists matching objects (with `limit`/`continue`). Returns items, revision and continue token.
pub async fn list_objects(
    server: &ApiServer,
    req: &ResourceRequest<'_>,
    selectors: &Selectors,
) -> Result<(Vec<Value>, i64, Option<String>), ApiError> {
    let mut items = Vec::new();
    let (revision, token) = list_each(server, req, selectors, |obj| items.push(obj)).await?;
    Ok((items, revision, token))
}

/// Calls `each` with every matching object (served version, with its
/// resourceVersion) in key order, honouring `limit`/`continue`, without
/// holding them all in memory. Returns the list revision and continue token.
pub async fn list_each(
    server: &ApiServer,
    req: &ResourceRequest<'_>,
    selectors: &Selectors,
    mut each: impl FnMut(Value),
) -> Result<(i64, Option<String>), ApiError> {
    let mut cursor = Cursor::new(server, req)?;
    loop {
        if let Some(done) = cursor.next_page(selectors, &mut each).await? {
            return Ok(done);
        }
    }
}

/// Objects read per store request: a list of many objects is read, and
/// answered, in pages of this many, so it is never held whole in memory.
const PAGE: usize = 500;

/// Where a list has got to. It owns what it needs (no borrow of the
/// request), so that a response body can stream the pages after the first.
struct Cursor {
    store: Arc<dyn Store>,
    resource: &'static Resource,
    prefix: String,
    /// `limit` (0: none).
    limit: usize,
    /// Key the next page starts after.
    start: Option<String>,
    /// The list's revision: the continue token's, else the first page's.
    revision: Option<i64>,
    matched: usize,
}

impl Cursor {
    /// Checks `limit` and `continue` (a bad one is a 400).
    fn new(server: &ApiServer, req: &ResourceRequest<'_>) -> Result<Cursor, ApiError> {
        let limit: usize = match req.param("limit") {
            None | Some("") => 0,
            Some(l) => l
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        };
        let prefix = req.resource.prefix(req.namespace.as_deref());
        let (start, revision) = match req.param("continue").filter(|c| !c.is_empty()) {
            Some(token) => {
                let (key, rv) = decode_continue(token)?;
                if !key.starts_with(&prefix) {
                    return Err(ApiError::bad_request(
                        "continue key does not belong to this list",
                    ));
                }
                (Some(key), Some(rv))
            }
            None => (None, None),
        };
        Ok(Cursor {
            store: server.store.clone(),
            resource: req.resource,
            prefix,
            limit,
            start,
            revision,
            matched: 0,
        })
    }

    /// Reads the next page and calls `each` with its matching objects.
    /// Returns the list's revision and continue token once it is complete.
    async fn next_page(
        &mut self,
        selectors: &Selectors,
        mut each: impl FnMut(Value),
    ) -> Result<Option<(i64, Option<String>)>, ApiError> {
        let chunk = if self.limit == 0 {
            PAGE
        } else {
            (self.limit - self.matched).clamp(64, PAGE)
        };
        let page = self
            .store
            .list(&self.prefix, self.start.as_deref(), chunk)
            .await?;
        let rev = *self.revision.get_or_insert(page.revision);
        for (i, kv) in page.items.iter().enumerate() {
            let Ok(obj) = serde_json::from_slice::<Value>(&kv.value) else {
                tracing::warn!("skipping corrupt stored object {}", kv.key);
                continue;
            };
            if selectors.matches(&obj) {
                each(strategy::from_storage(
                    self.resource,
                    strategy::with_resource_version(obj, kv.mod_revision),
                ));
                self.matched += 1;
                if self.limit > 0 && self.matched == self.limit {
                    let more = page.more || i + 1 < page.items.len();
                    return Ok(Some((rev, more.then(|| encode_continue(&kv.key, rev)))));
                }
            }
        }
        match page.items.last() {
            Some(last) if page.more => {
                self.start = Some(last.key.clone());
                Ok(None)
            }
            _ => Ok(Some((rev, None))),
        }
    }
}

/// Serves a list. The JSON body is streamed page by page: the first page
/// is read before the answer, so that a failure there is still a Status;
/// a failure on a later page aborts the response (the client sees it cut
/// short, as with upstream's streamed lists). A list of 10,000 pods is a
/// 25 MiB body, which the server used to hold whole while sending it.
pub async fn list(server: &ApiServer, req: &ResourceRequest<'_>) -> Result<Response, ApiError> {
    let selectors = Selectors::from_request(req)?;
    if req.wants_table() {
        let (items, revision, token) = list_objects(server, req, &selectors).await?;
        let mut t = table::to_table(
            req.resource,
            &items,
            req.include_object(),
            jiff::Timestamp::now(),
        );
        t["metadata"] = list_metadata(revision, token);
        return Ok(respond(StatusCode::OK, &t, &[]));
    }
    let mut cursor = Cursor::new(server, req)?;
    let mut items = Items::default();
    let mut head = format!(
        "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"items\":[",
        req.resource.kind,
        req.resource.api_version()
    )
    .into_bytes();
    let done = cursor
        .next_page(&selectors, |obj| items.push(&mut head, &obj))
        .await?;
    let json = [("content-type", "application/json")];
    if let Some(done) = done {
        items.finish(&mut head, done);
        return Ok((StatusCode::OK, json, head).into_response());
    }
    let rest = futures::stream::unfold(Some((cursor, selectors, items)), |state| async move {
        let (mut cursor, selectors, mut items) = state?;
        let mut chunk = Vec::new();
        match cursor
            .next_page(&selectors, |obj| items.push(&mut chunk, &obj))
            .await
        {
            Ok(None) => Some((Ok(Bytes::from(chunk)), Some((cursor, selectors, items)))),
            Ok(Some(done)) => {
                items.finish(&mut chunk, done);
                Some((Ok(Bytes::from(chunk)), None))
            }
            Err(e) => {
                tracing::warn!("list of {} cut short: {}", cursor.prefix, e.message);
                Some((Err(std::io::Error::other(e.message)), None))
            }
        }
    });
    let first = futures::stream::once(async move { Ok(Bytes::from(head)) });
    Ok((StatusCode::OK, json, Body::from_stream(first.chain(rest))).into_response())
}

/// The `items` array of a list response as it is written.
#[derive(Default)]
struct Items {
    any: bool,
}

impl Items {
    fn push(&mut self, out: &mut Vec<u8>, obj: &Value) {
        if self.any {
            out.push(b',');
        }
        self.any = true;
        if serde_json::to_writer(&mut *out, obj).is_err() {
            out.extend_from_slice(b"null");
        }
    }

    /// Closes the array and adds the list's metadata.
    fn finish(&self, out: &mut Vec<u8>, (revision, token): (i64, Option<String>)) {
        out.extend_from_slice(b"],\"metadata\":");
        out.extend_from_slice(list_metadata(revision, token).to_string().as_bytes());
        out.push(b'}');
    }
}

fn list_metadata(revision: i64, token: Option<String>) -> Value {
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(t) = token {
        metadata["continue"] = json!(t);
    }
    metadata
}
