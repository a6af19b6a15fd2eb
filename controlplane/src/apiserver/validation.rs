//! Validation of objects before they are stored: names, required fields,
//! ranges, immutable fields, unknown fields.
//!
//! The checks and their messages follow upstream (k8s.io/kubernetes
//! pkg/apis/*/validation and apimachinery's validation helpers) so that a
//! `kubectl apply` of a bad manifest fails with the text users search for.
//! Everything works on the canonical, defaulted `serde_json::Value`; a field
//! of the wrong JSON type is the codec's to report and is skipped here.

mod data;
mod meta;
mod names;
mod pod;
mod policy;
mod service;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod update_tests;
mod workloads;

use std::fmt;

use serde_json::{Map, Value};

use super::registry::Resource;

/// One invalid field, reported in a 422 Status's `details.causes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Upstream's reason, e.g. `FieldValueRequired`, `FieldValueInvalid`.
    pub reason: &'static str,
    /// Path such as `spec.containers[0].image` or `metadata.name`.
    pub field: String,
    /// Human message, e.g. `Required value`.
    pub message: String,
}

impl FieldError {
    /// `Required value`, with an optional detail.
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        Self::new("FieldValueRequired", field, "Required value".into(), detail)
    }

    /// `Invalid value: <value>: <detail>`.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Self {
        let body = format!("Invalid value: {}", render(value));
        Self::new("FieldValueInvalid", field, body, detail)
    }

    /// `Unsupported value: <value>: supported values: "A", "B"`.
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let body = format!("Unsupported value: {}", render(value));
        let list: Vec<String> = supported.iter().map(|s| go_quote(s)).collect();
        let detail = format!("supported values: {}", list.join(", "));
        Self::new("FieldValueNotSupported", field, body, &detail)
    }

    /// `Duplicate value: <value>`.
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        let body = format!("Duplicate value: {}", render(value));
        Self::new("FieldValueDuplicate", field, body, "")
    }

    /// `Not found: <value>`.
    pub fn not_found(field: impl Into<String>, value: &Value) -> Self {
        let body = format!("Not found: {}", render(value));
        Self::new("FieldValueNotFound", field, body, "")
    }

    /// `Forbidden: <detail>`.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self::new("FieldValueForbidden", field, "Forbidden".into(), detail)
    }

    /// `Too long: may not be more than <max> bytes`.
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        let detail = format!("may not be more than {max} bytes");
        Self::new("FieldValueTooLong", field, "Too long".into(), &detail)
    }

    fn new(reason: &'static str, field: impl Into<String>, body: String, detail: &str) -> Self {
        let message = if detail.is_empty() {
            body
        } else {
            format!("{body}: {detail}")
        };
        Self {
            reason,
            field: field.into(),
            message,
        }
    }
}

