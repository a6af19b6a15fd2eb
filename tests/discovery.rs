//! Discovery through the real kubectl: the subresources each group-version
//! lists are the ones the server serves.

mod common;

use common::{StoreKind, TestServer};

/// Discovery lists the subresources the server serves (clients such as
/// `kubectl auth can-i` read them; `api-resources` hides them), and each
/// one listed for pods and deployments answers rather than 404/405.
#[test]
fn discovery_lists_the_served_subresources() {
    let server = TestServer::start(StoreKind::Redb);
    let names = |path: &str| -> Vec<(String, Vec<String>)> {
        let out = server.kubectl_ok(&["get", "--raw", path]);
        let list: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
        list["resources"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        let verbs = r["verbs"]
                            .as_array()
                            .map(|v| {
                                v.iter()
                                    .filter_map(|v| v.as_str())
                                    .map(String::from)
                                    .collect()
                            })
                            .unwrap_or_default();
                        (r["name"].as_str().unwrap_or("").to_string(), verbs)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let core = names("/api/v1");
    let apps = names("/apis/apps/v1");
    let has = |list: &[(String, Vec<String>)], name: &str| list.iter().any(|(n, _)| n == name);
    for name in [
        "pods/status",
        "pods/binding",
        "pods/log",
        "pods/exec",
        "services/status",
        "nodes/status",
        "namespaces/status",
        "namespaces/finalize",
        "bindings",
    ] {
        assert!(has(&core, name), "{name} missing from /api/v1: {core:?}");
    }
    for name in [
        "deployments/status",
        "deployments/scale",
        "replicasets/status",
        "replicasets/scale",
        "statefulsets/scale",
    ] {
        assert!(
            has(&apps, name),
            "{name} missing from /apis/apps/v1: {apps:?}"
        );
    }
    let listed = server.kubectl_ok(&["api-resources", "-o", "name"]);
    assert!(
        !listed.contains('/'),
        "api-resources lists subresources:\n{listed}"
    );

    server.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: probe, namespace: default}\nspec:\n  containers: [{name: c, image: skiff.test/busybox:1.0}]\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: probe, namespace: default}\nspec:\n  selector: {matchLabels: {app: probe}}\n  template:\n    metadata: {labels: {app: probe}}\n    spec:\n      containers: [{name: c, image: skiff.test/busybox:1.0}]\n",
    );
    let probes = core
        .iter()
        .filter(|(n, _)| n.starts_with("pods/"))
        .map(|(n, v)| {
            (
                format!("/api/v1/namespaces/default/pods/probe/{}", &n[5..]),
                v,
            )
        })
        .chain(
            apps.iter()
                .filter(|(n, _)| n.starts_with("deployments/"))
                .map(|(n, v)| {
                    (
                        format!(
                            "/apis/apps/v1/namespaces/default/deployments/probe/{}",
                            &n[12..]
                        ),
                        v,
                    )
                }),
        );
    for (path, verbs) in probes {
        let resp = if verbs.iter().any(|v| v == "get") {
            server.get(&path)
        } else {
            server.request("POST", &path, Some("application/json"), Some(b"{}"))
        };
        assert!(
            resp.status != 404 && resp.status != 405 && resp.status != 0,
            "{path} is listed but answers {}: {}",
            resp.status,
            resp.body
        );
    }
}
