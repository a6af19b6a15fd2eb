//! Error responses as clients see them: HTTP code plus a `Status` body whose
//! reason and causes say what went wrong.

mod common;

use common::{Auth, Request, StoreKind, TestServer};
use serde_json::{json, Value};

const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";
const PODS: &str = "/api/v1/namespaces/default/pods";

/// The `field` of every entry in a Status's `details.causes`.
fn cause_fields(status: &Value) -> Vec<String> {
    status["details"]["causes"]
        .as_array()
        .map(|causes| {
            causes
                .iter()
                .filter_map(|c| c["field"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn assert_invalid(server: &TestServer, path: &str, body: Value, field: &str) -> Value {
    let response = server.send_json("POST", path, &body);
    let status = response.expect_status(422, "Invalid");
    let fields = cause_fields(&status);
    assert!(
        fields.iter().any(|f| f == field),
        "422 should name {field} in details.causes[].field, got {fields:?}: {}",
        response.body
    );
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains(field)),
        "the message should mention {field}: {}",
        response.body
    );
    status
}

fn configmap(name: &str, value: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {"key": value},
    })
}

fn stale_update_conflicts(store: StoreKind) {
    let server = TestServer::start(store);
    let created = server.send_json("POST", CONFIGMAPS, &configmap("cfg", "1"));
    assert_eq!(created.status, 201, "{}", created.body);
    let created = created.json();
    let stale_rv = created["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .to_owned();

    let mut update = created.clone();
    update["data"]["key"] = json!("2");
    let updated = server.send_json("PUT", &format!("{CONFIGMAPS}/cfg"), &update);
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_ne!(updated.json()["metadata"]["resourceVersion"], stale_rv);

    // Same stale resourceVersion again: someone else changed it meanwhile.
    update["data"]["key"] = json!("3");
    let conflict = server.send_json("PUT", &format!("{CONFIGMAPS}/cfg"), &update);
    let status = conflict.expect_status(409, "Conflict");
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("the object has been modified")),
        "{}",
        conflict.body
    );
    assert_eq!(status["details"]["name"], "cfg", "{}", conflict.body);
    assert_eq!(status["details"]["kind"], "configmaps", "{}", conflict.body);
    let now = server.get(&format!("{CONFIGMAPS}/cfg")).json();
    assert_eq!(now["data"]["key"], "2", "the stale update must not land");

    // A stale resourceVersion in a patch is a conflict too.
    let patch = json!({"metadata": {"resourceVersion": stale_rv}, "data": {"key": "4"}});
    let response = server.request(
        "PATCH",
        &format!("{CONFIGMAPS}/cfg"),
        Some("application/merge-patch+json"),
        Some(patch.to_string().as_bytes()),
    );
    response.expect_status(409, "Conflict");

    // Creating the same name again is AlreadyExists (also 409).
    let again = server.send_json("POST", CONFIGMAPS, &configmap("cfg", "5"));
    let status = again.expect_status(409, "AlreadyExists");
    assert_eq!(status["details"]["name"], "cfg", "{}", again.body);
}

#[test]
fn stale_update_conflicts_redb() {
    stale_update_conflicts(StoreKind::Redb);
}

#[test]
fn stale_update_conflicts_etcd() {
    stale_update_conflicts(StoreKind::Etcd);
}

#[test]
fn malformed_bodies_are_bad_requests() {
    let server = TestServer::start(StoreKind::Redb);
    let cases: &[(&str, &str)] = &[
        (
            "application/json",
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x""#,
        ),
        ("application/json", "not json at all"),
        (
            "application/yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [unclosed\n",
        ),
        (
            // A number where the schema wants a string.
            "application/json",
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"k": 1}}"#,
        ),
    ];
    for (content_type, body) in cases {
        let response = server.request(
            "POST",
            CONFIGMAPS,
            Some(content_type),
            Some(body.as_bytes()),
        );
        response.expect_status(400, "BadRequest");
    }
    assert_eq!(server.get(&format!("{CONFIGMAPS}/x")).status, 404);
}

#[test]
fn invalid_manifests_name_the_field() {
    let server = TestServer::start(StoreKind::Redb);

    let pod_without_image = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "no-image"},
        "spec": {"containers": [{"name": "main"}]},
    });
    assert_invalid(&server, PODS, pod_without_image, "spec.containers[0].image");

    let pod_without_containers = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "empty"},
        "spec": {"containers": []},
    });
    assert_invalid(&server, PODS, pod_without_containers, "spec.containers");

    let service_bad_port = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "bad-port"},
        "spec": {"selector": {"app": "x"}, "ports": [{"port": 70000}]},
    });
    assert_invalid(
        &server,
        "/api/v1/namespaces/default/services",
        service_bad_port,
        "spec.ports[0].port",
    );

    let deployments = "/apis/apps/v1/namespaces/default/deployments";
    let deployment = |replicas: i64, template_app: &str| {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "bad"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "bad"}},
                "template": {
                    "metadata": {"labels": {"app": template_app}},
                    "spec": {"containers": [{"name": "c", "image": "localhost/busybox:latest"}]},
                },
            },
        })
    };
    assert_invalid(&server, deployments, deployment(-1, "bad"), "spec.replicas");
    // The most common Deployment mistake: a selector that misses the template.
    assert_invalid(
        &server,
        deployments,
        deployment(1, "other"),
        "spec.template.metadata.labels",
    );

    // What a kubectl user sees.
    let out = server.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: no-image\nspec:\n  containers:\n  - name: main\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "kubectl apply of a pod without image succeeded"
    );
    assert!(
        stderr.contains(r#"The Pod "no-image" is invalid"#)
            && stderr.contains("spec.containers[0].image: Required value"),
        "{stderr}"
    );
}

