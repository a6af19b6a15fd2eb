//! The node agent end to end: a real `skiff server`, a node network namespace
//! with `skiff agent`, pods applied with kubectl and checked through the API
//! and from the node (wget to the pod IP).

mod agent_support;
mod common;

use std::time::Duration;

use agent_support::{pod_json, run_web_backend, wait_for, wait_running, AgentNode, BUSYBOX};
use common::{StoreKind, TestServer};

fn node_name(test: &str) -> String {
    format!("sa{}-{test}", std::process::id() % 10_000)
}

#[test]
fn pod_runs_and_answers_on_its_ip_from_the_node() {
    let server = TestServer::start(StoreKind::Redb);
    let node = AgentNode::start(&server, &node_name("run"));
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  containers:
  - name: httpd
    image: {BUSYBOX}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"]
"#
    );
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &manifest);
    let pod = wait_running(&server, "web");
    let ip = pod["status"]["podIP"].as_str().expect("podIP").to_string();
    assert_eq!(pod["spec"]["nodeName"], node.name.as_str());
    let body = wait_for("httpd answering", Duration::from_secs(30), || {
        node.http_get(&format!("http://{ip}:8080/"))
    });
    assert_eq!(body.trim(), "hello from web");
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(status["name"], "httpd");
    assert!(
        status["state"]["running"]["startedAt"].is_string(),
        "{status}"
    );
    assert_eq!(status["restartCount"], 0);
    assert!(status["containerID"]
        .as_str()
        .is_some_and(|c| c.starts_with("runc://")));
    assert!(
        status["imageID"]
            .as_str()
            .is_some_and(|c| c.contains("sha256:")),
        "{status}"
    );
    let conds: Vec<(String, String)> = pod["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap_or("").to_string(),
                c["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert!(
            conds.contains(&(t.to_string(), "True".to_string())),
            "{t} not True: {conds:?}"
        );
    }
    let table = server.kubectl_ok(&["get", "pod", "web"]);
    assert!(
        table.contains("Running") && table.contains("1/1"),
        "{table}"
    );
    // Like upstream's "kubelet", the agent's status writes are owned by
    // the manager named by its User-Agent.
    let shown = server.kubectl_ok(&["get", "pod", "web", "-o", "json", "--show-managed-fields"]);
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("pod JSON");
    let managers: Vec<(String, String)> = shown["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .map(|m| {
            (
                m["manager"].as_str().unwrap_or("").to_string(),
                m["subresource"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        managers.contains(&("skiff-agent".into(), "status".into())),
        "{managers:?}"
    );
    assert!(
        managers.contains(&("kubectl-client-side-apply".into(), String::new())),
        "{managers:?}"
    );
}

#[test]
fn deleted_pod_leaves_nothing_behind() {
    let server = TestServer::start(StoreKind::Redb);
    let node = AgentNode::start(&server, &node_name("del"));
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: gone}}
spec:
  terminationGracePeriodSeconds: 5
  volumes: [{{name: scratch, emptyDir: {{}}}}]
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  - name: side
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sleep", "3600"]
"#
    );
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &manifest);
    wait_running(&server, "gone");
    assert_eq!(node.allocated_ips(), 1);
    assert_eq!(node.runc_containers().len(), 2);
    assert!(!node.mounts().is_empty());
    server.kubectl_ok(&["delete", "pod", "gone", "--wait=false"]);
    wait_for("pod object removed", Duration::from_secs(60), || {
        pod_json(&server, "gone").is_none().then_some(())
    });
    node.assert_no_pod_leftovers();
}

/// Runs `manifest` and waits for it to be Running.
fn run_pod(server: &TestServer, manifest: &str, name: &str) -> serde_json::Value {
    server.kubectl_stdin_ok(&["apply", "-f", "-"], manifest);
    wait_running(server, name)
}

/// `kubectl logs` output once it contains `needle`.
fn logs_containing(server: &TestServer, args: &[&str], needle: &str) -> String {
    wait_for(
        &format!("kubectl logs {args:?} showing {needle:?}"),
        Duration::from_secs(30),
        || {
            let mut all = vec!["logs"];
            all.extend_from_slice(args);
            let out = server.kubectl(&all);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains(needle).then_some(text)
        },
    )
}

