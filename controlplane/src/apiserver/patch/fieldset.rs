//! Field sets: the fields of an object a field manager owns, read from and
//! written as FieldsV1 (`f:<field>`, `k:{"name":"c"}` for items of lists
//! merged by key, `v:"x"` for items of lists merged as sets, `.` for an item
//! that is itself a member and has children).
//!
//! Membership follows structured-merge-diff: scalars, lists that are replaced
//! whole (atomic), empty maps and the items of keyed/set lists are members;
//! non-empty maps are not (their leaves are). Which lists are keyed comes from
//! [`list_strategy`], the table the strategic merge patch uses, with
//! `protocol` (default `TCP`) joining `containerPort`/`port` keys as upstream's
//! list-map keys do. This module only computes sets and edits values at
//! paths; who owns what is `managed.rs`'s business.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::{list_strategy, ListStrategy};

/// One step of a path, in FieldsV1 spelling (`f:spec`, `k:{"name":"c"}`, `v:"x"`).
pub type Path = Vec<String>;

/// Metadata the server owns: never part of a manager's set (upstream's stripMeta).
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// Which part of an object a write may own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Everything (kinds without a status subresource).
    All,
    /// Everything but `.status` (the main resource of a kind with `/status`).
    NoStatus,
    /// Only `.status` (the `/status` subresource).
    StatusOnly,
}

/// A set of field paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet(BTreeSet<Path>);

/// What a write changed: paths added or modified, and paths removed.
#[derive(Debug, Default)]
pub struct Changes {
    /// Members of the new object that are new or hold a different value.
    pub changed: FieldSet,
    /// Members of the old object that are gone.
    pub removed: FieldSet,
}

impl Changes {
    /// True when the write changed nothing that is tracked.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

impl FieldSet {
    /// The members of `obj` (an object of `kind`) within `section`.
    pub fn of_object(kind: &str, obj: &Value, section: Section) -> FieldSet {
        let mut set = FieldSet::default();
        Walker { kind }.members(obj, &mut Vec::new(), &mut Vec::new(), &mut set);
        set.restrict(section)
    }

    /// Parses a FieldsV1 tree; malformed parts are skipped.
    pub fn from_fields_v1(tree: &Value) -> FieldSet {
        fn walk(node: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
            let Some(map) = node.as_object() else { return };
            let children: Vec<_> = map.iter().filter(|(k, _)| k.as_str() != ".").collect();
            if !prefix.is_empty() && (children.is_empty() || map.contains_key(".")) {
                out.insert(prefix.clone());
            }
            for (key, child) in children {
                prefix.push(key.clone());
                walk(child, prefix, out);
                prefix.pop();
            }
        }
        let mut out = BTreeSet::new();
        walk(tree, &mut Vec::new(), &mut out);
        FieldSet(out)
    }

    /// The FieldsV1 tree of this set.
    pub fn to_fields_v1(&self) -> Value {
        let mut root = Map::new();
        for path in &self.0 {
            let mut node = &mut root;
            for step in path {
                node = node
                    .entry(step.clone())
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .expect("FieldsV1 nodes are objects");
            }
        }
        // A member with children carries ".": walk again now the tree is complete.
        for path in &self.0 {
            let mut node = &mut root;
            for step in path {
                node = node
                    .get_mut(step)
                    .and_then(Value::as_object_mut)
                    .expect("inserted above");
            }
            if !node.is_empty() {
                node.insert(".".into(), json!({}));
            }
        }
        Value::Object(root)
    }

    /// True when the set has no members.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The members, in order (a path sorts before its descendants).
    pub fn iter(&self) -> impl Iterator<Item = &Path> {
        self.0.iter()
    }

    /// True when `path` or something under it is a member.
    pub fn owns(&self, path: &Path) -> bool {
        self.0
            .range(path.clone()..)
            .next()
            .is_some_and(|p| p.starts_with(path))
    }

    /// Adds every member of `other`.
    pub fn union_with(&mut self, other: &FieldSet) {
        self.0.extend(other.0.iter().cloned());
    }

    /// Removes every member of `other`.
    pub fn subtract(&mut self, other: &FieldSet) {
        self.0.retain(|p| !other.0.contains(p));
    }

    /// The members also in `other`.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.intersection(&other.0).cloned().collect())
    }

    /// Adds one member.
    pub fn insert(&mut self, path: Path) {
        self.0.insert(path);
    }

    /// Keeps the members inside `section`.
    pub fn restrict(mut self, section: Section) -> FieldSet {
        let is_status = |p: &Path| p.first().is_some_and(|s| s == "f:status");
        match section {
            Section::All => {}
            Section::NoStatus => self.0.retain(|p| !is_status(p)),
            Section::StatusOnly => self.0.retain(is_status),
        }
        self
    }

