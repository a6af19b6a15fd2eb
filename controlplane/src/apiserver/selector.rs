//! Label and field selectors: the `labelSelector` / `fieldSelector` query
//! parameters of list, watch and deletecollection, and `metav1.LabelSelector`
//! objects (Deployment `spec.selector`, ...).
//!
//! Pure parsing and matching on `serde_json::Value`; the handlers turn a
//! [`SelectorError`] into a 400. Semantics follow `k8s.io/apimachinery/pkg/labels`
//! and `pkg/fields`: `!=` and `notin` match objects without the label, a missing
//! field compares as the empty string, an empty selector matches everything.

mod field;

use std::fmt;

use serde_json::{Map, Value};

pub use field::{field_value, supported_fields, FieldSelector};

/// Why a selector was rejected; the message is what the client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// One requirement of a `labelSelector` string does not parse or validate.
    #[error("label selector requirement {requirement:?}: {reason}")]
    LabelRequirement {
        /// The requirement as written (between commas).
        requirement: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `metav1.LabelSelector` object is malformed.
    #[error("invalid label selector: {0}")]
    LabelSelectorObject(String),
    /// A `fieldSelector` term has no `=`, `==` or `!=`.
    #[error("invalid field selector: '{selector}'; can't understand '{term}'")]
    FieldTerm {
        /// The whole selector.
        selector: String,
        /// The term that does not parse.
        term: String,
    },
    /// A `fieldSelector` value has a bad escape or an unescaped `,` / `=`.
    #[error("invalid field selector: {reason} in '{term}'")]
    FieldValue {
        /// The term holding the value.
        term: String,
        /// What is wrong with the value.
        reason: String,
    },
    /// The field cannot be selected on for this resource (upstream wording).
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

/// A label selector: requirements that must all hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    /// Set for the selector that matches nothing (a null `metav1.LabelSelector`).
    nothing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Operator,
    /// Sorted and deduplicated; one value for `=`, `!=`, `<`, `>`; none for (`!`)exists.
    values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Equals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

impl LabelSelector {
    /// The selector that matches every object.
    pub fn everything() -> Self {
        Self::default()
    }

    /// The selector that matches no object.
    pub fn nothing() -> Self {
        Self {
            requirements: Vec::new(),
            nothing: true,
        }
    }

    /// True if the selector matches every object.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty() && !self.nothing
    }

    /// Parses the query string syntax: `a=b,c!=d,e in (x,y),f notin (z),g,!h`.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        if s.trim().is_empty() {
            return Ok(Self::everything());
        }
        let requirements = split_requirements(s)
            .into_iter()
            .map(|text| {
                parse_requirement(text).map_err(|reason| SelectorError::LabelRequirement {
                    requirement: text.trim().to_string(),
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self::sorted(requirements))
    }

    /// Converts a `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`);
    /// `null` selects nothing and `{}` everything, as `LabelSelectorAsSelector` does.
    pub fn from_json(selector: &Value) -> Result<Self, SelectorError> {
        let bad = |msg: String| SelectorError::LabelSelectorObject(msg);
        let selector = match selector {
            Value::Null => return Ok(Self::nothing()),
            Value::Object(map) => map,
            other => return Err(bad(format!("expected an object, found {other}"))),
        };
        let mut requirements = Vec::new();
        match selector.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(labels)) => {
                for (key, value) in labels {
                    let value = value
                        .as_str()
                        .ok_or_else(|| bad(format!("matchLabels[{key:?}] must be a string")))?;
                    requirements.push(
                        requirement(key, Operator::Equals, vec![value.to_string()])
                            .map_err(|e| bad(format!("matchLabels: {e}")))?,
                    );
                }
            }
            Some(_) => return Err(bad("matchLabels must be an object".into())),
        }
        let expressions = match selector.get("matchExpressions") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(items)) => items.as_slice(),
            Some(_) => return Err(bad("matchExpressions must be a list".into())),
        };
        for expr in expressions {
            let key = expr["key"]
                .as_str()
                .ok_or_else(|| bad("a matchExpressions item has no key".into()))?;
            let op = match expr["operator"].as_str() {
                Some("In") => Operator::In,
                Some("NotIn") => Operator::NotIn,
                Some("Exists") => Operator::Exists,
                Some("DoesNotExist") => Operator::DoesNotExist,
                other => {
                    return Err(bad(format!(
                    "{:?} is not a valid label selector operator (In, NotIn, Exists, DoesNotExist)",
                    other.unwrap_or_default()
                )))
                }
            };
            let values = match &expr["values"] {
                Value::Null => Vec::new(),
                Value::Array(vs) => vs
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad(format!("values of {key:?} must be strings")))?,
                _ => return Err(bad(format!("values of {key:?} must be a list"))),
            };
            requirements
                .push(requirement(key, op, values).map_err(|e| bad(format!("key {key:?}: {e}")))?);
        }
        Ok(Self::sorted(requirements))
    }

    /// The equality selector of a plain label map, like a Service's `spec.selector`
    /// (`SelectorFromSet`: an empty map matches everything; non-string values are skipped).
    pub fn from_map(labels: &Map<String, Value>) -> Self {
        let requirements = labels
            .iter()
            .filter_map(|(k, v)| {
                Some(Requirement {
                    key: k.clone(),
                    op: Operator::Equals,
                    values: vec![v.as_str()?.to_string()],
                })
            })
            .collect();
        Self::sorted(requirements)
    }

    fn sorted(mut requirements: Vec<Requirement>) -> Self {
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Self {
            requirements,
            nothing: false,
        }
    }

    /// True if `labels` (an object's `metadata.labels`, absent meaning none) satisfies
    /// every requirement.
    pub fn matches(&self, labels: Option<&Value>) -> bool {
        if self.nothing {
            return false;
        }
        let labels = labels.and_then(Value::as_object);
        self.requirements.iter().all(|r| {
            let value = labels.and_then(|m| m.get(&r.key)).and_then(Value::as_str);
            r.matches(value)
        })
    }

    /// [`matches`](Self::matches) on a whole object's `metadata.labels`.
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.matches(obj.get("metadata").and_then(|m| m.get("labels")))
    }
}

