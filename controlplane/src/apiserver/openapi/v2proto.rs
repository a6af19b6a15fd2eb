//! `/openapi/v2` as protobuf: the swagger 2.0 JSON document re-encoded as
//! gnostic's `openapi.v2.Document` (github.com/google/gnostic,
//! `openapiv2/OpenAPIv2.proto`; field numbers below are that file's). It is
//! what client-go's `OpenAPISchema()` asks for, and the only form it
//! accepts: kubectl validates the items of a `kind: List` manifest against
//! the definitions of this document (kube-openapi's `proto.NewOpenAPIData`),
//! finding each item's schema by its `x-kubernetes-group-version-kind`.
//!
//! Everything gnostic's message has a field for is encoded; keys swagger 2.0
//! does not define have no field and are left out. Vendor extensions
//! (`x-…`) become `NamedAny` values whose `yaml` holds the value as JSON, a
//! subset of YAML, which is how kube-openapi reads them.

use serde_json::{Map, Value};

/// One protobuf message being written.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            // The mask keeps seven bits, so the cast cannot truncate.
            self.0.push((v & 0x7f) as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }

    fn bytes(&mut self, field: u32, bytes: &[u8]) {
        self.key(field, 2);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    /// A string field; proto3 leaves empty strings out.
    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }

    /// Every string of a JSON string or array of strings, as a repeated field.
    fn strings(&mut self, field: u32, v: &Value) {
        match v {
            Value::String(s) => self.bytes(field, s.as_bytes()),
            Value::Array(a) => {
                for s in a.iter().filter_map(Value::as_str) {
                    self.bytes(field, s.as_bytes());
                }
            }
            _ => {}
        }
    }

    /// A nested message, written even when empty (an empty schema `{}` is
    /// still a schema).
    fn message(&mut self, field: u32, m: Msg) {
        self.bytes(field, &m.0);
    }

    fn bool(&mut self, field: u32, v: &Value) {
        if let Some(b) = v.as_bool() {
            self.key(field, 0);
            self.varint(u64::from(b));
        }
    }

    fn double(&mut self, field: u32, v: &Value) {
        if let Some(f) = v.as_f64() {
            self.key(field, 1);
            self.0.extend_from_slice(&f.to_le_bytes());
        }
    }

    fn int64(&mut self, field: u32, v: &Value) {
        if let Some(i) = v.as_i64() {
            self.key(field, 0);
            // Two's complement, as protobuf encodes a negative int64.
            self.varint(i as u64);
        }
    }

    /// Each `x-…` key of `object` as a `NamedAny` in `field`.
    fn vendor_extensions(&mut self, field: u32, object: &Map<String, Value>) {
        for (name, value) in object.iter().filter(|(k, _)| k.starts_with("x-")) {
            let mut named = Msg::default();
            named.string(1, name);
            named.message(2, any(value));
            self.message(field, named);
        }
    }
}

/// A JSON object's fields, read leniently: a missing or mistyped field is
/// left out of the message, as proto3 leaves out a default value.
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    /// None unless `v` is an object.
    fn of(v: &'a Value) -> Option<Self> {
        v.as_object().map(Fields)
    }

    fn get(&self, key: &str) -> &'a Value {
        self.0.get(key).unwrap_or(&Value::Null)
    }

    fn str(&self, key: &str) -> &'a str {
        self.get(key).as_str().unwrap_or_default()
    }
}

/// `Any {value = 1, yaml = 2}`: the value as JSON in `yaml`.
fn any(v: &Value) -> Msg {
    let mut m = Msg::default();
    m.string(2, &v.to_string());
    m
}

