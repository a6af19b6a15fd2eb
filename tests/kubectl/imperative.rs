//! `kubectl create ...`, `kubectl run` and `kubectl expose` build typed
//! objects and send them as protobuf (`application/vnd.kubernetes.protobuf`),
//! unlike apply and patch: the objects must land with every field intact.

use serde_json::{json, Value};

use super::common::{StoreKind, TestServer};
use super::row;

/// `kubectl -n team-a get KIND NAME -o json`, parsed.
fn get_json(server: &TestServer, kind: &str, name: &str) -> Value {
    let out = server.kubectl_ok(&["-n", "team-a", "get", kind, name, "-o", "json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl get {kind} {name}: {e}\n{out}"))
}

pub fn imperative_create_commands(store: StoreKind) {
    let server = TestServer::start(store);
    // The namespace flag goes first: after `--` everything is the command.
    let run = |args: &[&str]| {
        let mut all = vec!["-n", "team-a"];
        all.extend_from_slice(args);
        server.kubectl_ok(&all).trim().to_owned()
    };
    assert_eq!(
        run(&["create", "namespace", "team-a"]),
        "namespace/team-a created"
    );
    let ns = get_json(&server, "namespace", "team-a");
    assert_eq!(ns["status"]["phase"], "Active", "{ns}");
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "team-a"
    );

    assert_eq!(
        run(&[
            "create",
            "configmap",
            "settings",
            "--from-literal=mode=fast",
            "--from-literal=empty="
        ]),
        "configmap/settings created"
    );
    let cm = get_json(&server, "cm", "settings");
    assert_eq!(cm["data"], json!({"mode": "fast", "empty": ""}), "{cm}");
    assert_eq!(cm["metadata"]["namespace"], "team-a");

    assert_eq!(
        run(&[
            "create",
            "secret",
            "generic",
            "creds",
            "--from-literal=password=hunter2"
        ]),
        "secret/creds created"
    );
    let secret = get_json(&server, "secret", "creds");
    // Secret data is bytes: base64 of "hunter2" in JSON.
    assert_eq!(
        secret["data"],
        json!({"password": "aHVudGVyMg=="}),
        "{secret}"
    );
    assert_eq!(secret["type"], "Opaque");

    assert_eq!(
        run(&[
            "create",
            "deployment",
            "api",
            "--image=localhost/my-app:latest",
            "--replicas=2",
            "--",
            "/app/server",
            "--verbose"
        ]),
        "deployment.apps/api created"
    );
    let deploy = get_json(&server, "deploy", "api");
    assert_eq!(deploy["spec"]["replicas"], 2, "{deploy}");
    assert_eq!(
        deploy["spec"]["selector"]["matchLabels"],
        json!({"app": "api"})
    );
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "localhost/my-app:latest", "{deploy}");
    assert_eq!(container["command"], json!(["/app/server", "--verbose"]));
    // Defaulting ran on the decoded object as on a JSON one.
    assert_eq!(deploy["spec"]["strategy"]["type"], "RollingUpdate");
    assert!(deploy["spec"]["template"]["metadata"]
        .get("creationTimestamp")
        .is_none_or(Value::is_null));

    // An explicit zero is not "unset": --replicas=0 stays 0 (Go *int32).
    assert_eq!(
        run(&[
            "create",
            "deployment",
            "idle",
            "--image=localhost/my-app:latest",
            "--replicas=0"
        ]),
        "deployment.apps/idle created"
    );
    assert_eq!(get_json(&server, "deploy", "idle")["spec"]["replicas"], 0);

    assert_eq!(
        run(&[
            "expose",
            "deployment",
            "api",
            "--port=80",
            "--target-port=3000"
        ]),
        "service/api exposed"
    );
    let svc = get_json(&server, "svc", "api");
    assert_eq!(svc["spec"]["selector"], json!({"app": "api"}), "{svc}");
    assert_eq!(
        svc["spec"]["ports"],
        json!([{"port": 80, "protocol": "TCP", "targetPort": 3000}]),
        "{svc}"
    );
    assert_eq!(svc["spec"]["type"], "ClusterIP");

    assert_eq!(
        run(&["create", "service", "clusterip", "web", "--tcp=8080:http"]),
        "service/web created"
    );
    let web = get_json(&server, "svc", "web");
    // A named target port is the string half of IntOrString.
    assert_eq!(
        web["spec"]["ports"],
        json!([{"name": "8080-http", "port": 8080, "protocol": "TCP", "targetPort": "http"}]),
        "{web}"
    );
    assert!(
        web["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.")),
        "{web}"
    );

    assert_eq!(
        run(&[
            "create",
            "job",
            "once",
            "--image=localhost/busybox:latest",
            "--",
            "echo",
            "hi"
        ]),
        "job.batch/once created"
    );
    let job = get_json(&server, "job", "once");
    let job_container = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(job_container["command"], json!(["echo", "hi"]), "{job}");
    assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");

    assert_eq!(
        run(&[
            "run",
            "shell",
            "--image=localhost/busybox:latest",
            "--restart=Never",
            "--labels=role=debug",
            "--",
            "sleep",
            "3600"
        ]),
        "pod/shell created"
    );
    let pod = get_json(&server, "pod", "shell");
    assert_eq!(pod["metadata"]["labels"], json!({"role": "debug"}), "{pod}");
    let shell = &pod["spec"]["containers"][0];
    // `kubectl run -- CMD` sets args, not command.
    assert_eq!(shell["args"], json!(["sleep", "3600"]), "{pod}");
    assert_eq!(shell["image"], "localhost/busybox:latest");
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    let pods = run(&["get", "pods"]);
    assert_eq!(row(&pods, "shell")[1..3], ["0/1", "Pending"], "{pods}");

    assert_eq!(
        run(&["create", "serviceaccount", "robot"]),
        "serviceaccount/robot created"
    );
    assert_eq!(
        run(&["get", "sa", "robot", "-o", "jsonpath={.metadata.name}"]),
        "robot"
    );

    // Protobuf bodies that cannot be read are Status errors, never a crash:
    // garbage after the magic is a 400, a kind without a schema a 415.
    const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
    let path = "/api/v1/namespaces/team-a/configmaps";
    let garbage = [b"k8s\0".as_slice(), &[0x0a, 0xff, 0xff, 0x01]].concat();
    let status = server
        .request("POST", path, Some(PROTOBUF), Some(&garbage))
        .expect_status(400, "BadRequest");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or("")
            .contains("protobuf"),
        "{status}"
    );
    // runtime.Unknown{typeMeta{apiVersion "example.com/v1", kind "Widget"}}.
    let type_meta = [b"\x0a\x0eexample.com/v1".as_slice(), b"\x12\x06Widget"].concat();
    let unknown = [
        b"k8s\0".as_slice(),
        &[0x0a, type_meta.len() as u8],
        &type_meta,
    ]
    .concat();
    let status = server
        .request("POST", path, Some(PROTOBUF), Some(&unknown))
        .expect_status(415, "UnsupportedMediaType");
    assert!(
        status["message"].as_str().unwrap_or("").contains("Widget"),
        "{status}"
    );
    // The server is still there.
    assert_eq!(
        run(&["get", "cm", "settings", "-o", "name"]),
        "configmap/settings"
    );
}
