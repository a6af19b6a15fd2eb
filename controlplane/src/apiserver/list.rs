//! Reading collections: `list` with label and field selectors and
//! `limit`/`continue` pagination, streamed object by object so a large list
//! is never held twice in memory. Watches and deletecollection reuse it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Value};

use super::handlers::{respond, ResourceRequest};
use super::selector::{FieldSelector, LabelSelector};
use super::server::ApiServer;
use super::status::ApiError;
use super::strategy;
use super::table;

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
    let limit: usize = match req.param("limit") {
        None | Some("") => 0,
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
    };
    let prefix = req.resource.prefix(req.namespace.as_deref());
    let (mut start, mut revision) = match req.param("continue").filter(|c| !c.is_empty()) {
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
    // Read in bounded pages so a list of many objects never holds them all twice.
    const PAGE: usize = 500;
    let mut matched = 0;
    loop {
        let chunk = if limit == 0 {
            PAGE
        } else {
            (limit - matched).clamp(64, PAGE)
        };
        let page = server.store.list(&prefix, start.as_deref(), chunk).await?;
        let rev = *revision.get_or_insert(page.revision);
        for (i, kv) in page.items.iter().enumerate() {
            let Ok(obj) = serde_json::from_slice::<Value>(&kv.value) else {
                tracing::warn!("skipping corrupt stored object {}", kv.key);
                continue;
            };
            if selectors.matches(&obj) {
                each(strategy::from_storage(
                    req.resource,
                    strategy::with_resource_version(obj, kv.mod_revision),
                ));
                matched += 1;
                if limit > 0 && matched == limit {
                    let more = page.more || i + 1 < page.items.len();
                    return Ok((rev, more.then(|| encode_continue(&kv.key, rev))));
                }
            }
        }
        match page.items.last() {
            Some(last) if page.more => start = Some(last.key.clone()),
            _ => return Ok((rev, None)),
        }
    }
}

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
    // Serialize item by item: the body is built once, objects are dropped as they go.
    let mut body = format!(
        "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"items\":[",
        req.resource.kind,
        req.resource.api_version()
    )
    .into_bytes();
    let mut first = true;
    let (revision, token) = list_each(server, req, &selectors, |obj| {
        if !first {
            body.push(b',');
        }
        first = false;
        if serde_json::to_writer(&mut body, &obj).is_err() {
            body.extend_from_slice(b"null");
        }
    })
    .await?;
    body.extend_from_slice(b"],\"metadata\":");
    body.extend_from_slice(list_metadata(revision, token).to_string().as_bytes());
    body.push(b'}');
    Ok((StatusCode::OK, [("content-type", "application/json")], body).into_response())
}

fn list_metadata(revision: i64, token: Option<String>) -> Value {
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(t) = token {
        metadata["continue"] = json!(t);
    }
    metadata
}
