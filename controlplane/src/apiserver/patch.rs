//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and
//! Kubernetes strategic merge patch with its directives.
//!
//! Everything here is a pure function on `serde_json::Value`: the handler picks
//! the [`PatchType`] from `Content-Type`, calls [`apply`] on the stored object and
//! then defaults, validates and stores the result itself. This module never
//! touches the store and knows nothing about HTTP beyond [`PatchError::http_status`].
//!
//! The strategic merge engine (`patch/strategic.rs`) follows the server side of
//! `k8s.io/apimachinery/pkg/util/strategicpatch`; which lists merge and by which
//! key comes from the `patchStrategy`/`patchMergeKey` struct tags of the upstream
//! API types, tabulated in [`list_strategy`]. Field ownership
//! (`metadata.managedFields`) and server-side apply live in `patch/managed.rs`
//! on the field sets of `patch/fieldset.rs`, which key list items by the same table.

mod fieldset;
mod managed;
mod strategic;

pub use fieldset::Section;
pub use managed::{
    conflicts_message, parse_apply, record_apply_create, record_create, record_update,
    server_side_apply, Conflict, Writer,
};

use std::fmt;

use serde_json::{json, Value};

use super::status::ApiError;

/// The four PATCH flavours the Kubernetes API accepts, told apart by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// RFC 6902 JSON patch: a list of operations (`application/json-patch+json`).
    Json,
    /// RFC 7386 JSON merge patch: objects merge, everything else replaces.
    Merge,
    /// Kubernetes strategic merge patch (what `kubectl apply` and `kubectl patch` send).
    StrategicMerge,
    /// Server-side apply (`application/apply-patch+yaml`), see [`server_side_apply`].
    Apply,
}

impl PatchType {
    /// The patch type for a `Content-Type` header value, ignoring parameters such as `charset`.
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        let media = ct.split(';').next().unwrap_or_default().trim();
        match media.to_ascii_lowercase().as_str() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::StrategicMerge),
            "application/apply-patch+yaml" => Some(PatchType::Apply),
            _ => None,
        }
    }

    /// The media type that selects this patch type.
    pub fn content_type(self) -> &'static str {
        match self {
            PatchType::Json => "application/json-patch+json",
            PatchType::Merge => "application/merge-patch+json",
            PatchType::StrategicMerge => "application/strategic-merge-patch+json",
            PatchType::Apply => "application/apply-patch+yaml",
        }
    }
}

impl fmt::Display for PatchType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PatchType::Json => "JSON patch",
            PatchType::Merge => "JSON merge patch",
            PatchType::StrategicMerge => "strategic merge patch",
            PatchType::Apply => "server-side apply",
        })
    }
}

/// Why a PATCH body could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The body is not JSON at all.
    #[error("the {patch_type} body is not valid JSON: {source}")]
    InvalidJson {
        /// The patch type announced by `Content-Type`.
        patch_type: PatchType,
        /// The parser's complaint, with line and column.
        source: serde_json::Error,
    },
    /// The body is JSON but not a list of RFC 6902 operations.
    #[error("the JSON patch is not a list of RFC 6902 operations (op, path, value/from): {0}")]
    InvalidJsonPatch(serde_json::Error),
    /// One JSON patch operation failed; nothing was applied.
    #[error("JSON patch operation {index} ({op} at path {path:?}) failed: {reason}")]
    JsonPatchFailed {
        /// Index of the failing operation in the list, from 0.
        index: usize,
        /// The operation name (`add`, `test`, ...).
        op: &'static str,
        /// The operation's JSON pointer.
        path: String,
        /// What went wrong (value did not match, path is invalid, ...).
        reason: String,
    },
    /// A merge or strategic merge patch must be a JSON object.
    #[error("the {patch_type} body must be a JSON object, found {found}")]
    NotAnObject {
        /// The patch type announced by `Content-Type`.
        patch_type: PatchType,
        /// The JSON type that was sent instead.
        found: &'static str,
    },
    /// The stored object is not a JSON object (a bug upstream of the patch).
    #[error("the object being patched is not a JSON object")]
    OriginalNotAnObject,
    /// A `$patch`, `$retainKeys`, `$setElementOrder/...` or `$deleteFromPrimitiveList/...`
    /// directive is malformed or unknown.
    #[error("invalid strategic merge patch directive at {path}: {message}")]
    BadDirective {
        /// Dotted field path of the map holding the directive.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// An item of a list merged by key lacks that key.
    #[error("strategic merge patch: an item of the list {path} has no merge key {key:?}: {item}")]
    MissingMergeKey {
        /// Dotted field path of the list.
        path: String,
        /// The merge key (`name`, `containerPort`, ...).
        key: &'static str,
        /// The offending item.
        item: String,
    },
    /// Two values cannot be merged (mixed item types, lists of lists, ...).
    #[error("strategic merge patch cannot merge {path}: {message}")]
    Unmergeable {
        /// Dotted field path of the value.
        path: String,
        /// Why.
        message: String,
    },
    /// Server-side apply would overwrite fields other managers own.
    #[error("{}", conflicts_message(.0))]
    ApplyConflicts(Vec<Conflict>),
    /// A server-side apply body that is not a YAML/JSON object.
    #[error("error decoding YAML: {0}")]
    BadApplyBody(String),
    /// The patch type is not handled by [`apply`] (server-side apply has its own entry point).
    #[error("{0} is not a patch: the server applies it with its field manager")]
    Unsupported(PatchType),
}

