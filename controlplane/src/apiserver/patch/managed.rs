//! Server-side apply, minimal: the applied configuration is merged into the
//! live object like a strategic merge patch (fields the configuration no
//! longer sets are not pruned), and the field manager's entry in
//! `metadata.managedFields` records the fields it applied (FieldsV1).
//! A field another manager applied with a different value is a conflict
//! (409) unless the request forces, which takes the field over. Ordinary
//! writes (create, update, patch) record no managedFields entries here, so
//! only fields owned through apply can conflict.

use serde_json::{json, Map, Value};

use super::{strategic, PatchError};

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

/// Merges `applied` into `live` (an object of `kind`) and records `manager`
/// as the owner of the applied fields.
pub fn server_side_apply(
    kind: &str,
    live: &Value,
    applied: &Map<String, Value>,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, PatchError> {
    let Value::Object(mut doc) = live.clone() else {
        return Err(PatchError::OriginalNotAnObject);
    };
    let config = Value::Object(applied.clone());
    let mut mine = Vec::new();
    leaves(&fields_v1(&config, true), &mut Vec::new(), &mut mine);
    let mut conflicts = Vec::new();
    if let Some(Value::Array(entries)) = doc
        .get_mut("metadata")
        .and_then(|m| m.get_mut("managedFields"))
    {
        for entry in entries.iter_mut().filter(|e| e["manager"] != manager) {
            let other = entry["manager"].as_str().unwrap_or("").to_string();
            for path in &mine {
                if !has_path(&entry["fieldsV1"], path)
                    || value_at(live, path) == value_at(&config, path)
                {
                    continue;
                }
                if force {
                    remove_path(&mut entry["fieldsV1"], path);
                } else {
                    conflicts.push(Conflict {
                        manager: other.clone(),
                        field: display_path(path),
                    });
                }
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(PatchError::ApplyConflicts(conflicts));
    }
    let mut merged = Value::Object(strategic::merge(kind, doc, applied.clone())?);
    record_manager(&mut merged, applied, manager, now);
    Ok(merged)
}

/// A field another manager owns with a different value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The manager owning the field.
    pub manager: String,
    /// The field, e.g. `.data.mode` or `.spec.containers[name="c"].image`.
    pub field: String,
}

/// Upstream's message: `Apply failed with 1 conflict: conflict with "m": .data.x`.
pub fn conflicts_message(conflicts: &[Conflict]) -> String {
    if let [only] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {:?}: {}",
            only.manager, only.field
        );
    }
    let mut out = format!("Apply failed with {} conflicts:", conflicts.len());
    for c in conflicts {
        out.push_str(&format!(" conflict with {:?}: {}", c.manager, c.field));
    }
    out
}

/// Paths (FieldsV1 keys) to the leaves of a FieldsV1 set.
fn leaves(set: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let Some(map) = set.as_object() else { return };
    let children: Vec<_> = map.iter().filter(|(k, _)| k.as_str() != ".").collect();
    if children.is_empty() {
        if !prefix.is_empty() {
            out.push(prefix.clone());
        }
        return;
    }
    for (key, child) in children {
        prefix.push(key.clone());
        leaves(child, prefix, out);
        prefix.pop();
    }
}

fn has_path(set: &Value, path: &[String]) -> bool {
    path.iter()
        .try_fold(set, |node, key| node.get(key))
        .is_some()
}

fn remove_path(set: &mut Value, path: &[String]) {
    if let Some((last, parents)) = path.split_last() {
        let mut node = set;
        for key in parents {
            match node.get_mut(key) {
                Some(next) => node = next,
                None => return,
            }
        }
        if let Some(map) = node.as_object_mut() {
            map.remove(last);
        }
    }
}

/// The value a FieldsV1 path names inside an object.
fn value_at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |node, key| {
        if let Some(field) = key.strip_prefix("f:") {
            node.get(field)
        } else if let Some(item_key) = key.strip_prefix("k:") {
            let wanted: Map<String, Value> = serde_json::from_str(item_key).ok()?;
            node.as_array()?
                .iter()
                .find(|item| wanted.iter().all(|(k, v)| item.get(k) == Some(v)))
        } else {
            None
        }
    })
}

/// `.data.mode`, `.spec.containers[name="c"].image`.
fn display_path(path: &[String]) -> String {
    let mut out = String::new();
    for key in path {
        if let Some(field) = key.strip_prefix("f:") {
            out.push('.');
            out.push_str(field);
        } else if let Some(item_key) = key.strip_prefix("k:") {
            let wanted: Map<String, Value> = serde_json::from_str(item_key).unwrap_or_default();
            let parts: Vec<String> = wanted.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        }
    }
    out
}

