use serde_json::{json, Value};

use super::{unknown_fields, validate, FieldError};
use crate::apiserver::defaults;
use crate::apiserver::registry::{find_kind, Resource, RESOURCES};

pub(super) fn resource_of(obj: &Value) -> &'static Resource {
    find_kind(
        obj["apiVersion"].as_str().unwrap(),
        obj["kind"].as_str().unwrap(),
    )
    .unwrap()
}

/// What the create path does: default, then validate.
pub(super) fn create(mut obj: Value) -> Vec<FieldError> {
    let resource = resource_of(&obj);
    if resource.namespaced && obj["metadata"].get("namespace").is_none() {
        obj["metadata"]["namespace"] = json!("default");
    }
    defaults::apply(resource, &mut obj);
    validate(resource, &obj, None)
}

/// What the update path does: both objects defaulted, old stored.
pub(super) fn update(old: Value, new: Value) -> Vec<FieldError> {
    let resource = resource_of(&new);
    let (mut old, mut new) = (old, new);
    for obj in [&mut old, &mut new] {
        obj["metadata"]["namespace"] = json!("default");
        defaults::apply(resource, obj);
    }
    validate(resource, &new, Some(&old))
}

pub(super) fn fields(errs: &[FieldError]) -> Vec<(&str, &str)> {
    errs.iter().map(|e| (e.field.as_str(), e.reason)).collect()
}

pub(super) fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "shop-frontend", "labels": {"app.kubernetes.io/name": "shop", "tier": "web"}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "shop"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]},
            "template": {
                "metadata": {"labels": {"app": "shop", "tier": "web"}},
                "spec": {
                    "containers": [
                        {"name": "web", "image": "nginx:1.27", "ports": [{"name": "http", "containerPort": 80}],
                         "volumeMounts": [{"name": "conf", "mountPath": "/etc/nginx/conf.d"}],
                         "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}}},
                        {"name": "log-shipper", "image": "fluent/fluent-bit:3.0",
                         "env": [{"name": "LEVEL", "value": "info"}]}
                    ],
                    "volumes": [{"name": "conf", "configMap": {"name": "shop-nginx"}}]
                }
            }
        }
    })
}

#[test]
fn realistic_manifests_are_valid() {
    assert_eq!(create(deployment()), vec![]);
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "shop"},
        "spec": {"selector": {"app": "shop"}, "ports": [
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "https", "port": 443, "targetPort": 8443}]}});
    assert_eq!(create(svc), vec![]);
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "pi"},
        "spec": {"backoffLimit": 4, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "pi", "image": "perl:5.34", "command": ["perl", "-Mbignum=bpi", "-wle", "print bpi(2000)"]}]}}}});
    assert_eq!(create(job), vec![]);
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}});
    assert_eq!(create(ns), vec![]);
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shop-nginx"},
        "data": {"default.conf": "server { listen 80; }", "LOG_LEVEL": "debug"}});
    assert_eq!(create(cm), vec![]);
    let hpa = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "shop"},
        "spec": {"maxReplicas": 10, "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "shop-frontend"}}});
    assert_eq!(create(hpa), vec![]);
    let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "pg", "image": "postgres:17"}]}}}});
    assert_eq!(create(sts), vec![]);
}

#[test]
fn bad_names_get_upstream_messages() {
    let mut d = deployment();
    d["metadata"]["name"] = json!("My_App");
    let errs = create(d);
    assert_eq!(fields(&errs), vec![("metadata.name", "FieldValueInvalid")]);
    assert_eq!(
        errs[0].to_string(),
        "metadata.name: Invalid value: \"My_App\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    );

    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1st-svc"},
        "spec": {"ports": [{"port": 80}]}});
    let errs = create(svc);
    assert_eq!(fields(&errs), vec![("metadata.name", "FieldValueInvalid")]);
    assert!(errs[0].message.contains("a DNS-1035 label must consist"));

    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team.a"}});
    assert!(create(ns)[0]
        .message
        .contains("a lowercase RFC 1123 label must consist"));

    let nameless = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}});
    let errs = create(nameless);
    assert_eq!(
        errs[0].to_string(),
        "metadata.name: Required value: name or generateName is required"
    );
}

#[test]
fn labels_and_annotations() {
    let mut d = deployment();
    d["metadata"]["labels"] = json!({"app": "has space", "bad key!": "x"});
    d["metadata"]["annotations"] = json!({"note": "x".repeat(300 * 1024)});
    let errs = create(d);
    assert_eq!(
        fields(&errs),
        vec![
            ("metadata.labels", "FieldValueInvalid"),
            ("metadata.labels", "FieldValueInvalid"),
            ("metadata.annotations", "FieldValueTooLong"),
        ]
    );
    assert_eq!(
        errs[2].message,
        "Too long: may not be more than 262144 bytes"
    );
}

