//! Field selectors (`fieldSelector=spec.nodeName=node-1,status.phase!=Failed`)
//! and the per-resource table of selectable fields, as upstream's
//! `fields.ParseSelector` and each registry's `GetAttrs`/field label conversion.

use std::fmt;

use serde_json::Value;

use super::SelectorError;

/// A field selector: `field=value` / `field==value` / `field!=value` terms that
/// must all hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    terms: Vec<Term>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Term {
    field: String,
    equals: bool,
    value: String,
}

/// How a selectable field's value is read and rendered.
#[derive(Clone, Copy)]
enum Source {
    /// A string at this dotted path; absent reads as "".
    Text(&'static str),
    /// A boolean at this path; absent reads as "false".
    Bool(&'static str),
    /// An integer at this path; absent reads as "0".
    Int(&'static str),
    /// A pod's primary IP: `status.podIP`, else `status.podIPs[0].ip`.
    PodIp,
}

/// `(resource plural, field label, source)`; plural `*` applies to every resource.
const FIELDS: &[(&str, &str, Source)] = &[
    ("*", "metadata.name", Source::Text("metadata.name")),
    (
        "*",
        "metadata.namespace",
        Source::Text("metadata.namespace"),
    ),
    ("pods", "spec.nodeName", Source::Text("spec.nodeName")),
    (
        "pods",
        "spec.restartPolicy",
        Source::Text("spec.restartPolicy"),
    ),
    (
        "pods",
        "spec.schedulerName",
        Source::Text("spec.schedulerName"),
    ),
    (
        "pods",
        "spec.serviceAccountName",
        Source::Text("spec.serviceAccountName"),
    ),
    ("pods", "spec.hostNetwork", Source::Bool("spec.hostNetwork")),
    ("pods", "status.phase", Source::Text("status.phase")),
    ("pods", "status.podIP", Source::PodIp),
    (
        "pods",
        "status.nominatedNodeName",
        Source::Text("status.nominatedNodeName"),
    ),
    (
        "events",
        "involvedObject.kind",
        Source::Text("involvedObject.kind"),
    ),
    (
        "events",
        "involvedObject.namespace",
        Source::Text("involvedObject.namespace"),
    ),
    (
        "events",
        "involvedObject.name",
        Source::Text("involvedObject.name"),
    ),
    (
        "events",
        "involvedObject.uid",
        Source::Text("involvedObject.uid"),
    ),
    (
        "events",
        "involvedObject.apiVersion",
        Source::Text("involvedObject.apiVersion"),
    ),
    (
        "events",
        "involvedObject.resourceVersion",
        Source::Text("involvedObject.resourceVersion"),
    ),
    (
        "events",
        "involvedObject.fieldPath",
        Source::Text("involvedObject.fieldPath"),
    ),
    ("events", "reason", Source::Text("reason")),
    (
        "events",
        "reportingComponent",
        Source::Text("reportingComponent"),
    ),
    ("events", "source", Source::Text("source.component")),
    ("events", "type", Source::Text("type")),
    (
        "nodes",
        "spec.unschedulable",
        Source::Bool("spec.unschedulable"),
    ),
    ("secrets", "type", Source::Text("type")),
    ("namespaces", "status.phase", Source::Text("status.phase")),
    (
        "replicasets",
        "status.replicas",
        Source::Int("status.replicas"),
    ),
    (
        "jobs",
        "status.successful",
        Source::Int("status.successful"),
    ),
];

fn source(plural: &str, field: &str) -> Result<Source, SelectorError> {
    FIELDS
        .iter()
        .find(|(p, f, _)| (*p == "*" || *p == plural) && *f == field)
        .map(|(_, _, s)| *s)
        .ok_or_else(|| SelectorError::UnsupportedField(field.to_string()))
}

/// The field labels a selector may use on resource `plural` (e.g. `pods`).
pub fn supported_fields(plural: &str) -> Vec<&'static str> {
    FIELDS
        .iter()
        .filter(|(p, _, _)| *p == "*" || *p == plural)
        .map(|(_, f, _)| *f)
        .collect()
}

/// The value of selectable `field` in `obj` (a `plural` resource) as a selector
/// compares it; `None` when a string field is absent (it compares as "").
pub fn field_value(
    plural: &str,
    obj: &Value,
    field: &str,
) -> Result<Option<String>, SelectorError> {
    let at = |path: &str| path.split('.').try_fold(obj, |v, k| v.get(k));
    Ok(match source(plural, field)? {
        Source::Text(path) => at(path).and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }),
        Source::Bool(path) => Some(
            at(path)
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .to_string(),
        ),
        Source::Int(path) => Some(at(path).and_then(Value::as_i64).unwrap_or(0).to_string()),
        Source::PodIp => at("status.podIP")
            .and_then(Value::as_str)
            .filter(|ip| !ip.is_empty())
            .or_else(|| at("status.podIPs")?.get(0)?.get("ip")?.as_str())
            .map(str::to_string),
    })
}