impl PatchError {
    /// The HTTP status the API server answers with, as upstream does:
    /// 415 for unsupported types, 422 when a well-formed patch cannot be applied,
    /// 400 for malformed bodies and directives.
    pub fn http_status(&self) -> u16 {
        match self {
            PatchError::Unsupported(_) => 415,
            PatchError::ApplyConflicts(_) => 409,
            PatchError::JsonPatchFailed { .. }
            | PatchError::MissingMergeKey { .. }
            | PatchError::Unmergeable { .. } => 422,
            PatchError::OriginalNotAnObject => 500,
            PatchError::InvalidJson { .. }
            | PatchError::InvalidJsonPatch(_)
            | PatchError::NotAnObject { .. }
            | PatchError::BadDirective { .. }
            | PatchError::BadApplyBody(_) => 400,
        }
    }
}

/// A patch failure as a Status with upstream's code (400, 409, 415 or 422);
/// apply conflicts list each field as a `FieldManagerConflict` cause.
impl From<&PatchError> for ApiError {
    fn from(e: &PatchError) -> ApiError {
        if let PatchError::ApplyConflicts(conflicts) = e {
            let causes: Vec<Value> = conflicts
                .iter()
                .map(|c| {
                    json!({
                        "reason": "FieldManagerConflict",
                        "message": format!("conflict with {}", c.manager),
                        "field": c.field,
                    })
                })
                .collect();
            return ApiError {
                details: Some(json!({ "causes": causes })),
                ..ApiError::new(409, "Conflict", e.to_string())
            };
        }
        let code = e.http_status();
        let reason = match code {
            409 => "Conflict",
            415 => "UnsupportedMediaType",
            422 => "Invalid",
            500 => "InternalError",
            _ => "BadRequest",
        };
        ApiError::new(code, reason, e.to_string())
    }
}

/// Applies a PATCH `body` of `patch_type` to `original` (an object of `kind`)
/// and returns the patched object; `original` is left untouched.
pub fn apply(
    kind: &str,
    original: &Value,
    patch_type: PatchType,
    body: &[u8],
) -> Result<Value, PatchError> {
    match patch_type {
        PatchType::Json => apply_json_patch(original, body),
        PatchType::Merge => {
            let patch = parse_object(body, patch_type)?;
            let mut doc = original.clone();
            json_patch::merge(&mut doc, &Value::Object(patch));
            Ok(doc)
        }
        PatchType::StrategicMerge => {
            let patch = parse_object(body, patch_type)?;
            let Value::Object(doc) = original.clone() else {
                return Err(PatchError::OriginalNotAnObject);
            };
            Ok(Value::Object(strategic::merge(kind, doc, patch)?))
        }
        PatchType::Apply => Err(PatchError::Unsupported(PatchType::Apply)),
    }
}

fn apply_json_patch(original: &Value, body: &[u8]) -> Result<Value, PatchError> {
    let value: Value = serde_json::from_slice(body).map_err(|source| PatchError::InvalidJson {
        patch_type: PatchType::Json,
        source,
    })?;
    let ops: json_patch::Patch =
        serde_json::from_value(value).map_err(PatchError::InvalidJsonPatch)?;
    let mut doc = original.clone();
    // `json_patch::patch` rolls back on failure, but we patch a copy anyway.
    json_patch::patch(&mut doc, &ops.0).map_err(|e| {
        let op = ops.0.get(e.operation).map_or("unknown", op_name);
        PatchError::JsonPatchFailed {
            index: e.operation,
            op,
            path: e.path.to_string(),
            reason: e.kind.to_string(),
        }
    })?;
    Ok(doc)
}

fn op_name(op: &json_patch::PatchOperation) -> &'static str {
    use json_patch::PatchOperation as Op;
    match op {
        Op::Add(_) => "add",
        Op::Remove(_) => "remove",
        Op::Replace(_) => "replace",
        Op::Move(_) => "move",
        Op::Copy(_) => "copy",
        Op::Test(_) => "test",
    }
}

