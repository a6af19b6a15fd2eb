use serde_json::{json, Value};

use super::apply;
use crate::apiserver::registry::find_kind;

fn defaulted(mut obj: Value) -> Value {
    let api_version = obj["apiVersion"].as_str().unwrap().to_string();
    let kind = obj["kind"].as_str().unwrap().to_string();
    let resource = find_kind(&api_version, &kind).unwrap();
    apply(resource, &mut obj);
    obj
}

fn web_deployment() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [
                    {"name": "nginx", "image": "nginx:1.27", "ports": [{"containerPort": 80}],
                     "readinessProbe": {"httpGet": {"port": 80}}},
                    {"name": "sidecar", "image": "busybox", "command": ["sleep", "infinity"]}
                ]}
            }
        }
    })
}

#[test]
fn deployment_gets_upstream_defaults() {
    let d = defaulted(web_deployment());
    let spec = &d["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(spec["revisionHistoryLimit"], 10);
    assert_eq!(spec["progressDeadlineSeconds"], 600);
    assert_eq!(
        spec["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
    );
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Always");
    assert_eq!(pod["dnsPolicy"], "ClusterFirst");
    assert_eq!(pod["terminationGracePeriodSeconds"], 30);
    assert_eq!(pod["schedulerName"], "default-scheduler");
    assert_eq!(pod["securityContext"], json!({}));
    // Pod-only defaults stay out of templates, as upstream.
    assert!(pod.get("enableServiceLinks").is_none());
    assert!(pod.get("serviceAccountName").is_none());
    let nginx = &pod["containers"][0];
    assert_eq!(nginx["imagePullPolicy"], "IfNotPresent");
    assert_eq!(nginx["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(nginx["terminationMessagePolicy"], "File");
    assert_eq!(nginx["ports"][0]["protocol"], "TCP");
    assert_eq!(
        nginx["readinessProbe"],
        json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1,
               "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
    );
    assert_eq!(pod["containers"][1]["imagePullPolicy"], "Always");
}

#[test]
fn defaulting_keeps_what_the_user_set() {
    let mut d = web_deployment();
    d["spec"]["replicas"] = json!(0);
    d["spec"]["strategy"] = json!({"type": "Recreate"});
    d["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
    d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(0);
    d["spec"]["template"]["spec"]["containers"][1]["imagePullPolicy"] = json!("Never");
    let d = defaulted(d);
    assert_eq!(d["spec"]["replicas"], 0);
    assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
    assert_eq!(
        d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        0
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][1]["imagePullPolicy"],
        "Never"
    );
}

#[test]
fn defaulting_is_idempotent() {
    let once = defaulted(web_deployment());
    assert_eq!(defaulted(once.clone()), once);
}

#[test]
fn image_pull_policy_follows_the_tag() {
    for (image, policy) in [
        ("nginx", "Always"),
        ("nginx:latest", "Always"),
        ("localhost:5000/nginx", "Always"),
        ("localhost:5000/nginx:1.2", "IfNotPresent"),
        ("nginx@sha256:0123", "IfNotPresent"),
        ("registry.k8s.io/pause:3.10", "IfNotPresent"),
    ] {
        let pod = defaulted(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": image}]}}),
        );
        assert_eq!(
            pod["spec"]["containers"][0]["imagePullPolicy"], policy,
            "{image}"
        );
    }
}

#[test]
fn pod_gets_pod_only_defaults_and_initial_status() {
    let pod = defaulted(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db"},
        "spec": {
            "hostNetwork": true,
            "containers": [{"name": "pg", "image": "postgres:17", "ports": [{"containerPort": 5432}],
                "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
                "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]}],
            "volumes": [
                {"name": "scratch"},
                {"name": "cache", "emptyDir": {}},
                {"name": "conf", "configMap": {"name": "pg-conf"}},
                {"name": "creds", "secret": {"secretName": "pg", "defaultMode": 256}},
                {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}
            ]
        }
    }));
    let spec = &pod["spec"];
    assert_eq!(spec["enableServiceLinks"], true);
    assert_eq!(spec["serviceAccountName"], "default");
    assert_eq!(spec["serviceAccount"], "default");
    assert_eq!(spec["priority"], 0);
    let pg = &spec["containers"][0];
    assert_eq!(pg["ports"][0]["hostPort"], 5432);
    assert_eq!(
        pg["resources"]["requests"],
        json!({"cpu": "1", "memory": "1Gi"})
    );
    assert_eq!(pg["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
    let volumes = &spec["volumes"];
    assert_eq!(volumes[0], json!({"name": "scratch", "emptyDir": {}}));
    assert_eq!(volumes[1], json!({"name": "cache", "emptyDir": {}}));
    assert_eq!(volumes[2]["configMap"]["defaultMode"], 420);
    assert_eq!(volumes[3]["secret"]["defaultMode"], 256);
    assert_eq!(volumes[4]["downwardAPI"]["defaultMode"], 420);
    assert_eq!(
        volumes[4]["downwardAPI"]["items"][0]["fieldRef"]["apiVersion"],
        "v1"
    );
}

#[test]
fn service_defaults_and_named_target_port() {
    let svc = defaulted(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "metrics", "port": 9090}
        ]}
    }));
    let spec = &svc["spec"];
    assert_eq!(spec["type"], "ClusterIP");
    assert_eq!(spec["sessionAffinity"], "None");
    assert_eq!(spec["internalTrafficPolicy"], "Cluster");
    assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
    assert!(spec.get("externalTrafficPolicy").is_none());
    assert_eq!(spec["ports"][0]["targetPort"], "http");
    assert_eq!(spec["ports"][0]["protocol"], "TCP");
    assert_eq!(spec["ports"][1]["targetPort"], 9090);
}

#[test]
fn node_port_and_load_balancer_services() {
    let svc = defaulted(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "sessionAffinity": "ClientIP",
                 "ports": [{"port": 443, "protocol": "UDP"}]}
    }));
    let spec = &svc["spec"];
    assert_eq!(spec["externalTrafficPolicy"], "Cluster");
    assert_eq!(spec["allocateLoadBalancerNodePorts"], true);
    assert_eq!(spec["clusterIPs"], json!(["10.96.0.10"]));
    assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
    assert_eq!(
        spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
        10800
    );
    assert_eq!(spec["ports"][0]["protocol"], "UDP");

    let external = defaulted(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
        "spec": {"type": "ExternalName", "externalName": "db.example.com"}}),
    );
    assert!(external["spec"].get("internalTrafficPolicy").is_none());
    assert!(external["spec"].get("ipFamilyPolicy").is_none());
}

