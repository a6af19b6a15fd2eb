use serde_json::json;

use super::*;

fn writer(manager: &str, now: &str) -> Writer {
    Writer {
        manager: manager.into(),
        api_version: "v1".into(),
        subresource: "",
        section: Section::All,
        now: now.into(),
    }
}

fn apply(live: &Value, yaml: &str, manager: &str) -> Result<Value, PatchError> {
    let kind = live["kind"].as_str().unwrap_or("ConfigMap").to_string();
    let applied = parse_apply(yaml.as_bytes()).unwrap();
    server_side_apply(&kind, live, &applied, &writer(manager, "t"), false)
}

fn entry<'a>(obj: &'a Value, manager: &str) -> &'a Value {
    obj["metadata"]["managedFields"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["manager"] == manager))
        .unwrap_or_else(|| panic!("no entry for {manager}: {obj}"))
}

#[test]
fn fields_cover_the_applied_configuration() {
    let live = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "a", "labels": {"old": "1"}}, "data": {"other": "2"}});
    let out = apply(
        &live,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  labels: {x: y}\ndata: {k: v}\n",
        "tool",
    )
    .unwrap();
    assert_eq!(out["data"], json!({"k": "v", "other": "2"}));
    assert_eq!(out["metadata"]["labels"], json!({"x": "y", "old": "1"}));
    assert_eq!(
        entry(&out, "tool")["fieldsV1"],
        json!({"f:data": {"f:k": {}}, "f:metadata": {"f:labels": {"f:x": {}}}})
    );
    // What was there before keeps its owner.
    assert_eq!(
        entry(&out, "before-first-apply")["fieldsV1"],
        json!({"f:data": {"f:other": {}}, "f:metadata": {"f:labels": {"f:old": {}}}})
    );
    // Applying the same configuration again changes nothing, not even the time.
    let applied = parse_apply(
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  labels: {x: y}\ndata: {k: v}\n",
    )
    .unwrap();
    let again =
        server_side_apply("ConfigMap", &out, &applied, &writer("tool", "t2"), false).unwrap();
    assert_eq!(again, out);
}

#[test]
fn keyed_list_items_carry_their_keys() {
    let fields = FieldSet::of_object(
        "Pod",
        &json!({"spec": {"containers": [{"name": "c", "image": "i",
            "ports": [{"containerPort": 80}], "env": [{"name": "A", "value": "1"}]}],
            "tolerations": [{"key": "k", "operator": "Exists"}]},
            "metadata": {"name": "p", "finalizers": ["x"]}}),
        Section::All,
    );
    assert_eq!(
        fields.to_fields_v1(),
        json!({
            "f:metadata": {"f:finalizers": {"v:\"x\"": {}}},
            "f:spec": {
                "f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {},
                    "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}},
                    "f:env": {"k:{\"name\":\"A\"}": {".": {}, "f:name": {}, "f:value": {}}}}},
                "f:tolerations": {}
            }
        })
    );
    assert_eq!(FieldSet::from_fields_v1(&fields.to_fields_v1()), fields);
}

#[test]
fn another_managers_field_conflicts_unless_forced() {
    let live = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}});
    let one = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: one}\n";
    let live = apply(&live, one, "alice").unwrap();
    // The same value is shared ownership, not a conflict.
    let shared = apply(&live, one, "bob").unwrap();
    assert_eq!(
        entry(&shared, "bob")["fieldsV1"],
        json!({"f:data": {"f:k": {}}})
    );
    let two = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: two}\n";
    match apply(&live, two, "bob") {
        Err(PatchError::ApplyConflicts(c)) => assert_eq!(
            conflicts_message(&c),
            "Apply failed with 1 conflict: conflict with \"alice\": .data.k"
        ),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let applied = parse_apply(two.as_bytes()).unwrap();
    let forced =
        server_side_apply("ConfigMap", &live, &applied, &writer("bob", "t"), true).unwrap();
    assert_eq!(forced["data"]["k"], "two");
    // alice lost her only field, so her entry is gone.
    let managers: Vec<&Value> = forced["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["manager"])
        .collect();
    assert_eq!(managers, [&json!("bob")], "{forced}");
}

#[test]
fn fields_no_longer_applied_are_removed_unless_someone_else_owns_them() {
    let live = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}});
    let first = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n  labels: {x: '1', y: '2'}\n  annotations: {note: hi}\nspec:\n  replicas: 2\n";
    let live = apply(&live, first, "kubectl").unwrap();
    // Another manager applies label y too: it stays when kubectl drops it.
    let live = apply(
        &live,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n  labels: {y: '2'}\n",
        "other",
    )
    .unwrap();
    let second = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n  labels: {x: '1'}\nspec:\n  replicas: 2\n";
    let out = apply(&live, second, "kubectl").unwrap();
    assert_eq!(
        out["metadata"]["labels"],
        json!({"x": "1", "y": "2"}),
        "{out}"
    );
    assert!(out["metadata"].get("annotations").is_none(), "{out}");
    assert_eq!(out["spec"]["replicas"], 2);
    // Dropping the last field of a map drops the emptied map as well.
    let third = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n  labels: {x: '1'}\n";
    let out = apply(&out, third, "kubectl").unwrap();
    assert!(out.get("spec").is_none(), "{out}");
}

