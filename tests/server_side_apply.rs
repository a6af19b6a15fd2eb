//! Server-side apply through the real kubectl (`kubectl apply --server-side`):
//! create, merge, managedFields, conflicts between field managers.

mod common;

use common::{StoreKind, TestServer};

/// `kubectl apply --server-side`: creates missing objects, merges into live
/// ones, records the field manager in managedFields, and refuses to change
/// another manager's field unless forced.
#[test]
fn server_side_apply_creates_merges_and_records_the_manager() {
    let server = TestServer::start(StoreKind::Redb);
    let config = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: default, labels: {tier: web}}\ndata: {mode: MODE}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: reader, namespace: default}\nrules:\n- apiGroups: [\"\"]\n  resources: [pods]\n  verbs: [get]\n";
    let out = server.kubectl_stdin_ok(
        &["apply", "--server-side", "-f", "-"],
        &config.replace("MODE", "fast"),
    );
    assert!(
        out.contains("configmap/settings serverside-applied")
            && out.contains("role.rbac.authorization.k8s.io/reader serverside-applied"),
        "{out}"
    );
    let get = || -> serde_json::Value {
        let out = server.kubectl_ok(&[
            "get",
            "cm",
            "settings",
            "-o",
            "json",
            "--show-managed-fields",
        ]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}\n{out}"))
    };
    let cm = get();
    assert_eq!(cm["data"]["mode"], "fast", "{cm}");
    let entries = cm["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let kubectl = entries
        .iter()
        .find(|e| e["manager"] == "kubectl" && e["operation"] == "Apply")
        .unwrap_or_else(|| panic!("no kubectl Apply entry: {cm}"));
    assert_eq!(kubectl["fieldsType"], "FieldsV1");
    assert_eq!(
        kubectl["fieldsV1"]["f:data"]["f:mode"],
        serde_json::json!({}),
        "{cm}"
    );
    assert_eq!(
        kubectl["fieldsV1"]["f:metadata"]["f:labels"]["f:tier"],
        serde_json::json!({}),
        "{cm}"
    );

    // Another writer adds a key; re-applying changes mode and keeps it.
    server.kubectl_ok(&[
        "patch",
        "cm",
        "settings",
        "--type=merge",
        "-p",
        r#"{"data":{"extra":"1"}}"#,
    ]);
    let out = server.kubectl_stdin_ok(
        &["apply", "--server-side", "-f", "-"],
        &config.replace("MODE", "slow"),
    );
    assert!(
        out.contains("configmap/settings serverside-applied"),
        "{out}"
    );
    let cm = get();
    assert_eq!(
        cm["data"],
        serde_json::json!({"mode": "slow", "extra": "1"}),
        "{cm}"
    );

    // A second manager gets its own entry; kubectl's stays once.
    server.kubectl_stdin_ok(
        &["apply", "--server-side", "--field-manager=deployer", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: default}\ndata: {owner: ops}\n",
    );
    let cm = get();
    let managers: Vec<&str> = cm["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["operation"] == "Apply")
                .filter_map(|e| e["manager"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(managers, ["kubectl", "deployer"], "{cm}");
    assert_eq!(cm["data"]["owner"], "ops", "{cm}");

    // A different value for a field "deployer" applied is a conflict...
    let taking = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: default}\ndata: {owner: dev}\n";
    let err = server.kubectl_stdin(&["apply", "--server-side", "-f", "-"], taking);
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(!err.status.success(), "conflicting apply should fail");
    assert!(
        stderr.contains(r#"Apply failed with 1 conflict: conflict with "deployer": .data.owner"#),
        "{stderr}"
    );
    assert_eq!(get()["data"]["owner"], "ops");
    // ...that --force-conflicts takes over.
    server.kubectl_stdin_ok(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        taking,
    );
    let cm = get();
    assert_eq!(cm["data"]["owner"], "dev", "{cm}");
    let deployer = cm["metadata"]["managedFields"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["manager"] == "deployer").cloned())
        .unwrap_or_default();
    assert!(
        deployer["fieldsV1"]["f:data"].get("f:owner").is_none(),
        "{cm}"
    );

    // An invalid applied configuration is rejected like any write.
    let err = server.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: broken, namespace: default}\nrules:\n- apiGroups: [\"\"]\n  resources: [pods]\n",
    );
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(!err.status.success(), "broken role should be rejected");
    assert!(
        stderr.contains("rules[0].verbs: Required value"),
        "{stderr}"
    );
}
