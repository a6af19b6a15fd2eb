//! Server-side apply through the real kubectl (`kubectl apply --server-side`):
//! create, merge, pruning of fields a manager stops applying, managedFields
//! of applies and ordinary writes, conflicts between field managers.

mod common;

use common::{StoreKind, TestServer};
use serde_json::{json, Value};

/// The object as `kubectl get -o json --show-managed-fields` prints it.
fn get_json(server: &TestServer, what: &[&str]) -> Value {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend(["-o", "json", "--show-managed-fields"]);
    let out = server.kubectl_ok(&args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}\n{out}"))
}

/// The managedFields entry of `manager` with `operation`.
fn entry(obj: &Value, manager: &str, operation: &str) -> Value {
    obj["metadata"]["managedFields"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|e| e["manager"] == manager && e["operation"] == operation)
                .cloned()
        })
        .unwrap_or_else(|| panic!("no {operation} entry for {manager}: {obj}"))
}

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
    let mut managers: Vec<&str> = cm["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["operation"] == "Apply")
                .filter_map(|e| e["manager"].as_str())
                .collect()
        })
        .unwrap_or_default();
    managers.sort_unstable();
    assert_eq!(managers, ["deployer", "kubectl"], "{cm}");
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

const WEB_V1: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
  labels: {app: web, tier: frontend}
  annotations: {note: hello}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: app
        image: skiff.test/app:1
        ports:
        - {containerPort: 80}
        - {containerPort: 53, protocol: UDP}
        env:
        - {name: A, value: "1"}
        - {name: B, value: "2"}
      - name: side
        image: skiff.test/side:1
"#;