#[test]
fn two_containers_talk_over_localhost_and_kubectl_logs_shows_it() {
    let server = TestServer::start(StoreKind::Redb);
    let _node = AgentNode::start(&server, &node_name("two"));
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: talk}}
spec:
  volumes: [{{name: shared, emptyDir: {{}}}}]
  containers:
  - name: httpd
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "echo served-over-localhost > /shared/index.html && exec httpd -f -p 8080 -h /shared"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  - name: client
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "until wget -q -O - http://127.0.0.1:8080/; do sleep 0.3; done; echo uts=$(hostname); echo done; sleep 3600"]
"#
    );
    run_pod(&server, &manifest, "talk");
    let logs = logs_containing(&server, &["talk", "-c", "client"], "done");
    assert!(logs.contains("served-over-localhost"), "{logs}");
    assert!(logs.contains("uts=talk"), "{logs}");
    let tail = server.kubectl_ok(&["logs", "talk", "-c", "client", "--tail=1", "--timestamps"]);
    assert_eq!(tail.lines().count(), 1, "{tail}");
    assert!(
        tail.trim_end().ends_with(" done") && tail.starts_with("20"),
        "{tail}"
    );
    let err = server.kubectl_fails(&["logs", "talk", "-c", "nosuch"]);
    assert!(
        err.contains("container nosuch is not valid for pod talk"),
        "{err}"
    );
}

#[test]
fn configmap_secret_and_downward_api_reach_env_and_files() {
    let server = TestServer::start(StoreKind::Redb);
    let _node = AgentNode::start(&server, &node_name("env"));
    let manifest = format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{greeting: bonjour, color: blue}}
---
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{password: s3cret}}
---
apiVersion: v1
kind: Pod
metadata: {{name: envpod, labels: {{app: envtest}}}}
spec:
  volumes:
  - {{name: cfg, configMap: {{name: settings}}}}
  - {{name: sec, secret: {{secretName: creds}}}}
  - name: info
    downwardAPI:
      items: [{{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}]
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    workingDir: /cfg
    env:
    - {{name: GREETING, valueFrom: {{configMapKeyRef: {{name: settings, key: greeting}}}}}}
    - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    - {{name: COMBINED, value: "$(GREETING)-$(POD_NAME)"}}
    envFrom:
    - {{prefix: S_, secretRef: {{name: creds}}}}
    command: ["sh", "-c", "echo env=$GREETING/$S_password/$POD_NAME/$COMBINED; echo file=$(cat color)/$(cat /sec/password); echo labels=$(cat /info/labels); echo pwd=$(pwd); grep -c nameserver /etc/resolv.conf; cat /etc/resolv.conf; sleep 3600"]
    volumeMounts:
    - {{name: cfg, mountPath: /cfg}}
    - {{name: sec, mountPath: /sec}}
    - {{name: info, mountPath: /info}}
"#
    );
    run_pod(&server, &manifest, "envpod");
    let logs = logs_containing(&server, &["envpod"], "options");
    assert!(
        logs.contains("env=bonjour/s3cret/envpod/bonjour-envpod"),
        "{logs}"
    );
    assert!(logs.contains("file=blue/s3cret"), "{logs}");
    assert!(logs.contains("labels=app=\"envtest\""), "{logs}");
    assert!(logs.contains("pwd=/cfg"), "{logs}");
    assert!(
        logs.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{logs}"
    );
    assert!(
        logs.contains("nameserver 169.254.20.10") && logs.contains("options ndots:5"),
        "{logs}"
    );
}

#[test]
fn crashing_container_restarts_into_crash_loop_back_off() {
    let server = TestServer::start(StoreKind::Redb);
    let _node = AgentNode::start(&server, &node_name("crash"));
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: crasher}}
spec:
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "echo attempt; exit 3"]
"#
    );
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &manifest);
    let pod = wait_for("CrashLoopBackOff", Duration::from_secs(60), || {
        pod_json(&server, "crasher").filter(|p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        })
    });
    let status = &pod["status"]["containerStatuses"][0];
    assert!(
        status["restartCount"].as_u64().unwrap_or(0) >= 1,
        "{status}"
    );
    assert_eq!(status["lastState"]["terminated"]["exitCode"], 3, "{status}");
    assert_eq!(
        status["lastState"]["terminated"]["reason"], "Error",
        "{status}"
    );
    let table = server.kubectl_ok(&["get", "pod", "crasher"]);
    assert!(table.contains("CrashLoopBackOff"), "{table}");
    let previous = server.kubectl_ok(&["logs", "crasher", "--previous"]);
    assert_eq!(previous.trim(), "attempt");
}

