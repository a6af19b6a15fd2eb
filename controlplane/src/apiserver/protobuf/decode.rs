//! Protobuf message → `serde_json::Value`, walking the schema table, so the
//! result is the object the JSON wire format would have carried.
//!
//! gogo-protobuf (what Go clients use) writes every Go value field, zero or
//! not, so a zero scalar on the wire ("", 0, false) usually means "unset" and
//! is dropped, as Go's JSON encoder drops it (`omitempty`); pointer fields
//! (flagged in the schema) keep it. Empty repeated fields and maps are absent
//! on the wire and so absent here.

use base64::Engine as _;
use serde_json::{Map, Value};

use super::schema::{Field, Label, Schema, Special, Type};
use super::wire::{Reader, WireType};
use super::ProtobufError;

/// How deep messages may nest (JSONSchemaProps is recursive; a body nesting
/// deeper than this is hostile, not a Kubernetes object).
const MAX_DEPTH: usize = 64;

/// Decodes `bytes` as message `index` of `schema`.
/// Protobuf fields holding a Go struct embedded with `json:",inline"`
/// (Volume.volumeSource, Probe.handler, ...): their message's fields are
/// written into the enclosing JSON object.
const INLINE: &[&str] = &[
    "volumeSource",
    "persistentVolumeSource",
    "ingressRuleValue",
    "handler",
    "ephemeralContainerCommon",
];

pub fn message(schema: &Schema, index: usize, bytes: &[u8]) -> Result<Value, ProtobufError> {
    Decoder { schema }.message(index, bytes, 0)
}

struct Decoder<'s> {
    schema: &'s Schema,
}