#[test]
fn keyed_list_items_are_added_and_removed() {
    let live = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
    let first = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "app", "image": "a", "ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}],
         "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
        {"name": "side", "image": "s"}]}}"#;
    let mut live = apply(&live, first, "kubectl").unwrap();
    // Defaults nobody applied live in the object too.
    live["spec"]["containers"][0]["imagePullPolicy"] = json!("Always");
    let second = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "app", "image": "a2", "ports": [{"containerPort": 53, "protocol": "UDP"}, {"containerPort": 8080}],
         "env": [{"name": "B", "value": "2"}]}]}}"#;
    let out = apply(&live, second, "kubectl").unwrap();
    let containers = out["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "{out}");
    let app = &containers[0];
    assert_eq!(app["image"], "a2");
    assert_eq!(app["imagePullPolicy"], "Always", "unowned fields stay");
    let ports: Vec<&Value> = app["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["containerPort"])
        .collect();
    assert_eq!(ports.len(), 2, "{out}");
    assert!(
        ports.contains(&&json!(53)) && ports.contains(&&json!(8080)),
        "{out}"
    );
    assert_eq!(app["env"], json!([{"name": "B", "value": "2"}]));
}

#[test]
fn updates_own_what_they_change_and_apply_conflicts_with_them() {
    let live = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}});
    let live = apply(
        &live,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: one, j: x}\n",
        "kubectl",
    )
    .unwrap();
    let mut edited = live.clone();
    edited["data"]["k"] = json!("edited");
    edited["data"]["new"] = json!("n");
    record_update(
        "ConfigMap",
        &live,
        &mut edited,
        &writer("kubectl-edit", "2026-01-01T00:00:00Z"),
    );
    assert_eq!(
        entry(&edited, "kubectl-edit")["fieldsV1"],
        json!({"f:data": {"f:k": {}, "f:new": {}}})
    );
    assert_eq!(entry(&edited, "kubectl-edit")["operation"], "Update");
    assert_eq!(
        entry(&edited, "kubectl")["fieldsV1"],
        json!({"f:data": {"f:j": {}}})
    );
    // Applying the old value back conflicts with the editor.
    match apply(
        &edited,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: one, j: x}\n",
        "kubectl",
    ) {
        Err(PatchError::ApplyConflicts(c)) => assert_eq!(
            conflicts_message(&c),
            "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using v1 at 2026-01-01T00:00:00Z: .data.k"
        ),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // A no-op update leaves the entries alone.
    let mut same = edited.clone();
    record_update("ConfigMap", &edited, &mut same, &writer("x", "later"));
    assert_eq!(same, edited);
}

#[test]
fn creates_own_every_field() {
    let mut obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "a", "uid": "u", "labels": {"l": "1"}}, "data": {"k": "v"}});
    record_create("ConfigMap", &mut obj, &writer("kubectl-create", "t"));
    let e = entry(&obj, "kubectl-create");
    assert_eq!(e["operation"], "Update");
    assert_eq!(
        e["fieldsV1"],
        json!({"f:data": {"f:k": {}}, "f:metadata": {"f:labels": {"f:l": {}}}})
    );
}

#[test]
fn several_conflicts_are_listed_per_manager() {
    let c = |m: &str, f: &str| Conflict {
        manager: m.into(),
        field: f.into(),
    };
    assert_eq!(
        conflicts_message(&[c("\"b\"", ".x"), c("\"a\"", ".y"), c("\"b\"", ".z")]),
        "Apply failed with 3 conflicts: conflicts with \"a\":\n- .y\nconflicts with \"b\":\n- .x\n- .z"
    );
}

#[test]
fn non_objects_are_rejected() {
    assert!(matches!(
        parse_apply(b"- a\n- b\n"),
        Err(PatchError::BadApplyBody(_))
    ));
}

#[test]
fn ports_sharing_a_number_are_told_apart_by_protocol() {
    let dns = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dns"}, "spec": {"ports": [
        {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}}"#;
    let live = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dns"}});
    let live = apply(&live, dns, "kubectl").unwrap();
    let again = apply(&live, dns, "kubectl").unwrap();
    assert_eq!(again["spec"]["ports"], live["spec"]["ports"], "{again}");
    assert_eq!(again["spec"]["ports"].as_array().map(Vec::len), Some(2));
}

