//! OpenAPI documents of the served API: v3 (`/openapi/v3` index and one
//! document per group-version) and v2 (`/openapi/v2`, swagger 2.0, as JSON
//! or as gnostic protobuf).
//!
//! Schemas come from the k8s-openapi types through schemars, named as
//! upstream names them (`io.k8s.api.core.v1.Pod`), carrying the extensions
//! kubectl relies on: `x-kubernetes-group-version-kind` to find a kind's
//! schema, `x-kubernetes-patch-strategy` / `-merge-key` (from
//! [`patch::list_strategy`](super::patch::list_strategy)) to compute
//! strategic merge patches for `kubectl apply`, and a `fieldValidation`
//! parameter on every write so kubectl leaves field validation to us.
//! Documents are built once, on first use, and kept gzip-compressed (the
//! JSON of all of them is ~5 MiB, compressed ~10 times less); clients that
//! accept gzip (kubectl does) get those bytes as they are ([`response`]).
//! Routing them is the HTTP layer's job.

mod paths;
mod schemas;
mod v2proto;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::OnceLock;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::{json, Map, Value};

use super::registry::{self, Resource};
use schemas::REF_PREFIX;

/// A built document, serialized and gzip-compressed. The `Value` tree it
/// was built from is not kept: it takes several times the memory of its
/// JSON (~20 MiB for all documents).
struct Doc {
    gzip: Vec<u8>,
    hash: String,
}

/// Group-version paths (`api/v1`, `apis/apps/v1`) → v3 documents.
fn v3_docs() -> &'static BTreeMap<String, Doc> {
    static DOCS: OnceLock<BTreeMap<String, Doc>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let defs = schemas::all();
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
                let value = v3_document(&defs, &resources);
                (gv, doc(value))
            })
            .collect()
    })
}

fn doc(value: Value) -> Doc {
    let json = serde_json::to_vec(&value).unwrap_or_default();
    let hash = content_hash(&json);
    Doc {
        gzip: gzip(&json),
        hash,
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    // Writing to a Vec cannot fail.
    encoder
        .write_all(bytes)
        .and_then(|()| encoder.finish())
        .unwrap_or_default()
}

/// The JSON inside a document's gzip bytes.
fn gunzip(gzip: &[u8]) -> Vec<u8> {
    let mut json = Vec::with_capacity(gzip.len() * 12);
    // The bytes were compressed by `doc` in this process.
    let _ = GzDecoder::new(gzip).read_to_end(&mut json);
    json
}

/// The response for a document's gzip bytes: as they are (with
/// `Content-Encoding: gzip`) when the request's `Accept-Encoding` allows
/// gzip, else decompressed.
pub fn response(gzip: &'static [u8], request: &HeaderMap) -> Response {
    response_as(gzip, "application/json", request)
}

/// [`response`] for a document of another content type.
fn response_as(gzip: &'static [u8], content_type: &'static str, request: &HeaderMap) -> Response {
    let json = [(header::CONTENT_TYPE, content_type)];
    if accepts_gzip(request) {
        let gzipped = [
            (header::CONTENT_ENCODING, "gzip"),
            (header::VARY, "Accept-Encoding"),
        ];
        (StatusCode::OK, json, gzipped, gzip).into_response()
    } else {
        (StatusCode::OK, json, gunzip(gzip)).into_response()
    }
}

/// True if `Accept-Encoding` lists `gzip` (or `*`) without `q=0`.
fn accepts_gzip(request: &HeaderMap) -> bool {
    request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
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

/// The one security scheme, as v3 `securitySchemes` and v2
/// `securityDefinitions` both name it.
fn bearer_token() -> Value {
    json!({
        "BearerToken": {
            "type": "apiKey",
            "description": "Bearer Token authentication",
            "name": "authorization",
            "in": "header",
        },
    })
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
            "securitySchemes": bearer_token(),
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
/// `apis/apps/v1`), as kept: gzip-compressed JSON (see [`response`]); None
/// for a group-version we do not serve.
pub fn v3_group_version_gzip(path: &str) -> Option<&'static [u8]> {
    v3_docs().get(v3_key(path)).map(|d| d.gzip.as_slice())
}

/// The content hash the index advertises for a group-version document.
pub fn v3_group_version_hash(path: &str) -> Option<&'static str> {
    v3_docs().get(v3_key(path)).map(|d| d.hash.as_str())
}

/// The swagger 2.0 document of every served resource.
fn v2_value() -> Value {
    let mut paths = Map::new();
    for r in registry::RESOURCES {
        paths::add_resource(&mut paths, r);
    }
    let paths: Map<String, Value> = paths
        .into_iter()
        .map(|(p, item)| (p, swagger_path_item(item)))
        .collect();
    let definitions = schemas::all();
    let mut value = json!({
        "swagger": "2.0",
        "info": info(),
        "paths": paths,
        "definitions": definitions,
        "securityDefinitions": bearer_token(),
        "security": [{"BearerToken": []}],
    });
    to_swagger_schemas(&mut value);
    value
}

/// `/openapi/v2`: the swagger 2.0 document as JSON, gzip-compressed (see
/// [`response`]).
pub fn v2_gzip() -> &'static [u8] {
    static V2: OnceLock<Doc> = OnceLock::new();
    &V2.get_or_init(|| doc(v2_value())).gzip
}

