//! The message table the decoder walks: for every Kubernetes protobuf message
//! its fields (tag → JSON name, label, type), and the top-level kinds by
//! apiVersion. The table is `schema.txt`, generated from k8s-pb and
//! k8s-openapi by scripts/gen-protobuf-schema.py, embedded in the binary and
//! parsed once on first use.

use std::collections::HashMap;
use std::sync::OnceLock;

/// How often a field occurs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// At most once (proto2 `optional`).
    Optional,
    /// Any number of times (a JSON array).
    Repeated,
    /// `map<string, T>`: repeated entry messages with key = 1, value = 2.
    Map,
}

/// A field's value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// UTF-8 string.
    String,
    /// Raw bytes (base64 in JSON).
    Bytes,
    /// Varint, 32-bit.
    Int32,
    /// Varint, 64-bit.
    Int64,
    /// Varint 0/1.
    Bool,
    /// 64-bit IEEE float.
    Double,
    /// A nested message, by index into [`Schema::messages`].
    Message(usize),
}

/// Messages whose JSON form is not an object of their fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// meta/v1 Time: RFC 3339 with seconds.
    Time,
    /// meta/v1 MicroTime: RFC 3339 with microseconds.
    MicroTime,
    /// meta/v1 Duration: Go's duration string.
    Duration,
    /// intstr.IntOrString: a number or a string.
    IntOrString,
    /// resource.Quantity: its string.
    Quantity,
    /// RawExtension, FieldsV1, apiextensions JSON: raw JSON bytes.
    RawJson,
    /// meta/v1 Verbs and ExtraValue: a plain string array.
    StringList,
}

/// One field of a message.
#[derive(Debug, Clone)]
pub struct Field {
    /// Protobuf field number.
    pub tag: u32,
    /// The JSON key.
    pub json: &'static str,
    /// Optional, repeated or map.
    pub label: Label,
    /// The value type (of the map value for maps).
    pub ty: Type,
    /// The Go field is a pointer: an explicit zero value is kept.
    pub pointer: bool,
}

/// One message.
#[derive(Debug, Clone)]
pub struct Message {
    /// Fully qualified name without the `k8s.io.` prefix.
    pub name: &'static str,
    /// Fields sorted by tag.
    pub fields: Vec<Field>,
    /// Set for messages with their own JSON form.
    pub special: Option<Special>,
}

impl Message {
    /// The field with protobuf number `tag`.
    pub fn field(&self, tag: u32) -> Option<&Field> {
        self.fields
            .binary_search_by_key(&tag, |f| f.tag)
            .ok()
            .map(|i| &self.fields[i])
    }
}

/// The whole table.
#[derive(Debug)]
pub struct Schema {
    /// Every message.
    pub messages: Vec<Message>,
    by_name: HashMap<&'static str, usize>,
    kinds: HashMap<(&'static str, &'static str), usize>,
}

const META_V1: &str = "apimachinery.pkg.apis.meta.v1";

impl Schema {
    /// The embedded table, parsed on first use.
    pub fn get() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        SCHEMA.get_or_init(|| Schema::parse(include_str!("schema.txt")))
    }

    /// The message of a top-level object: the kind's own message, else a
    /// message of that name in the apiVersion's package (Scale), else a
    /// meta/v1 message (DeleteOptions, sent under every group version).
    pub fn kind(&self, api_version: &str, kind: &str) -> Option<usize> {
        if let Some(&i) = self.kinds.get(&(api_version, kind)) {
            return Some(i);
        }
        let package = self
            .kinds
            .iter()
            .find(|((v, _), _)| *v == api_version)
            .and_then(|(_, &i)| self.messages[i].name.rsplit_once('.'))
            .map(|(package, _)| package);
        package
            .and_then(|p| self.by_name.get(format!("{p}.{kind}").as_str()))
            .or_else(|| self.by_name.get(format!("{META_V1}.{kind}").as_str()))
            .copied()
    }

    /// Parses the generated text. The text is built into the binary by the
    /// generator, so a malformed line is a build defect and panics (the
    /// `embedded_schema_loads` test catches it).
    fn parse(text: &'static str) -> Schema {
        let lines = || {
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .map(|l| l.split(' ').collect::<Vec<_>>())
        };
        let mut by_name = HashMap::new();
        let mut messages = Vec::new();
        for parts in lines().filter(|p| p[0] == "M") {
            by_name.insert(parts[1], messages.len());
            messages.push(Message {
                name: parts[1],
                fields: Vec::new(),
                special: special(parts[1]),
            });
        }
        let lookup = |name: &str| -> usize {
            *by_name
                .get(name)
                .unwrap_or_else(|| panic!("schema.txt names an unknown message {name}"))
        };
        let mut kinds = HashMap::new();
        let mut current = None;
        for parts in lines() {
            match parts[0] {
                "M" => current = Some(lookup(parts[1])),
                "F" => {
                    let ty = match parts[4] {
                        "string" => Type::String,
                        "bytes" => Type::Bytes,
                        "int32" => Type::Int32,
                        "int64" => Type::Int64,
                        "bool" => Type::Bool,
                        "double" => Type::Double,
                        "message" => Type::Message(lookup(parts[5])),
                        other => panic!("schema.txt: unknown type {other}"),
                    };
                    let label = match parts[3] {
                        "opt" => Label::Optional,
                        "rep" => Label::Repeated,
                        "map" => Label::Map,
                        other => panic!("schema.txt: unknown label {other}"),
                    };
                    let field = Field {
                        tag: parts[1].parse().expect("schema.txt: field tag"),
                        json: parts[2],
                        label,
                        ty,
                        pointer: parts.last() == Some(&"p"),
                    };
                    let message = current.expect("schema.txt: field before any message");
                    messages[message].fields.push(field);
                }
                "K" => {
                    kinds.insert((parts[1], parts[2]), lookup(parts[3]));
                }
                other => panic!("schema.txt: unknown record {other}"),
            }
        }
        for message in &mut messages {
            message.fields.sort_by_key(|f| f.tag);
        }
        Schema {
            messages,
            by_name,
            kinds,
        }
    }
}

/// The special JSON form of a message, by name.
fn special(name: &str) -> Option<Special> {
    let (package, short) = name.rsplit_once('.')?;
    match (package, short) {
        (META_V1, "Time") => Some(Special::Time),
        (META_V1, "MicroTime") => Some(Special::MicroTime),
        (META_V1, "Duration") => Some(Special::Duration),
        (META_V1, "FieldsV1") | ("apimachinery.pkg.runtime", "RawExtension") => {
            Some(Special::RawJson)
        }
        (META_V1, "Verbs") | (_, "ExtraValue") => Some(Special::StringList),
        ("apimachinery.pkg.util.intstr", "IntOrString") => Some(Special::IntOrString),
        ("apimachinery.pkg.api.resource", "Quantity" | "QuantityValue") => Some(Special::Quantity),
        (p, "JSON") if p.starts_with("apiextensions_apiserver.") => Some(Special::RawJson),
        _ => None,
    }
}
