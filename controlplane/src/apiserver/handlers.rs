//! Resource verbs: get, list, create, update, patch, delete and
//! deletecollection, plus the dispatch to watch and subresources.
//!
//! Writes go through [`strategy`] (decode, default, validate) and the store's
//! compare-and-swap; conflicts from concurrent writers are retried for
//! requests that did not pin a resourceVersion, as upstream's GuaranteedUpdate.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::delete::{delete, delete_collection};
use super::list::list;
use super::patch::{self, PatchType, Section};
use super::registry::{Resource, Subresource};
use super::server::ApiServer;
use super::status::ApiError;
use super::strategy::{self, FieldValidation, Scope};
use super::table::{self, IncludeObject};
use super::{ipam, subresources, watch};
use crate::store::StoreError;

/// How many times a write retries after losing a compare-and-swap race.
pub(super) const MAX_RETRIES: usize = 16;

/// A parsed request for a resource (or one object, or a subresource).
pub struct ResourceRequest<'a> {
    /// The resource served.
    pub resource: &'static Resource,
    /// Namespace from the URL.
    pub namespace: Option<String>,
    /// Object name from the URL.
    pub name: Option<String>,
    /// Subresource from the URL.
    pub sub: Option<Subresource>,
    /// Query parameters.
    pub query: HashMap<String, String>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Request body.
    pub body: Bytes,
}

impl<'a> ResourceRequest<'a> {
    /// Builds a request.
    pub fn new(
        resource: &'static Resource,
        namespace: Option<&str>,
        name: Option<&str>,
        sub: Option<Subresource>,
        query: HashMap<String, String>,
        headers: &'a HeaderMap,
        body: Bytes,
    ) -> Self {
        ResourceRequest {
            resource,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            sub,
            query,
            headers,
            body,
        }
    }

    /// A query parameter.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }

    /// A boolean query parameter, parsed as Go's `strconv.ParseBool` (clients
    /// send `true`, `1` or, like the Python client, `True`).
    pub fn flag(&self, key: &str) -> bool {
        matches!(
            self.param(key),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True")
        )
    }

    /// The object name (routes guarantee it for item requests).
    pub fn object_name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// Storage key of the named object.
    pub fn key(&self) -> String {
        self.resource
            .key(self.namespace.as_deref(), self.object_name())
    }

    /// True when the client asked for `as=Table`.
    pub fn wants_table(&self) -> bool {
        self.headers
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| {
                a.split(',')
                    .next()
                    .is_some_and(|first| first.contains("as=Table"))
            })
    }

    /// The `includeObject` policy for tables.
    pub fn include_object(&self) -> IncludeObject {
        match self.param("includeObject") {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }

    /// `dryRun=All`: validate but do not persist.
    pub fn dry_run(&self) -> bool {
        self.param("dryRun").is_some_and(|v| v == "All")
    }

    /// The request body's content type.
    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
    }

    /// Parses the body as an object.
    pub fn decode(&self) -> Result<Value, ApiError> {
        strategy::decode_body(self.content_type(), &self.body)
    }

    /// `fieldValidation`.
    pub fn field_validation(&self) -> Result<FieldValidation, ApiError> {
        FieldValidation::parse(self.param("fieldValidation"))
    }

    /// The field manager: `?fieldManager=`, else, as upstream, the
    /// User-Agent up to its first `/` (`kubectl-edit/v1.37.0 (linux/amd64) ...`).
    pub fn field_manager(&self) -> String {
        let manager = self
            .param("fieldManager")
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| {
                self.headers
                    .get("user-agent")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|ua| ua.split('/').next())
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .unwrap_or("unknown")
                    .to_string()
            });
        // Upstream caps managers at 128 characters.
        manager.chars().take(128).collect()
    }

    /// The managedFields identity of a write through this request, now.
    pub fn writer(&self) -> patch::Writer {
        let subresource = match self.sub {
            Some(Subresource::Status) => "status",
            Some(Subresource::Scale) => "scale",
            Some(Subresource::Finalize) => "finalize",
            _ => "",
        };
        let section = match self.sub {
            Some(Subresource::Status) => Section::StatusOnly,
            _ if self.resource.has(Subresource::Status) => Section::NoStatus,
            _ => Section::All,
        };
        patch::Writer {
            manager: self.field_manager(),
            api_version: self.resource.api_version(),
            subresource,
            section,
            now: strategy::now_rfc3339(),
        }
    }
}

