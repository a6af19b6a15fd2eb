//! `components.schemas`: JSON schemas of every served kind, generated from the
//! k8s-openapi types with schemars (OpenAPI 3.0 settings), plus the list
//! kinds and the Kubernetes vendor extensions kubectl reads.

use std::borrow::Cow;
use std::collections::BTreeSet;

use k8s_openapi::api;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{json, Map, Value};

use crate::apiserver::patch::{list_strategy, ListStrategy};
use crate::apiserver::registry::{self, Resource};

/// Where OpenAPI 3 documents keep their schemas; refs point here.
pub(super) const REF_PREFIX: &str = "#/components/schemas/";

/// Upstream's name of the ListMeta schema.
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";

/// A kind with a schema of its own.
struct Kind {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    /// Adds the schema, and everything it refers to, to a generator.
    add: fn(&mut SchemaGenerator) -> Schema,
    /// The schema's (upstream) name, e.g. `io.k8s.api.core.v1.Pod`.
    name: fn() -> Cow<'static, str>,
}

macro_rules! kind {
    ($group:expr, $version:expr, $kind:expr, $ty:ty) => {
        Kind {
            group: $group,
            version: $version,
            kind: $kind,
            add: SchemaGenerator::subschema_for::<$ty>,
            name: <$ty as JsonSchema>::schema_name,
        }
    };
}

const KINDS: &[Kind] = &[
    kind!("", "v1", "Namespace", api::core::v1::Namespace),
    kind!("", "v1", "Pod", api::core::v1::Pod),
    kind!("", "v1", "Service", api::core::v1::Service),
    kind!("", "v1", "Endpoints", api::core::v1::Endpoints),
    kind!("", "v1", "Node", api::core::v1::Node),
    kind!("", "v1", "ConfigMap", api::core::v1::ConfigMap),
    kind!("", "v1", "Secret", api::core::v1::Secret),
    kind!("", "v1", "ServiceAccount", api::core::v1::ServiceAccount),
    kind!("", "v1", "Event", api::core::v1::Event),
    kind!("", "v1", "Binding", api::core::v1::Binding),
    kind!("policy", "v1", "Eviction", api::policy::v1::Eviction),
    kind!("apps", "v1", "Deployment", api::apps::v1::Deployment),
    kind!("apps", "v1", "ReplicaSet", api::apps::v1::ReplicaSet),
    kind!("apps", "v1", "DaemonSet", api::apps::v1::DaemonSet),
    kind!("apps", "v1", "StatefulSet", api::apps::v1::StatefulSet),
    kind!(
        "apps",
        "v1",
        "ControllerRevision",
        api::apps::v1::ControllerRevision
    ),
    kind!(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        api::discovery::v1::EndpointSlice
    ),
    kind!(
        "coordination.k8s.io",
        "v1",
        "Lease",
        api::coordination::v1::Lease
    ),
    kind!("batch", "v1", "Job", api::batch::v1::Job),
    kind!(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        api::autoscaling::v2::HorizontalPodAutoscaler
    ),
    kind!(
        "autoscaling",
        "v1",
        "HorizontalPodAutoscaler",
        api::autoscaling::v1::HorizontalPodAutoscaler
    ),
    kind!(
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        api::rbac::v1::Role
    ),
    kind!(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        api::rbac::v1::ClusterRole
    ),
    kind!(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        api::rbac::v1::RoleBinding
    ),
    kind!(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        api::rbac::v1::ClusterRoleBinding
    ),
    kind!(
        "networking.k8s.io",
        "v1",
        "Ingress",
        api::networking::v1::Ingress
    ),
    kind!(
        "networking.k8s.io",
        "v1",
        "IngressClass",
        api::networking::v1::IngressClass
    ),
    kind!(
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        api::networking::v1::NetworkPolicy
    ),
    kind!(
        "policy",
        "v1",
        "PodDisruptionBudget",
        api::policy::v1::PodDisruptionBudget
    ),
    kind!(
        "scheduling.k8s.io",
        "v1",
        "PriorityClass",
        api::scheduling::v1::PriorityClass
    ),
    kind!("", "v1", "ResourceQuota", api::core::v1::ResourceQuota),
    kind!("", "v1", "LimitRange", api::core::v1::LimitRange),
    kind!(
        "",
        "v1",
        "PersistentVolumeClaim",
        api::core::v1::PersistentVolumeClaim
    ),
    kind!(
        "",
        "v1",
        "PersistentVolume",
        api::core::v1::PersistentVolume
    ),
    kind!(
        "storage.k8s.io",
        "v1",
        "StorageClass",
        api::storage::v1::StorageClass
    ),
    kind!("autoscaling", "v1", "Scale", api::autoscaling::v1::Scale),
    kind!("meta.k8s.io", "v1", "DeleteOptions", meta::DeleteOptions),
    kind!("meta.k8s.io", "v1", "Status", meta::Status),
    kind!(
        "meta.k8s.io",
        "v1",
        "WatchEvent",
        meta::WatchEvent<api::core::v1::Pod>
    ),
    kind!("meta.k8s.io", "v1", "ListMeta", meta::ListMeta),
    kind!("meta.k8s.io", "v1", "Patch", meta::Patch),
];