impl Requirement {
    fn matches(&self, value: Option<&str>) -> bool {
        let has = |v: &str| self.values.iter().any(|x| x == v);
        let number = |v: &str| v.parse::<i64>().ok();
        let bound = self.values.first().and_then(|b| number(b));
        match self.op {
            Operator::Equals | Operator::In => value.is_some_and(has),
            Operator::NotEquals | Operator::NotIn => !value.is_some_and(has),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan => {
                matches!((value.and_then(number), bound), (Some(v), Some(b)) if v > b)
            }
            Operator::LessThan => {
                matches!((value.and_then(number), bound), (Some(v), Some(b)) if v < b)
            }
        }
    }
}

impl fmt::Display for LabelSelector {
    /// The canonical string form (`LabelSelectorAsSelector(sel).String()`):
    /// requirements sorted by key, set values sorted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let values = r.values.join(",");
            match r.op {
                Operator::Equals => write!(f, "{}={values}", r.key)?,
                Operator::NotEquals => write!(f, "{}!={values}", r.key)?,
                Operator::In => write!(f, "{} in ({values})", r.key)?,
                Operator::NotIn => write!(f, "{} notin ({values})", r.key)?,
                Operator::Exists => f.write_str(&r.key)?,
                Operator::DoesNotExist => write!(f, "!{}", r.key)?,
                Operator::GreaterThan => write!(f, "{}>{values}", r.key)?,
                Operator::LessThan => write!(f, "{}<{values}", r.key)?,
            }
        }
        Ok(())
    }
}

/// Splits at commas outside parentheses (`a in (x,y),b` is two requirements).
fn split_requirements(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth <= 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Not,
    Eq,
    NotEq,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
    In,
    NotIn,
}

fn lex(s: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let token = match c {
            c if c.is_whitespace() => continue,
            '!' if chars.next_if_eq(&'=').is_some() => Token::NotEq,
            '!' => Token::Not,
            '=' => {
                chars.next_if_eq(&'=');
                Token::Eq
            }
            '>' => Token::Gt,
            '<' => Token::Lt,
            '(' => Token::Open,
            ')' => Token::Close,
            ',' => Token::Comma,
            c => {
                let mut word = String::from(c);
                while let Some(c) = chars.next_if(|c| !c.is_whitespace() && !"!=<>(),".contains(*c))
                {
                    word.push(c);
                }
                match word.as_str() {
                    "in" => Token::In,
                    "notin" => Token::NotIn,
                    _ => Token::Word(word),
                }
            }
        };
        tokens.push(token);
    }
    tokens
}

