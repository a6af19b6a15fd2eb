use super::*;
use crate::apiserver::registry::{self, find};

const NOW: &str = "2025-06-01T12:00:00Z";

fn now() -> Timestamp {
    NOW.parse().unwrap()
}

/// `secs` seconds before NOW, as an RFC 3339 string.
fn ago(secs: i64) -> String {
    (now() - SignedDuration::from_secs(secs)).to_string()
}

fn cells(plural: &str, group: &str, version: &str, obj: Value) -> Vec<Value> {
    let resource = find(group, version, plural).unwrap();
    let table = to_table(resource, &[obj], IncludeObject::None, now());
    table["rows"][0]["cells"].as_array().unwrap().clone()
}

fn pod_cells(obj: Value) -> Vec<Value> {
    cells("pods", "", "v1", obj)
}

fn running(name: &str, ready: bool) -> Value {
    json!({"name": name, "ready": ready, "restartCount": 0, "state": {"running": {"startedAt": ago(60)}}})
}

#[test]
fn human_duration_matches_kubectl() {
    let d = SignedDuration::from_secs;
    assert_eq!(human_duration(d(-5)), "<invalid>");
    assert_eq!(human_duration(d(-1)), "0s");
    assert_eq!(human_duration(d(5)), "5s");
    assert_eq!(human_duration(d(119)), "119s");
    assert_eq!(human_duration(d(200)), "3m20s");
    assert_eq!(human_duration(d(240)), "4m");
    assert_eq!(human_duration(d(600)), "10m");
    assert_eq!(human_duration(d(179 * 60)), "179m");
    assert_eq!(human_duration(d(3 * 3600)), "3h");
    assert_eq!(human_duration(d(7 * 3600 + 30 * 60)), "7h30m");
    assert_eq!(human_duration(d(47 * 3600)), "47h");
    assert_eq!(human_duration(d(2 * 86400)), "2d");
    assert_eq!(human_duration(d(50 * 3600)), "2d2h");
    assert_eq!(human_duration(d(400 * 86400)), "400d");
    assert_eq!(human_duration(d(3 * 365 * 86400 + 5 * 86400)), "3y5d");
    assert_eq!(human_duration(d(10 * 365 * 86400)), "10y");
}

#[test]
fn pod_with_two_containers_one_ready() {
    let row = pod_cells(json!({
        "metadata": {"name": "web", "creationTimestamp": ago(200)},
        "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
        "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.5"}],
                   "containerStatuses": [running("a", true), running("b", false)]}
    }));
    assert_eq!(row[0], "web");
    assert_eq!(row[1], "1/2");
    assert_eq!(row[2], "Running");
    assert_eq!(row[3], "0");
    assert_eq!(row[4], "3m20s");
    assert_eq!(row[5], "10.0.0.5");
    assert_eq!(row[6], "n1");
    assert_eq!(row[7], "<none>");
    assert_eq!(row[8], "<none>");
}