/// The schema name of a kind, e.g. `io.k8s.api.core.v1.Pod`.
pub(super) fn kind_schema_name(group: &str, version: &str, kind: &str) -> Option<String> {
    KINDS
        .iter()
        .find(|k| k.group == group && k.version == version && k.kind == kind)
        .map(|k| (k.name)().into_owned())
}

/// Upstream's schema names of the meta kinds every group-version refers to.
pub(super) mod names {
    pub const DELETE_OPTIONS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions";
    pub const STATUS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";
    pub const WATCH_EVENT: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.WatchEvent";
    pub const PATCH: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";
}

/// Builds every schema, with GVK and patch-strategy extensions, keyed by
/// upstream name, with `#/components/schemas/` refs.
pub(super) fn all() -> Map<String, Value> {
    let mut generator = SchemaSettings::openapi3().into_generator();
    for k in KINDS {
        (k.add)(&mut generator);
    }
    let mut defs = generator.take_definitions(true);

    for k in KINDS.iter().filter(|k| k.group != "meta.k8s.io") {
        set_gvk(&mut defs, &(k.name)(), &[(k.group, k.version, k.kind)]);
    }
    for r in registry::RESOURCES {
        if let Some(item) = kind_schema_name(r.group, r.version, r.kind) {
            let list = format!("{item}List");
            defs.insert(list.clone(), list_schema(r, &item));
            set_gvk(
                &mut defs,
                &list,
                &[(r.group, r.version, &format!("{}List", r.kind))],
            );
        }
    }
    let mut gvs: Vec<(&str, &str)> = vec![("", "v1")];
    for (group, versions) in registry::groups() {
        gvs.extend(versions.into_iter().map(|v| (group, v)));
    }
    for (name, kind) in [
        (names::DELETE_OPTIONS, "DeleteOptions"),
        (names::WATCH_EVENT, "WatchEvent"),
    ] {
        let all: Vec<(&str, &str, &str)> = gvs.iter().map(|(g, v)| (*g, *v, kind)).collect();
        set_gvk(&mut defs, name, &all);
    }
    set_gvk(&mut defs, names::STATUS, &[("", "v1", "Status")]);

    for r in registry::RESOURCES {
        if let Some(name) = kind_schema_name(r.group, r.version, r.kind) {
            annotate_lists(&mut defs, r.kind, &name, &mut Vec::new(), &mut Vec::new());
        }
    }
    defs
}

fn set_gvk(defs: &mut Map<String, Value>, name: &str, gvks: &[(&str, &str, &str)]) {
    if let Some(Value::Object(schema)) = defs.get_mut(name) {
        let list: Vec<Value> = gvks
            .iter()
            .map(|(g, v, k)| json!({"group": g, "kind": k, "version": v}))
            .collect();
        schema.insert("x-kubernetes-group-version-kind".into(), Value::Array(list));
    }
}

