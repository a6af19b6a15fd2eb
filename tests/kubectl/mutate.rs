//! Changing objects with kubectl: the three patch types, apply twice then
//! delete, and a finalizer holding a deletion.

use super::common::{StoreKind, TestServer};
use super::{common, jsonpath, start_with_examples, EXAMPLE_OBJECTS};

pub fn patch_all_three_types(store: StoreKind) {
    let server = start_with_examples(store);

    // Strategic merge (kubectl's default): containers merge by name.
    let out = server.kubectl_ok(&[
        "patch",
        "deployment",
        "my-app",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"localhost/my-app:v2"}]}}}}"#,
    ]);
    assert_eq!(out.trim(), "deployment.apps/my-app patched");
    assert_eq!(
        jsonpath(
            &server,
            "deploy/my-app",
            "{.spec.template.spec.containers[*].name}"
        ),
        "nginx app"
    );
    assert_eq!(
        jsonpath(
            &server,
            "deploy/my-app",
            "{.spec.template.spec.containers[*].image}"
        ),
        "localhost/nginx:latest localhost/my-app:v2"
    );
    assert_eq!(
        jsonpath(&server, "deploy/my-app", "{.metadata.generation}"),
        "2"
    );

    // Strategic merge, explicit, with a $patch directive deleting a list item.
    server.kubectl_ok(&[
        "patch",
        "pod",
        "web",
        "--type",
        "strategic",
        "-p",
        r#"{"metadata":{"labels":{"patched":"strategic"}}}"#,
    ]);
    assert_eq!(
        jsonpath(&server, "pod/web", "{.metadata.labels.patched}"),
        "strategic"
    );
    server.kubectl_ok(&[
        "patch",
        "svc",
        "my-app",
        "--type",
        "strategic",
        "-p",
        r#"{"spec":{"ports":[{"port":3000,"$patch":"delete"}]}}"#,
    ]);
    assert_eq!(
        jsonpath(&server, "svc/my-app", "{.spec.ports[*].port}"),
        "80"
    );

    // JSON merge patch: lists are replaced whole, null deletes.
    let out = server.kubectl_ok(&[
        "patch",
        "deployment",
        "my-app",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"labels":{"patched":"merge","app":null}}}"#,
    ]);
    assert_eq!(out.trim(), "deployment.apps/my-app patched");
    assert_eq!(
        jsonpath(&server, "deploy/my-app", "{.metadata.labels}"),
        r#"{"patched":"merge"}"#
    );
    server.kubectl_ok(&[
        "patch",
        "pod",
        "busybox",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"annotations":{"a":"1"}}}"#,
    ]);
    assert_eq!(
        jsonpath(&server, "pod/busybox", "{.metadata.annotations.a}"),
        "1"
    );

    // JSON patch.
    let out = server.kubectl_ok(&[
        "patch",
        "deployment",
        "my-app",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":2},{"op":"add","path":"/metadata/labels/patched-json","value":"yes"}]"#,
    ]);
    assert_eq!(out.trim(), "deployment.apps/my-app patched");
    assert_eq!(jsonpath(&server, "deploy/my-app", "{.spec.replicas}"), "2");
    assert_eq!(
        jsonpath(&server, "deploy/my-app", "{.metadata.labels.patched-json}"),
        "yes"
    );
    // A failing JSON patch test op changes nothing and says why.
    let err = server.kubectl_fails(&[
        "patch",
        "deployment",
        "my-app",
        "--type",
        "json",
        "-p",
        r#"[{"op":"test","path":"/spec/replicas","value":7},{"op":"replace","path":"/spec/replicas","value":9}]"#,
    ]);
    assert!(!err.is_empty());
    assert_eq!(jsonpath(&server, "deploy/my-app", "{.spec.replicas}"), "2");

    // Patching something that does not exist is NotFound.
    let err = server.kubectl_fails(&[
        "patch",
        "pod",
        "nope",
        "-p",
        r#"{"metadata":{"labels":{"a":"b"}}}"#,
    ]);
    assert!(
        err.contains("NotFound") && err.contains(r#"pods "nope" not found"#),
        "{err}"
    );
}

pub fn apply_twice_then_delete(store: StoreKind) {
    let server = start_with_examples(store);

    // A second apply of the same files is a no-op (or at most a patch).
    let out = server.kubectl_ok(&["apply", "-f", "tests/kubectl/manifests/"]);
    for object in EXAMPLE_OBJECTS {
        assert!(
            out.lines()
                .any(|l| l.trim() == format!("{object} unchanged")
                    || l.trim() == format!("{object} configured")),
            "second apply should say '{object} unchanged' (or configured):\n{out}"
        );
    }
    assert_eq!(
        jsonpath(&server, "deploy/my-app", "{.metadata.generation}"),
        "1"
    );

    // Applying an edited manifest patches the live object.
    let edited = std::fs::read_to_string(
        common::repo_root().join("tests/kubectl/manifests/deployment.yaml"),
    )
    .expect("read tests/kubectl/manifests/deployment.yaml")
    .replace("replicas: 3", "replicas: 4");
    let out = server.kubectl_stdin_ok(&["apply", "-f", "-"], &edited);
    assert_eq!(out.trim(), "deployment.apps/my-app configured");
    assert_eq!(jsonpath(&server, "deploy/my-app", "{.spec.replicas}"), "4");

    // delete returns once the object is gone.
    let out = server.kubectl_ok(&["delete", "pod", "busybox"]);
    assert!(out.contains(r#"pod "busybox" deleted"#), "{out}");
    let err = server.kubectl_fails(&["get", "pod", "busybox"]);
    assert!(
        err.contains(r#"Error from server (NotFound): pods "busybox" not found"#),
        "{err}"
    );

    let out = server.kubectl_ok(&[
        "delete",
        "-f",
        "tests/kubectl/manifests/",
        "--ignore-not-found",
    ]);
    for object in [
        "deployment.apps",
        "service",
        "horizontalpodautoscaler.autoscaling",
    ] {
        assert!(
            out.contains(&format!(r#"{object} "my-app" deleted"#)),
            "{out}"
        );
    }
    let err = server.kubectl_fails(&["get", "-f", "tests/kubectl/manifests/"]);
    for what in [
        r#"deployments.apps "my-app" not found"#,
        r#"services "my-app" not found"#,
        r#"pods "web" not found"#,
        r#"pods "shared-volume" not found"#,
        r#"horizontalpodautoscalers.autoscaling "my-app" not found"#,
    ] {
        assert!(
            err.contains(what),
            "expected '{what}' after delete -f:\n{err}"
        );
    }
}

pub fn finalizer_holds_deletion(store: StoreKind) {
    let server = TestServer::start(store);
    server.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: [example.com/hold]\ndata:\n  k: v\n",
    );
    let out = server.kubectl_ok(&["delete", "configmap", "held", "--wait=false"]);
    assert!(out.contains(r#"configmap "held" deleted"#), "{out}");
    // Still there, marked for deletion, until the finalizer is removed.
    assert!(
        !jsonpath(&server, "cm/held", "{.metadata.deletionTimestamp}").is_empty(),
        "deletionTimestamp should be set while a finalizer holds the object"
    );
    server.kubectl_ok(&[
        "patch",
        "configmap",
        "held",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    let err = server.kubectl_fails(&["get", "configmap", "held"]);
    assert!(err.contains("NotFound"), "{err}");
}
