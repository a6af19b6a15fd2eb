//! Update rules: immutable fields and what a Pod update may change.

use serde_json::{json, Value};

use super::tests::{deployment, fields, resource_of, update};
use super::validate;

fn web_pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "uid": "u1"},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.26", "ports": [{"containerPort": 80}]}],
                 "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"}]}})
}

#[test]
fn pod_updates_may_only_change_images_and_friends() {
    let mut new = web_pod();
    new["spec"]["containers"][0]["image"] = json!("nginx:1.27");
    new["spec"]["activeDeadlineSeconds"] = json!(600);
    let spot = json!({"key": "spot", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30});
    new["spec"]["tolerations"]
        .as_array_mut()
        .unwrap()
        .push(spot);
    assert_eq!(update(web_pod(), new), vec![]);

    let mut new = web_pod();
    new["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(8080);
    let errs = update(web_pod(), new);
    assert_eq!(fields(&errs), vec![("spec", "FieldValueForbidden")]);
    assert!(errs[0].message.starts_with(
        "Forbidden: pod updates may not change fields other than `spec.containers[*].image`"
    ));
    assert!(errs[0].message.contains("- spec.containers[0].ports[0].containerPort: 80\n+ spec.containers[0].ports[0].containerPort: 8080"));

    let mut new = web_pod();
    new["spec"]["tolerations"] = json!([]);
    assert_eq!(
        fields(&update(web_pod(), new)),
        vec![("spec.tolerations", "FieldValueForbidden")]
    );
}

#[test]
fn immutable_fields_on_update() {
    let svc = |ip: &str| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"clusterIP": ip, "ports": [{"port": 80}]}})
    };
    assert_eq!(update(svc("10.96.0.10"), svc("10.96.0.10")), vec![]);
    let mut labelled = svc("10.96.0.10");
    labelled["metadata"]["labels"] = json!({"team": "shop"});
    assert_eq!(update(svc("10.96.0.10"), labelled), vec![]);
    let errs = update(svc("10.96.0.10"), svc("10.96.0.11"));
    assert_eq!(
        errs[0].to_string(),
        "spec.clusterIP: Invalid value: \"10.96.0.11\": field is immutable"
    );

    let mut moved = deployment();
    moved["spec"]["selector"]["matchLabels"]["app"] = json!("shop2");
    moved["spec"]["template"]["metadata"]["labels"]["app"] = json!("shop2");
    assert_eq!(
        fields(&update(deployment(), moved)),
        vec![("spec.selector", "FieldValueInvalid")]
    );
    let mut scaled = deployment();
    scaled["spec"]["replicas"] = json!(5);
    assert_eq!(update(deployment(), scaled), vec![]);

    let sts = |service: &str, replicas: i64| {
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"serviceName": service, "replicas": replicas, "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "pg", "image": "postgres:17"}]}}}})
    };
    assert_eq!(update(sts("db", 1), sts("db", 3)), vec![]);
    assert_eq!(
        fields(&update(sts("db", 1), sts("db2", 1))),
        vec![("spec", "FieldValueForbidden")]
    );

    let job = |image: &str| {
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "uid": "u"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "j", "image": image}]}}}})
    };
    assert_eq!(
        fields(&update(job("a:1"), job("a:2"))),
        vec![("spec.template", "FieldValueInvalid")]
    );

    let cm = |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "immutable": true, "data": {"k": v}});
    assert_eq!(
        fields(&update(cm("a"), cm("b"))),
        vec![("data", "FieldValueForbidden")]
    );

    let mut renamed = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}});
    let old = renamed.clone();
    renamed["metadata"]["name"] = json!("b");
    let resource = resource_of(&old);
    assert_eq!(
        fields(&validate(resource, &renamed, Some(&old))),
        vec![("metadata.name", "FieldValueInvalid")]
    );
}