fn list_schema(r: &Resource, item: &str) -> Value {
    json!({
        "description": format!("{}List is a list of {} objects.", r.kind, r.kind),
        "type": "object",
        "properties": {
            "apiVersion": {
                "description": "APIVersion defines the versioned schema of this representation of an object.",
                "type": "string",
            },
            "items": {
                "description": format!("List of {}.", r.plural),
                "type": "array",
                "items": {"$ref": format!("{REF_PREFIX}{item}")},
            },
            "kind": {
                "description": "Kind is a string value representing the REST resource this object represents.",
                "type": "string",
            },
            "metadata": {
                "description": "Standard list metadata.",
                "allOf": [{"$ref": format!("{REF_PREFIX}{LIST_META}")}],
            },
        },
        "required": ["items"],
    })
}

/// The schema name a property refers to, directly or through `allOf`.
pub(super) fn ref_target(schema: &Value) -> Option<&str> {
    schema["$ref"]
        .as_str()
        .or_else(|| schema["allOf"][0]["$ref"].as_str())
        .and_then(|r| r.strip_prefix(REF_PREFIX))
}

/// Walks `kind`'s schema from the root, asking `patch::list_strategy` about
/// every list field and recording its answer as the
/// `x-kubernetes-patch-strategy` / `x-kubernetes-patch-merge-key` extensions
/// kubectl uses to compute strategic merge patches. Shared definitions (a
/// `Container` is reached from pods and from every pod template) keep the
/// first non-default answer.
fn annotate_lists(
    defs: &mut Map<String, Value>,
    kind: &str,
    def: &str,
    path: &mut Vec<String>,
    stack: &mut Vec<String>,
) {
    if stack.iter().any(|d| d == def) {
        return;
    }
    let Some(props) = defs.get(def).and_then(|d| d["properties"].as_object()) else {
        return;
    };
    // (property, whether it is a list, the schema it or its items refer to)
    let props: Vec<(String, bool, Option<String>)> = props
        .iter()
        .map(|(name, schema)| {
            let is_list = schema["type"] == "array";
            let target = if is_list {
                ref_target(&schema["items"])
            } else {
                ref_target(schema)
            };
            (name.clone(), is_list, target.map(str::to_string))
        })
        .collect();
    stack.push(def.to_string());
    for (prop, is_list, target) in props {
        path.push(prop.clone());
        if is_list {
            let segments: Vec<&str> = path.iter().map(String::as_str).collect();
            let ext = match list_strategy(kind, &segments) {
                ListStrategy::MergeByKey(key) => Some(json!({
                    "x-kubernetes-patch-strategy": "merge",
                    "x-kubernetes-patch-merge-key": key,
                })),
                ListStrategy::MergePrimitives => {
                    Some(json!({"x-kubernetes-patch-strategy": "merge"}))
                }
                ListStrategy::Replace => None,
            };
            let property = defs
                .get_mut(def)
                .and_then(|d| d.get_mut("properties"))
                .and_then(|p| p.get_mut(&prop));
            if let (Some(Value::Object(ext)), Some(Value::Object(property))) = (ext, property) {
                if !property.contains_key("x-kubernetes-patch-strategy") {
                    property.extend(ext);
                }
            }
        }
        if let Some(target) = target {
            annotate_lists(defs, kind, &target, path, stack);
        }
        path.pop();
    }
    stack.pop();
}

/// Every schema reachable from `roots`, following `$ref`s.
pub(super) fn closure(defs: &Map<String, Value>, roots: BTreeSet<String>) -> Map<String, Value> {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut todo: Vec<String> = roots.into_iter().collect();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(schema) = defs.get(&name) {
            collect_refs(schema, &mut |r| todo.push(r.to_string()));
        }
    }
    seen.into_iter()
        .filter_map(|name| defs.get(&name).map(|s| (name, s.clone())))
        .collect()
}

/// Calls `f` with the schema name of every `$ref` inside `v`.
pub(super) fn collect_refs(v: &Value, f: &mut dyn FnMut(&str)) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        if let Some(name) = r.strip_prefix(REF_PREFIX) {
                            f(name);
                        }
                    }
                    _ => collect_refs(v, f),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, f)),
        _ => {}
    }
}
