//! API errors as Kubernetes `Status` objects (kind Status, apiVersion v1),
//! with upstream's codes, reasons and message wording so that kubectl and the
//! client libraries print and classify them as they would for kube-apiserver.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::registry::Resource;
use super::validation::FieldError;
use crate::store::StoreError;

/// An error answered to the client as a `Status`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Upstream reason (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, ...).
    pub reason: &'static str,
    /// Human message.
    pub message: String,
    /// `details` (name, group, kind, causes), if any.
    pub details: Option<Value>,
}

impl ApiError {
    /// A plain error.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 404 for an object of a resource.
    pub fn not_found(resource: &Resource, name: &str) -> Self {
        ApiError {
            details: Some(details(resource, name)),
            ..Self::new(
                404,
                "NotFound",
                format!("{} \"{}\" not found", resource.qualified(), name),
            )
        }
    }

    /// 404 for a path we do not serve.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 409 AlreadyExists.
    pub fn already_exists(resource: &Resource, name: &str) -> Self {
        ApiError {
            details: Some(details(resource, name)),
            ..Self::new(
                409,
                "AlreadyExists",
                format!("{} \"{}\" already exists", resource.qualified(), name),
            )
        }
    }

    /// 409 Conflict for a stale resourceVersion.
    pub fn conflict(resource: &Resource, name: &str) -> Self {
        ApiError {
            details: Some(details(resource, name)),
            ..Self::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                    resource.qualified(),
                    name
                ),
            )
        }
    }

    /// 422 Invalid with one cause per field error.
    pub fn invalid(resource: &Resource, name: &str, errors: &[FieldError]) -> Self {
        let list = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>();
        let summary = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        // Upstream's NewInvalid names the kind (NotFound and friends name the resource).
        let mut d = details(resource, name);
        d["kind"] = json!(resource.kind);
        d["causes"] = errors
            .iter()
            .map(|e| json!({"reason": e.reason, "message": e.message, "field": e.field}))
            .collect();
        ApiError {
            details: Some(d),
            ..Self::new(
                422,
                "Invalid",
                format!("{} \"{}\" is invalid: {}", resource.kind, name, summary),
            )
        }
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// Maps a store error for an object of `resource` named `name`.
    pub fn from_store(err: StoreError, resource: &Resource, name: &str) -> Self {
        match err {
            StoreError::AlreadyExists(_) => Self::already_exists(resource, name),
            StoreError::NotFound(_) => Self::not_found(resource, name),
            StoreError::Conflict { .. } => Self::conflict(resource, name),
            StoreError::Compacted { requested, oldest } => Self::gone(requested, oldest),
            StoreError::Backend(m) => Self::internal(format!("storage error: {m}")),
        }
    }

    /// 410 Expired for a resourceVersion older than the history window.
    pub fn gone(requested: i64, oldest: i64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if self.reason.is_empty() {
            // Upstream omits an empty reason (e.g. the eviction's 500).
            if let Some(m) = v.as_object_mut() {
                m.remove("reason");
            }
        }
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

fn details(resource: &Resource, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": resource.plural});
    if !resource.group.is_empty() {
        d["group"] = json!(resource.group);
    }
    d
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Compacted { requested, oldest } => Self::gone(requested, oldest),
            other => Self::internal(format!("storage error: {other}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_default();
        (code, [("content-type", "application/json")], body).into_response()
    }
}

/// A success `Status`, as returned by deletecollection-style operations.
pub fn success(details: Option<Value>) -> Value {
    let mut v = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"});
    if let Some(d) = details {
        v["details"] = d;
    }
    v
}