#[test]
fn workload_kinds() {
    let tpl = json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}});
    let rs = defaulted(
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "x"},
        "spec": {"template": tpl}}),
    );
    assert_eq!(rs["spec"]["replicas"], 1);

    let ds = defaulted(
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "x"},
        "spec": {"template": tpl}}),
    );
    assert_eq!(
        ds["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
    );
    assert_eq!(ds["spec"]["revisionHistoryLimit"], 10);

    let sts = defaulted(
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "x"},
        "spec": {"serviceName": "x", "template": tpl, "volumeClaimTemplates": [
            {"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
             "resources": {"requests": {"storage": "1Gi"}}}}]}}),
    );
    let spec = &sts["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(spec["podManagementPolicy"], "OrderedReady");
    assert_eq!(
        spec["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
    );
    assert_eq!(spec["revisionHistoryLimit"], 10);
    assert_eq!(
        spec["persistentVolumeClaimRetentionPolicy"],
        json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
    );
    assert_eq!(
        spec["volumeClaimTemplates"][0]["spec"]["volumeMode"],
        "Filesystem"
    );

    let on_delete = defaulted(
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "x"},
        "spec": {"updateStrategy": {"type": "OnDelete"}, "template": tpl}}),
    );
    assert_eq!(
        on_delete["spec"]["updateStrategy"],
        json!({"type": "OnDelete"})
    );
}

