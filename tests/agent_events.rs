//! The agent's Events as `kubectl get events` / `kubectl describe pod` show
//! them: written by source `kubelet` on the node about the pod, with the
//! container's fieldPath, repeats aggregated into one Event whose count grows.
//! (A pod that emits more than its burst of 25 is throttled, as upstream's
//! spam filter does, so the deletion case uses a quiet pod.)

mod agent_support;
mod common;

use std::time::Duration;

use agent_support::{pod_json, wait_for, wait_running, AgentNode, BUSYBOX};
use common::{StoreKind, TestServer};
use serde_json::Value;

/// Events whose involvedObject is pod `name`.
fn events_of(server: &TestServer, name: &str) -> Vec<Value> {
    let out = server.kubectl(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={name}"),
        "-o",
        "json",
    ]);
    if !out.status.success() {
        return Vec::new();
    }
    let list: Value = serde_json::from_slice(&out.stdout).expect("event list JSON");
    list["items"].as_array().cloned().unwrap_or_default()
}

fn find<'a>(events: &'a [Value], reason: &str, field_path: &str) -> Option<&'a Value> {
    events
        .iter()
        .find(|e| e["reason"] == reason && e["involvedObject"]["fieldPath"] == field_path)
}

#[test]
fn lifecycle_events_are_recorded_and_repeats_are_aggregated() {
    let server = TestServer::start(StoreKind::Redb);
    let node = AgentNode::start(&server, &format!("ev{}-pod", std::process::id() % 10_000));
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: noisy}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: steady
    image: {BUSYBOX}
    imagePullPolicy: IfNotPresent
    command: ["sleep", "3600"]
  - name: crasher
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sh", "-c", "exit 3"]
  - name: sick
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    livenessProbe:
      exec: {{command: ["false"]}}
      periodSeconds: 1
      failureThreshold: 1
"#
    );
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &manifest);
    let steady = "spec.containers{steady}";
    let crasher = "spec.containers{crasher}";
    let sick = "spec.containers{sick}";
    // Two back-offs with the same message become one Event with count 2.
    let events = wait_for(
        "BackOff event counted twice",
        Duration::from_secs(120),
        || {
            let events = events_of(&server, "noisy");
            find(&events, "BackOff", crasher)
                .is_some_and(|e| e["count"].as_i64() >= Some(2))
                .then_some(events)
        },
    );
    let back_off: Vec<&Value> = events
        .iter()
        .filter(|e| e["reason"] == "BackOff" && e["involvedObject"]["fieldPath"] == crasher)
        .collect();
    assert_eq!(
        back_off.len(),
        1,
        "repeats were not aggregated: {back_off:?}"
    );
    let b = back_off[0];
    assert_eq!(b["type"], "Warning");
    assert_eq!(b["source"]["component"], "kubelet");
    assert_eq!(b["source"]["host"], node.name.as_str());
    assert_eq!(b["involvedObject"]["kind"], "Pod");
    let uid = pod_json(&server, "noisy").expect("pod")["metadata"]["uid"].clone();
    assert_eq!(b["involvedObject"]["uid"], uid);
    assert!(
        b["message"]
            .as_str()
            .is_some_and(|m| m
                .starts_with("Back-off restarting failed container crasher in pod noisy_default")),
        "{b}"
    );
    assert_ne!(b["firstTimestamp"], Value::Null);
    assert_ne!(b["lastTimestamp"], Value::Null);

    let pulled = find(&events, "Pulled", steady).expect("Pulled event");
    assert_eq!(pulled["type"], "Normal");
    assert_eq!(
        pulled["message"],
        format!("Container image \"{BUSYBOX}\" already present on machine")
    );
    assert_eq!(
        find(&events, "Created", steady).expect("Created event")["message"],
        "Created container: steady"
    );
    assert_eq!(
        find(&events, "Started", steady).expect("Started event")["message"],
        "Started container steady"
    );
    let started_crasher = find(&events, "Started", crasher).expect("Started crasher");
    assert!(
        started_crasher["count"].as_i64() >= Some(2),
        "{started_crasher}"
    );
    let unhealthy = wait_for("Unhealthy event", Duration::from_secs(60), || {
        find(&events_of(&server, "noisy"), "Unhealthy", sick).cloned()
    });
    assert_eq!(unhealthy["type"], "Warning");
    assert_eq!(unhealthy["message"], "Liveness probe failed");
    let killing = wait_for("liveness Killing event", Duration::from_secs(30), || {
        find(&events_of(&server, "noisy"), "Killing", sick).cloned()
    });
    assert_eq!(
        killing["message"],
        "Container sick failed liveness probe, will be restarted"
    );

    let describe = server.kubectl_ok(&["describe", "pod", "noisy"]);
    let table = describe
        .split("Events:")
        .nth(1)
        .unwrap_or_else(|| panic!("no Events in describe:\n{describe}"));
    for needle in ["BackOff", "Started", "Pulled", "kubelet", "Warning"] {
        assert!(table.contains(needle), "{needle} missing:\n{table}");
    }

    // A volume that cannot be set up: FailedMount on the pod itself.
    let broken = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: unmountable}}