/// Routes a resource request by method, name and subresource.
pub async fn handle(
    server: &Arc<ApiServer>,
    method: &Method,
    req: ResourceRequest<'_>,
) -> Result<Response, ApiError> {
    let has_name = req.name.is_some();
    if has_name && req.resource.namespaced && req.namespace.is_none() {
        return Err(ApiError::no_route());
    }
    match (method.as_str(), has_name, req.sub) {
        ("GET", false, None) => {
            if req.flag("watch") {
                watch::serve(server, &req).await
            } else {
                list(server, &req).await
            }
        }
        ("POST", false, None) if req.resource.namespaced && req.namespace.is_none() => {
            Err(ApiError::method_not_allowed("POST"))
        }
        ("POST", false, None) => create(server, &req).await,
        ("DELETE", false, None) => delete_collection(server, &req).await,
        ("GET", true, None | Some(Subresource::Status)) => get(server, &req).await,
        ("PUT", true, None) => update(server, &req, Scope::Main).await,
        ("PUT", true, Some(Subresource::Status)) => update(server, &req, Scope::Status).await,
        ("PATCH", true, None) => patch(server, &req, Scope::Main).await,
        ("PATCH", true, Some(Subresource::Status)) => patch(server, &req, Scope::Status).await,
        ("PUT", true, Some(Subresource::Finalize)) => update(server, &req, Scope::Finalize).await,
        ("DELETE", true, None) => delete(server, &req).await,
        (_, true, Some(Subresource::Scale)) => subresources::scale(server, method, &req).await,
        ("POST", true, Some(Subresource::Binding)) => {
            binding(server, &req, req.name.as_deref()).await
        }
        ("GET", true, Some(Subresource::Log)) => super::podlog::serve(server, &req).await,
        ("POST", true, Some(Subresource::Eviction)) => super::eviction::evict(server, &req).await,
        (m, _, _) => Err(ApiError::method_not_allowed(m)),
    }
}

/// POST pods/{name}/binding (or namespaces/{ns}/bindings).
pub async fn binding(
    server: &Arc<ApiServer>,
    req: &ResourceRequest<'_>,
    name: Option<&str>,
) -> Result<Response, ApiError> {
    subresources::binding(server, req, name).await
}

/// Builds a JSON response with `Warning` headers.
pub fn respond(code: StatusCode, value: &Value, warnings: &[String]) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = (code, [("content-type", "application/json")], body).into_response();
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = text.parse() {
            resp.headers_mut().append("warning", v);
        }
    }
    resp
}

/// Responds with one object, as a Table when asked.
pub fn respond_object(
    req: &ResourceRequest<'_>,
    code: StatusCode,
    obj: Value,
    warnings: &[String],
) -> Response {
    let obj = strategy::from_storage(req.resource, obj);
    if req.wants_table() {
        let rv = obj["metadata"]["resourceVersion"].clone();
        let mut t = table::to_table(
            req.resource,
            &[obj],
            req.include_object(),
            jiff::Timestamp::now(),
        );
        t["metadata"] = json!({"resourceVersion": rv});
        return respond(code, &t, warnings);
    }
    respond(code, &obj, warnings)
}

/// Reads the named object with its resourceVersion and mod revision.
pub async fn read(server: &ApiServer, req: &ResourceRequest<'_>) -> Result<(Value, i64), ApiError> {
    let kv = server
        .store
        .get(&req.key())
        .await
        .map_err(|e| ApiError::from_store(e, req.resource, req.object_name()))?
        .ok_or_else(|| ApiError::not_found(req.resource, req.object_name()))?;
    let obj: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is corrupt: {e}", kv.key)))?;
    Ok((
        strategy::with_resource_version(obj, kv.mod_revision),
        kv.mod_revision,
    ))
}

async fn get(server: &Arc<ApiServer>, req: &ResourceRequest<'_>) -> Result<Response, ApiError> {
    let (obj, _) = read(server, req).await?;
    Ok(respond_object(req, StatusCode::OK, obj, &[]))
}

/// Fails unless the namespace exists and is not terminating.
async fn check_namespace(server: &ApiServer, req: &ResourceRequest<'_>) -> Result<(), ApiError> {
    let Some(ns) = req.namespace.as_deref().filter(|_| req.resource.namespaced) else {
        return Ok(());
    };
    let key = format!("/registry/namespaces/{ns}");
    let kv = server.store.get(&key).await?;
    let Some(kv) = kv else {
        return Err(ApiError {
            details: Some(json!({"name": ns, "kind": "namespaces"})),
            ..ApiError::new(404, "NotFound", format!("namespaces \"{ns}\" not found"))
        });
    };
    let obj: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
    if obj["metadata"]["deletionTimestamp"].is_string() {
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "{} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                req.resource.qualified()
            ),
        ));
    }
    Ok(())
}

