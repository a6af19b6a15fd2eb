//! Server-side printing: `meta.k8s.io/v1` `Table` documents for `kubectl get`.
//!
//! Column sets and cell logic follow upstream's
//! `pkg/printers/internalversion/printers.go` so `kubectl get` looks the same
//! against skiff as against a real cluster. The server always fills the wide
//! (priority 1) cells, as upstream does; kubectl hides them without `-o wide`.
//! This module turns stored JSON objects into rows and never fails: missing
//! fields become the same placeholders upstream prints (`<none>`, `<unknown>`).
//! Fetching, selecting and setting `metadata.resourceVersion` are the
//! caller's job.

mod columns;
mod policy;
mod workloads;

use std::str::FromStr;

use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Map, Value};

use super::registry::Resource;

/// What each row's `object` carries (`includeObject` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// No `object` field.
    None,
    /// A `PartialObjectMetadata` with the object's metadata (the default).
    #[default]
    Metadata,
    /// The full object.
    Object,
}

/// An `includeObject` value other than `None`, `Metadata` or `Object`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "includeObject: Unsupported value: {0:?}: supported values: \"None\", \"Metadata\", \"Object\""
)]
pub struct InvalidIncludeObject(pub String);

impl FromStr for IncludeObject {
    type Err = InvalidIncludeObject;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "None" => Ok(IncludeObject::None),
            "Metadata" => Ok(IncludeObject::Metadata),
            "Object" => Ok(IncludeObject::Object),
            other => Err(InvalidIncludeObject(other.to_string())),
        }
    }
}

impl IncludeObject {
    /// Parses the query value; absent or empty means the default, `Metadata`.
    pub fn from_query(value: Option<&str>) -> Result<Self, InvalidIncludeObject> {
        match value {
            None | Some("") => Ok(IncludeObject::default()),
            Some(v) => v.parse(),
        }
    }
}

/// One column of a table, as `TableColumnDefinition`.
#[derive(Debug, Clone, Copy)]
struct Column {
    name: &'static str,
    ty: &'static str,
    format: &'static str,
    description: &'static str,
    priority: u8,
}

/// Cells of one row, in the order of the kind's columns.
type Cells = Vec<Value>;

/// A kind's columns and the function that fills a row.
struct Printer {
    columns: &'static [Column],
    cells: fn(&Value, Timestamp) -> Cells,
    /// Row conditions (pods only: `Completed` for finished pods).
    conditions: Option<fn(&Value) -> Option<Value>>,
}

/// Builds the `Table` for `objects` of `resource` as of `now`; the caller
/// fills `metadata.resourceVersion` (and `continue` for lists).
pub fn to_table(
    resource: &Resource,
    objects: &[Value],
    include: IncludeObject,
    now: Timestamp,
) -> Value {
    let printer = printer_for(resource);
    let column_definitions: Vec<Value> = printer
        .columns
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.ty,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| row(&printer, obj, include, now))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}

/// A one-row `Table` for a watch event's object when the client watches
/// with `as=Table`; it carries the column definitions so every event prints.
pub fn watch_table_row(
    resource: &Resource,
    object: &Value,
    include: IncludeObject,
    now: Timestamp,
) -> Value {
    to_table(resource, std::slice::from_ref(object), include, now)
}

fn row(printer: &Printer, obj: &Value, include: IncludeObject, now: Timestamp) -> Value {
    let mut row = Map::new();
    row.insert("cells".into(), Value::Array((printer.cells)(obj, now)));
    if let Some(conditions) = printer.conditions.and_then(|f| f(obj)) {
        row.insert("conditions".into(), conditions);
    }
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            row.insert(
                "object".into(),
                json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
                }),
            );
        }
        IncludeObject::Object => {
            row.insert("object".into(), obj.clone());
        }
    }
    Value::Object(row)
}

