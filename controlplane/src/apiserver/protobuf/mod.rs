//! Decoding of `application/vnd.kubernetes.protobuf` request bodies (what
//! kubectl's imperative commands and client-go send) into the same JSON value
//! the JSON wire format gives, so defaulting, validation and storage never
//! see the difference. Responses stay JSON; this module only reads.
//!
//! A body is the magic `k8s\0` followed by a `runtime.Unknown` envelope:
//! {1: typeMeta {1: apiVersion, 2: kind}, 2: raw (the object's message),
//! 3: contentEncoding, 4: contentType}. The object's message is decoded by
//! walking the generated schema table (`schema.txt`), never per-kind code.

mod decode;
mod schema;
#[cfg(test)]
mod tests;
pub(crate) mod wire;

use serde_json::Value;
use thiserror::Error;

use schema::Schema;
use wire::{Reader, WireError, WireType};

/// The prefix of every Kubernetes protobuf body.
pub const MAGIC: &[u8] = b"k8s\0";

/// Why a protobuf body could not be decoded.
#[derive(Debug, Error)]
pub enum ProtobufError {
    /// The body lacks the `k8s\0` prefix.
    #[error("the body is not a Kubernetes protobuf object: it does not start with the magic bytes \"k8s\\x00\"")]
    NoMagic,
    /// The bytes are not valid protobuf.
    #[error("malformed protobuf at {path}: {source}")]
    Wire {
        /// The JSON path of the field being read ("" at the top).
        path: String,
        /// What was wrong.
        source: WireError,
    },
    /// Valid protobuf that does not fit the schema.
    #[error("invalid protobuf value at {path}: {reason}")]
    Field {
        /// The JSON path of the field.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// A value problem not yet attached to a path (see [`ProtobufError::within`]).
    #[error("invalid protobuf value: {0}")]
    Invalid(String),
    /// Messages nested deeper than the decoder follows.
    #[error("the object nests messages deeper than {0} levels")]
    TooDeep(usize),
    /// The envelope names a kind there is no protobuf schema for.
    #[error("no protobuf schema for kind {kind:?} of apiVersion {api_version:?}; send the object as application/json")]
    UnknownKind {
        /// The envelope's apiVersion.
        api_version: String,
        /// The envelope's kind.
        kind: String,
    },
    /// The envelope asks for a content encoding this server does not do.
    #[error("protobuf content encoding {0:?} is not supported; send the object unencoded")]
    ContentEncoding(String),
}

impl ProtobufError {
    fn wire(source: WireError) -> Self {
        ProtobufError::Wire {
            path: String::new(),
            source,
        }
    }

    /// Prefixes the error's path with the field `name` it happened in.
    fn within(self, name: &str) -> Self {
        let join = |path: String| {
            if path.is_empty() {
                name.to_string()
            } else {
                format!("{name}.{path}")
            }
        };
        match self {
            ProtobufError::Wire { path, source } => ProtobufError::Wire {
                path: join(path),
                source,
            },
            ProtobufError::Field { path, reason } => ProtobufError::Field {
                path: join(path),
                reason,
            },
            ProtobufError::Invalid(reason) => ProtobufError::Field {
                path: name.to_string(),
                reason,
            },
            other => other,
        }
    }

    /// True when the body was well-formed but of a kind or encoding this
    /// server cannot read as protobuf (415 rather than 400).
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            ProtobufError::UnknownKind { .. } | ProtobufError::ContentEncoding(_)
        )
    }
}

/// The envelope's parts.
#[derive(Default)]
struct Envelope<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
    content_type: String,
}

/// Decodes a protobuf request body into the object's JSON form, with
/// `apiVersion` and `kind` from the envelope.
pub fn decode_object(body: &[u8]) -> Result<Value, ProtobufError> {
    let rest = body.strip_prefix(MAGIC).ok_or(ProtobufError::NoMagic)?;
    let env = envelope(rest)?;
    if !env.content_encoding.is_empty() {
        return Err(ProtobufError::ContentEncoding(env.content_encoding));
    }
    let mut obj = if env.content_type.contains("json") {
        serde_json::from_slice(env.raw)
            .map_err(|e| ProtobufError::Invalid(format!("the raw object is not JSON: {e}")))?
    } else {
        let schema = Schema::get();
        let index =
            schema
                .kind(&env.api_version, &env.kind)
                .ok_or_else(|| ProtobufError::UnknownKind {
                    api_version: env.api_version.clone(),
                    kind: env.kind.clone(),
                })?;
        decode::message(schema, index, env.raw)?
    };
    let Value::Object(map) = &mut obj else {
        return Err(ProtobufError::Invalid(
            "the raw object is not an object".into(),
        ));
    };
    for (key, value) in [("apiVersion", env.api_version), ("kind", env.kind)] {
        if !value.is_empty() {
            map.insert(key.into(), Value::String(value));
        }
    }
    Ok(obj)
}

/// Reads the `runtime.Unknown` envelope.
fn envelope(bytes: &[u8]) -> Result<Envelope<'_>, ProtobufError> {
    let mut env = Envelope::default();
    let mut reader = Reader::new(bytes);
    let string = |reader: &mut Reader<'_>| -> Result<String, ProtobufError> {
        let bytes = reader.len_delimited().map_err(ProtobufError::wire)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| ProtobufError::Invalid("a string is not valid UTF-8".into()))
    };
    while !reader.is_empty() {
        let (tag, wire) = reader.key().map_err(ProtobufError::wire)?;
        if wire != WireType::Len {
            reader.skip(wire).map_err(ProtobufError::wire)?;
            continue;
        }
        match tag {
            1 => {
                let mut meta = Reader::new(reader.len_delimited().map_err(ProtobufError::wire)?);
                while !meta.is_empty() {
                    match meta.key().map_err(ProtobufError::wire)? {
                        (1, WireType::Len) => env.api_version = string(&mut meta)?,
                        (2, WireType::Len) => env.kind = string(&mut meta)?,
                        (_, wire) => meta.skip(wire).map_err(ProtobufError::wire)?,
                    }
                }
            }
            2 => env.raw = reader.len_delimited().map_err(ProtobufError::wire)?,
            3 => env.content_encoding = string(&mut reader)?,
            4 => env.content_type = string(&mut reader)?,
            _ => reader.skip(wire).map_err(ProtobufError::wire)?,
        }
    }
    Ok(env)
}