impl Decoder<'_> {
    fn message(&self, index: usize, bytes: &[u8], depth: usize) -> Result<Value, ProtobufError> {
        if depth > MAX_DEPTH {
            return Err(ProtobufError::TooDeep(MAX_DEPTH));
        }
        let message = &self.schema.messages[index];
        let mut obj = Map::new();
        let mut reader = Reader::new(bytes);
        while !reader.is_empty() {
            let (tag, wire) = reader.key().map_err(ProtobufError::wire)?;
            let Some(field) = message.field(tag) else {
                // Fields newer than our table are skipped, as gogo skips them.
                reader.skip(wire).map_err(ProtobufError::wire)?;
                continue;
            };
            // Special messages keep zeros: an explicit 0 seconds is the epoch.
            let keep_zero = field.pointer || message.special.is_some();
            self.field(field, keep_zero, wire, &mut reader, &mut obj, depth)
                .map_err(|e| e.within(field.json))?;
        }
        match message.special {
            Some(special) => special_form(special, obj),
            None => Ok(Value::Object(obj)),
        }
    }

    fn field(
        &self,
        field: &Field,
        keep_zero: bool,
        wire: WireType,
        reader: &mut Reader<'_>,
        obj: &mut Map<String, Value>,
        depth: usize,
    ) -> Result<(), ProtobufError> {
        match field.label {
            Label::Optional => {
                let value = self.value(field.ty, wire, reader, depth)?;
                if value.is_null() || (!keep_zero && is_zero_scalar(field.ty, &value)) {
                    obj.remove(field.json);
                } else if let (true, Value::Object(inner)) = (INLINE.contains(&field.json), &value)
                {
                    // A Go struct embedded with `json:",inline"`: its fields
                    // belong to the enclosing object in JSON.
                    obj.extend(inner.iter().map(|(k, v)| (k.clone(), v.clone())));
                } else {
                    obj.insert(field.json.to_string(), value);
                }
            }
            Label::Repeated => {
                let slot = obj
                    .entry(field.json)
                    .or_insert_with(|| Value::Array(Vec::new()));
                let Value::Array(items) = slot else {
                    unreachable!("repeated fields only ever hold arrays");
                };
                let packed = wire == WireType::Len && matches!(field.ty, Type::Int32 | Type::Int64);
                if packed {
                    let mut inner =
                        Reader::new(reader.len_delimited().map_err(ProtobufError::wire)?);
                    while !inner.is_empty() {
                        items.push(self.value(field.ty, WireType::Varint, &mut inner, depth)?);
                    }
                } else {
                    items.push(self.value(field.ty, wire, reader, depth)?);
                }
            }
            Label::Map => {
                expect_wire(wire, WireType::Len)?;
                let entry = reader.len_delimited().map_err(ProtobufError::wire)?;
                let (key, value) = self.map_entry(field.ty, entry, depth)?;
                let map = obj
                    .entry(field.json)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(map) = map {
                    map.insert(key, value);
                }
            }
        }
        Ok(())
    }

    /// A map entry message: key = 1 (string), value = 2.
    fn map_entry(
        &self,
        ty: Type,
        bytes: &[u8],
        depth: usize,
    ) -> Result<(String, Value), ProtobufError> {
        let mut reader = Reader::new(bytes);
        let mut key = String::new();
        let mut value = None;
        while !reader.is_empty() {
            let (tag, wire) = reader.key().map_err(ProtobufError::wire)?;
            match tag {
                1 => {
                    expect_wire(wire, WireType::Len)?;
                    key = utf8(reader.len_delimited().map_err(ProtobufError::wire)?)?;
                }
                2 => value = Some(self.value(ty, wire, &mut reader, depth)?),
                _ => reader.skip(wire).map_err(ProtobufError::wire)?,
            }
        }
        // Map values keep their zero values ("" is a real ConfigMap value);
        // an absent one is the type's zero value.
        let value = match (value, ty) {
            (Some(v), _) => v,
            (None, Type::String | Type::Bytes) => Value::String(String::new()),
            (None, Type::Int32 | Type::Int64 | Type::Double) => Value::from(0),
            (None, Type::Bool) => Value::Bool(false),
            (None, Type::Message(index)) => self.message(index, &[], depth + 1)?,
        };
        Ok((key, value))
    }

    /// One value of type `ty`.
    fn value(
        &self,
        ty: Type,
        wire: WireType,
        reader: &mut Reader<'_>,
        depth: usize,
    ) -> Result<Value, ProtobufError> {
        let w = ProtobufError::wire;
        Ok(match ty {
            Type::String => {
                expect_wire(wire, WireType::Len)?;
                Value::String(utf8(reader.len_delimited().map_err(w)?)?)
            }
            Type::Bytes => {
                expect_wire(wire, WireType::Len)?;
                let bytes = reader.len_delimited().map_err(w)?;
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            // Varints carry int32 sign-extended to 64 bits: the casts undo that.
            Type::Int32 => {
                expect_wire(wire, WireType::Varint)?;
                Value::from(reader.varint().map_err(w)? as i64 as i32)
            }
            Type::Int64 => {
                expect_wire(wire, WireType::Varint)?;
                Value::from(reader.varint().map_err(w)? as i64)
            }
            Type::Bool => {
                expect_wire(wire, WireType::Varint)?;
                Value::Bool(reader.varint().map_err(w)? != 0)
            }
            Type::Double => {
                expect_wire(wire, WireType::Fixed64)?;
                let f = f64::from_bits(reader.fixed64().map_err(w)?);
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| ProtobufError::Invalid(format!("{f} is not a JSON number")))?
            }
            Type::Message(index) => {
                expect_wire(wire, WireType::Len)?;
                self.message(index, reader.len_delimited().map_err(w)?, depth + 1)?
            }
        })
    }
}

fn expect_wire(got: WireType, want: WireType) -> Result<(), ProtobufError> {
    if got == want {
        Ok(())
    } else {
        Err(ProtobufError::Invalid(format!(
            "wire type {got:?} where the schema expects {want:?}"
        )))
    }
}

fn utf8(bytes: &[u8]) -> Result<String, ProtobufError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ProtobufError::Invalid("a string is not valid UTF-8".into()))
}