const WEB_V2: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
  labels: {app: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: app
        image: skiff.test/app:2
        ports:
        - {containerPort: 53, protocol: UDP}
        - {containerPort: 8080}
        env:
        - {name: B, value: "2"}
"#;

/// Re-applying without some fields removes them (labels, annotations,
/// containers, ports, env entries) unless another manager owns them.
#[test]
fn server_side_apply_removes_fields_the_manager_no_longer_applies() {
    let server = TestServer::start(StoreKind::Redb);
    server.kubectl_stdin_ok(&["apply", "--server-side", "-f", "-"], WEB_V1);
    // Another writer takes the tier label over.
    server.kubectl_ok(&["label", "deployment", "web", "tier=backend", "--overwrite"]);
    let out = server.kubectl_stdin_ok(&["apply", "--server-side", "-f", "-"], WEB_V2);
    assert!(
        out.contains("deployment.apps/web serverside-applied"),
        "{out}"
    );

    let web = get_json(&server, &["deployment", "web"]);
    let labels = &web["metadata"]["labels"];
    assert_eq!(labels["app"], "web", "{web}");
    assert_eq!(
        labels["tier"], "backend",
        "the label kubectl-label owns stays: {web}"
    );
    assert!(
        web["metadata"]["annotations"].get("note").is_none(),
        "the annotation kubectl stopped applying is gone: {web}"
    );
    let containers = web["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = containers
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["app"], "{web}");
    let app = &containers[0];
    assert_eq!(app["image"], "skiff.test/app:2");
    let mut ports: Vec<(i64, String)> = app["ports"]
        .as_array()
        .map(|p| {
            p.iter()
                .map(|p| {
                    let port = p["containerPort"].as_i64().unwrap_or(0);
                    (port, p["protocol"].as_str().unwrap_or("").to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    ports.sort();
    assert_eq!(
        ports,
        [(53, "UDP".to_string()), (8080, "TCP".to_string())],
        "{web}"
    );
    assert_eq!(app["env"], json!([{"name": "B", "value": "2"}]), "{web}");

    let labeler = entry(&web, "kubectl-label", "Update");
    assert_eq!(
        labeler["fieldsV1"]["f:metadata"]["f:labels"],
        json!({"f:tier": {}}),
        "{web}"
    );
    let kubectl = entry(&web, "kubectl", "Apply");
    let fields = &kubectl["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"];
    let app_fields = &fields[r#"k:{"name":"app"}"#];
    assert!(
        app_fields["f:ports"]
            .get(r#"k:{"containerPort":8080,"protocol":"TCP"}"#)
            .is_some(),
        "{kubectl}"
    );
    assert!(fields.get(r#"k:{"name":"side"}"#).is_none(), "{kubectl}");

    // Scaling through /scale takes .spec.replicas over: re-applying the old
    // count is a conflict naming that writer and the field.
    server.kubectl_ok(&["scale", "deployment", "web", "--replicas=5"]);
    let out = server.kubectl_stdin(&["apply", "--server-side", "-f", "-"], WEB_V2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "apply over a scaled count should fail"
    );
    assert!(
        stderr.contains("Apply failed with 1 conflict: conflict with \"kubectl")
            && stderr.contains("with subresource \"scale\" using apps/v1 at ")
            && stderr.contains(": .spec.replicas"),
        "{stderr}"
    );
    let web = get_json(&server, &["deployment", "web"]);
    assert_eq!(web["spec"]["replicas"], 5, "{web}");
}

/// create, patch and raw writes record Update entries under the manager
/// `?fieldManager=` or the User-Agent names; an apply that would change
/// their fields fails with upstream's conflict message and causes.
#[test]
fn ordinary_writes_own_their_fields_and_apply_conflicts_with_them() {
    let server = TestServer::start(StoreKind::Redb);
    server.kubectl_ok(&[
        "create",
        "configmap",
        "owned",
        "--from-literal=mode=fast",
        "--from-literal=size=small",
    ]);
    server.kubectl_ok(&[
        "patch",
        "configmap",
        "owned",
        "--type=merge",
        "-p",
        r#"{"data":{"size":"large"}}"#,
    ]);
    // curl names no manager: the User-Agent's product does.
    let resp = server.request(
        "PATCH",
        "/api/v1/namespaces/default/configmaps/owned",
        Some("application/merge-patch+json"),
        Some(br#"{"data":{"color":"red"}}"#),
    );
    assert_eq!(resp.status, 200, "{}", resp.body);

    let cm = get_json(&server, &["configmap", "owned"]);
    let create = entry(&cm, "kubectl-create", "Update");
    assert_eq!(create["apiVersion"], "v1");
    assert!(create["time"].is_string(), "{cm}");
    assert_eq!(create["fieldsV1"]["f:data"], json!({"f:mode": {}}), "{cm}");
    let patcher = entry(&cm, "kubectl-patch", "Update");
    assert_eq!(patcher["fieldsV1"]["f:data"], json!({"f:size": {}}), "{cm}");
    let curl = entry(&cm, "curl", "Update");
    assert_eq!(curl["fieldsV1"]["f:data"], json!({"f:color": {}}), "{cm}");

    // Applying other values for two of those fields: 409 naming both owners.
    let config = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: owned, namespace: default}\ndata: {mode: slow, size: large, color: blue}\n";
    let out = server.kubectl_stdin(&["apply", "--server-side", "-f", "-"], config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "conflicting apply should fail");
    let create_time = create["time"].as_str().unwrap_or_default();
    let curl_time = curl["time"].as_str().unwrap_or_default();
    let expected = format!(
        "Apply failed with 2 conflicts: conflicts with \"curl\" using v1 at {curl_time}:\n- .data.color\nconflicts with \"kubectl-create\" using v1 at {create_time}:\n- .data.mode"
    );
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in\n{stderr}"
    );
    assert!(
        stderr.contains("Please review the fields above--they currently have other managers"),
        "{stderr}"
    );

    // The Status carries one FieldManagerConflict cause per field.
    let resp = server.request(
        "PATCH",
        "/api/v1/namespaces/default/configmaps/owned?fieldManager=ci",
        Some("application/apply-patch+yaml"),
        Some(config.as_bytes()),
    );
    let status = resp.expect_status(409, "Conflict");
    let causes = status["details"]["causes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        causes,
        [
            json!({"reason": "FieldManagerConflict", "field": ".data.color",
                "message": format!("conflict with \"curl\" using v1 at {curl_time}")}),
            json!({"reason": "FieldManagerConflict", "field": ".data.mode",
                "message": format!("conflict with \"kubectl-create\" using v1 at {create_time}")}),
        ],
        "{status}"
    );

    // Forcing takes the fields over; the owners keep what they still own.
    server.kubectl_stdin_ok(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        config,
    );
    let cm = get_json(&server, &["configmap", "owned"]);
    assert_eq!(
        cm["data"],
        json!({"mode": "slow", "size": "large", "color": "blue"}),
        "{cm}"
    );
    let applied = entry(&cm, "kubectl", "Apply");
    assert_eq!(
        applied["fieldsV1"]["f:data"],
        json!({"f:mode": {}, "f:size": {}, "f:color": {}}),
        "{cm}"
    );
    assert_eq!(
        entry(&cm, "kubectl-patch", "Update")["fieldsV1"]["f:data"],
        json!({"f:size": {}}),
        "same value, shared ownership: {cm}"
    );
    let managers: Vec<&str> = cm["metadata"]["managedFields"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["manager"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        !managers.contains(&"curl"),
        "curl owned nothing any more: {cm}"
    );
}
