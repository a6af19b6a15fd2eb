//! Field ownership (`metadata.managedFields`) and server-side apply, after
//! upstream's structured-merge-diff `Updater`.
//!
//! Every write names a field manager. Ordinary writes (create, update, patch)
//! are `Update` operations: the fields they add or change become the
//! manager's and are taken from everyone else, fields they remove leave every
//! set. An `Apply` merges the applied configuration into the live object,
//! prunes the fields the manager applied last time and no longer applies
//! (unless another manager owns them), fails with conflicts when it would
//! change a field another manager owns (unless forced, which takes the field
//! over), and makes the configuration's fields the manager's whole set; the
//! merge keys list items like `fieldset.rs` does, not like the strategic
//! merge patch (ports 53/TCP and 53/UDP are two items). Fields of an object
//! nobody owns yet belong to `before-first-apply`, as upstream.
//! Field sets themselves live in `fieldset.rs`; this module never touches
//! the store.

use std::cmp::Ordering;

use serde_json::{json, Map, Value};

use super::fieldset::{display, remove_at, value_at, FieldSet, Path, Section};
use super::PatchError;

/// Who writes and through which endpoint: what identifies a managedFields entry.
#[derive(Debug, Clone)]
pub struct Writer {
    /// The field manager (`?fieldManager=`, else the User-Agent's product).
    pub manager: String,
    /// The group/version the request used, e.g. `apps/v1`.
    pub api_version: String,
    /// The subresource written through (`status`, `scale`), empty for the main resource.
    pub subresource: &'static str,
    /// The part of the object this endpoint writes.
    pub section: Section,
    /// The request time, RFC 3339.
    pub now: String,
}

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    subresource: String,
    fields: FieldSet,
}

impl Entry {
    fn new(writer: &Writer, operation: &str, fields: FieldSet) -> Entry {
        Entry {
            manager: writer.manager.clone(),
            operation: operation.to_string(),
            api_version: writer.api_version.clone(),
            time: Some(writer.now.clone()),
            subresource: writer.subresource.to_string(),
            fields,
        }
    }

    fn is(&self, writer: &Writer, operation: &str) -> bool {
        self.manager == writer.manager
            && self.operation == operation
            && self.subresource == writer.subresource
    }

    fn parse(v: &Value) -> Entry {
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        Entry {
            manager: text("manager"),
            operation: text("operation"),
            api_version: text("apiVersion"),
            time: v["time"].as_str().map(str::to_string),
            subresource: text("subresource"),
            fields: FieldSet::from_fields_v1(&v["fieldsV1"]),
        }
    }

    fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("manager".into(), json!(self.manager));
        out.insert("operation".into(), json!(self.operation));
        out.insert("apiVersion".into(), json!(self.api_version));
        if let Some(time) = &self.time {
            out.insert("time".into(), json!(time));
        }
        out.insert("fieldsType".into(), json!("FieldsV1"));
        out.insert("fieldsV1".into(), self.fields.to_fields_v1());
        if !self.subresource.is_empty() {
            out.insert("subresource".into(), json!(self.subresource));
        }
        Value::Object(out)
    }

    /// Upstream's `printManager`: `"kubectl"`, `"kubectl-edit" using v1 at <time>`.
    fn describe(&self) -> String {
        let mut out = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            out.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == "Update" {
            out.push_str(&format!(" using {}", self.api_version));
            if let Some(time) = &self.time {
                out.push_str(&format!(" at {time}"));
            }
        }
        out
    }

    /// Upstream's order: Apply before Update, then by time, manager, version, subresource.
    fn order(&self, other: &Entry) -> Ordering {
        (
            &self.operation,
            &self.time,
            &self.manager,
            &self.api_version,
            &self.subresource,
        )
            .cmp(&(
                &other.operation,
                &other.time,
                &other.manager,
                &other.api_version,
                &other.subresource,
            ))
    }
}

fn read_entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|list| list.iter().map(Entry::parse).collect())
        .unwrap_or_default()
}

fn write_entries(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.fields.is_empty());
    entries.sort_by(Entry::order);
    let Some(meta) = obj["metadata"].as_object_mut() else {
        return;
    };
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        let list = entries.iter().map(Entry::to_json).collect();
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

/// Parses an `application/apply-patch+yaml` body (YAML or JSON) into an object.
pub fn parse_apply(body: &[u8]) -> Result<Map<String, Value>, PatchError> {
    match serde_yaml::from_slice::<Value>(body) {
        Ok(Value::Object(mut obj)) => {
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("managedFields");
                meta.remove("resourceVersion");
            }
            Ok(obj)
        }
        Ok(_) => Err(PatchError::BadApplyBody(
            "the applied configuration must be an object".into(),
        )),
        Err(e) => Err(PatchError::BadApplyBody(e.to_string())),
    }
}

