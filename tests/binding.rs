//! `pods/binding` as the scheduler and its watchers see it: the pod gets its
//! node, annotations and PodScheduled condition, a bound or missing pod is
//! refused, and every watcher (filtered or not) sees the same bound pod.
//! No nodes exist, so the server's own scheduler never binds these pods.

mod common;

use std::time::Duration;

use common::{StoreKind, TestServer};
use serde_json::{json, Value};

const PODS: &str = "/api/v1/namespaces/default/pods";
const WATCH_TIMEOUT: Duration = Duration::from_secs(20);

fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "skiff.test/busybox:1.0"}]},
    })
}

fn binding(pod: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": pod, "annotations": {"example.com/bound-by": "binding-test"}},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    })
}

#[test]
fn binding_sets_the_node_once_and_watchers_see_it() {
    let server = TestServer::start(StoreKind::Redb);
    let created = server.send_json("POST", PODS, &pod("bind-me"));
    assert_eq!(created.status, 201, "{}", created.body);
    let created_rv = created.json()["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .to_string();

    // One unfiltered watcher and one watching only its node's pods.
    let jsonpath = r#"-o=jsonpath={.metadata.name} {.spec.nodeName}{"\n"}"#;
    let mut all = server.kubectl_stream(&["get", "pods", "--watch-only", jsonpath]);
    let mut on_node = server.kubectl_stream(&[
        "get",
        "pods",
        "--watch-only",
        "--field-selector=spec.nodeName=node-a",
        jsonpath,
    ]);
    // Give both watches time to open before the write they must see.
    std::thread::sleep(Duration::from_secs(2));

    let bound = server.send_json(
        "POST",
        &format!("{PODS}/bind-me/binding"),
        &binding("bind-me", "node-a"),
    );
    assert_eq!(bound.status, 201, "{}", bound.body);
    assert_eq!(bound.json()["status"], "Success", "{}", bound.body);

    for (name, watch) in [("unfiltered", &mut all), ("spec.nodeName", &mut on_node)] {
        watch.wait_for_line(
            &format!("the {name} watcher seeing the bound pod"),
            WATCH_TIMEOUT,
            |l| l.trim() == "bind-me node-a",
        );
    }
    all.stop();
    on_node.stop();

    let got = server.get(&format!("{PODS}/bind-me"));
    assert_eq!(got.status, 200, "{}", got.body);
    let got = got.json();
    assert_eq!(got["spec"]["nodeName"], "node-a");
    assert_eq!(
        got["metadata"]["annotations"]["example.com/bound-by"],
        "binding-test"
    );
    assert_ne!(got["metadata"]["resourceVersion"], created_rv.as_str());
    let scheduled: Vec<&Value> = got["status"]["conditions"]
        .as_array()
        .map(|c| c.iter().filter(|c| c["type"] == "PodScheduled").collect())
        .unwrap_or_default();
    assert_eq!(scheduled.len(), 1, "one PodScheduled condition: {got}");
    assert_eq!(scheduled[0]["status"], "True");

    // Already bound: 409 naming the node, and the pod keeps it.
    let again = server.send_json(
        "POST",
        &format!("{PODS}/bind-me/binding"),
        &binding("bind-me", "node-b"),
    );
    let status = again.expect_status(409, "Conflict");
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("node-a")),
        "{}",
        again.body
    );
    let got = server.get(&format!("{PODS}/bind-me")).json();
    assert_eq!(got["spec"]["nodeName"], "node-a");

    // A pod that does not exist: 404.
    let missing = server.send_json(
        "POST",
        &format!("{PODS}/no-such-pod/binding"),
        &binding("no-such-pod", "node-a"),
    );
    missing.expect_status(404, "NotFound");

    // A binding for a different pod UID (the pod was replaced): 409.
    server.send_json("POST", PODS, &pod("replaced"));
    let mut stale = binding("replaced", "node-a");
    stale["metadata"]["uid"] = json!("00000000-0000-0000-0000-000000000000");
    let refused = server.send_json("POST", &format!("{PODS}/replaced/binding"), &stale);
    refused.expect_status(409, "Conflict");
    let got = server.get(&format!("{PODS}/replaced")).json();
    assert!(got["spec"]["nodeName"].is_null(), "{got}");
}