/// The whole document.
pub(super) fn document(doc: &Value) -> Vec<u8> {
    let mut m = Msg::default();
    m.string(1, doc["swagger"].as_str().unwrap_or("2.0"));
    let mut info = Msg::default();
    info.string(1, doc["info"]["title"].as_str().unwrap_or_default());
    info.string(2, doc["info"]["version"].as_str().unwrap_or_default());
    m.message(2, info);
    if let Some(paths) = doc["paths"].as_object() {
        let mut p = Msg::default();
        for (path, item) in paths {
            let mut named = Msg::default();
            named.string(1, path);
            named.message(2, path_item(item));
            p.message(2, named);
        }
        m.message(8, p);
    }
    if let Some(defs) = doc["definitions"].as_object() {
        let mut d = Msg::default();
        for (name, s) in defs {
            d.message(1, named_schema(name, s));
        }
        m.message(9, d);
    }
    for requirement in doc["security"].as_array().into_iter().flatten() {
        m.message(12, security_requirement(requirement));
    }
    if let Some(defs) = doc["securityDefinitions"].as_object() {
        let mut d = Msg::default();
        for (name, def) in defs {
            let mut named = Msg::default();
            named.string(1, name);
            named.message(2, security_definition(def));
            d.message(1, named);
        }
        m.message(13, d);
    }
    m.0
}

fn named_schema(name: &str, s: &Value) -> Msg {
    let mut named = Msg::default();
    named.string(1, name);
    named.message(2, schema(s));
    named
}

/// `Schema`.
fn schema(s: &Value) -> Msg {
    let mut m = Msg::default();
    let Some(f) = Fields::of(s) else {
        return m;
    };
    let o = f.0;
    m.string(1, f.str("$ref"));
    m.string(2, f.str("format"));
    m.string(3, f.str("title"));
    m.string(4, f.str("description"));
    if let Some(d) = o.get("default") {
        m.message(5, any(d));
    }
    m.double(6, f.get("multipleOf"));
    m.double(7, f.get("maximum"));
    m.bool(8, f.get("exclusiveMaximum"));
    m.double(9, f.get("minimum"));
    m.bool(10, f.get("exclusiveMinimum"));
    m.int64(11, f.get("maxLength"));
    m.int64(12, f.get("minLength"));
    m.string(13, f.str("pattern"));
    m.int64(14, f.get("maxItems"));
    m.int64(15, f.get("minItems"));
    m.bool(16, f.get("uniqueItems"));
    m.int64(17, f.get("maxProperties"));
    m.int64(18, f.get("minProperties"));
    m.strings(19, f.get("required"));
    for e in f.get("enum").as_array().into_iter().flatten() {
        m.message(20, any(e));
    }
    match o.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut a = Msg::default();
            a.bool(2, &Value::Bool(*b));
            m.message(21, a);
        }
        Some(s @ Value::Object(_)) => {
            let mut a = Msg::default();
            a.message(1, schema(s));
            m.message(21, a);
        }
        _ => {}
    }
    if let Some(t) = o.get("type") {
        let mut types = Msg::default();
        types.strings(1, t);
        m.message(22, types);
    }
    if let Some(items) = o.get("items") {
        let mut list = Msg::default();
        match items {
            Value::Array(a) => a.iter().for_each(|s| list.message(1, schema(s))),
            s => list.message(1, schema(s)),
        }
        m.message(23, list);
    }
    for s in f.get("allOf").as_array().into_iter().flatten() {
        m.message(24, schema(s));
    }
    if let Some(props) = o.get("properties").and_then(Value::as_object) {
        let mut p = Msg::default();
        for (name, s) in props {
            p.message(1, named_schema(name, s));
        }
        m.message(25, p);
    }
    m.string(26, f.str("discriminator"));
    m.bool(27, f.get("readOnly"));
    if let Some(e) = o.get("example") {
        m.message(30, any(e));
    }
    m.vendor_extensions(31, o);
    m
}

/// `PathItem`: operations by method, shared parameters, extensions.
fn path_item(item: &Value) -> Msg {
    let mut m = Msg::default();
    let Some(o) = item.as_object() else {
        return m;
    };
    let methods = [
        ("get", 2),
        ("put", 3),
        ("post", 4),
        ("delete", 5),
        ("options", 6),
        ("head", 7),
        ("patch", 8),
    ];
    for (method, field) in methods {
        if let Some(op) = o.get(method) {
            m.message(field, operation(op));
        }
    }
    for p in o
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(9, parameters_item(p));
    }
    m.vendor_extensions(10, o);
    m
}