#[test]
fn readiness_and_liveness_probes_drive_ready_and_restarts() {
    let server = TestServer::start(StoreKind::Redb);
    let _node = AgentNode::start(&server, &node_name("probe"));
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: probed}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: late
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "sleep 4; touch /tmp/ready; exec sleep 3600"]
    readinessProbe: {{exec: {{command: ["cat", "/tmp/ready"]}}, periodSeconds: 1}}
  - name: dies
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "touch /tmp/alive; sleep 3; rm /tmp/alive; exec sleep 3600"]
    livenessProbe: {{exec: {{command: ["cat", "/tmp/alive"]}}, periodSeconds: 1, failureThreshold: 2}}
"#
    );
    let pod = run_pod(&server, &manifest, "probed");
    let late = |p: &serde_json::Value| {
        p["status"]["containerStatuses"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == "late").cloned())
    };
    assert_eq!(
        late(&pod).expect("status of late")["ready"],
        false,
        "ready before its probe passed"
    );
    wait_for("late ready", Duration::from_secs(30), || {
        pod_json(&server, "probed")
            .and_then(|p| late(&p))
            .filter(|c| c["ready"] == true)
    });
    let dies = wait_for("liveness restart", Duration::from_secs(40), || {
        pod_json(&server, "probed")
            .and_then(|p| {
                p["status"]["containerStatuses"]
                    .as_array()
                    .and_then(|a| a.iter().find(|c| c["name"] == "dies").cloned())
            })
            .filter(|c| c["restartCount"].as_u64().unwrap_or(0) >= 1)
    });
    assert!(
        dies["lastState"]["terminated"]["exitCode"]
            .as_i64()
            .is_some(),
        "{dies}"
    );
}

#[test]
fn agent_kill_9_and_restart_adopts_running_containers() {
    let server = TestServer::start(StoreKind::Redb);
    let mut node = AgentNode::start(&server, &node_name("adopt"));
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: survivor}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: httpd
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /www && echo still-here > /www/index.html && exec httpd -f -p 8080 -h /www"]
"#
    );
    let before = run_pod(&server, &manifest, "survivor");
    let ip = before["status"]["podIP"]
        .as_str()
        .expect("podIP")
        .to_string();
    let id = before["status"]["containerStatuses"][0]["containerID"].clone();
    node.kill9();
    let body = wait_for(
        "pod answering without its agent",
        Duration::from_secs(20),
        || node.http_get(&format!("http://{ip}:8080/")),
    );
    assert_eq!(body.trim(), "still-here");
    node.restart(&server);
    std::thread::sleep(Duration::from_secs(3));
    let after = wait_running(&server, "survivor");
    assert_eq!(
        after["status"]["containerStatuses"][0]["containerID"], id,
        "container was replaced"
    );
    assert_eq!(after["status"]["containerStatuses"][0]["restartCount"], 0);
    assert_eq!(node.runc_containers().len(), 1);
    server.kubectl_ok(&["delete", "pod", "survivor", "--wait=false"]);
    wait_for("adopted pod deleted", Duration::from_secs(60), || {
        pod_json(&server, "survivor").is_none().then_some(())
    });
    assert!(node.runc_containers().is_empty());
    assert_eq!(node.allocated_ips(), 0);
}

#[test]
fn embedded_proxy_serves_a_cluster_ip_from_the_node() {
    let server = TestServer::start(StoreKind::Redb);
    let node = AgentNode::start_with(
        &server,
        &node_name("proxy"),
        &[
            "--proxy-mode",
            "iptables",
            "--cluster-cidr",
            "10.244.0.0/16",
        ],
    );
    let cluster_ip = run_web_backend(&server, "proxied", "ClusterIP", "via-cluster-ip");
    assert!(
        cluster_ip.parse::<std::net::Ipv4Addr>().is_ok(),
        "clusterIP {cluster_ip:?}"
    );
    // The lab node has no default route; a real node reaches ClusterIPs
    // through one. Route the service range onto the node bridge so the
    // kernel has a route before the proxy's OUTPUT DNAT rewrites the packet.
    node.netns
        .exec(&["ip", "route", "replace", "10.96.0.0/12", "dev", "skiff0"]);
    let body = wait_for(
        "the ClusterIP answering through the agent's proxy",
        Duration::from_secs(60),
        || node.http_get(&format!("http://{cluster_ip}:80/")),
    );
    assert_eq!(body.trim(), "via-cluster-ip from backend");
    let nat = node.netns.nat_rules();
    assert!(
        nat.contains(&cluster_ip) && nat.contains("KUBE-SERVICES"),
        "no service rules in the node namespace:\n{nat}"
    );
    assert!(
        node.log().contains("starting the service proxy"),
        "{}",
        node.log()
    );
}
