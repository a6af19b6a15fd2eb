//! Service address allocation on update, with the real kubectl against
//! `skiff server` on both stores: NodePorts appear when a Service's type
//! becomes NodePort/LoadBalancer or a port is added, go back to the pool
//! when the type changes back, and a port another Service holds is a 422
//! naming the field.

mod common;

use common::{StoreKind, TestServer};
use serde_json::{json, Value};

/// Runs each scenario once per store: `redb::<name>` and `etcd::<name>`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod redb {
            $(#[test] fn $name() { super::$name(super::StoreKind::Redb) })*
        }
        mod etcd {
            $(#[test] fn $name() { super::$name(super::StoreKind::Etcd) })*
        }
    };
}

on_both_stores!(
    node_ports_follow_type_changes,
    added_ports_get_node_ports_and_conflicts_are_rejected,
    replace_keeps_allocated_node_ports,
);

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: 8080
"#;

fn spec(server: &TestServer, name: &str) -> Value {
    let out = server.kubectl_ok(&["get", "svc", name, "-o", "json"]);
    let svc: Value = serde_json::from_str(&out).expect("kubectl -o json prints JSON");
    svc["spec"].clone()
}

fn node_port(spec: &Value, i: usize) -> Option<u64> {
    spec["ports"][i]["nodePort"].as_u64()
}

fn patch(server: &TestServer, name: &str, patch: &Value) -> String {
    server.kubectl_ok(&["patch", "svc", name, "-p", &patch.to_string()])
}

fn node_ports_follow_type_changes(store: StoreKind) {
    let server = TestServer::start(store);
    server.kubectl_stdin_ok(&["apply", "-f", "-"], SERVICE);
    let before = spec(&server, "web");
    assert_eq!(node_port(&before, 0), None, "{before}");

    patch(&server, "web", &json!({"spec": {"type": "NodePort"}}));
    let node = spec(&server, "web");
    let port = node_port(&node, 0).unwrap_or_else(|| panic!("no nodePort in {node}"));
    assert!((30000..=32767).contains(&port), "{node}");
    assert_eq!(
        node["clusterIP"], before["clusterIP"],
        "the ClusterIP is kept"
    );

    // NodePort -> LoadBalancer keeps the port.
    patch(&server, "web", &json!({"spec": {"type": "LoadBalancer"}}));
    let lb = spec(&server, "web");
    assert_eq!(node_port(&lb, 0), Some(port), "{lb}");

    // Back to ClusterIP: the nodePort goes away...
    patch(&server, "web", &json!({"spec": {"type": "ClusterIP"}}));
    let back = spec(&server, "web");
    assert_eq!(node_port(&back, 0), None, "{back}");

    // ...and is free again: another Service may ask for it by number.
    let other = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "other"},
        "spec": {"type": "NodePort", "selector": {"app": "other"},
                 "ports": [{"port": 80, "nodePort": port}]},
    });
    server.kubectl_stdin_ok(&["create", "-f", "-"], &other.to_string());
    assert_eq!(node_port(&spec(&server, "other"), 0), Some(port));
}

fn added_ports_get_node_ports_and_conflicts_are_rejected(store: StoreKind) {
    let server = TestServer::start(store);
    server.kubectl_stdin_ok(&["apply", "-f", "-"], SERVICE);
    patch(&server, "web", &json!({"spec": {"type": "NodePort"}}));
    let first = node_port(&spec(&server, "web"), 0).expect("nodePort");

    // A JSON patch adding a second port: it gets its own nodePort.
    let add = json!([{"op": "add", "path": "/spec/ports/-",
                      "value": {"name": "metrics", "port": 9090, "targetPort": 9090}}]);
    server.kubectl_ok(&["patch", "svc", "web", "--type=json", "-p", &add.to_string()]);
    let two = spec(&server, "web");
    assert_eq!(node_port(&two, 0), Some(first), "{two}");
    let second = node_port(&two, 1).unwrap_or_else(|| panic!("no nodePort in {two}"));
    assert_ne!(second, first);

    // A port held by another Service: 422 naming the field, nothing changes.
    let other = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "other"},
        "spec": {"selector": {"app": "other"}, "ports": [{"name": "a", "port": 80}]},
    });
    server.kubectl_stdin_ok(&["create", "-f", "-"], &other.to_string());
    let clash = json!({"spec": {"type": "NodePort",
        "ports": [{"name": "a", "port": 80, "nodePort": first}]}});
    let err = server.kubectl_fails(&["patch", "svc", "other", "-p", &clash.to_string()]);
    assert!(err.contains("spec.ports[0].nodePort"), "{err}");
    assert!(err.contains("already allocated"), "{err}");
    assert!(err.contains("is invalid"), "a 422 Invalid: {err}");
    assert_eq!(spec(&server, "other")["type"], "ClusterIP");

    // Removing the second port frees its nodePort for the other Service.
    let remove = json!([{"op": "remove", "path": "/spec/ports/1"}]);
    server.kubectl_ok(&[
        "patch",
        "svc",
        "web",
        "--type=json",
        "-p",
        &remove.to_string(),
    ]);
    let take = json!({"spec": {"type": "NodePort",
        "ports": [{"name": "a", "port": 80, "nodePort": second}]}});
    patch(&server, "other", &take);
    assert_eq!(node_port(&spec(&server, "other"), 0), Some(second));
}

fn replace_keeps_allocated_node_ports(store: StoreKind) {
    let server = TestServer::start(store);
    let node_port_service = SERVICE.replace("spec:\n", "spec:\n  type: NodePort\n");
    server.kubectl_stdin_ok(&["create", "-f", "-"], &node_port_service);
    let port = node_port(&spec(&server, "web"), 0).expect("nodePort on create");

    // The original manifest (no nodePort) replaced as LoadBalancer: kept.
    let lb = SERVICE.replace("spec:\n", "spec:\n  type: LoadBalancer\n");
    server.kubectl_stdin_ok(&["replace", "-f", "-"], &lb);
    let replaced = spec(&server, "web");
    assert_eq!(node_port(&replaced, 0), Some(port), "{replaced}");
    assert_eq!(replaced["type"], "LoadBalancer");

    // Replaced without a type (ClusterIP): no nodePort any more.
    server.kubectl_stdin_ok(&["replace", "-f", "-"], SERVICE);
    let plain = spec(&server, "web");
    assert_eq!(plain["type"], "ClusterIP");
    assert_eq!(node_port(&plain, 0), None, "{plain}");
}