fn parse_object(
    body: &[u8],
    patch_type: PatchType,
) -> Result<serde_json::Map<String, Value>, PatchError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|source| PatchError::InvalidJson { patch_type, source })?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(PatchError::NotAnObject {
            patch_type,
            found: json_type(&other),
        }),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// How a list field merges under a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Items are objects merged by the value of this key (e.g. `name`).
    MergeByKey(&'static str),
    /// Items are scalars merged as a set (e.g. `metadata.finalizers`).
    MergePrimitives,
    /// The patch's list replaces the original (the default).
    Replace,
}

impl ListStrategy {
    /// The `x-kubernetes-patch-strategy` value (`merge`), if the list is not replaced.
    pub fn patch_strategy(self) -> Option<&'static str> {
        match self {
            ListStrategy::MergeByKey(_) | ListStrategy::MergePrimitives => Some("merge"),
            ListStrategy::Replace => None,
        }
    }

    /// The `x-kubernetes-patch-merge-key` value, for lists merged by key.
    pub fn merge_key(self) -> Option<&'static str> {
        match self {
            ListStrategy::MergeByKey(key) => Some(key),
            _ => None,
        }
    }
}

/// Kinds whose `status.conditions` carry `patchMergeKey:"type"` upstream.
const CONDITIONS_MERGED_BY_TYPE: &[&str] = &[
    "Pod",
    "Node",
    "Namespace",
    "Service",
    "ReplicationController",
    "Deployment",
    "ReplicaSet",
    "DaemonSet",
    "StatefulSet",
    "Job",
    "HorizontalPodAutoscaler",
];

/// Where the `PodSpec` sits in objects of `kind`.
fn pod_spec_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&["spec"]),
        "Deployment"
        | "ReplicaSet"
        | "DaemonSet"
        | "StatefulSet"
        | "Job"
        | "ReplicationController" => Some(&["spec", "template", "spec"]),
        "PodTemplate" => Some(&["template", "spec"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template", "spec"]),
        _ => None,
    }
}

/// The strategy of the list at `path` (field names from the object root, list
/// indices left out) in an object of `kind`, e.g. `["spec","template","spec","containers"]`
/// in a `Deployment` → `MergeByKey("name")`.
pub fn list_strategy(kind: &str, path: &[&str]) -> ListStrategy {
    use ListStrategy::{MergeByKey, MergePrimitives, Replace};
    if let Some(spec) = pod_spec_path(kind) {
        if let Some(strategy) = path.strip_prefix(spec).and_then(pod_spec_list) {
            return strategy;
        }
        // The pod template's own ObjectMeta: `spec.template.metadata`.
        if let Some((_, template)) = spec.split_last().filter(|(_, t)| !t.is_empty()) {
            if let Some(strategy) = path.strip_prefix(template).and_then(object_meta_list) {
                return strategy;
            }
        }
    }
    if let Some(strategy) = object_meta_list(path) {
        return strategy;
    }
    match (kind, path) {
        (kind, ["status", "conditions"]) if CONDITIONS_MERGED_BY_TYPE.contains(&kind) => {
            MergeByKey("type")
        }
        ("Pod", ["status", "podIPs" | "hostIPs"]) => MergeByKey("ip"),
        ("Pod", ["status", "resourceClaimStatuses"]) => MergeByKey("name"),
        ("Service", ["spec", "ports"]) => MergeByKey("port"),
        ("Node", ["status", "addresses"]) => MergeByKey("type"),
        ("Node", ["spec", "podCIDRs"]) => MergePrimitives,
        ("ServiceAccount", ["secrets"]) => MergeByKey("name"),
        _ => Replace,
    }
}

/// ObjectMeta lists, `path` relative to the object (or template) root.
fn object_meta_list(path: &[&str]) -> Option<ListStrategy> {
    match path {
        ["metadata", "finalizers"] => Some(ListStrategy::MergePrimitives),
        ["metadata", "ownerReferences"] => Some(ListStrategy::MergeByKey("uid")),
        _ => None,
    }
}

/// PodSpec lists, `path` relative to the PodSpec.
fn pod_spec_list(path: &[&str]) -> Option<ListStrategy> {
    use ListStrategy::MergeByKey;
    let key = match path {
        ["containers" | "initContainers" | "ephemeralContainers"] => "name",
        ["containers" | "initContainers" | "ephemeralContainers", field] => match *field {
            "ports" => "containerPort",
            "env" => "name",
            "volumeMounts" => "mountPath",
            "volumeDevices" => "devicePath",
            _ => return None,
        },
        ["volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates"] => "name",
        ["hostAliases"] => "ip",
        ["topologySpreadConstraints"] => "topologyKey",
        _ => return None,
    };
    Some(MergeByKey(key))
}

#[cfg(test)]
mod tests;