impl fmt::Display for FieldError {
    /// Upstream's `field.Error.Error()`: `spec.replicas: Invalid value: -1: ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Errors accumulated by one validation pass.
type Errors = Vec<FieldError>;

/// Validates `obj` (defaulted, canonical) of `resource`; `old` is the stored
/// object on update, for immutability rules. Empty when the object is valid.
pub fn validate(resource: &Resource, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Errors::new();
    meta::object_meta(resource, obj, &mut errs);
    let empty = Value::Null;
    let spec = obj.get("spec").unwrap_or(&empty);
    // An unchanged spec was validated when it was written; checking it again
    // could only fail a status or metadata update for rules the user cannot
    // act on there.
    let unchanged =
        old.is_some_and(|old| spec.is_object() && same(spec, old.get("spec").unwrap_or(&empty)));
    match resource.kind {
        _ if unchanged => {}
        "Pod" => pod::pod_spec(spec, "spec", pod::Owner::Pod, &mut errs),
        "Service" => service::service(spec, &mut errs),
        "EndpointSlice" => service::endpoint_slice(obj, &mut errs),
        "ConfigMap" => data::config_map(obj, &mut errs),
        "Secret" => data::secret(obj, &mut errs),
        "Event" => data::event(obj, &mut errs),
        "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" | "Job" => {
            workloads::workload(resource.kind, spec, &mut errs)
        }
        "HorizontalPodAutoscaler" => workloads::hpa(spec, &mut errs),
        "Role" | "ClusterRole" => policy::role(obj, resource.namespaced, &mut errs),
        "RoleBinding" | "ClusterRoleBinding" => {
            policy::binding(obj, resource.namespaced, &mut errs)
        }
        "Ingress" => policy::ingress(spec, &mut errs),
        "IngressClass" => policy::ingress_class(spec, &mut errs),
        "NetworkPolicy" => policy::network_policy(spec, &mut errs),
        "PodDisruptionBudget" => policy::pdb(spec, &mut errs),
        "PriorityClass" => policy::priority_class(obj, &mut errs),
        "PersistentVolumeClaim" => policy::pvc(spec, &mut errs),
        "StorageClass" => policy::storage_class(obj, &mut errs),
        _ => {}
    }
    if let Some(old) = old {
        meta::object_meta_update(obj, old, &mut errs);
        let old_spec = old.get("spec").unwrap_or(&empty);
        match resource.kind {
            "Pod" => pod::pod_update(spec, old_spec, &mut errs),
            "Service" => service::service_update(spec, old_spec, &mut errs),
            "EndpointSlice" => service::endpoint_slice_update(obj, old, &mut errs),
            "ConfigMap" | "Secret" => data::data_update(resource.kind, obj, old, &mut errs),
            "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" | "Job" => {
                workloads::workload_update(resource.kind, spec, old_spec, &mut errs)
            }
            "RoleBinding" | "ClusterRoleBinding" => policy::binding_update(obj, old, &mut errs),
            _ => {}
        }
    }
    errs
}

/// Paths of fields the user sent (non-null) that the typed round trip
/// dropped, formatted like `spec.containers[0].foo`; the server turns them
/// into `strict decoding error: unknown field "..."` or warnings.
pub fn unknown_fields(input: &Value, canonical: &Value) -> Vec<String> {
    let mut out = Vec::new();
    unknown_in(input, canonical, "", &mut out);
    out
}

fn unknown_in(input: &Value, canonical: &Value, path: &str, out: &mut Vec<String>) {
    match (input, canonical) {
        (Value::Object(input), Value::Object(canonical)) => {
            for (key, value) in input {
                let child = at(path, key);
                match canonical.get(key) {
                    _ if value.is_null() => {}
                    None => out.push(child),
                    Some(kept) => unknown_in(value, kept, &child, out),
                }
            }
        }
        (Value::Array(input), Value::Array(canonical)) => {
            for (i, (value, kept)) in input.iter().zip(canonical).enumerate() {
                unknown_in(value, kept, &format!("{path}[{i}]"), out);
            }
        }
        // Scalars, and values whose JSON type the codec changes (an
        // int-or-string, a Quantity written as a number) have no fields.
        _ => {}
    }
}

/// `parent.child`, or `child` at the top.
fn at(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

/// `parent[i]`.
fn idx(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// `parent[key]`, upstream's `Path.Key`.
fn key(parent: &str, key: &str) -> String {
    format!("{parent}[{key}]")
}

/// The string at `v[name]`, `""` when absent or not a string.
fn str_at<'a>(v: &'a Value, name: &str) -> &'a str {
    v.get(name).and_then(Value::as_str).unwrap_or("")
}

/// The array at `v[name]`, empty when absent or not an array.
fn arr_at<'a>(v: &'a Value, name: &str) -> &'a [Value] {
    v.get(name)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The object at `v[name]`, when it is one.
fn obj_at<'a>(v: &'a Value, name: &str) -> Option<&'a Map<String, Value>> {
    v.get(name).and_then(Value::as_object)
}

/// The integer at `v[name]`, when it is one.
fn int_at(v: &Value, name: &str) -> Option<i64> {
    v.get(name).and_then(Value::as_i64)
}

/// A value as upstream (v1.34+) prints a field error's bad value: strings
/// quoted like Go's `%q`, numbers and booleans bare, anything else as
/// compact JSON.
fn render(value: &Value) -> String {
    match value {
        Value::String(s) => go_quote(s),
        other => other.to_string(),
    }
}

/// Go's `strconv.Quote`.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Semantic equality of two stored values: a null and a missing key, or an
/// empty list and a missing one, are the same to Go's omitempty encoding.
fn same(a: &Value, b: &Value) -> bool {
    normalized(a) == normalized(b)
}

fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
                .map(|(k, v)| (k.clone(), normalized(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(normalized).collect()),
        other => other.clone(),
    }
}