#[test]
fn invalid_names_are_rejected() {
    let server = TestServer::start(StoreKind::Redb);
    for name in ["My_App", "-leading-dash", "UPPER", "dots..twice"] {
        let status = assert_invalid(&server, CONFIGMAPS, configmap(name, "v"), "metadata.name");
        assert!(
            status["message"].as_str().is_some_and(|m| m.contains(name)),
            "the message should quote the bad name {name}: {status}"
        );
    }
    let long = "a".repeat(254);
    assert_invalid(&server, CONFIGMAPS, configmap(&long, "v"), "metadata.name");

    let out = server.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: My_App\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "kubectl apply of My_App succeeded");
    assert!(
        stderr.contains(r#"metadata.name: Invalid value: "My_App""#),
        "{stderr}"
    );
}

#[test]
fn oversized_bodies_are_rejected() {
    let server = TestServer::start(StoreKind::Redb);
    let big = "x".repeat(3 * 1024 * 1024 + 512 * 1024);
    let body = serde_json::to_vec(&configmap("big", &big)).expect("serialize");
    // The server may answer before it has read the whole body and then close
    // the stream; curl 7.88 sometimes reports that as a transport error
    // instead of the response, so a few attempts are allowed to see the reply.
    let response = (0..5)
        .map(|_| server.request("POST", CONFIGMAPS, Some("application/json"), Some(&body)))
        .find(|r| r.status != 0)
        .expect("no HTTP response to an oversized body in 5 attempts");
    response.expect_status(413, "RequestEntityTooLarge");
    assert_eq!(server.get(&format!("{CONFIGMAPS}/big")).status, 404);

    // What a kubectl user sees.
    let file = server.data_dir().join("big.json");
    std::fs::write(&file, &body).expect("write big.json");
    let err = server.kubectl_fails(&["create", "-f", &file.to_string_lossy()]);
    assert!(
        err.contains("Error from server (RequestEntityTooLarge)"),
        "{err}"
    );
    // The server is still fine afterwards.
    let ok = server.send_json("POST", CONFIGMAPS, &configmap("small", "v"));
    assert_eq!(ok.status, 201, "{}", ok.body);
}

#[test]
fn unknown_resources_are_not_found() {
    let server = TestServer::start(StoreKind::Redb);
    for path in [
        "/api/v1/namespaces/default/widgets",
        "/api/v1/widgets",
        "/apis/example.com/v1/things",
        "/apis/apps/v1/namespaces/default/widgets",
        "/apis/apps/v9/deployments",
    ] {
        let response = server.get(path);
        response.expect_status(404, "NotFound");
    }
    let missing = server.get(&format!("{PODS}/nope"));
    let status = missing.expect_status(404, "NotFound");
    assert_eq!(status["details"]["name"], "nope", "{}", missing.body);
    assert_eq!(status["details"]["kind"], "pods", "{}", missing.body);
    assert_eq!(
        status["message"], r#"pods "nope" not found"#,
        "{}",
        missing.body
    );

    let err = server.kubectl_fails(&["get", "widgets"]);
    assert!(
        err.contains(r#"the server doesn't have a resource type "widgets""#),
        "{err}"
    );
}

#[test]
fn requests_without_valid_credentials_are_unauthorized() {
    let server = TestServer::start(StoreKind::Redb);
    for path in ["/api/v1/namespaces", "/apis", "/api/v1", PODS] {
        for auth in [Auth::None, Auth::Bearer("not-the-token"), Auth::Bearer("")] {
            let response = server.send(Request {
                method: "GET",
                path,
                content_type: None,
                body: None,
                auth,
            });
            response.expect_status(401, "Unauthorized");
        }
    }
    // Writes too, and nothing is stored.
    let body = configmap("sneaky", "v").to_string();
    let response = server.send(Request {
        method: "POST",
        path: CONFIGMAPS,
        content_type: Some("application/json"),
        body: Some(body.as_bytes()),
        auth: Auth::None,
    });
    response.expect_status(401, "Unauthorized");
    assert_eq!(server.get(&format!("{CONFIGMAPS}/sneaky")).status, 404);

    // kubectl with a wrong token.
    let kubeconfig = std::fs::read_to_string(server.kubeconfig()).expect("read kubeconfig");
    let forged = server.data_dir().join("forged.kubeconfig");
    std::fs::write(&forged, kubeconfig.replace(server.token(), "forged-token")).expect("write");
    let forged = forged.to_string_lossy().into_owned();
    let err = server.kubectl_fails(&["--kubeconfig", &forged, "get", "pods"]);
    assert!(
        err.contains("You must be logged in to the server") || err.contains("Unauthorized"),
        "{err}"
    );
}