#[test]
fn selector_must_match_template_labels() {
    let mut d = deployment();
    d["spec"]["template"]["metadata"]["labels"] = json!({"app": "shop-v2", "tier": "web"});
    let errs = create(d);
    assert_eq!(
        fields(&errs),
        vec![("spec.template.metadata.labels", "FieldValueInvalid")]
    );
    assert_eq!(
        errs[0].message,
        "Invalid value: {\"app\":\"shop-v2\",\"tier\":\"web\"}: `selector` does not match template `labels`"
    );

    let mut no_selector = deployment();
    no_selector["spec"]
        .as_object_mut()
        .unwrap()
        .remove("selector");
    assert_eq!(
        fields(&create(no_selector)),
        vec![("spec.selector", "FieldValueRequired")]
    );

    let mut empty = deployment();
    empty["spec"]["selector"] = json!({});
    let errs = create(empty);
    assert_eq!(errs[0].field, "spec.selector");
    assert!(errs[0]
        .message
        .ends_with("empty selector is invalid for deployment"));

    let mut bad_op = deployment();
    bad_op["spec"]["selector"]["matchExpressions"] = json!([{"key": "tier", "operator": "Has"}]);
    let errs = create(bad_op);
    assert_eq!(
        fields(&errs),
        vec![(
            "spec.selector.matchExpressions[0].operator",
            "FieldValueInvalid"
        )]
    );
}

#[test]
fn pod_container_rules() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
    "spec": {
        "containers": [
            {"name": "web", "image": "nginx", "ports": [{"containerPort": 70000}, {"containerPort": 80, "protocol": "HTTP"}],
             "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
            {"name": "web", "image": ""},
            {"name": "Sidecar", "image": " busybox"}
        ],
        "restartPolicy": "Sometimes",
        "dnsPolicy": "ClusterFirstt",
        "volumes": [{"name": "cache"}, {"name": "cache", "emptyDir": {}}]
    }});
    let errs = create(pod);
    let got = fields(&errs);
    for want in [
        ("spec.volumes[1].name", "FieldValueDuplicate"),
        (
            "spec.containers[0].ports[0].containerPort",
            "FieldValueInvalid",
        ),
        (
            "spec.containers[0].ports[1].protocol",
            "FieldValueNotSupported",
        ),
        (
            "spec.containers[0].volumeMounts[0].name",
            "FieldValueNotFound",
        ),
        ("spec.containers[1].name", "FieldValueDuplicate"),
        ("spec.containers[1].image", "FieldValueRequired"),
        ("spec.containers[2].name", "FieldValueInvalid"),
        ("spec.containers[2].image", "FieldValueInvalid"),
        ("spec.restartPolicy", "FieldValueNotSupported"),
        ("spec.dnsPolicy", "FieldValueNotSupported"),
    ] {
        assert!(got.contains(&want), "missing {want:?} in {got:?}");
    }
    let by_field = |f: &str| errs.iter().find(|e| e.field == f).unwrap().message.clone();
    assert_eq!(
        by_field("spec.containers[0].ports[1].protocol"),
        "Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\""
    );
    assert_eq!(
        by_field("spec.containers[1].name"),
        "Duplicate value: \"web\""
    );
    assert_eq!(
        by_field("spec.containers[0].ports[0].containerPort"),
        "Invalid value: 70000: must be between 1 and 65535, inclusive"
    );
    assert_eq!(
        by_field("spec.restartPolicy"),
        "Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\""
    );

    let no_containers = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}});
    assert_eq!(
        fields(&create(no_containers)),
        vec![("spec.containers", "FieldValueRequired")]
    );
}

#[test]
fn port_of_the_wrong_type_does_not_panic() {
    // The codec rejects this; validation must simply not fall over.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": "eighty"}]}]}});
    let errs = create(pod);
    assert_eq!(
        fields(&errs),
        vec![(
            "spec.containers[0].ports[0].containerPort",
            "FieldValueRequired"
        )]
    );
}

#[test]
fn workload_template_uses_the_template_prefix() {
    let mut d = deployment();
    d["spec"]["template"]["spec"]["containers"][1]["name"] = json!("web");
    d["spec"]["template"]["spec"]["restartPolicy"] = json!("OnFailure");
    d["spec"]["replicas"] = json!(-1);
    let errs = create(d);
    assert_eq!(
        fields(&errs),
        vec![
            ("spec.replicas", "FieldValueInvalid"),
            (
                "spec.template.spec.containers[1].name",
                "FieldValueDuplicate"
            ),
            ("spec.template.spec.restartPolicy", "FieldValueNotSupported"),
        ]
    );
    assert_eq!(
        errs[0].message,
        "Invalid value: -1: must be greater than or equal to 0"
    );
}