/// "", 0, false and 0.0 of scalar fields: Go's zero values.
fn is_zero_scalar(ty: Type, value: &Value) -> bool {
    match (ty, value) {
        (Type::String | Type::Bytes, Value::String(s)) => s.is_empty(),
        (Type::Int32 | Type::Int64, Value::Number(n)) => n.as_i64() == Some(0),
        (Type::Double, Value::Number(n)) => n.as_f64() == Some(0.0),
        (Type::Bool, Value::Bool(b)) => !b,
        _ => false,
    }
}

/// The JSON form of a special message from its decoded fields.
fn special_form(special: Special, obj: Map<String, Value>) -> Result<Value, ProtobufError> {
    let int = |key: &str| obj.get(key).and_then(Value::as_i64).unwrap_or(0);
    let string = |key: &str| {
        obj.get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    Ok(match special {
        // An empty Time is Go's zero time, which JSON writes as null.
        Special::Time | Special::MicroTime if obj.is_empty() => Value::Null,
        Special::Time => Value::String(time(int("seconds"), None)?),
        Special::MicroTime => Value::String(time(int("seconds"), Some(int("nanos")))?),
        Special::Duration => Value::String(go_duration(int("duration"))),
        // type 1 is String, anything else Int.
        Special::IntOrString if int("type") == 1 => Value::String(string("strVal")),
        Special::IntOrString => Value::from(int("intVal")),
        Special::Quantity => match string("string") {
            s if s.is_empty() => Value::String("0".into()),
            s => Value::String(s),
        },
        Special::RawJson => {
            let raw = string("raw");
            if raw.is_empty() {
                Value::Null
            } else {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(raw)
                    .map_err(|e| ProtobufError::Invalid(e.to_string()))?;
                raw_json(&bytes)?
            }
        }
        Special::StringList => obj
            .get("items")
            .cloned()
            .unwrap_or_else(|| Value::Array(Vec::new())),
    })
}

/// Embedded raw bytes: JSON, or a nested protobuf-encoded object.
fn raw_json(bytes: &[u8]) -> Result<Value, ProtobufError> {
    if bytes.starts_with(super::MAGIC) {
        return super::decode_object(bytes);
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ProtobufError::Invalid(format!("embedded raw object is not JSON: {e}")))
}

/// RFC 3339 in UTC, as metav1.Time writes it (seconds) or, given the
/// nanoseconds, as metav1.MicroTime does (always six decimals).
fn time(seconds: i64, nanos: Option<i64>) -> Result<String, ProtobufError> {
    let ts = jiff::Timestamp::new(seconds, 0)
        .map_err(|e| ProtobufError::Invalid(format!("time {seconds}s is out of range: {e}")))?;
    let base = ts.strftime("%Y-%m-%dT%H:%M:%S");
    Ok(match nanos {
        None => format!("{base}Z"),
        Some(n) => format!("{base}.{:06}Z", n.clamp(0, 999_999_999) / 1000),
    })
}

/// Go's `time.Duration.String()`: "1h2m3.5s", "1.5ms", "0s".
pub fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let u = nanos.unsigned_abs();
    if u < 1_000_000_000 {
        let (unit, div) = match u {
            0..1_000 => ("ns", 1),
            1_000..1_000_000 => ("µs", 1_000),
            _ => ("ms", 1_000_000),
        };
        return format!("{sign}{}{unit}", decimal(u, div));
    }
    let secs = u / 1_000_000_000;
    let (h, m) = (secs / 3600, secs / 60 % 60);
    let s = decimal(u % 60_000_000_000, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{sign}{s}s"),
        (0, m) => format!("{sign}{m}m{s}s"),
        (h, m) => format!("{sign}{h}h{m}m{s}s"),
    }
}

/// `v / div` with the remainder as trailing decimals, zeros trimmed.
fn decimal(v: u64, div: u64) -> String {
    let (int, rem) = (v / div, v % div);
    if rem == 0 {
        return int.to_string();
    }
    let width = div.ilog10() as usize;
    let frac = format!("{rem:0width$}");
    format!("{int}.{}", frac.trim_end_matches('0'))
}