    /// Merges an applied configuration into `live` (an object of `kind`) as
    /// server-side apply does: maps merge, items of keyed and set lists merge
    /// by their identity (so ports 53/TCP and 53/UDP stay two items), atomic
    /// lists and scalars are replaced, nulls in the configuration are ignored.
    pub fn merge_applied(kind: &str, live: &mut Value, config: &Value) {
        Walker { kind }.merge(live, config, &mut Vec::new());
    }

    /// What changed from `old` to `new` (objects of `kind`) within `section`.
    pub fn diff(kind: &str, old: &Value, new: &Value, section: Section) -> Changes {
        let mut changes = Changes::default();
        Walker { kind }.diff(
            Some(old),
            Some(new),
            &mut Vec::new(),
            &mut Vec::new(),
            &mut changes,
        );
        changes.changed = changes.changed.restrict(section);
        changes.removed = changes.removed.restrict(section);
        changes
    }
}

struct Walker<'a> {
    kind: &'a str,
}

impl Walker<'_> {
    /// Adds the members of `v` found at `path` (`names`: the field names on the way).
    fn members(&self, v: &Value, path: &mut Path, names: &mut Vec<String>, out: &mut FieldSet) {
        match v {
            Value::Object(map) if map.is_empty() => {
                if !path.is_empty() {
                    out.insert(path.clone());
                }
            }
            Value::Object(map) => {
                for (key, child) in map {
                    if ignored(names, key) {
                        continue;
                    }
                    path.push(format!("f:{key}"));
                    names.push(key.clone());
                    self.members(child, path, names, out);
                    names.pop();
                    path.pop();
                }
            }
            Value::Array(items) => match self.items(names, items) {
                Some(steps) => {
                    for (step, item) in steps.into_iter().zip(items) {
                        path.push(step);
                        out.insert(path.clone());
                        if item.is_object() {
                            self.members(item, path, names, out);
                        }
                        path.pop();
                    }
                }
                None => out.insert(path.clone()),
            },
            _ => out.insert(path.clone()),
        }
    }

    /// The path steps of a list's items, or None when the list is atomic
    /// (replaced whole, or its items lack or repeat their key).
    fn items(&self, names: &[String], items: &[Value]) -> Option<Vec<String>> {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let steps: Vec<String> = match list_strategy(self.kind, &names) {
            ListStrategy::Replace => return None,
            ListStrategy::MergePrimitives => items
                .iter()
                .map(|i| (!i.is_object() && !i.is_array()).then(|| format!("v:{i}")))
                .collect::<Option<_>>()?,
            ListStrategy::MergeByKey(key) => items
                .iter()
                .map(|i| item_key(key, i).map(|k| format!("k:{}", Value::Object(k))))
                .collect::<Option<_>>()?,
        };
        let unique: BTreeSet<&String> = steps.iter().collect();
        (unique.len() == steps.len()).then_some(steps)
    }

    fn merge(&self, live: &mut Value, config: &Value, names: &mut Vec<String>) {
        match (live, config) {
            (Value::Object(l), Value::Object(c)) => {
                for (key, value) in c.iter().filter(|(_, v)| !v.is_null()) {
                    names.push(key.clone());
                    match l.get_mut(key) {
                        Some(slot) => self.merge(slot, value, names),
                        None => {
                            l.insert(key.clone(), value.clone());
                        }
                    }
                    names.pop();
                }
            }
            (Value::Array(l), Value::Array(c)) => {
                match (self.items(names, l), self.items(names, c)) {
                    (Some(live_steps), Some(steps)) => {
                        for (step, item) in steps.iter().zip(c) {
                            match live_steps.iter().position(|s| s == step) {
                                Some(i) => self.merge(&mut l[i], item, names),
                                None => l.push(item.clone()),
                            }
                        }
                    }
                    _ => *l = c.clone(),
                }
            }
            (live, config) => *live = config.clone(),
        }
    }

    fn diff(
        &self,
        old: Option<&Value>,
        new: Option<&Value>,
        path: &mut Path,
        names: &mut Vec<String>,
        out: &mut Changes,
    ) {
        match (old, new) {
            (None, None) => {}
            (None, Some(n)) => self.members(n, path, names, &mut out.changed),
            (Some(o), None) => self.members(o, path, names, &mut out.removed),
            (Some(Value::Object(o)), Some(Value::Object(n))) => {
                if o.is_empty() != n.is_empty() && !path.is_empty() {
                    if n.is_empty() {
                        out.changed.insert(path.clone());
                    } else {
                        out.removed.insert(path.clone());
                    }
                }
                let keys: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
                for key in keys {
                    if ignored(names, key) {
                        continue;
                    }
                    path.push(format!("f:{key}"));
                    names.push(key.clone());
                    self.diff(o.get(key), n.get(key), path, names, out);
                    names.pop();
                    path.pop();
                }
            }
            (Some(old @ Value::Array(o)), Some(new @ Value::Array(n))) => {
                match (self.items(names, o), self.items(names, n)) {
                    (Some(os), Some(ns)) => {
                        for (step, item) in ns.iter().zip(n) {
                            let before = os.iter().position(|s| s == step).map(|i| &o[i]);
                            path.push(step.clone());
                            if before.is_none() {
                                out.changed.insert(path.clone());
                            }
                            if item.is_object() || before.is_some_and(Value::is_object) {
                                self.diff(before, Some(item), path, names, out);
                            }
                            path.pop();
                        }
                        for (step, item) in os.iter().zip(o) {
                            if !ns.contains(step) {
                                path.push(step.clone());
                                out.removed.insert(path.clone());
                                if item.is_object() {
                                    self.members(item, path, names, &mut out.removed);
                                }
                                path.pop();
                            }
                        }
                    }
                    _ if o == n => {}
                    _ => self.replaced(old, new, path, names, out),
                }
            }
            (Some(o), Some(n)) if o == n => {}
            (Some(o), Some(n)) => self.replaced(o, n, path, names, out),
        }
    }

    /// A value replaced by one of another shape: the old members go, the new ones come.
    fn replaced(
        &self,
        o: &Value,
        n: &Value,
        path: &mut Path,
        names: &mut Vec<String>,
        out: &mut Changes,
    ) {
        let mut before = FieldSet::default();
        self.members(o, path, names, &mut before);
        let mut after = FieldSet::default();
        self.members(n, path, names, &mut after);
        before.subtract(&after);
        out.removed.union_with(&before);
        out.changed.union_with(&after);
    }
}