/// Applies `applied` to `live` (an object of `kind`) for `writer`: merge,
/// prune what the manager stopped applying, check conflicts (taking the
/// fields over when `force`), and record the manager's Apply entry.
pub fn server_side_apply(
    kind: &str,
    live: &Value,
    applied: &Map<String, Value>,
    writer: &Writer,
    force: bool,
) -> Result<Value, PatchError> {
    if !live.is_object() {
        return Err(PatchError::OriginalNotAnObject);
    }
    let mut entries = read_entries(live);
    if entries.is_empty() {
        // As upstream: an object nobody owns yet (written before fields were
        // tracked, or with managedFields reset) is owned by "before-first-apply".
        let fields = FieldSet::of_object(kind, live, writer.section);
        let writer = Writer {
            manager: "before-first-apply".into(),
            ..writer.clone()
        };
        entries.push(Entry::new(&writer, "Update", fields));
    }
    let config = Value::Object(applied.clone());
    let new_set = FieldSet::of_object(kind, &config, writer.section);
    let mine = entries.iter().position(|e| e.is(writer, "Apply"));
    let last = mine.map(|i| entries.remove(i));

    let mut merged = live.clone();
    FieldSet::merge_applied(kind, &mut merged, &config);
    if let Some(last) = &last {
        let mut others: Vec<&FieldSet> = entries.iter().map(|e| &e.fields).collect();
        others.push(&new_set);
        prune(&mut merged, &last.fields, &others);
    }

    let changes = FieldSet::diff(kind, live, &merged, writer.section);
    let mut conflicts = Vec::new();
    for entry in &mut entries {
        let taken = entry.fields.intersection(&changes.changed);
        if !force {
            conflicts.extend(taken.iter().map(|path| Conflict {
                manager: entry.describe(),
                field: display(path),
            }));
        }
        entry.fields.subtract(&taken);
        entry.fields.subtract(&changes.removed);
    }
    if !conflicts.is_empty() {
        conflicts.sort_by(|a, b| (&a.manager, &a.field).cmp(&(&b.manager, &b.field)));
        return Err(PatchError::ApplyConflicts(conflicts));
    }
    let entry = match last {
        Some(last) if changes.is_empty() && last.fields == new_set => last,
        _ => Entry::new(writer, "Apply", new_set),
    };
    entries.push(entry);
    write_entries(&mut merged, entries);
    Ok(merged)
}

/// Removes from `obj` the members of `last` (a manager's previous Apply set)
/// that no set in `kept` owns (itself or below), then maps and lists that
/// the removal emptied and nobody owns.
fn prune(obj: &mut Value, last: &FieldSet, kept: &[&FieldSet]) {
    let owned = |p: &Path| kept.iter().any(|s| s.owns(p));
    let mut removed: Vec<&Path> = Vec::new();
    for path in last.iter() {
        if removed.iter().any(|r| path.starts_with(r)) || owned(path) {
            continue;
        }
        remove_at(obj, path);
        removed.push(path);
    }
    for path in removed {
        let mut parent = path.clone();
        while parent.pop().is_some() && !parent.is_empty() {
            let emptied = match value_at(obj, &parent) {
                Some(Value::Object(m)) => m.is_empty(),
                Some(Value::Array(a)) => a.is_empty(),
                _ => false,
            };
            if !emptied || owned(&parent) {
                break;
            }
            remove_at(obj, &parent);
        }
    }
}

/// Records a create by `writer` (an Update of every field the new object has).
pub fn record_create(kind: &str, obj: &mut Value, writer: &Writer) {
    let fields = FieldSet::of_object(kind, obj, writer.section);
    write_entries(obj, vec![Entry::new(writer, "Update", fields)]);
}

/// Records the Apply entry of an object server-side apply creates.
pub fn record_apply_create(
    kind: &str,
    obj: &mut Value,
    applied: &Map<String, Value>,
    writer: &Writer,
) {
    let fields = FieldSet::of_object(kind, &Value::Object(applied.clone()), writer.section);
    write_entries(obj, vec![Entry::new(writer, "Apply", fields)]);
}