impl FieldSelector {
    /// The selector that matches every object.
    pub fn everything() -> Self {
        Self::default()
    }

    /// True if the selector has no terms.
    pub fn is_everything(&self) -> bool {
        self.terms.is_empty()
    }

    /// Parses `a=b,c==d,e!=f`; `\,`, `\=` and `\\` escape those characters in values,
    /// and whitespace around field names and values is ignored.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        for raw in split_terms(selector) {
            let term = raw.trim();
            if term.is_empty() {
                continue;
            }
            let (field, equals, value) =
                split_term(term).ok_or_else(|| SelectorError::FieldTerm {
                    selector: selector.to_string(),
                    term: term.to_string(),
                })?;
            let value = unescape(value.trim()).map_err(|reason| SelectorError::FieldValue {
                term: term.to_string(),
                reason,
            })?;
            terms.push(Term {
                field: field.trim().to_string(),
                equals,
                value,
            });
        }
        Ok(Self { terms })
    }

    /// Rejects fields `plural` cannot be selected on, before any listing happens.
    pub fn validate(&self, plural: &str) -> Result<(), SelectorError> {
        self.terms
            .iter()
            .try_for_each(|t| source(plural, &t.field).map(|_| ()))
    }

    /// True if `obj` (a `plural` resource) satisfies every term.
    pub fn matches(&self, plural: &str, obj: &Value) -> Result<bool, SelectorError> {
        for term in &self.terms {
            let value = field_value(plural, obj, &term.field)?.unwrap_or_default();
            if (value == term.value) != term.equals {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The value `field` must equal, if a `field=value` term requires one
    /// (lets a handler narrow a list, e.g. `metadata.name` or `spec.nodeName`).
    pub fn exact_match(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.equals && t.field == field)
            .map(|t| t.value.as_str())
    }
}

impl fmt::Display for FieldSelector {
    /// The selector string, values escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            let op = if t.equals { "=" } else { "!=" };
            let value = t
                .value
                .replace('\\', r"\\")
                .replace(',', r"\,")
                .replace('=', r"\=");
            write!(f, "{sep}{}{op}{value}", t.field)?;
        }
        Ok(())
    }
}

/// Splits at commas not escaped with a backslash (escapes are kept).
fn split_terms(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            ',' => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    terms
}

/// Splits at the first `!=`, `==` or `=`: (field, is-equality, raw value).
fn split_term(term: &str) -> Option<(&str, bool, &str)> {
    let i = term
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| term[i..].starts_with('=') || term[i..].starts_with("!="))?;
    let rest = &term[i..];
    if let Some(value) = rest.strip_prefix("!=") {
        Some((&term[..i], false, value))
    } else if let Some(value) = rest.strip_prefix("==") {
        Some((&term[..i], true, value))
    } else {
        Some((&term[..i], true, &rest[1..]))
    }
}

/// `fields.UnescapeValue`: `\\`, `\,`, `\=` are the only escapes, and `,` or `=`
/// may not appear unescaped.
fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                Some(e) => return Err(format!("invalid escape sequence: \\{e}")),
                None => return Err("invalid escape sequence: \\".into()),
            },
            ',' | '=' => return Err(format!("unescaped character in value: {c}")),
            c => out.push(c),
        }
    }
    Ok(out)
}