#[test]
fn job_defaults_and_generated_selector() {
    let job = defaulted(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "pi", "uid": "6f1c"},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "pi", "image": "perl:5.34", "command": ["perl", "-e", "print 1"]}]}}}
    }));
    let spec = &job["spec"];
    assert_eq!(spec["parallelism"], 1);
    assert_eq!(spec["completions"], 1);
    assert_eq!(spec["backoffLimit"], 6);
    assert_eq!(spec["completionMode"], "NonIndexed");
    assert_eq!(spec["suspend"], false);
    assert!(spec.get("manualSelector").is_none());
    assert_eq!(spec["template"]["spec"]["restartPolicy"], "Never");
    assert_eq!(
        spec["selector"],
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "6f1c"}})
    );
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(labels["job-name"], "pi");
    assert_eq!(labels["batch.kubernetes.io/controller-uid"], "6f1c");

    let parallel = defaulted(
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "w"},
        "spec": {"parallelism": 3, "template": {"spec": {"containers": []}}}}),
    );
    assert!(parallel["spec"].get("completions").is_none());
    // Without restartPolicy the Job is left for validation to reject.
    assert!(parallel["spec"]["template"]["spec"]
        .get("restartPolicy")
        .is_none());
}

#[test]
fn job_labels_come_from_the_template() {
    let job = defaulted(
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "pi", "uid": "u1"},
        "spec": {"template": {"metadata": {"labels": {"app": "pi"}}, "spec": {"restartPolicy": "OnFailure",
            "containers": [{"name": "pi", "image": "perl"}]}}}}),
    );
    assert_eq!(job["metadata"]["labels"]["app"], "pi");
    assert_eq!(job["metadata"]["labels"]["job-name"], "pi");
}

#[test]
fn hpa_namespace_secret_and_friends() {
    let hpa = defaulted(
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web"}, "spec": {"maxReplicas": 5,
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}}}),
    );
    assert_eq!(hpa["spec"]["minReplicas"], 1);
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        80
    );
    let v1 = defaulted(
        json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web"}, "spec": {"maxReplicas": 5}}),
    );
    assert_eq!(v1["spec"], json!({"maxReplicas": 5, "minReplicas": 1}));

    let ns =
        defaulted(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}));
    assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
    assert_eq!(ns["status"]["phase"], "Active");
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "team-a"
    );

    let secret = defaulted(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
        "data": {"user": "YWRtaW4=", "pass": "b2xk"}, "stringData": {"pass": "hunter2"}}),
    );
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(
        secret["data"],
        json!({"user": "YWRtaW4=", "pass": "aHVudGVyMg=="})
    );
    assert!(secret.get("stringData").is_none());

    let slice = defaulted(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc"}, "addressType": "IPv4", "endpoints": [], "ports": [{"port": 80}]}),
    );
    assert_eq!(
        slice["ports"][0],
        json!({"port": 80, "name": "", "protocol": "TCP"})
    );

    let node = defaulted(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
        "status": {"capacity": {"cpu": "2"}}}),
    );
    assert_eq!(node["status"]["allocatable"], json!({"cpu": "2"}));
}

#[test]
fn wrong_json_types_do_not_panic() {
    let junk = [
        json!(null),
        json!("pod"),
        json!([1, 2]),
        json!({"spec": "x"}),
        json!({"spec": {"containers": "x", "volumes": [1, null, "v", {"name": 3}], "template": 7}}),
        json!({"spec": {"containers": [{"ports": "80", "livenessProbe": 1, "env": [{"valueFrom": 2}],
            "resources": {"limits": []}, "image": 5}], "strategy": [], "updateStrategy": {"type": 1},
            "template": {"spec": {"containers": [null, {"ports": [null, 3]}]}}, "ports": [{"port": "80"}],
            "selector": "app=x", "metrics": {}}, "metadata": {"name": 1, "labels": "x", "uid": 2}, "status": 3,
            "stringData": {"a": 1}, "data": 4, "subsets": [{"ports": 9}]}),
    ];
    for resource in crate::apiserver::registry::RESOURCES {
        for obj in &junk {
            let mut obj = obj.clone();
            apply(resource, &mut obj);
        }
    }
}