#[test]
fn strategies() {
    let mut d = deployment();
    d["spec"]["strategy"] = json!({"type": "Recreate", "rollingUpdate": {"maxSurge": 1}});
    assert_eq!(
        fields(&create(d)),
        vec![("spec.strategy.rollingUpdate", "FieldValueForbidden")]
    );
    let mut d = deployment();
    d["spec"]["strategy"] = json!({"type": "BlueGreen"});
    assert_eq!(
        fields(&create(d)),
        vec![("spec.strategy", "FieldValueNotSupported")]
    );
    let mut d = deployment();
    d["spec"]["strategy"] = json!({"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}});
    assert_eq!(
        fields(&create(d)),
        vec![(
            "spec.strategy.rollingUpdate.maxUnavailable",
            "FieldValueInvalid"
        )]
    );
    let mut d = deployment();
    d["spec"]["strategy"] =
        json!({"rollingUpdate": {"maxUnavailable": "150%", "maxSurge": "lots"}});
    assert_eq!(
        fields(&create(d)),
        vec![
            (
                "spec.strategy.rollingUpdate.maxUnavailable",
                "FieldValueInvalid"
            ),
            ("spec.strategy.rollingUpdate.maxSurge", "FieldValueInvalid"),
        ]
    );
}

#[test]
fn job_rules() {
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"},
        "spec": {"template": {"spec": {"containers": [{"name": "m", "image": "app:1"}]}}}});
    let errs = create(job);
    assert_eq!(
        fields(&errs),
        vec![("spec.template.spec.restartPolicy", "FieldValueNotSupported")]
    );
    assert_eq!(
        errs[0].message,
        "Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
    );

    let manual = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "m"},
        "spec": {"manualSelector": true, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "m", "image": "app:1"}]}}}});
    assert_eq!(
        fields(&create(manual)),
        vec![("spec.selector", "FieldValueRequired")]
    );

    let indexed = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "m"},
        "spec": {"completionMode": "Indexed", "parallelism": 2, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "m", "image": "app:1"}]}}}});
    assert_eq!(
        fields(&create(indexed)),
        vec![("spec.completions", "FieldValueRequired")]
    );
}

#[test]
fn service_rules() {
    let svc = |spec: Value| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": spec});
    assert_eq!(
        fields(&create(svc(json!({"selector": {"app": "web"}})))),
        vec![("spec.ports", "FieldValueRequired")]
    );
    assert_eq!(
        create(svc(json!({"clusterIP": "None", "selector": {"app": "db"}}))),
        vec![]
    );
    assert_eq!(
        create(svc(
            json!({"type": "ExternalName", "externalName": "db.example.com."})
        )),
        vec![]
    );
    let errs = create(svc(
        json!({"ports": [{"port": 80}, {"port": 80, "name": "b"}]}),
    ));
    assert_eq!(
        fields(&errs),
        vec![
            ("spec.ports[0].name", "FieldValueRequired"),
            ("spec.ports[1]", "FieldValueDuplicate")
        ]
    );
    let errs = create(svc(json!({"type": "NodePort", "ports": [
        {"name": "a", "port": 80, "nodePort": 80}, {"name": "a", "port": 0, "targetPort": "no_such"}]})));
    assert_eq!(
        fields(&errs),
        vec![
            ("spec.ports[0].nodePort", "FieldValueInvalid"),
            ("spec.ports[1].name", "FieldValueDuplicate"),
            ("spec.ports[1].port", "FieldValueInvalid"),
            ("spec.ports[1].targetPort", "FieldValueInvalid"),
        ]
    );
    assert!(errs[0]
        .message
        .contains("The range of valid ports is 30000-32767"));
    let errs = create(svc(
        json!({"ports": [{"port": 80, "nodePort": 30080}], "clusterIP": "10.0.0.300"}),
    ));
    assert_eq!(
        fields(&errs),
        vec![
            ("spec.clusterIP", "FieldValueInvalid"),
            ("spec.ports[0].nodePort", "FieldValueForbidden")
        ]
    );
    assert_eq!(
        errs[1].message,
        "Forbidden: may not be used when `type` is 'ClusterIP'"
    );
    let errs = create(svc(json!({"type": "Ingress", "ports": [{"port": 80}]})));
    assert_eq!(
        errs[0].message,
        "Unsupported value: \"Ingress\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""
    );
}

#[test]
fn config_and_secret_rules() {
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
        "data": {"nginx/conf": "x", "ok": "y"}, "binaryData": {"ok": "eQ=="}});
    assert_eq!(
        fields(&create(cm)),
        vec![
            ("data[nginx/conf]", "FieldValueInvalid"),
            ("data[ok]", "FieldValueInvalid")
        ]
    );
    let big = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
        "data": {"a": "x".repeat(1024 * 1024), "b": "y"}});
    assert_eq!(fields(&create(big)), vec![("", "FieldValueTooLong")]);
    let tls = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "t"}, "type": "kubernetes.io/tls",
        "data": {"tls.crt": "Y2VydA=="}});
    assert_eq!(
        fields(&create(tls)),
        vec![("data[tls.key]", "FieldValueRequired")]
    );
}