/// A value position also accepts the words `in` and `notin`.
fn value_text(token: &Token) -> Option<String> {
    match token {
        Token::Word(w) => Some(w.clone()),
        Token::In => Some("in".into()),
        Token::NotIn => Some("notin".into()),
        _ => None,
    }
}

fn parse_requirement(text: &str) -> Result<Requirement, String> {
    use Token::{Close, Comma, Open, Word};
    let tokens = lex(text);
    match tokens.as_slice() {
        [] => Err("empty requirement (stray comma?)".into()),
        [Token::Not, Word(key)] => requirement(key, Operator::DoesNotExist, Vec::new()),
        [Token::Not, ..] => Err("'!' must be followed by a label key alone".into()),
        [Word(key)] => requirement(key, Operator::Exists, Vec::new()),
        [Word(key), op @ (Token::Eq | Token::NotEq | Token::Gt | Token::Lt), rest @ ..] => {
            let op = match op {
                Token::Eq => Operator::Equals,
                Token::NotEq => Operator::NotEquals,
                Token::Gt => Operator::GreaterThan,
                _ => Operator::LessThan,
            };
            let value = match rest {
                [] if matches!(op, Operator::Equals | Operator::NotEquals) => String::new(),
                [v] => value_text(v).ok_or("expected a value after the operator")?,
                _ => return Err("expected a single value after the operator".into()),
            };
            requirement(key, op, vec![value])
        }
        [Word(key), set @ (Token::In | Token::NotIn), rest @ ..] => {
            let op = if *set == Token::In {
                Operator::In
            } else {
                Operator::NotIn
            };
            let Some((Open, inner)) = rest.split_first() else {
                return Err("expected '(' after in/notin".into());
            };
            let inner = match inner.split_last() {
                Some((Close, inner)) => inner,
                _ => return Err("expected ')' at the end of the value list".into()),
            };
            let mut values = Vec::new();
            for item in inner.split(|t| *t == Comma) {
                match item {
                    [] => values.push(String::new()),
                    [v] => values.push(value_text(v).ok_or("unexpected token in the value list")?),
                    _ => return Err("values in the list must be separated by ','".into()),
                }
            }
            if inner.is_empty() {
                values.clear();
            }
            requirement(key, op, values)
        }
        [Word(_), ..] => {
            Err("expected an operator (=, ==, !=, in, notin, <, >) after the key".into())
        }
        _ => Err("expected a label key".into()),
    }
}

/// Builds a validated requirement, as `labels.NewRequirement`.
fn requirement(key: &str, op: Operator, mut values: Vec<String>) -> Result<Requirement, String> {
    check_label_key(key)?;
    match op {
        Operator::In | Operator::NotIn if values.is_empty() => {
            return Err("for 'in', 'notin' operators, values set can't be empty".into())
        }
        Operator::Equals | Operator::NotEquals if values.len() != 1 => {
            return Err("exact-match compatibility requires one single value".into())
        }
        Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
            return Err("values set must be empty for exists and does not exist".into())
        }
        Operator::GreaterThan | Operator::LessThan => {
            if values.len() != 1 || values[0].parse::<i64>().is_err() {
                return Err(
                    "for 'Gt', 'Lt' operators, exactly one integer value is required".into(),
                );
            }
            return Ok(Requirement {
                key: key.to_string(),
                op,
                values,
            });
        }
        _ => {}
    }
    for v in &values {
        check_label_value(v)?;
    }
    values.sort();
    values.dedup();
    Ok(Requirement {
        key: key.to_string(),
        op,
        values,
    })
}

/// A qualified name: optional DNS subdomain prefix and `/`, then a name of at most
/// 63 alphanumerics, `-`, `_`, `.` starting and ending alphanumeric.
fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if prefix.len() > 253 || !prefix.split('.').all(label_ok) {
            return Err(format!(
                "invalid label key {key:?}: prefix part must be a lowercase DNS subdomain"
            ));
        }
    }
    if !is_label_name(name) {
        return Err(format!(
            "invalid label key {key:?}: name part must be 1-63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
        ));
    }
    Ok(())
}

fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value {value:?}: must be at most 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
        ))
    }
}

fn is_label_name(s: &str) -> bool {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= 63
        && edge_ok(s.chars().next())
        && edge_ok(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests;
