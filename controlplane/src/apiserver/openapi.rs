//! OpenAPI documents of the served API: v3 (`/openapi/v3` index and one
//! document per group-version) and v2 (`/openapi/v2`, swagger 2.0 JSON).
//!
//! Schemas come from the k8s-openapi types through schemars, named as
//! upstream names them (`io.k8s.api.core.v1.Pod`), carrying the extensions
//! kubectl relies on: `x-kubernetes-group-version-kind` to find a kind's
//! schema, `x-kubernetes-patch-strategy` / `-merge-key` (from
//! [`patch::list_strategy`](super::patch::list_strategy)) to compute
//! strategic merge patches for `kubectl apply`, and a `fieldValidation`
//! parameter on every write so kubectl leaves field validation to us.
//! Documents are built once, on first use, and cached with their bytes.
//! Serving them (routes, caching headers, content negotiation) is the HTTP
//! layer's job.

mod paths;
mod schemas;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use super::registry::{self, Resource};
use schemas::REF_PREFIX;

/// A built document and its serialized form.
struct Doc {
    value: Value,
    json: Vec<u8>,
    hash: String,
}

/// Group-version paths (`api/v1`, `apis/apps/v1`) → v3 documents.
fn v3_docs() -> &'static BTreeMap<String, Doc> {
    static DOCS: OnceLock<BTreeMap<String, Doc>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let defs = all_schemas();
        let mut by_gv: BTreeMap<String, Vec<&Resource>> = BTreeMap::new();
        for r in registry::RESOURCES {
            by_gv
                .entry(gv_path(r.group, r.version))
                .or_default()
                .push(r);
        }
        by_gv
            .into_iter()
            .map(|(gv, resources)| {
                let value = v3_document(defs, &resources);
                (gv, doc(value))
            })
            .collect()
    })
}

fn all_schemas() -> &'static Map<String, Value> {
    static SCHEMAS: OnceLock<Map<String, Value>> = OnceLock::new();
    SCHEMAS.get_or_init(schemas::all)
}

fn doc(value: Value) -> Doc {
    let json = serde_json::to_vec(&value).unwrap_or_default();
    let hash = content_hash(&json);
    Doc { value, json, hash }
}

/// `api/v1` or `apis/<group>/<version>`, as the v3 index names them.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// FNV-1a over the document, twice with different bases, as 32 hex digits:
/// stable for equal content, different when the content changes.
fn content_hash(bytes: &[u8]) -> String {
    let fnv = |basis: u64| {
        bytes.iter().fold(basis, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    format!(
        "{:016X}{:016X}",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x6c62_272e_07bb_0142)
    )
}

fn info() -> Value {
    json!({"title": "Kubernetes", "version": super::discovery::version_info()["gitVersion"]})
}

fn v3_document(defs: &Map<String, Value>, resources: &[&Resource]) -> Value {
    let mut paths = Map::new();
    for r in resources {
        paths::add_resource(&mut paths, r);
    }
    let paths = Value::Object(paths);
    let mut roots = BTreeSet::new();
    schemas::collect_refs(&paths, &mut |name| {
        roots.insert(name.to_string());
    });
    json!({
        "openapi": "3.0.0",
        "info": info(),
        "paths": paths,
        "components": {
            "schemas": schemas::closure(defs, roots),
            "securitySchemes": {
                "BearerToken": {
                    "type": "apiKey",
                    "description": "Bearer Token authentication",
                    "name": "authorization",
                    "in": "header",
                },
            },
        },
        "security": [{"BearerToken": []}],
    })
}

/// `/openapi/v3`: each group-version's document URL with its content hash.
pub fn v3_index() -> Value {
    let paths: Map<String, Value> = v3_docs()
        .iter()
        .map(|(gv, doc)| {
            let url = format!("/openapi/v3/{gv}?hash={}", doc.hash);
            (gv.clone(), json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
}

/// Normalizes `/openapi/v3/apis/apps/v1?hash=…`, `apis/apps/v1` and the like.
fn v3_key(path: &str) -> &str {
    let path = path.split('?').next().unwrap_or_default();
    let path = path.trim_start_matches('/');
    let path = path.strip_prefix("openapi/v3/").unwrap_or(path);
    path.trim_end_matches('/')
}

/// The v3 document of one group-version (`/openapi/v3/api/v1`, or just
/// `apis/apps/v1`), or None for a group-version we do not serve.
pub fn v3_group_version(path: &str) -> Option<Value> {
    v3_docs().get(v3_key(path)).map(|d| d.value.clone())
}

/// The serialized JSON of [`v3_group_version`], without re-encoding the
/// (large) document on every request.
pub fn v3_group_version_json(path: &str) -> Option<&'static [u8]> {
    v3_docs().get(v3_key(path)).map(|d| d.json.as_slice())
}

/// The content hash the index advertises for a group-version document.
pub fn v3_group_version_hash(path: &str) -> Option<&'static str> {
    v3_docs().get(v3_key(path)).map(|d| d.hash.as_str())
}

fn v2_doc() -> &'static Doc {
    static V2: OnceLock<Doc> = OnceLock::new();
    V2.get_or_init(|| {
        let mut paths = Map::new();
        for r in registry::RESOURCES {
            paths::add_resource(&mut paths, r);
        }
        let paths: Map<String, Value> = paths
            .into_iter()
            .map(|(p, item)| (p, swagger_path_item(item)))
            .collect();
        let definitions: Map<String, Value> = all_schemas()
            .iter()
            .map(|(name, schema)| (name.clone(), schema.clone()))
            .collect();
        let mut value = json!({
            "swagger": "2.0",
            "info": info(),
            "paths": paths,
            "definitions": definitions,
            "securityDefinitions": {
                "BearerToken": {
                    "type": "apiKey",
                    "description": "Bearer Token authentication",
                    "name": "authorization",
                    "in": "header",
                },
            },
            "security": [{"BearerToken": []}],
        });
        to_swagger_schemas(&mut value);
        doc(value)
    })
}

/// `/openapi/v2`: the swagger 2.0 document of every served resource.
pub fn v2() -> Value {
    v2_doc().value.clone()
}

/// The serialized JSON of [`v2`].
pub fn v2_json() -> &'static [u8] {
    &v2_doc().json
}