/// Records an ordinary write of `old` into `new` by `writer`.
///
/// As upstream, `new`'s own managedFields are the starting point when the
/// client sent some (a `[{}]` list resets them), else `old`'s are.
pub fn record_update(kind: &str, old: &Value, new: &mut Value, writer: &Writer) {
    let sent = new["metadata"]["managedFields"].as_array().cloned();
    let mut entries = match sent {
        None => read_entries(old),
        Some(list) if list.is_empty() => read_entries(old),
        Some(list)
            if list
                .iter()
                .any(|e| e.as_object().is_some_and(Map::is_empty)) =>
        {
            Vec::new()
        }
        Some(_) => read_entries(new),
    };
    let changes = FieldSet::diff(kind, old, new, writer.section);
    if changes.is_empty() {
        // Nothing tracked changed: keep the entries, byte for byte when the
        // client sent them back unchanged, so a no-op write stays a no-op.
        if entries != read_entries(new) {
            write_entries(new, entries);
        }
        return;
    }
    let mine = entries.iter().position(|e| e.is(writer, "Update"));
    let mut fields = mine.map(|i| entries.remove(i).fields).unwrap_or_default();
    for entry in &mut entries {
        entry.fields.subtract(&changes.changed);
        entry.fields.subtract(&changes.removed);
    }
    fields.subtract(&changes.removed);
    fields.union_with(&changes.changed);
    entries.push(Entry::new(writer, "Update", fields));
    cap_update_managers(&mut entries);
    write_entries(new, entries);
}

/// Upstream keeps at most this many `Update` entries on an object.
pub const MAX_UPDATE_MANAGERS: usize = 10;

/// The manager the oldest `Update` entries are merged into beyond the cap.
pub const ANCIENT_CHANGES: &str = "ancient-changes";

/// Upstream's `capUpdateManagers`: while more than [`MAX_UPDATE_MANAGERS`]
/// Update entries remain, the oldest (by time in seconds, then manager) are
/// merged per API version into one `ancient-changes` entry, which takes the
/// time of the newest entry merged into it. Apply entries are never merged.
fn cap_update_managers(entries: &mut Vec<Entry>) {
    let seconds = |e: &Entry| {
        e.time
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map_or(0, |t| t.as_second())
    };
    let mut updaters: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].operation != "Apply")
        .collect();
    if updaters.len() <= MAX_UPDATE_MANAGERS {
        return;
    }
    updaters.sort_by(|&a, &b| {
        let (a, b) = (&entries[a], &entries[b]);
        (seconds(a), &a.manager, &a.api_version, &a.subresource).cmp(&(
            seconds(b),
            &b.manager,
            &b.api_version,
            &b.subresource,
        ))
    });
    let is_bucket = |e: &Entry, version: &str| {
        e.manager == ANCIENT_CHANGES
            && e.operation == "Update"
            && e.api_version == version
            && e.subresource.is_empty()
    };
    let mut merged = vec![false; entries.len()];
    let mut first_of_version: Vec<(String, usize)> = Vec::new();
    let mut length = updaters.len();
    for i in updaters {
        if length <= MAX_UPDATE_MANAGERS {
            break;
        }
        let version = entries[i].api_version.clone();
        let Some(first) = first_of_version
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, f)| *f)
        else {
            first_of_version.push((version, i));
            continue;
        };
        let bucket = (0..entries.len()).find(|&b| !merged[b] && is_bucket(&entries[b], &version));
        let bucket = match bucket {
            Some(b) => b,
            None => {
                // The first entry of this version becomes the bucket.
                entries[first].manager = ANCIENT_CHANGES.to_string();
                entries[first].subresource = String::new();
                first
            }
        };
        if bucket == i {
            continue;
        }
        let fields = entries[i].fields.clone();
        entries[bucket].fields.union_with(&fields);
        entries[bucket].time = entries[i].time.clone();
        merged[i] = true;
        length -= 1;
    }
    let mut index = 0;
    entries.retain(|_| {
        let keep = !merged[index];
        index += 1;
        keep
    });
}

/// A field another manager owns and the apply would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The owner as upstream prints it: `"m"`, or `"m" using v1 at <time>` for Update owners.
    pub manager: String,
    /// The field, e.g. `.data.mode` or `.spec.containers[name="c"].image`.
    pub field: String,
}

/// Upstream's message: `Apply failed with 1 conflict: conflict with "m": .data.x`,
/// and for several, one `conflicts with <manager>:` line per owner listing `- <field>`.
pub fn conflicts_message(conflicts: &[Conflict]) -> String {
    if let [only] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            only.manager, only.field
        );
    }
    let mut managers: Vec<&str> = conflicts.iter().map(|c| c.manager.as_str()).collect();
    managers.sort_unstable();
    managers.dedup();
    let mut lines = Vec::new();
    for manager in managers {
        lines.push(format!("conflicts with {manager}:"));
        for c in conflicts.iter().filter(|c| c.manager == manager) {
            lines.push(format!("- {}", c.field));
        }
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests;
