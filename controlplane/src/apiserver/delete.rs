//! Delete and deletecollection: delete options (grace period, propagation
//! policy, preconditions), finalizer-aware deletion that marks objects with a
//! deletionTimestamp instead of removing them, and graceful pod termination.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::handlers::{read, released, respond, respond_object, ResourceRequest, MAX_RETRIES};
use super::list::{list_objects, Selectors};
use super::server::ApiServer;
use super::status::ApiError;
use super::strategy;
use crate::store::StoreError;

/// Delete options from the body or query.
#[derive(Debug, Clone)]
pub(super) struct DeleteOptions {
    pub(super) grace_period: Option<i64>,
    /// `Orphan` and `Foreground` add the finalizer the garbage collector acts on.
    pub(super) propagation: Option<String>,
    pub(super) precondition_uid: Option<String>,
    pub(super) precondition_rv: Option<String>,
}

fn delete_options(req: &ResourceRequest<'_>) -> Result<DeleteOptions, ApiError> {
    let body: Value = if req.body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        req.decode()?
    };
    options_from(&body, req)
}

/// Delete options from a DeleteOptions object (`body`), falling back to the
/// request's query parameters (an Eviction carries its own in `deleteOptions`).
pub(super) fn options_from(
    body: &Value,
    req: &ResourceRequest<'_>,
) -> Result<DeleteOptions, ApiError> {
    let grace_period = body["gracePeriodSeconds"]
        .as_i64()
        .or_else(|| req.param("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    let propagation = body["propagationPolicy"]
        .as_str()
        .map(str::to_string)
        .or_else(|| req.param("propagationPolicy").map(str::to_string))
        .or_else(|| {
            let orphan = body["orphanDependents"]
                .as_bool()
                .or_else(|| req.param("orphanDependents").map(|v| v == "true"));
            orphan.map(|o| {
                if o {
                    "Orphan".to_string()
                } else {
                    "Background".to_string()
                }
            })
        });
    if let Some(p) = &propagation {
        if !matches!(p.as_str(), "Orphan" | "Foreground" | "Background") {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: \"{p}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
            )));
        }
    }
    Ok(DeleteOptions {
        grace_period,
        propagation,
        precondition_uid: body["preconditions"]["uid"].as_str().map(str::to_string),
        precondition_rv: body["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
    })
}

pub(super) async fn delete(
    server: &Arc<ApiServer>,
    req: &ResourceRequest<'_>,
) -> Result<Response, ApiError> {
    let opts = delete_options(req)?;
    let (obj, code) = delete_one(server, req, &opts).await?;
    Ok(respond_object(req, code, obj, &[]))
}

/// Deletes one object: immediately, or by setting deletionTimestamp when
/// finalizers remain or a bound pod must terminate gracefully.
pub(super) async fn delete_one(
    server: &Arc<ApiServer>,
    req: &ResourceRequest<'_>,
    opts: &DeleteOptions,
) -> Result<(Value, StatusCode), ApiError> {
    for _ in 0..MAX_RETRIES {
        let (current, revision) = read(server, req).await?;
        if let Some(uid) = &opts.precondition_uid {
            if current["metadata"]["uid"].as_str() != Some(uid) {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        current["metadata"]["uid"].as_str().unwrap_or("")
                    ),
                ));
            }
        }
        if let Some(rv) = &opts.precondition_rv {
            if rv.parse::<i64>().ok() != Some(revision) {
                return Err(ApiError::conflict(req.resource, req.object_name()));
            }
        }
        let mut current = current;
        let gc_finalizer = match opts.propagation.as_deref() {
            Some("Orphan") => Some("orphan"),
            Some("Foreground") => Some("foregroundDeletion"),
            _ => None,
        };
        if let Some(f) = gc_finalizer {
            let list = current["metadata"]["finalizers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !list.iter().any(|x| x == f) {
                let mut list = list;
                list.push(json!(f));
                current["metadata"]["finalizers"] = json!(list);
            }
        }
        let terminating_namespace = req.resource.kind == "Namespace"
            && current["spec"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
        if terminating_namespace {
            current["status"]["phase"] = json!("Terminating");
        }
        let has_finalizers = current["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
            || terminating_namespace;
        let graceful_pod = req.resource.kind == "Pod"
            && current["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
            && opts.grace_period != Some(0)
            && !matches!(
                current["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed")
            );
        if req.dry_run() {
            return Ok((current, StatusCode::OK));
        }
        if has_finalizers || graceful_pod {
            if current["metadata"]["deletionTimestamp"].is_string() && gc_finalizer.is_none() {
                return Ok((current, StatusCode::ACCEPTED));
            }
            let mut marked = current.clone();
            if !marked["metadata"]["deletionTimestamp"].is_string() {
                marked["metadata"]["deletionTimestamp"] = json!(strategy::now_rfc3339());
            }
            let grace = if graceful_pod {
                opts.grace_period
                    .or(current["spec"]["terminationGracePeriodSeconds"].as_i64())
                    .unwrap_or(30)
            } else {
                0
            };
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            match server
                .store
                .update(&req.key(), strategy::to_bytes(&marked), revision)
                .await
            {
                Ok(kv) => {
                    return Ok((
                        strategy::with_resource_version(marked, kv.mod_revision),
                        StatusCode::ACCEPTED,
                    ))
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(e, req.resource, req.object_name())),
            }
        }
        match server.store.delete(&req.key(), Some(revision)).await {
            Ok(kv) => {
                released(server, req.resource, &current);
                let obj = strategy::with_resource_version(current, kv.mod_revision);
                return Ok((obj, StatusCode::OK));
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, req.resource, req.object_name())),
        }
    }
    Err(ApiError::conflict(req.resource, req.object_name()))
}

pub(super) async fn delete_collection(
    server: &Arc<ApiServer>,
    req: &ResourceRequest<'_>,
) -> Result<Response, ApiError> {
    if req.resource.namespaced && req.namespace.is_none() {
        return Err(ApiError::method_not_allowed("DELETE"));
    }
    let selectors = Selectors::from_request(req)?;
    let opts = delete_options(req)?;
    let (items, revision, _) = list_objects(server, req, &selectors).await?;
    let mut deleted = Vec::new();
    for item in items {
        let name = item["metadata"]["name"].as_str().unwrap_or("").to_string();
        let one = ResourceRequest::new(
            req.resource,
            req.namespace.as_deref(),
            Some(&name),
            None,
            req.query.clone(),
            req.headers,
            Bytes::new(),
        );
        match delete_one(server, &one, &opts).await {
            Ok((obj, _)) => deleted.push(obj),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({
        "kind": format!("{}List", req.resource.kind),
        "apiVersion": req.resource.api_version(),
        "metadata": {"resourceVersion": revision.to_string()},
        "items": deleted,
    });
    Ok(respond(StatusCode::OK, &list, &[]))
}