/// Rewrites a v3 path item into swagger 2.0: body parameters instead of
/// `requestBody`, `consumes`/`produces` instead of `content`.
fn swagger_path_item(item: Value) -> Value {
    let Value::Object(item) = item else {
        return item;
    };
    item.into_iter()
        .map(|(key, value)| {
            let value = if key == "parameters" {
                swagger_params(value)
            } else {
                swagger_operation(value)
            };
            (key, value)
        })
        .collect::<Map<_, _>>()
        .into()
}

fn swagger_params(params: Value) -> Value {
    let Value::Array(params) = params else {
        return params;
    };
    params
        .into_iter()
        .map(|mut p| {
            if let Some(Value::Object(schema)) = p.as_object_mut().and_then(|o| o.remove("schema"))
            {
                if let Some(p) = p.as_object_mut() {
                    p.extend(schema);
                }
            }
            p
        })
        .collect::<Vec<_>>()
        .into()
}

fn swagger_operation(op: Value) -> Value {
    let Value::Object(mut op) = op else {
        return op;
    };
    let params = op.remove("parameters").unwrap_or_else(|| json!([]));
    let mut params_v2: Vec<Value> = match swagger_params(params) {
        Value::Array(p) => p,
        _ => Vec::new(),
    };
    if let Some(body) = op.remove("requestBody") {
        let content = body["content"].as_object().cloned().unwrap_or_default();
        let schema = content.values().next().map(|c| c["schema"].clone());
        params_v2.insert(
            0,
            json!({"name": "body", "in": "body", "required": true, "schema": schema.unwrap_or(json!({}))}),
        );
        op.insert(
            "consumes".into(),
            content.keys().cloned().collect::<Vec<_>>().into(),
        );
    }
    if !params_v2.is_empty() {
        op.insert("parameters".into(), params_v2.into());
    }
    let mut produces: Vec<String> = Vec::new();
    if let Some(Value::Object(responses)) = op.get_mut("responses") {
        for response in responses.values_mut() {
            let Some(Value::Object(content)) =
                response.as_object_mut().and_then(|r| r.remove("content"))
            else {
                continue;
            };
            for ty in content.keys() {
                if !produces.contains(ty) {
                    produces.push(ty.clone());
                }
            }
            if let Some(schema) = content.values().next().map(|c| c["schema"].clone()) {
                response["schema"] = schema;
            }
        }
    }
    op.insert("produces".into(), produces.into());
    op.insert("schemes".into(), json!(["https"]));
    Value::Object(op)
}

/// Points refs at `#/definitions/` and drops the OpenAPI 3 `nullable`.
fn to_swagger_schemas(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if matches!(m.get("nullable"), Some(Value::Bool(_))) {
                m.remove("nullable");
            }
            for (k, v) in m.iter_mut() {
                match (k.as_str(), &mut *v) {
                    ("$ref", Value::String(r)) => {
                        if let Some(name) = r.strip_prefix(REF_PREFIX) {
                            *r = format!("#/definitions/{name}");
                        }
                    }
                    _ => to_swagger_schemas(v),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(to_swagger_schemas),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