async fn create(server: &Arc<ApiServer>, req: &ResourceRequest<'_>) -> Result<Response, ApiError> {
    create_object(server, req, req.decode()?, None).await
}

/// Creates `body`; with `applied` (server-side apply of a missing object) the
/// field manager's managedFields entry is recorded on the new object.
async fn create_object(
    server: &Arc<ApiServer>,
    req: &ResourceRequest<'_>,
    body: Value,
    applied: Option<&Map<String, Value>>,
) -> Result<Response, ApiError> {
    check_namespace(server, req).await?;
    let (mut obj, warnings) = strategy::prepare_create(
        req.resource,
        req.namespace.as_deref(),
        body,
        req.field_validation()?,
    )?;
    let writer = req.writer();
    match applied {
        Some(config) => patch::record_apply_create(req.resource.kind, &mut obj, config, &writer),
        None => patch::record_create(req.resource.kind, &mut obj, &writer),
    }
    if req.resource.kind == "PodDisruptionBudget" {
        super::eviction::compute_status(server, req.namespace.as_deref(), &mut obj).await?;
    }
    if req.resource.kind == "Pod" {
        strategy::add_default_tolerations(
            &mut obj,
            server.config.controllers.default_toleration_seconds,
        );
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let key = req.resource.key(req.namespace.as_deref(), &name);
    let allocation = if req.resource.kind == "Service" && !req.dry_run() {
        server
            .ipam
            .allocate(&mut obj)
            .map_err(|errs| ApiError::invalid(req.resource, &name, &errs))?
    } else {
        ipam::Allocation::default()
    };
    if req.dry_run() {
        return Ok(respond_object(req, StatusCode::CREATED, obj, &warnings));
    }
    match server.store.create(&key, strategy::to_bytes(&obj)).await {
        Ok(kv) => {
            if req.resource.kind == "Namespace" {
                super::bootstrap::namespace_created(server, &name).await;
            }
            let obj = strategy::with_resource_version(obj, kv.mod_revision);
            Ok(respond_object(req, StatusCode::CREATED, obj, &warnings))
        }
        Err(e) => {
            server.ipam.release(&allocation);
            Err(ApiError::from_store(e, req.resource, &name))
        }
    }
}

/// Applies `mutate` to the current object and stores the result, retrying
/// lost races unless the new object pins a resourceVersion. Returns the
/// stored object (unchanged and unwritten when the update is a no-op).
pub async fn guaranteed_update(
    server: &ApiServer,
    req: &ResourceRequest<'_>,
    scope: Scope,
    mutate: impl Fn(&Value) -> Result<Value, ApiError>,
) -> Result<(Value, Vec<String>), ApiError> {
    let fv = req.field_validation()?;
    // Only PATCH carries the apply media type.
    let applying = PatchType::from_content_type(req.content_type()) == Some(PatchType::Apply);
    for _ in 0..MAX_RETRIES {
        let (current, revision) = read(server, req).await?;
        let desired = strategy::to_storage(
            req.resource,
            mutate(&strategy::from_storage(req.resource, current.clone()))?,
        );
        let pinned = desired["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        if let Some(rv) = &pinned {
            if rv.parse::<i64>().ok() != Some(revision) {
                return Err(ApiError::conflict(req.resource, req.object_name()));
            }
        }
        let desired = strategy::from_storage(req.resource, desired);
        let (mut new, warnings) =
            strategy::prepare_update(req.resource, scope, &current, desired, fv)?;
        // Server-side apply records its own entry; every other write is an Update.
        if scope != Scope::Whole && !applying {
            patch::record_update(req.resource.kind, &current, &mut new, &req.writer());
        }
        let pending = reserve_service(server, req, scope, &current, &mut new)?;
        let mut unchanged = current.clone();
        if let Some(m) = unchanged["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        if new == unchanged || req.dry_run() {
            return Ok((if req.dry_run() { new } else { current }, warnings));
        }
        if finalized(&new) {
            return match server.store.delete(&req.key(), Some(revision)).await {
                Ok(kv) => {
                    if let Some(pending) = pending {
                        pending.commit();
                    }
                    released(server, req.resource, &new);
                    Ok((
                        strategy::with_resource_version(new, kv.mod_revision),
                        warnings,
                    ))
                }
                Err(StoreError::Conflict { .. }) if pinned.is_none() => continue,
                Err(e) => Err(ApiError::from_store(e, req.resource, req.object_name())),
            };
        }
        match server
            .store
            .update(&req.key(), strategy::to_bytes(&new), revision)
            .await
        {
            Ok(kv) => {
                if let Some(pending) = pending {
                    pending.commit();
                }
                return Ok((
                    strategy::with_resource_version(new, kv.mod_revision),
                    warnings,
                ));
            }
            Err(StoreError::Conflict { .. }) if pinned.is_none() => continue,
            Err(e) => return Err(ApiError::from_store(e, req.resource, req.object_name())),
        }
    }
    Err(ApiError::conflict(req.resource, req.object_name()))
}

/// An object being deleted whose last finalizer is gone can be removed
/// (for namespaces, `spec.finalizers` must be empty too).
fn finalized(obj: &Value) -> bool {
    let empty = |v: &Value| v.as_array().is_none_or(|f| f.is_empty());
    obj["metadata"]["deletionTimestamp"].is_string()
        && empty(&obj["metadata"]["finalizers"])
        && (obj["kind"] != "Namespace" || empty(&obj["spec"]["finalizers"]))
}

/// Reserves what an updated Service newly needs (NodePorts once its type
/// asks for them, a ClusterIP once it leaves ExternalName); 422 on conflicts.
fn reserve_service<'a>(
    server: &'a ApiServer,
    req: &ResourceRequest<'_>,
    scope: Scope,
    current: &Value,
    new: &mut Value,
) -> Result<Option<ipam::Pending<'a>>, ApiError> {
    if req.resource.kind != "Service" || scope == Scope::Status {
        return Ok(None);
    }
    server
        .ipam
        .reallocate(current, new)
        .map(Some)
        .map_err(|errs| ApiError::invalid(req.resource, req.object_name(), &errs))
}