#[test]
fn hpa_event_and_slice_rules() {
    let hpa = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"},
        "spec": {"minReplicas": 5, "maxReplicas": 2, "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment"}}});
    assert_eq!(
        fields(&create(hpa)),
        vec![
            ("spec.maxReplicas", "FieldValueInvalid"),
            ("spec.scaleTargetRef.name", "FieldValueRequired")
        ]
    );
    let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"},
        "spec": {"maxReplicas": 0, "targetCPUUtilizationPercentage": 0, "scaleTargetRef": {"kind": "Deployment", "name": "web"}}});
    assert_eq!(
        fields(&create(v1)),
        vec![
            ("spec.maxReplicas", "FieldValueInvalid"),
            ("spec.maxReplicas", "FieldValueInvalid"),
            ("spec.targetCPUUtilizationPercentage", "FieldValueInvalid"),
        ]
    );
    let event = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "web.17f"}, "reason": "Started"});
    assert_eq!(
        fields(&create(event)),
        vec![("involvedObject", "FieldValueRequired")]
    );
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "web-x"},
        "addressType": "IPv5", "endpoints": [{"addresses": []}], "ports": [{"port": 80, "protocol": "TCP"}]});
    assert_eq!(
        fields(&create(slice)),
        vec![
            ("addressType", "FieldValueNotSupported"),
            ("endpoints[0].addresses", "FieldValueRequired")
        ]
    );
}

#[test]
fn unknown_fields_are_reported_with_upstream_paths() {
    let pods = find_kind("v1", "Pod").unwrap();
    let input = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "labels": {"anything": "goes"}, "annotations": {"x/y": "z"}, "creationTimestamp": null},
        "spec": {
            "containers": [{"name": "c", "image": "i", "imagePullPolicy": "Always", "foo": 1,
                "ports": [{"containerPort": 80, "hostPortt": 80}],
                "resources": {"limits": {"cpu": 1, "memory": "64Mi"}},
                "livenessProbe": {"httpGet": {"port": "http"}}}],
            "restartPolicyy": "Never",
            "overhead": {"cpu": "10m"}
        },
        "statuss": {}
    });
    let canonical = (pods.codec)(input.clone()).unwrap();
    assert_eq!(
        unknown_fields(&input, &canonical),
        vec![
            "spec.containers[0].foo",
            "spec.containers[0].ports[0].hostPortt",
            "spec.restartPolicyy",
            "statuss"
        ]
    );
}

#[test]
fn what_kubectl_sends_has_no_unknown_fields() {
    let deployments = find_kind("apps/v1", "Deployment").unwrap();
    // `kubectl create deployment x --image=nginx --dry-run=client -o json`, plus
    // int-or-string and quantity values written as numbers.
    let input = json!({
        "kind": "Deployment", "apiVersion": "apps/v1",
        "metadata": {"name": "x", "creationTimestamp": null, "labels": {"app": "x"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"creationTimestamp": null, "labels": {"app": "x"}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx",
                    "resources": {"requests": {"cpu": 0.5, "memory": 134217728}}}]}},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": "10%"}}},
        "status": {}
    });
    let canonical = (deployments.codec)(input.clone()).unwrap();
    assert_eq!(unknown_fields(&input, &canonical), Vec::<String>::new());
}

#[test]
fn no_input_makes_validation_panic() {
    let junk = [
        json!(null),
        json!(3),
        json!({"metadata": "x", "spec": []}),
        json!({"metadata": {"name": 5, "labels": [1], "annotations": {"a": 1}, "finalizers": "f"},
            "spec": {"containers": [null, 1, {"name": [], "ports": [{"containerPort": "x", "name": 3}], "volumeMounts": {}}],
                "volumes": "v", "selector": {"matchLabels": "x", "matchExpressions": [1, {"values": "a"}]},
                "template": [], "ports": [{"port": "80", "targetPort": {}, "nodePort": "x"}], "strategy": 1,
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": 5}, "metrics": [1, {"resource": 2}],
                "tolerations": [1, {"operator": 5}], "scaleTargetRef": "x"},
            "data": [1], "binaryData": {"a": 1}, "endpoints": [1], "involvedObject": 1}),
    ];
    for resource in RESOURCES {
        for obj in &junk {
            let _ = validate(resource, obj, None);
            for old in &junk {
                let _ = validate(resource, obj, Some(old));
            }
        }
    }
    let _ = unknown_fields(&junk[3], &junk[2]);
}