#[test]
fn pod_status_reasons() {
    let waiting = |reason: &str| json!({"name": "a", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": reason}}});
    let new_pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
    assert_eq!(pod_cells(new_pod.clone())[2], "Pending");
    assert_eq!(pod_cells(new_pod)[4], "<unknown>");

    let creating = json!({"spec": {"containers": [{"name": "a"}]},
        "status": {"phase": "Pending", "containerStatuses": [waiting("ContainerCreating")]}});
    assert_eq!(pod_cells(creating)[2], "ContainerCreating");

    let crash = json!({"spec": {"containers": [{"name": "a"}]},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "a", "ready": false, "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(10)}}}]}});
    let row = pod_cells(crash);
    assert_eq!(row[2], "CrashLoopBackOff");
    assert_eq!(row[3], "3 (10s ago)");

    let completed = json!({"spec": {"containers": [{"name": "a"}]},
        "status": {"phase": "Succeeded", "containerStatuses": [{
            "name": "a", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}});
    assert_eq!(pod_cells(completed.clone())[2], "Completed");
    let table = to_table(
        find("", "v1", "pods").unwrap(),
        &[completed],
        IncludeObject::None,
        now(),
    );
    assert_eq!(table["rows"][0]["conditions"][0]["reason"], "Succeeded");

    let killed = json!({"spec": {"containers": [{"name": "a"}]},
        "status": {"phase": "Failed", "containerStatuses": [{
            "name": "a", "state": {"terminated": {"exitCode": 137, "signal": 9}}}]}});
    assert_eq!(pod_cells(killed)[2], "Signal:9");

    let terminating = json!({"metadata": {"deletionTimestamp": ago(1)},
        "spec": {"containers": [{"name": "a"}]},
        "status": {"phase": "Running", "containerStatuses": [running("a", true)]}});
    assert_eq!(pod_cells(terminating)[2], "Terminating");
}

#[test]
fn pod_init_containers() {
    let spec =
        json!({"initContainers": [{"name": "i1"}, {"name": "i2"}], "containers": [{"name": "a"}]});
    let init = json!({"spec": spec, "status": {"phase": "Pending", "initContainerStatuses": [
        {"name": "i1", "state": {"terminated": {"exitCode": 0}}},
        {"name": "i2", "state": {"running": {}}}]}});
    assert_eq!(pod_cells(init)[2], "Init:1/2");

    let backoff = json!({"spec": spec, "status": {"phase": "Pending", "initContainerStatuses": [
        {"name": "i1", "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
    let row = pod_cells(backoff);
    assert_eq!(row[2], "Init:CrashLoopBackOff");
    assert_eq!(row[3], "2");

    let failed = json!({"spec": spec, "status": {"phase": "Pending", "initContainerStatuses": [
        {"name": "i1", "state": {"terminated": {"exitCode": 2}}}]}});
    assert_eq!(pod_cells(failed)[2], "Init:ExitCode:2");

    let sidecar = json!({
        "spec": {"initContainers": [{"name": "s", "restartPolicy": "Always"}], "containers": [{"name": "a"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Initialized", "status": "True"}],
            "initContainerStatuses": [{"name": "s", "started": true, "ready": true, "state": {"running": {}}}],
            "containerStatuses": [running("a", true)]}});
    let row = pod_cells(sidecar);
    assert_eq!(row[1], "2/2");
    assert_eq!(row[2], "Running");
}

#[test]
fn include_object_controls_the_row_object() {
    let pods = find("", "v1", "pods").unwrap();
    let obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "uid": "u"}, "spec": {}});
    let meta = to_table(
        pods,
        std::slice::from_ref(&obj),
        IncludeObject::Metadata,
        now(),
    );
    assert_eq!(meta["kind"], "Table");
    assert_eq!(meta["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(meta["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(meta["rows"][0]["object"]["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(meta["rows"][0]["object"]["metadata"]["uid"], "u");
    let full = to_table(
        pods,
        std::slice::from_ref(&obj),
        IncludeObject::Object,
        now(),
    );
    assert_eq!(full["rows"][0]["object"], obj);
    let none = watch_table_row(pods, &obj, IncludeObject::None, now());
    assert!(none["rows"][0].get("object").is_none());
    assert_eq!(none["rows"].as_array().unwrap().len(), 1);
    let empty = to_table(pods, &[], IncludeObject::None, now());
    assert_eq!(empty["rows"], json!([]));
    assert_eq!(empty["columnDefinitions"][0]["format"], "name");

    assert_eq!(IncludeObject::from_query(None), Ok(IncludeObject::Metadata));
    assert_eq!(
        IncludeObject::from_query(Some("Object")),
        Ok(IncludeObject::Object)
    );
    assert_eq!(
        IncludeObject::from_query(Some("None")),
        Ok(IncludeObject::None)
    );
    assert!(IncludeObject::from_query(Some("All")).is_err());
}

#[test]
fn every_resource_survives_odd_objects_with_one_cell_per_column() {
    let odd = [
        json!(null),
        json!({}),
        json!({"metadata": 5, "spec": "x", "status": []}),
        json!({"metadata": {"name": "n", "creationTimestamp": "not a time"},
               "spec": {"containers": 3, "ports": [1], "selector": {"matchExpressions": [{}]}},
               "status": {"conditions": [null], "containerStatuses": [null]}}),
    ];
    for r in registry::RESOURCES {
        let table = to_table(r, &odd, IncludeObject::Object, now());
        let columns = table["columnDefinitions"].as_array().unwrap().len();
        for row in table["rows"].as_array().unwrap() {
            assert_eq!(
                row["cells"].as_array().unwrap().len(),
                columns,
                "{}",
                r.qualified()
            );
        }
    }
}

#[test]
fn service_columns() {
    let row = cells(
        "services",
        "",
        "v1",
        json!({
            "metadata": {"name": "web", "creationTimestamp": ago(5)},
            "spec": {"type": "NodePort", "clusterIPs": ["10.96.0.10"],
                     "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}],
                     "selector": {"app": "web", "tier": "fe"}}
        }),
    );
    assert_eq!(
        row,
        vec![
            json!("web"),
            json!("NodePort"),
            json!("10.96.0.10"),
            json!("<none>"),
            json!("80:30080/TCP,53/UDP"),
            json!("5s"),
            json!("app=web,tier=fe")
        ]
    );
    let lb = cells(
        "services",
        "",
        "v1",
        json!({"spec": {"type": "LoadBalancer"}}),
    );
    assert_eq!(lb[3], "<pending>");
    assert_eq!(lb[2], "<none>");
}

#[test]
fn node_and_namespace_columns() {
    let row = cells(
        "nodes",
        "",
        "v1",
        json!({
            "metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": "", "kubernetes.io/role": "worker"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "InternalIP", "address": "192.168.1.2"}],
                       "nodeInfo": {"kubeletVersion": "v1.37.0-skiff", "osImage": "Debian"}}
        }),
    );
    assert_eq!(row[1], "Ready,SchedulingDisabled");
    assert_eq!(row[2], "control-plane,worker");
    assert_eq!(row[4], "v1.37.0-skiff");
    assert_eq!(row[5], "192.168.1.2");
    assert_eq!(row[6], "<none>");
    assert_eq!(row[7], "Debian");
    assert_eq!(row[8], "<unknown>");
    let ns = cells(
        "namespaces",
        "",
        "v1",
        json!({"metadata": {"name": "default"}, "status": {"phase": "Active"}}),
    );
    assert_eq!(ns[1], "Active");
}

#[test]
fn workload_columns() {
    let template = json!({"spec": {"containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "busybox"}]}});
    let deploy = cells(
        "deployments",
        "apps",
        "v1",
        json!({
            "metadata": {"name": "web"},
            "spec": {"replicas": 3, "template": template, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}
        }),
    );
    assert_eq!(deploy[1], "2/3");
    assert_eq!(deploy[2], 3);
    assert_eq!(deploy[3], 2);
    assert_eq!(deploy[5], "a,b");
    assert_eq!(deploy[6], "nginx,busybox");
    assert_eq!(deploy[7], "app=web");

    let rs = cells(
        "replicasets",
        "apps",
        "v1",
        json!({"spec": {"selector": {
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]}, {"key": "app", "operator": "Exists"}]}}}),
    );
    assert_eq!(rs[1], 1);
    assert_eq!(rs[7], "app,tier in (a,b)");

    let job = cells(
        "jobs",
        "batch",
        "v1",
        json!({
            "spec": {"completions": 3},
            "status": {"succeeded": 3, "startTime": ago(100), "completionTime": ago(40),
                       "conditions": [{"type": "Complete", "status": "True"}]}
        }),
    );
    assert_eq!(job[1], "Complete");
    assert_eq!(job[2], "3/3");
    assert_eq!(job[3], "60s");
    let running = cells(
        "jobs",
        "batch",
        "v1",
        json!({"spec": {"parallelism": 2}, "status": {"startTime": ago(30)}}),
    );
    assert_eq!(running[1], "Running");
    assert_eq!(running[2], "0/1 of 2");
    assert_eq!(running[3], "30s");

    let hpa = cells(
        "horizontalpodautoscalers",
        "autoscaling",
        "v2",
        json!({
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 1, "maxReplicas": 5,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]},
            "status": {"currentReplicas": 2, "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 45}}}]}
        }),
    );
    assert_eq!(hpa[1], "Deployment/web");
    assert_eq!(hpa[2], "cpu: 45%/80%");
    assert_eq!(hpa[3], "1");
    assert_eq!(hpa[4], 5);
    let v1 = cells(
        "horizontalpodautoscalers",
        "autoscaling",
        "v1",
        json!({
        "spec": {"targetCPUUtilizationPercentage": 50, "maxReplicas": 3}}),
    );
    assert_eq!(v1[2], "cpu: <unknown>/50%");
    assert_eq!(v1[3], "<unset>");
}

#[test]
fn config_event_and_discovery_columns() {
    let cm = cells(
        "configmaps",
        "",
        "v1",
        json!({"data": {"a": "1", "b": "2"}, "binaryData": {"c": ""}}),
    );
    assert_eq!(cm[1], 3);
    let secret = cells(
        "secrets",
        "",
        "v1",
        json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}}),
    );
    assert_eq!(secret[1], "kubernetes.io/tls");
    assert_eq!(secret[2], 2);

    let ev = cells(
        "events",
        "",
        "v1",
        json!({
            "metadata": {"name": "web.1"}, "type": "Normal", "reason": "Scheduled",
            "involvedObject": {"kind": "Pod", "name": "web"}, "message": " assigned \n",
            "source": {"component": "scheduler"}, "firstTimestamp": ago(300), "lastTimestamp": ago(30), "count": 2
        }),
    );
    assert_eq!(ev[0], "30s");
    assert_eq!(ev[3], "pod/web");
    assert_eq!(ev[5], "scheduler");
    assert_eq!(ev[6], "assigned");
    assert_eq!(ev[7], "5m");
    assert_eq!(ev[8], 2);
    assert_eq!(ev[9], "web.1");

    let slice = cells(
        "endpointslices",
        "discovery.k8s.io",
        "v1",
        json!({
            "addressType": "IPv4", "ports": [{"port": 80}, {"name": "dns"}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}, {"addresses": ["10.0.0.3", "10.0.0.4"]}]
        }),
    );
    assert_eq!(slice[1], "IPv4");
    assert_eq!(slice[2], "80,dns");
    assert_eq!(slice[3], "10.0.0.1,10.0.0.2,10.0.0.3 + 1 more...");

    let ep = cells(
        "endpoints",
        "",
        "v1",
        json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 8080}]}]}),
    );
    assert_eq!(ep[1], "10.0.0.1:8080");
    let lease = cells(
        "leases",
        "coordination.k8s.io",
        "v1",
        json!({"spec": {"holderIdentity": "node-1"}}),
    );
    assert_eq!(lease[1], "node-1");
}