/// Sets (replaces) `manager`'s Apply entry in `obj`'s managedFields.
pub fn record_manager(obj: &mut Value, applied: &Map<String, Value>, manager: &str, now: &str) {
    let entry = json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": applied.get("apiVersion").cloned().unwrap_or(Value::Null),
        "time": now,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields_v1(&Value::Object(applied.clone()), true),
    });
    let Some(meta) = obj["metadata"].as_object_mut() else {
        return;
    };
    let list = meta
        .entry("managedFields")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !list.is_array() {
        *list = Value::Array(Vec::new());
    }
    if let Value::Array(entries) = list {
        entries.retain(|e| !(e["manager"] == manager && e["operation"] == "Apply"));
        entries.push(entry);
    }
}

/// The FieldsV1 set of a configuration: `f:<field>` for map keys,
/// `k:{"name":...}` for list items with a name, `.` for the item itself.
/// At the top, apiVersion, kind and metadata.name/namespace are identity,
/// not owned fields.
fn fields_v1(v: &Value, top: bool) -> Value {
    let mut out = Map::new();
    match v {
        Value::Object(map) => {
            for (key, child) in map {
                if top && (key == "apiVersion" || key == "kind") {
                    continue;
                }
                let child_fields = if top && key == "metadata" {
                    let mut meta = child.clone();
                    if let Some(m) = meta.as_object_mut() {
                        m.remove("name");
                        m.remove("namespace");
                    }
                    if meta.as_object().is_some_and(Map::is_empty) {
                        continue;
                    }
                    fields_v1(&meta, false)
                } else {
                    fields_v1(child, false)
                };
                out.insert(format!("f:{key}"), child_fields);
            }
        }
        Value::Array(items) => {
            for item in items {
                let Some(name) = item.get("name").filter(|n| n.is_string()) else {
                    continue;
                };
                let mut fields = fields_v1(item, false);
                if let Value::Object(f) = &mut fields {
                    f.insert(".".into(), json!({}));
                }
                out.insert(format!("k:{}", json!({ "name": name })), fields);
            }
        }
        _ => {}
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_cover_the_applied_configuration() {
        let applied = parse_apply(
            b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  labels: {x: y}\ndata: {k: v}\n",
        )
        .unwrap();
        let live = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "labels": {"old": "1"}}, "data": {"other": "2"}});
        let out = server_side_apply("ConfigMap", &live, &applied, "tool", false, "t").unwrap();
        assert_eq!(out["data"], json!({"k": "v", "other": "2"}));
        assert_eq!(out["metadata"]["labels"], json!({"x": "y", "old": "1"}));
        let entries = out["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            entries[0]["fieldsV1"],
            json!({"f:data": {"f:k": {}}, "f:metadata": {"f:labels": {"f:x": {}}}})
        );
        // Applying again replaces the manager's entry rather than adding one.
        let again = server_side_apply("ConfigMap", &out, &applied, "tool", false, "t2").unwrap();
        let entries = again["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["time"], "t2");
    }

    #[test]
    fn named_list_items_are_keyed() {
        let fields = fields_v1(
            &json!({"spec": {"containers": [{"name": "c", "image": "i"}]}}),
            true,
        );
        assert_eq!(
            fields,
            json!({"f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}}}}})
        );
    }

    #[test]
    fn another_managers_field_conflicts_unless_forced() {
        let first =
            parse_apply(b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: one}\n")
                .unwrap();
        let live = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}});
        let live = server_side_apply("ConfigMap", &live, &first, "alice", false, "t").unwrap();
        let same =
            parse_apply(b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: one}\n")
                .unwrap();
        // The same value is shared ownership, not a conflict.
        assert!(server_side_apply("ConfigMap", &live, &same, "bob", false, "t").is_ok());
        let other =
            parse_apply(b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: two}\n")
                .unwrap();
        match server_side_apply("ConfigMap", &live, &other, "bob", false, "t") {
            Err(PatchError::ApplyConflicts(c)) => assert_eq!(
                conflicts_message(&c),
                "Apply failed with 1 conflict: conflict with \"alice\": .data.k"
            ),
            other => panic!("expected a conflict, got {other:?}"),
        }
        let forced = server_side_apply("ConfigMap", &live, &other, "bob", true, "t").unwrap();
        assert_eq!(forced["data"]["k"], "two");
        let alice = &forced["metadata"]["managedFields"][0];
        assert_eq!(alice["manager"], "alice");
        assert_eq!(alice["fieldsV1"]["f:data"], json!({}), "{forced}");
    }

    #[test]
    fn non_objects_are_rejected() {
        assert!(matches!(
            parse_apply(b"- a\n- b\n"),
            Err(PatchError::BadApplyBody(_))
        ));
    }
}