spec:
  volumes: [{{name: cfg, configMap: {{name: does-not-exist}}}}]
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    volumeMounts: [{{name: cfg, mountPath: /cfg}}]
"#
    );
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &broken);
    let failed = wait_for("FailedMount event", Duration::from_secs(60), || {
        events_of(&server, "unmountable")
            .into_iter()
            .find(|e| e["reason"] == "FailedMount")
    });
    assert_eq!(failed["type"], "Warning");
    assert!(failed["involvedObject"]["fieldPath"].is_null(), "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .is_some_and(|m| m.contains("does-not-exist")),
        "{failed}"
    );
}

#[test]
fn readiness_failures_adoption_and_deletion_are_recorded() {
    let server = TestServer::start(StoreKind::Redb);
    let mut node = AgentNode::start(&server, &format!("ev{}-rs", std::process::id() % 10_000));
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: calm}}
spec:
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    readinessProbe:
      exec: {{command: ["false"]}}
      periodSeconds: 2
"#
    );
    server.kubectl_stdin_ok(&["apply", "-f", "-"], &manifest);
    wait_running(&server, "calm");
    let started = wait_for("Started event", Duration::from_secs(30), || {
        find(
            &events_of(&server, "calm"),
            "Started",
            "spec.containers{main}",
        )
        .cloned()
    });
    node.restart(&server);
    std::thread::sleep(Duration::from_secs(2));
    wait_running(&server, "calm");
    // The adopted container is not started again, so no second Started.
    let again = find(
        &events_of(&server, "calm"),
        "Started",
        "spec.containers{main}",
    )
    .cloned()
    .expect("Started event");
    assert_eq!(again["count"], started["count"], "{again}");
    assert_eq!(again["metadata"]["name"], started["metadata"]["name"]);

    // Every failed readiness probe is an Unhealthy event, aggregated into one
    // (per agent process: the restarted agent starts a new Event, as upstream).
    let unhealthy = wait_for("Unhealthy counted twice", Duration::from_secs(60), || {
        events_of(&server, "calm").into_iter().find(|e| {
            e["reason"] == "Unhealthy"
                && e["involvedObject"]["fieldPath"] == "spec.containers{main}"
                && e["count"].as_i64() >= Some(2)
        })
    });
    assert_eq!(unhealthy["message"], "Readiness probe failed");
    assert_eq!(unhealthy["type"], "Warning");

    // Deleting the pod stops its running container with a Killing event.
    server.kubectl_ok(&["delete", "pod", "calm", "--wait=false"]);
    wait_for("pod removed", Duration::from_secs(60), || {
        pod_json(&server, "calm").is_none().then_some(())
    });
    let stop = wait_for("Killing event", Duration::from_secs(10), || {
        find(
            &events_of(&server, "calm"),
            "Killing",
            "spec.containers{main}",
        )
        .cloned()
    });
    assert_eq!(stop["message"], "Stopping container main");
    assert_eq!(stop["type"], "Normal");
}