/// `/openapi/v2` as gnostic protobuf ([`v2proto`]), gzip-compressed. Built
/// on the first request for it, not at start: only some clients ask.
pub fn v2_protobuf_gzip() -> &'static [u8] {
    static V2: OnceLock<Vec<u8>> = OnceLock::new();
    V2.get_or_init(|| gzip(&v2proto::document(&v2_value())))
}

/// The forms `/openapi/v2` is served in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V2Form {
    /// `application/json`.
    Json,
    /// `application/com.github.proto-openapi.spec.v2@v1.0+protobuf`.
    Protobuf,
}

/// The protobuf media types upstream serves v2 for: the one client-go asks
/// for, which kube-openapi calls deprecated (`@` is not a MIME token
/// character), and the dotted one it answers with.
const V2_PROTOBUF_TYPES: [&str; 2] = [
    "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
];

/// The content type of a protobuf answer, as upstream sends it.
const V2_PROTOBUF_CONTENT_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// Which form of `/openapi/v2` an `Accept` header asks for: its media
/// ranges by quality (ties in the order given), the first one served wins;
/// no header means any. None when nothing acceptable is served (406).
pub fn v2_negotiate(accept: Option<&str>) -> Option<V2Form> {
    let accept = accept.unwrap_or("*/*");
    let mut ranges: Vec<(f32, &str)> = accept
        .split(',')
        .filter_map(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().filter(|m| !m.is_empty())?;
            let q = parts
                .find_map(|p| p.strip_prefix("q="))
                .map_or(Some(1.0), |q| q.parse::<f32>().ok())?;
            (q > 0.0).then_some((q, media))
        })
        .collect();
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
    ranges.into_iter().find_map(|(_, media)| {
        let media = media.to_ascii_lowercase();
        match media.as_str() {
            "application/json" | "application/*" | "*/*" => Some(V2Form::Json),
            m if V2_PROTOBUF_TYPES.contains(&m) => Some(V2Form::Protobuf),
            _ => None,
        }
    })
}

/// The `/openapi/v2` response in `form` (gzip-encoded as [`response`] does).
pub fn v2_response(form: V2Form, request: &HeaderMap) -> Response {
    match form {
        V2Form::Json => response(v2_gzip(), request),
        V2Form::Protobuf => response_as(v2_protobuf_gzip(), V2_PROTOBUF_CONTENT_TYPE, request),
    }
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

/// Points refs at `#/definitions/`, drops the OpenAPI 3 `nullable`, and
/// turns a described reference (`{"description", "allOf": [{"$ref"}]}`,
/// how OpenAPI 3 gives a `$ref` a description) into a plain `$ref` with a
/// sibling description, as upstream's swagger has it: kube-openapi's v2
/// parser, which kubectl validates `kind: List` items with, cannot look
/// through an `allOf` and would check nothing below it.
fn to_swagger_schemas(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if matches!(m.get("nullable"), Some(Value::Bool(_))) {
                m.remove("nullable");
            }
            let single_ref = match m.get("allOf") {
                Some(Value::Array(all)) if all.len() == 1 => all[0]
                    .as_object()
                    .filter(|r| r.len() == 1)
                    .and_then(|r| r.get("$ref"))
                    .cloned(),
                _ => None,
            };
            if let Some(reference) = single_ref {
                m.remove("allOf");
                m.insert("$ref".into(), reference);
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