/// Releases what a deleted object held (Service addresses and ports).
pub(super) fn released(server: &ApiServer, resource: &Resource, obj: &Value) {
    if resource.kind == "Service" {
        server.ipam.release(&ipam::allocation_of(obj));
    }
}

async fn update(
    server: &Arc<ApiServer>,
    req: &ResourceRequest<'_>,
    scope: Scope,
) -> Result<Response, ApiError> {
    let body = req.decode()?;
    let (obj, warnings) = guaranteed_update(server, req, scope, |_| Ok(body.clone())).await?;
    Ok(respond_object(req, StatusCode::OK, obj, &warnings))
}

async fn patch(
    server: &Arc<ApiServer>,
    req: &ResourceRequest<'_>,
    scope: Scope,
) -> Result<Response, ApiError> {
    let ct = req.content_type();
    let patch_type = PatchType::from_content_type(ct).ok_or_else(|| {
        ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {ct})"))
    })?;
    if patch_type == PatchType::Apply {
        return server_side_apply(server, req, scope).await;
    }
    let kind = req.resource.kind;
    let (obj, warnings) = guaranteed_update(server, req, scope, |current| {
        let mut current = current.clone();
        if let Some(m) = current["metadata"].as_object_mut() {
            // The patch result pins a resourceVersion only if the patch itself does.
            m.remove("resourceVersion");
        }
        patch::apply(kind, &current, patch_type, &req.body).map_err(|e| ApiError::from(&e))
    })
    .await?;
    Ok(respond_object(req, StatusCode::OK, obj, &warnings))
}

/// Server-side apply: creates the object when missing, otherwise merges the
/// applied configuration into it; either way records the field manager.
async fn server_side_apply(
    server: &Arc<ApiServer>,
    req: &ResourceRequest<'_>,
    scope: Scope,
) -> Result<Response, ApiError> {
    if req.param("fieldManager").is_none_or(str::is_empty) {
        return Err(ApiError::new(
            400,
            "BadRequest",
            "fieldManager is required for apply requests",
        ));
    }
    let applied = patch::parse_apply(&req.body).map_err(|e| ApiError::from(&e))?;
    let force = req.flag("force");
    let kind = req.resource.kind;
    let result = guaranteed_update(server, req, scope, |current| {
        let mut current = current.clone();
        if let Some(m) = current["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        patch::server_side_apply(kind, &current, &applied, &req.writer(), force)
            .map_err(|e| ApiError::from(&e))
    })
    .await;
    match result {
        Ok((obj, warnings)) => Ok(respond_object(req, StatusCode::OK, obj, &warnings)),
        Err(e) if e.code == 404 && scope == Scope::Main => {
            let mut body = applied.clone();
            let meta = body
                .entry("metadata")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(m) = meta.as_object_mut() {
                m.entry("name")
                    .or_insert_with(|| Value::String(req.object_name().to_string()));
            }
            create_object(server, req, Value::Object(body), Some(&applied)).await
        }
        Err(e) => Err(e),
    }
}