/// Top-level identity and server-owned metadata are nobody's fields.
fn ignored(names: &[String], key: &str) -> bool {
    match names {
        [] => key == "apiVersion" || key == "kind",
        [meta] => meta == "metadata" && SERVER_METADATA.contains(&key),
        _ => false,
    }
}

/// The identity of an item of a list merged by `key`: the key's value, and
/// `protocol` (default TCP) beside port numbers, as upstream's list-map keys.
pub fn item_key(key: &str, item: &Value) -> Option<Map<String, Value>> {
    let value = item.get(key).filter(|v| !v.is_null() && !v.is_object())?;
    let mut out = Map::new();
    out.insert(key.to_string(), value.clone());
    if key == "containerPort" || key == "port" {
        let protocol = item.get("protocol").cloned().unwrap_or(json!("TCP"));
        out.insert("protocol".into(), protocol);
    }
    Some(out)
}

/// The value a path names inside `obj`.
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |node, step| match node {
        Value::Object(m) => m.get(step.strip_prefix("f:")?),
        Value::Array(items) => items.get(item_index(items, step)?),
        _ => None,
    })
}

/// Removes the value a path names (an object field or a list item).
pub fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = obj;
    for step in parents {
        let next = match node {
            Value::Object(m) => step.strip_prefix("f:").and_then(|f| m.get_mut(f)),
            Value::Array(items) => match item_index(items, step) {
                Some(i) => items.get_mut(i),
                None => None,
            },
            _ => None,
        };
        match next {
            Some(next) => node = next,
            None => return,
        }
    }
    match node {
        Value::Object(m) => {
            if let Some(field) = last.strip_prefix("f:") {
                m.remove(field);
            }
        }
        Value::Array(items) => {
            if let Some(i) = item_index(items, last) {
                items.remove(i);
            }
        }
        _ => {}
    }
}

/// The index of the list item a `k:` or `v:` step names.
fn item_index(items: &[Value], step: &str) -> Option<usize> {
    if let Some(key) = step.strip_prefix("k:") {
        let wanted: Map<String, Value> = serde_json::from_str(key).ok()?;
        let first = wanted
            .keys()
            .find(|k| k.as_str() != "protocol")
            .or(wanted.keys().next())?;
        items
            .iter()
            .position(|item| item_key(first, item).as_ref() == Some(&wanted))
    } else if let Some(v) = step.strip_prefix("v:") {
        let wanted: Value = serde_json::from_str(v).ok()?;
        items.iter().position(|item| *item == wanted)
    } else {
        None
    }
}

/// `.spec.replicas`, `.spec.containers[name="c"].image`, `.metadata.finalizers[="x"]`.
pub fn display(path: &[String]) -> String {
    let mut out = String::new();
    for step in path {
        if let Some(field) = step.strip_prefix("f:") {
            out.push('.');
            out.push_str(field);
        } else if let Some(key) = step.strip_prefix("k:") {
            let wanted: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
            let parts: Vec<String> = wanted.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = step.strip_prefix("v:") {
            out.push_str(&format!("[={v}]"));
        }
    }
    out
}
