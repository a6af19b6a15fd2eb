//! The protobuf document decoded field by field with the request decoder's
//! wire reader, and checked against what kube-openapi's
//! `proto.NewOpenAPIData` needs to parse it: every definition reachable,
//! references to known definitions only and without a type of their own,
//! arrays with exactly one item schema, a single known type per schema.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::super::v2_value;
use super::document;
use crate::apiserver::protobuf::wire::{Reader, WireType};

/// A message's fields in order: (number, payload); varints and fixed64s as
/// their eight little-endian bytes.
fn fields(bytes: &[u8]) -> Vec<(u32, Vec<u8>)> {
    let mut r = Reader::new(bytes);
    let mut out = Vec::new();
    while !r.is_empty() {
        let (number, wire) = r.key().expect("key");
        let payload = match wire {
            WireType::Len => r.len_delimited().expect("payload").to_vec(),
            WireType::Varint => r.varint().expect("varint").to_le_bytes().to_vec(),
            WireType::Fixed64 => r.fixed64().expect("fixed64").to_le_bytes().to_vec(),
            WireType::Fixed32 => panic!("no fixed32 field in the document"),
        };
        out.push((number, payload));
    }
    out
}

fn all(msg: &[u8], number: u32) -> Vec<Vec<u8>> {
    fields(msg)
        .into_iter()
        .filter(|(n, _)| *n == number)
        .map(|(_, p)| p)
        .collect()
}

fn one(msg: &[u8], number: u32) -> Option<Vec<u8>> {
    let mut found = all(msg, number);
    assert!(found.len() <= 1, "field {number} repeated");
    found.pop()
}

fn string(msg: &[u8], number: u32) -> String {
    one(msg, number)
        .map(|b| String::from_utf8(b).expect("UTF-8"))
        .unwrap_or_default()
}

fn strings(msg: &[u8], number: u32) -> Vec<String> {
    all(msg, number)
        .into_iter()
        .map(|b| String::from_utf8(b).expect("UTF-8"))
        .collect()
}

/// A `repeated Named… = 1` map message as name → value bytes.
fn named(msg: &[u8], number: u32) -> BTreeMap<String, Vec<u8>> {
    all(msg, number)
        .iter()
        .map(|entry| (string(entry, 1), one(entry, 2).unwrap_or_default()))
        .collect()
}

/// A message's vendor extensions (field `number`), their YAML read as JSON.
fn extensions(msg: &[u8], number: u32) -> BTreeMap<String, Value> {
    named(msg, number)
        .into_iter()
        .map(|(name, any)| {
            let yaml = string(&any, 2);
            let value = serde_json::from_str(&yaml).expect("extension value is JSON");
            (name, value)
        })
        .collect()
}

fn definitions() -> BTreeMap<String, Vec<u8>> {
    let doc = document(&v2_value());
    named(&one(&doc, 9).expect("definitions"), 1)
}

#[test]
fn document_header_and_kinds() {
    let doc = document(&v2_value());
    assert_eq!(string(&doc, 1), "2.0");
    let info = one(&doc, 2).expect("info");
    assert_eq!(string(&info, 1), "Kubernetes");
    let defs = definitions();
    let deployment = &defs["io.k8s.api.apps.v1.Deployment"];
    assert_eq!(
        extensions(deployment, 31)["x-kubernetes-group-version-kind"],
        json!([{"group": "apps", "kind": "Deployment", "version": "v1"}])
    );
    assert_eq!(strings(&one(deployment, 22).expect("type"), 1), ["object"]);
    let props = named(&one(deployment, 25).expect("properties"), 1);
    assert_eq!(
        props.keys().collect::<Vec<_>>(),
        ["apiVersion", "kind", "metadata", "spec", "status"]
    );
    // A described reference is a plain `$ref` in swagger 2.0, as upstream
    // has it: kube-openapi treats an `allOf` as a schema it cannot check.
    assert_eq!(
        string(&props["spec"], 1),
        "#/definitions/io.k8s.api.apps.v1.DeploymentSpec"
    );
    assert!(all(&props["spec"], 24).is_empty(), "spec is not an allOf");
    let container = &defs["io.k8s.api.core.v1.Container"];
    assert_eq!(strings(container, 19), ["name"]);
    let ports = &named(&one(container, 25).expect("properties"), 1)["ports"];
    let ext = extensions(ports, 31);
    assert_eq!(ext["x-kubernetes-patch-merge-key"], "containerPort");
    assert_eq!(ext["x-kubernetes-patch-strategy"], "merge");
}

