//! `kind: List` manifests, as users write them and as `kubectl get -o yaml`
//! prints them. kubectl validates a List's items itself, against the
//! server's OpenAPI v2 document, which it fetches only as protobuf; before
//! the server served that form, every such apply failed with "the server was
//! unable to respond with a content type that the client supports".

use std::process::Output;

use serde_json::{json, Value};

use super::common::{StoreKind, TestServer};

/// A ConfigMap, a Deployment and a Service, all labelled `from=list`.
fn list(deployment_spec: Value) -> String {
    let labels = json!({"from": "list", "app": "listed"});
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "listed", "labels": labels},
             "data": {"greeting": "hello"}},
            {"apiVersion": "apps/v1", "kind": "Deployment",
             "metadata": {"name": "listed", "labels": labels},
             "spec": deployment_spec},
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "listed", "labels": labels},
             "spec": {"selector": {"app": "listed"},
                      "ports": [{"port": 80, "targetPort": 8080}]}},
        ],
    })
    .to_string()
}

fn deployment_spec() -> Value {
    json!({
        "replicas": 2,
        "selector": {"matchLabels": {"app": "listed"}},
        "template": {
            "metadata": {"labels": {"app": "listed"}},
            "spec": {"containers": [{
                "name": "app", "image": "busybox",
                "command": ["sleep", "3600"],
                "ports": [{"containerPort": 8080}],
                "resources": {"limits": {"memory": "64Mi"}},
            }]},
        },
    })
}

const OBJECTS: [&str; 3] = [
    "configmap/listed",
    "deployment.apps/listed",
    "service/listed",
];

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The names kubectl lists for the `from=list` objects.
fn listed(server: &TestServer) -> String {
    server.kubectl_ok(&[
        "get",
        "configmaps,deployments,services",
        "-l",
        "from=list",
        "-o",
        "name",
    ])
}

/// An item the schema rejects: kubectl names the field and creates nothing.
fn rejected(server: &TestServer, spec: Value, expected: &str) {
    let out = server.kubectl_stdin(&["apply", "-f", "-"], &list(spec));
    assert!(!out.status.success(), "apply of an invalid List succeeded");
    let err = stderr(&out);
    assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
    assert!(!err.contains("content type"), "{err}");
    assert_eq!(listed(server), "", "nothing of an invalid List is created");
}

pub fn apply_a_list_manifest(store: StoreKind) {
    let server = TestServer::start(store);

    // Invalid items first, while nothing exists: default validation is
    // client-side for a List, so these show kubectl read our schemas.
    let mut unknown = deployment_spec();
    unknown["replicaz"] = json!(3);
    rejected(
        &server,
        unknown,
        r#"unknown field "replicaz" in io.k8s.api.apps.v1.DeploymentSpec"#,
    );
    let mut wrong_type = deployment_spec();
    wrong_type["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = json!("http");
    rejected(
        &server,
        wrong_type,
        r#"invalid type for io.k8s.api.core.v1.ContainerPort.containerPort: got "string", expected "integer""#,
    );

    // Valid: every item created, with default validation.
    let manifest = list(deployment_spec());
    let out = server.kubectl_stdin_ok(&["apply", "-f", "-"], &manifest);
    for object in OBJECTS {
        assert!(
            out.lines().any(|l| l.trim() == format!("{object} created")),
            "expected '{object} created' in:\n{out}"
        );
    }
    let names = listed(&server);
    for object in OBJECTS {
        assert!(
            names.lines().any(|l| l == object),
            "{object} missing:\n{names}"
        );
    }
    // Again: nothing to change.
    let out = server.kubectl_stdin_ok(&["apply", "-f", "-"], &manifest);
    for object in OBJECTS {
        assert!(
            out.lines()
                .any(|l| l.trim() == format!("{object} unchanged")),
            "expected '{object} unchanged' in:\n{out}"
        );
    }

    // What `kubectl get -o yaml` prints is a List too: edit it and replace.
    let yaml = server.kubectl_ok(&[
        "get",
        "configmaps,services",
        "-l",
        "from=list",
        "-o",
        "yaml",
    ]);
    assert!(yaml.contains("kind: List"), "{yaml}");
    let edited = yaml.replace("greeting: hello", "greeting: bonjour");
    assert_ne!(edited, yaml, "the ConfigMap's data is in the YAML");
    let out = server.kubectl_stdin_ok(&["replace", "-f", "-"], &edited);
    assert!(out.contains("configmap/listed replaced"), "{out}");
    assert!(out.contains("service/listed replaced"), "{out}");
    let data = server.kubectl_ok(&[
        "get",
        "configmap",
        "listed",
        "-o",
        "jsonpath={.data.greeting}",
    ]);
    assert_eq!(data, "bonjour");

    // And `kubectl delete -f` of the List removes every item.
    let out = server.kubectl_stdin_ok(&["delete", "-f", "-"], &manifest);
    assert_eq!(
        out.lines().filter(|l| l.contains("deleted")).count(),
        3,
        "{out}"
    );
    assert_eq!(listed(&server), "");
}