#[test]
fn fields_nobody_tracked_belong_to_before_first_apply() {
    let live = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "a"}, "data": {"k": "old", "j": "same"}});
    match apply(
        &live,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: new, j: same}\n",
        "kubectl",
    ) {
        Err(PatchError::ApplyConflicts(c)) => assert_eq!(
            conflicts_message(&c),
            "Apply failed with 1 conflict: conflict with \"before-first-apply\" using v1 at t: .data.k"
        ),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let out = apply(
        &live,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {j: same}\n",
        "kubectl",
    )
    .unwrap();
    assert_eq!(
        entry(&out, "before-first-apply")["fieldsV1"],
        json!({"f:data": {"f:j": {}, "f:k": {}}})
    );
    assert_eq!(
        entry(&out, "kubectl")["fieldsV1"],
        json!({"f:data": {"f:j": {}}})
    );
}

/// `n` kubectl-style managers, each editing its own key of a ConfigMap one
/// second after the previous one, in `version`.
fn updated_by_many(start: Value, n: usize, version: &str) -> Value {
    let mut obj = start;
    for i in 0..n {
        let mut next = obj.clone();
        next["data"][format!("k{i:02}")] = json!("v");
        let mut w = writer(&format!("m{i:02}"), &format!("2026-01-01T00:00:{i:02}Z"));
        w.api_version = version.into();
        record_update("ConfigMap", &obj, &mut next, &w);
        obj = next;
    }
    obj
}

fn managers(obj: &Value) -> Vec<String> {
    obj["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .map(|e| e["manager"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn more_than_ten_update_managers_merge_the_oldest_into_ancient_changes() {
    let live = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}});
    let live = apply(
        &live,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {applied: x}\n",
        "kubectl",
    )
    .unwrap();
    let ten = updated_by_many(live.clone(), 10, "v1");
    assert_eq!(managers(&ten).len(), 11, "ten updaters and the applier");
    assert!(!managers(&ten).contains(&ANCIENT_CHANGES.to_string()));

    let twelve = updated_by_many(live, 12, "v1");
    let names = managers(&twelve);
    // m00 and m01 and m02 became one entry: 10 Update entries plus the Apply.
    assert_eq!(names.len(), 11, "{names:?}");
    assert!(names.contains(&"kubectl".to_string()));
    for gone in ["m00", "m01", "m02"] {
        assert!(!names.contains(&gone.to_string()), "{names:?}");
    }
    let bucket = entry(&twelve, ANCIENT_CHANGES);
    assert_eq!(bucket["operation"], "Update");
    assert_eq!(bucket["apiVersion"], "v1");
    assert_eq!(
        bucket["fieldsV1"],
        json!({"f:data": {"f:k00": {}, "f:k01": {}, "f:k02": {}}})
    );
    // The bucket carries the newest time merged into it.
    assert_eq!(bucket["time"], "2026-01-01T00:00:02Z");
    assert_eq!(entry(&twelve, "kubectl")["operation"], "Apply");
}

#[test]
fn ancient_changes_keeps_one_bucket_per_api_version() {
    let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}});
    // Two old managers in another version, then eleven in v1.
    let mut obj = updated_by_many(obj, 2, "v1beta1");
    for i in 0..11 {
        let mut next = obj.clone();
        next["data"][format!("n{i:02}")] = json!("v");
        let w = writer(&format!("n{i:02}"), &format!("2026-01-01T00:01:{i:02}Z"));
        record_update("ConfigMap", &obj, &mut next, &w);
        obj = next;
    }
    let entries = obj["metadata"]["managedFields"]
        .as_array()
        .expect("entries");
    assert_eq!(entries.len(), 10, "{entries:?}");
    let buckets: Vec<&Value> = entries
        .iter()
        .filter(|e| e["manager"] == ANCIENT_CHANGES)
        .collect();
    // m00 and m01 (v1beta1) merged; then n00 was the first v1 one and n01
    // joined it: two buckets, one per version.
    assert_eq!(buckets.len(), 2, "{entries:?}");
    let versions: Vec<&str> = buckets
        .iter()
        .map(|b| b["apiVersion"].as_str().unwrap_or(""))
        .collect();
    assert!(
        versions.contains(&"v1beta1") && versions.contains(&"v1"),
        "{versions:?}"
    );
    // Another update merges into the existing v1 bucket, not a new one.
    let mut next = obj.clone();
    next["data"]["late"] = json!("v");
    record_update(
        "ConfigMap",
        &obj,
        &mut next,
        &writer("late", "2026-01-01T00:02:00Z"),
    );
    let entries = next["metadata"]["managedFields"]
        .as_array()
        .expect("entries");
    assert_eq!(entries.len(), 10, "{entries:?}");
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["manager"] == ANCIENT_CHANGES)
            .count(),
        2
    );
}