/// Walks one schema as kube-openapi's `Definitions.ParseSchema` does,
/// returning what it would reject.
fn parse_errors(
    defs: &BTreeMap<String, Vec<u8>>,
    path: &str,
    schema: &[u8],
    errors: &mut Vec<String>,
) {
    let types = one(schema, 22).map(|t| strings(&t, 1)).unwrap_or_default();
    let reference = string(schema, 1);
    if !reference.is_empty() {
        let target = reference
            .strip_prefix("#/definitions/")
            .unwrap_or(&reference);
        if !defs.contains_key(target) {
            errors.push(format!("{path}: unknown model in reference {reference:?}"));
        }
        if !types.is_empty() || one(schema, 25).is_some() {
            errors.push(format!("{path}: a reference with a type or properties"));
        }
        return;
    }
    let items = one(schema, 23).map(|i| all(&i, 1));
    let props = one(schema, 25).map(|p| named(&p, 1));
    match types.as_slice() {
        [] | [_] if types.first().is_none_or(|t| t == "object") => {
            if let Some(props) = props {
                for (name, s) in props {
                    parse_errors(defs, &format!("{path}.{name}"), &s, errors);
                }
            } else if let Some(additional) = one(schema, 21).and_then(|a| one(&a, 1)) {
                parse_errors(defs, &format!("{path}[*]"), &additional, errors);
            } else if types.is_empty() {
                if let Some(items) = items {
                    if items.len() != 1 {
                        errors.push(format!("{path}: {} item schemas", items.len()));
                    }
                }
            }
        }
        [t] if t == "array" => match items.as_deref() {
            Some([item]) => parse_errors(defs, &format!("{path}[]"), item, errors),
            other => errors.push(format!(
                "{path}: an array with {} item schemas",
                other.map_or(0, <[_]>::len)
            )),
        },
        [t] if ["string", "integer", "number", "boolean"].contains(&t.as_str()) => {}
        other => errors.push(format!("{path}: type {other:?}")),
    }
}

#[test]
fn kube_openapi_can_parse_every_definition() {
    let defs = definitions();
    assert!(defs.len() > 200, "{} definitions", defs.len());
    let mut errors = Vec::new();
    for (name, schema) in &defs {
        parse_errors(&defs, name, schema, &mut errors);
    }
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn paths_carry_operations_and_parameters() {
    let doc = document(&v2_value());
    let paths = named(&one(&doc, 8).expect("paths"), 2);
    let item = &paths["/apis/apps/v1/namespaces/{namespace}/deployments"];
    // post = 4: body parameter first, the fieldValidation query parameter.
    let post = one(item, 4).expect("post");
    let params: Vec<Vec<u8>> = all(&post, 8)
        .iter()
        .map(|p| one(p, 1).expect("a parameter, not a reference"))
        .collect();
    let body = one(&params[0], 1).expect("body parameter");
    assert_eq!(string(&body, 2), "body");
    assert_eq!(
        string(&one(&body, 5).expect("schema"), 1),
        "#/definitions/io.k8s.api.apps.v1.Deployment"
    );
    let query: BTreeMap<String, Vec<u8>> = params[1..]
        .iter()
        .filter_map(|p| one(p, 2).and_then(|nb| one(&nb, 3)))
        .map(|q| (string(&q, 4), q))
        .collect();
    let validation = &query["fieldValidation"];
    assert_eq!(string(validation, 2), "query");
    assert_eq!(string(validation, 6), "string");
    let ext = extensions(&post, 13);
    assert_eq!(
        ext["x-kubernetes-group-version-kind"],
        json!({"group": "apps", "kind": "Deployment", "version": "v1"})
    );
    let responses = named(&one(&post, 9).expect("responses"), 1);
    assert!(responses.contains_key("201"), "{:?}", responses.keys());
    // The path-level namespace parameter is a path parameter (variant 4).
    let shared: Vec<Vec<u8>> = all(item, 9);
    let names: Vec<String> = shared
        .iter()
        .filter_map(|p| {
            one(p, 1)
                .and_then(|p| one(&p, 2))
                .and_then(|nb| one(&nb, 4))
        })
        .map(|path| string(&path, 4))
        .collect();
    assert!(names.contains(&"namespace".to_string()), "{names:?}");
}