/// `Operation`.
fn operation(op: &Value) -> Msg {
    let mut m = Msg::default();
    let Some(f) = Fields::of(op) else {
        return m;
    };
    let o = f.0;
    m.strings(1, f.get("tags"));
    m.string(2, f.str("summary"));
    m.string(3, f.str("description"));
    m.string(5, f.str("operationId"));
    m.strings(6, f.get("produces"));
    m.strings(7, f.get("consumes"));
    for p in f.get("parameters").as_array().into_iter().flatten() {
        m.message(8, parameters_item(p));
    }
    if let Some(responses) = f.get("responses").as_object() {
        let mut r = Msg::default();
        for (code, response) in responses {
            let mut body = Msg::default();
            body.string(1, response["description"].as_str().unwrap_or_default());
            if response.get("schema").is_some() {
                let mut item = Msg::default();
                item.message(1, schema(&response["schema"]));
                body.message(2, item);
            }
            let mut value = Msg::default();
            value.message(1, body);
            let mut named = Msg::default();
            named.string(1, code);
            named.message(2, value);
            r.message(1, named);
        }
        m.message(9, r);
    }
    m.strings(10, f.get("schemes"));
    m.bool(11, f.get("deprecated"));
    m.vendor_extensions(13, o);
    m
}

/// `ParametersItem {parameter = 1 | json_reference = 2}`, with `Parameter
/// {body_parameter = 1 | non_body_parameter = 2}`.
fn parameters_item(p: &Value) -> Msg {
    let mut item = Msg::default();
    let Some(f) = Fields::of(p) else {
        return item;
    };
    let o = f.0;
    if let Some(r) = o.get("$ref").and_then(Value::as_str) {
        let mut reference = Msg::default();
        reference.string(1, r);
        reference.string(2, f.str("description"));
        item.message(2, reference);
        return item;
    }
    let mut parameter = Msg::default();
    if f.str("in") == "body" {
        let mut body = Msg::default();
        body.string(1, f.str("description"));
        body.string(2, f.str("name"));
        body.string(3, "body");
        body.bool(4, f.get("required"));
        body.message(5, schema(f.get("schema")));
        body.vendor_extensions(6, o);
        parameter.message(1, body);
    } else {
        // The sub-schemas share their first fields; `query` and `formData`
        // have `allow_empty_value` at 5, which shifts the rest by one.
        let (variant, shift) = match f.str("in") {
            "header" => (1, 0),
            "formData" => (2, 1),
            "query" => (3, 1),
            _ => (4, 0),
        };
        let mut sub = Msg::default();
        sub.bool(1, f.get("required"));
        sub.string(2, f.str("in"));
        sub.string(3, f.str("description"));
        sub.string(4, f.str("name"));
        if shift == 1 {
            sub.bool(5, f.get("allowEmptyValue"));
        }
        sub.string(5 + shift, f.str("type"));
        sub.string(6 + shift, f.str("format"));
        if let Some(d) = o.get("default") {
            sub.message(9 + shift, any(d));
        }
        sub.bool(19 + shift, f.get("uniqueItems"));
        for e in f.get("enum").as_array().into_iter().flatten() {
            sub.message(20 + shift, any(e));
        }
        sub.vendor_extensions(22 + shift, o);
        let mut non_body = Msg::default();
        non_body.message(variant, sub);
        parameter.message(2, non_body);
    }
    item.message(1, parameter);
    item
}

/// `SecurityRequirement {repeated NamedStringArray additional_properties = 1}`.
fn security_requirement(requirement: &Value) -> Msg {
    let mut m = Msg::default();
    for (name, scopes) in requirement.as_object().into_iter().flatten() {
        let mut array = Msg::default();
        array.strings(1, scopes);
        let mut named = Msg::default();
        named.string(1, name);
        named.message(2, array);
        m.message(1, named);
    }
    m
}

/// `SecurityDefinitionsItem`; the document only has API-key (bearer token)
/// schemes, `api_key_security = 2`; others are basic authentication (1).
fn security_definition(def: &Value) -> Msg {
    let mut m = Msg::default();
    let str_of = |k: &str| def[k].as_str().unwrap_or_default();
    let mut scheme = Msg::default();
    scheme.string(1, str_of("type"));
    if str_of("type") == "apiKey" {
        scheme.string(2, str_of("name"));
        scheme.string(3, str_of("in"));
        scheme.string(4, str_of("description"));
        m.message(2, scheme);
    } else {
        scheme.string(2, str_of("description"));
        m.message(1, scheme);
    }
    m
}

#[cfg(test)]
mod tests;