fn printer_for(resource: &Resource) -> Printer {
    let cells = |columns, cells| Printer {
        columns,
        cells,
        conditions: None,
    };
    match (resource.group, resource.kind) {
        ("", "Pod") => Printer {
            columns: workloads::POD,
            cells: workloads::pod,
            conditions: Some(workloads::pod_conditions),
        },
        ("", "Service") => cells(columns::SERVICE, columns::service),
        ("", "Endpoints") => cells(columns::ENDPOINTS, columns::endpoints),
        ("", "Node") => cells(columns::NODE, columns::node),
        ("", "Namespace") => cells(columns::NAMESPACE, columns::namespace),
        ("", "ConfigMap") => cells(columns::CONFIG_MAP, columns::config_map),
        ("", "Secret") => cells(columns::SECRET, columns::secret),
        ("", "ServiceAccount") => cells(columns::SERVICE_ACCOUNT, columns::service_account),
        ("", "Event") => cells(columns::EVENT, columns::event),
        ("apps", "Deployment") => cells(workloads::DEPLOYMENT, workloads::deployment),
        ("apps", "ReplicaSet") => cells(workloads::REPLICA_SET, workloads::replica_set),
        ("apps", "DaemonSet") => cells(workloads::DAEMON_SET, workloads::daemon_set),
        ("apps", "StatefulSet") => cells(workloads::STATEFUL_SET, workloads::stateful_set),
        ("discovery.k8s.io", "EndpointSlice") => {
            cells(columns::ENDPOINT_SLICE, columns::endpoint_slice)
        }
        ("coordination.k8s.io", "Lease") => cells(columns::LEASE, columns::lease),
        ("batch", "Job") => cells(workloads::JOB, workloads::job),
        ("autoscaling", "HorizontalPodAutoscaler") if resource.version == "v1" => {
            cells(workloads::HPA, workloads::hpa_v1)
        }
        ("autoscaling", "HorizontalPodAutoscaler") => cells(workloads::HPA, workloads::hpa_v2),
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") | ("", "LimitRange") => {
            cells(policy::CREATED, policy::created)
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            cells(policy::BINDING, policy::binding)
        }
        ("networking.k8s.io", "Ingress") => cells(policy::INGRESS, policy::ingress),
        ("networking.k8s.io", "IngressClass") => {
            cells(policy::INGRESS_CLASS, policy::ingress_class)
        }
        ("networking.k8s.io", "NetworkPolicy") => {
            cells(policy::NETWORK_POLICY, policy::network_policy)
        }
        ("policy", "PodDisruptionBudget") => cells(policy::PDB, policy::pdb),
        ("scheduling.k8s.io", "PriorityClass") => {
            cells(policy::PRIORITY_CLASS, policy::priority_class)
        }
        ("", "ResourceQuota") => cells(policy::RESOURCE_QUOTA, policy::resource_quota),
        ("", "PersistentVolumeClaim") => cells(policy::PVC, policy::pvc),
        ("", "PersistentVolume") => cells(policy::PV, policy::pv),
        ("storage.k8s.io", "StorageClass") => cells(policy::STORAGE_CLASS, policy::storage_class),
        _ => cells(columns::DEFAULT, columns::default),
    }
}

/// Formats a duration like `k8s.io/apimachinery/pkg/util/duration.HumanDuration`
/// ("5s", "3m20s", "2d"), which `kubectl get` uses for AGE.
pub fn human_duration(d: SignedDuration) -> String {
    let seconds = d.as_secs();
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

// ---- JSON access that never fails: missing fields read as empty ----

/// The value at `path`, or `Null`.
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, key| &v[*key])
}

/// The string at `path`, or "".
fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path).as_str().unwrap_or("")
}

/// The integer at `path`, or 0.
fn int(v: &Value, path: &[&str]) -> i64 {
    let v = at(v, path);
    v.as_i64()
        .or_else(|| v.as_f64().map(|f| f as i64))
        .unwrap_or(0)
}

/// The array at `path`, or an empty slice.
fn list<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path).as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// The number of entries of the object or array at `path`.
fn count(v: &Value, path: &[&str]) -> i64 {
    match at(v, path) {
        Value::Object(m) => m.len() as i64,
        Value::Array(a) => a.len() as i64,
        _ => 0,
    }
}

/// A quantity or other scalar as text ("500m", 3).
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

/// Parses an RFC 3339 timestamp field.
fn timestamp(v: &Value) -> Option<Timestamp> {
    v.as_str().and_then(|s| s.parse().ok())
}

/// "how long ago" for a timestamp field, `<unknown>` when absent.
fn since(v: &Value, now: Timestamp) -> String {
    match timestamp(v) {
        Some(t) => human_duration(now.duration_since(t)),
        None => "<unknown>".into(),
    }
}

/// The AGE cell.
fn age(obj: &Value, now: Timestamp) -> Value {
    since(at(obj, &["metadata", "creationTimestamp"]), now).into()
}

/// The NAME cell.
fn name(obj: &Value) -> Value {
    text(obj, &["metadata", "name"]).into()
}

/// `labels.FormatLabels`: sorted `k=v` pairs, `<none>` when empty.
fn format_labels(map: &Value) -> String {
    let pairs: Vec<String> = map
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", scalar(v)))
                .collect()
        })
        .unwrap_or_default();
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join(",")
    }
}

/// `metav1.LabelSelectorAsSelector(sel).String()`: requirements sorted by
/// key; None for an operator the API does not know.
fn selector_string(sel: &Value) -> Option<String> {
    let mut reqs: Vec<(String, String)> = Vec::new();
    if let Some(labels) = sel["matchLabels"].as_object() {
        for (k, v) in labels {
            reqs.push((k.clone(), format!("{k}={}", scalar(v))));
        }
    }
    for expr in list(sel, &["matchExpressions"]) {
        let key = text(expr, &["key"]);
        let mut values: Vec<String> = list(expr, &["values"]).iter().map(scalar).collect();
        values.sort();
        let req = match text(expr, &["operator"]) {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => return None,
        };
        reqs.push((key.to_string(), req));
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    Some(
        reqs.into_iter()
            .map(|(_, r)| r)
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// `metav1.FormatLabelSelector`: the selector string or `<none>`.
fn format_label_selector(sel: &Value) -> String {
    match selector_string(sel) {
        None => "<error>".into(),
        Some(s) if s.is_empty() => "<none>".into(),
        Some(s) => s,
    }
}

/// Comma-joined container names and images of a pod template.
fn container_cells(containers: &[Value]) -> (Value, Value) {
    let names: Vec<&str> = containers.iter().map(|c| text(c, &["name"])).collect();
    let images: Vec<&str> = containers.iter().map(|c| text(c, &["image"])).collect();
    (names.join(",").into(), images.join(",").into())
}

#[cfg(test)]
mod tests;
