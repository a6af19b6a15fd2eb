//! Patches as kubectl, kubelet and controllers send them.

use serde_json::{json, Value};

use super::{apply, list_strategy, ListStrategy, PatchError, PatchType};

fn smp(kind: &str, original: &Value, patch: Value) -> Result<Value, PatchError> {
    apply(
        kind,
        original,
        PatchType::StrategicMerge,
        patch.to_string().as_bytes(),
    )
}

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web", "old": "x"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {"name": "app", "image": "nginx:1.25",
                         "ports": [{"containerPort": 80, "protocol": "TCP"}],
                         "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                        {"name": "sidecar", "image": "busybox", "command": ["sleep", "inf"]}
                    ],
                    "tolerations": [{"key": "a", "operator": "Exists"}]
                }
            }
        }
    })
}

fn containers(v: &Value) -> &Vec<Value> {
    v["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers list")
}

fn names(list: &[Value]) -> Vec<&str> {
    list.iter().filter_map(|c| c["name"].as_str()).collect()
}

#[test]
fn content_types() {
    let cases = [
        ("application/json-patch+json", PatchType::Json),
        ("application/merge-patch+json", PatchType::Merge),
        (
            "application/strategic-merge-patch+json; charset=utf-8",
            PatchType::StrategicMerge,
        ),
        ("application/apply-patch+yaml", PatchType::Apply),
    ];
    for (ct, want) in cases {
        assert_eq!(PatchType::from_content_type(ct), Some(want), "{ct}");
        assert!(ct.starts_with(want.content_type()));
    }
    assert_eq!(PatchType::from_content_type("application/json"), None);
    assert_eq!(PatchType::from_content_type(""), None);
}

#[test]
fn kubectl_apply_changes_image_and_keeps_the_rest() {
    let patch = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
        "containers": [{"name": "app", "image": "nginx:1.26"}]
    }}}});
    let out = smp("Deployment", &deployment(), patch).unwrap();
    let cs = containers(&out);
    assert_eq!(names(cs), ["app", "sidecar"]);
    assert_eq!(cs[0]["image"], "nginx:1.26");
    assert_eq!(cs[0]["ports"][0]["containerPort"], 80);
    assert_eq!(cs[0]["env"].as_array().unwrap().len(), 2);
    assert_eq!(cs[1]["image"], "busybox");
    assert_eq!(out["spec"]["replicas"], 2);
}

#[test]
fn kubectl_apply_removes_a_container() {
    let patch = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "app"}],
        "containers": [{"$patch": "delete", "name": "sidecar"}]
    }}}});
    let out = smp("Deployment", &deployment(), patch).unwrap();
    assert_eq!(names(containers(&out)), ["app"]);
    assert!(!out.to_string().contains('$'), "directive leaked: {out}");
}

#[test]
fn kubectl_apply_adds_a_container_in_the_requested_order() {
    let patch = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "init"}, {"name": "app"}, {"name": "sidecar"}],
        "containers": [{"name": "init", "image": "alpine", "args": null,
                        "$setElementOrder/env": [{"name": "X"}], "env": [{"name": "X", "value": "1"}]}]
    }}}});
    let out = smp("Deployment", &deployment(), patch).unwrap();
    let cs = containers(&out);
    assert_eq!(names(cs), ["init", "app", "sidecar"]);
    assert_eq!(
        cs[0],
        json!({"name": "init", "image": "alpine", "env": [{"name": "X", "value": "1"}]})
    );
}

#[test]
fn kubectl_apply_three_way_patch_removes_env_var_and_label() {
    let patch = json!({
        "metadata": {
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"kind\":\"Deployment\"}\n"},
            "labels": {"old": null}
        },
        "spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
            "containers": [{
                "name": "app",
                "$setElementOrder/env": [{"name": "A"}],
                "env": [{"$patch": "delete", "name": "B"}]
            }]
        }}}
    });
    let out = smp("Deployment", &deployment(), patch).unwrap();
    assert_eq!(
        containers(&out)[0]["env"],
        json!([{"name": "A", "value": "1"}])
    );
    assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
    assert!(
        out["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );
    assert!(!out.to_string().contains("$setElementOrder"));
}

#[test]
fn owner_references_merge_by_uid() {
    let rs =
        json!({"metadata": {"ownerReferences": [{"uid": "1", "name": "a", "controller": true}]}});
    let patch = json!({"metadata": {"ownerReferences": [
        {"uid": "1", "controller": false}, {"uid": "2", "name": "b"}
    ]}});
    let out = smp("ReplicaSet", &rs, patch).unwrap();
    assert_eq!(
        out["metadata"]["ownerReferences"],
        json!([{"uid": "1", "name": "a", "controller": false}, {"uid": "2", "name": "b"}])
    );
}

#[test]
fn new_item_without_set_element_order_goes_first_like_upstream() {
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "new", "image": "x"}]}}}});
    let out = smp("Deployment", &deployment(), patch).unwrap();
    assert_eq!(names(containers(&out)), ["new", "app", "sidecar"]);
}

#[test]
fn env_and_ports_merge_by_their_keys() {
    let patch = json!({"spec": {"template": {"spec": {"containers": [{
        "name": "app",
        "$setElementOrder/env": [{"name": "A"}, {"name": "B"}, {"name": "C"}],
        "env": [{"name": "B", "value": "two"}, {"name": "C", "value": "3"}],
        "ports": [{"containerPort": 443, "protocol": "TCP"}]
    }]}}}});
    let out = smp("Deployment", &deployment(), patch).unwrap();
    let app = &containers(&out)[0];
    assert_eq!(
        app["env"],
        json!([{"name": "A", "value": "1"}, {"name": "B", "value": "two"}, {"name": "C", "value": "3"}])
    );
    let ports: Vec<i64> = app["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["containerPort"].as_i64())
        .collect();
    assert_eq!(ports, [443, 80]);
}

#[test]
fn lists_without_a_strategy_are_replaced() {
    let patch = json!({"spec": {"template": {"spec": {"tolerations": [{"key": "b", "operator": "Exists"}]}}}});
    let out = smp("Deployment", &deployment(), patch).unwrap();
    assert_eq!(
        out["spec"]["template"]["spec"]["tolerations"],
        json!([{"key": "b", "operator": "Exists"}])
    );
}

#[test]
fn labels_added_and_removed_with_null() {
    let patch =
        json!({"metadata": {"labels": {"tier": "frontend", "old": null, "never-there": null}}});
    let out = smp("Deployment", &deployment(), patch).unwrap();
    assert_eq!(
        out["metadata"]["labels"],
        json!({"app": "web", "tier": "frontend"})
    );
}

#[test]
fn scale_style_patch() {
    let body = br#"{"spec":{"replicas":5}}"#;
    for ty in [PatchType::Merge, PatchType::StrategicMerge] {
        let out = apply("Deployment", &deployment(), ty, body).unwrap();
        assert_eq!(out["spec"]["replicas"], 5);
        assert_eq!(out["spec"]["template"], deployment()["spec"]["template"]);
    }
}

#[test]
fn finalizers_merge_as_a_set_and_delete_from_primitive_list() {
    let original = json!({"metadata": {"name": "x", "finalizers": ["a/one", "b/two"]}});
    let out = smp(
        "ConfigMap",
        &original,
        json!({"metadata": {"finalizers": ["b/two", "c/three"]}}),
    )
    .unwrap();
    assert_eq!(
        out["metadata"]["finalizers"],
        json!(["a/one", "b/two", "c/three"])
    );

    let out = smp(
        "ConfigMap",
        &out,
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a/one"]}}),
    )
    .unwrap();
    assert_eq!(out["metadata"]["finalizers"], json!(["b/two", "c/three"]));

    // kubectl apply keeps its own order with $setElementOrder.
    let out = smp(
        "ConfigMap",
        &out,
        json!({"metadata": {"$setElementOrder/finalizers": ["c/three", "b/two"]}}),
    )
    .unwrap();
    assert_eq!(out["metadata"]["finalizers"], json!(["c/three", "b/two"]));
}

#[test]
fn kubelet_status_patch_merges_conditions_by_type() {
    let pod = json!({
        "metadata": {"name": "p", "uid": "u1"},
        "status": {"phase": "Pending", "conditions": [
            {"type": "Initialized", "status": "True"},
            {"type": "Ready", "status": "False", "reason": "ContainersNotReady"}
        ]}
    });
    let patch = json!({"metadata": {"uid": "u1"}, "status": {
        "$setElementOrder/conditions": [{"type": "Initialized"}, {"type": "Ready"}, {"type": "PodScheduled"}],
        "conditions": [{"type": "Ready", "status": "True", "reason": null}, {"type": "PodScheduled", "status": "True"}],
        "phase": "Running",
        "podIP": "10.0.0.5"
    }});
    let out = smp("Pod", &pod, patch).unwrap();
    assert_eq!(
        out["status"]["conditions"],
        json!([
            {"type": "Initialized", "status": "True"},
            {"type": "Ready", "status": "True"},
            {"type": "PodScheduled", "status": "True"}
        ])
    );
    assert_eq!(out["status"]["phase"], "Running");
}

#[test]
fn patch_replace_on_map_and_list() {
    let pod = json!({"spec": {"nodeSelector": {"disk": "hdd", "zone": "a"},
        "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
    let out = smp(
        "Pod",
        &pod,
        json!({"spec": {"nodeSelector": {"$patch": "replace", "disk": "ssd"}}}),
    )
    .unwrap();
    assert_eq!(out["spec"]["nodeSelector"], json!({"disk": "ssd"}));

    let patch =
        json!({"spec": {"containers": [{"$patch": "replace"}, {"name": "c", "image": "z"}]}});
    let out = smp("Pod", &pod, patch).unwrap();
    assert_eq!(
        out["spec"]["containers"],
        json!([{"name": "c", "image": "z"}])
    );
}

#[test]
fn patch_delete_and_merge_on_maps() {
    let pod = json!({"spec": {"affinity": {"nodeAffinity": {"x": 1}}, "dnsConfig": {"nameservers": ["1.1.1.1"]}}});
    let patch = json!({"spec": {"affinity": {"$patch": "delete"}, "dnsConfig": {"$patch": "merge", "searches": ["a"]}}});
    let out = smp("Pod", &pod, patch).unwrap();
    assert_eq!(out["spec"]["affinity"], json!({}));
    assert_eq!(
        out["spec"]["dnsConfig"],
        json!({"nameservers": ["1.1.1.1"], "searches": ["a"]})
    );
}

#[test]
fn retain_keys_switches_deployment_strategy() {
    let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}});
    let out = smp("Deployment", &deployment(), patch).unwrap();
    assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));

    let bad =
        json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {"maxSurge": 1}}}});
    let err = smp("Deployment", &deployment(), bad).unwrap_err();
    assert!(matches!(err, PatchError::BadDirective { .. }), "{err}");
    assert!(err.to_string().contains("spec.strategy"), "{err}");
}

#[test]
fn service_ports_merge_by_port() {
    let svc = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443, "targetPort": 8443}]}});
    let patch = json!({"spec": {"$setElementOrder/ports": [{"port": 80}, {"port": 443}],
        "ports": [{"port": 80, "targetPort": 9090}]}});
    let out = smp("Service", &svc, patch).unwrap();
    assert_eq!(
        out["spec"]["ports"],
        json!([{"port": 80, "targetPort": 9090}, {"port": 443, "targetPort": 8443}])
    );
}

#[test]
fn strategic_merge_errors() {
    let d = deployment();
    let cases = [
        (json!({"spec": {"$patch": "explode"}}), "spec"),
        (
            json!({"spec": {"template": {"spec": {"containers": [{"image": "no-name"}]}}}}),
            "no merge key",
        ),
        (
            json!({"spec": {"template": {"spec": {"containers": [["nested"]]}}}}),
            "same type",
        ),
        (
            json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "$patch": "nope"}]}}}}),
            "nope",
        ),
        (json!({"spec": {"$unknown": 1}}), "unknown directive"),
        (
            json!({"metadata": {"$deleteFromPrimitiveList": ["a"]}}),
            "<directive>/<field name>",
        ),
        (
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "app"}],
                "containers": [{"name": "sidecar", "image": "x"}]}}}}),
            "does not match",
        ),
    ];
    for (patch, needle) in cases {
        let err = smp("Deployment", &d, patch.clone()).unwrap_err();
        assert!(err.to_string().contains(needle), "{patch}: {err}");
        assert!(matches!(err.http_status(), 400 | 422), "{err}");
    }
}

#[test]
fn body_errors() {
    let d = deployment();
    let err = apply("Deployment", &d, PatchType::StrategicMerge, b"{not json").unwrap_err();
    assert!(matches!(err, PatchError::InvalidJson { .. }));
    assert_eq!(err.http_status(), 400);

    let err = apply("Deployment", &d, PatchType::Merge, b"[1]").unwrap_err();
    assert!(
        err.to_string()
            .contains("must be a JSON object, found a list"),
        "{err}"
    );

    let err = apply("Deployment", &d, PatchType::Json, br#"{"op":"add"}"#).unwrap_err();
    assert!(matches!(err, PatchError::InvalidJsonPatch(_)), "{err}");

    let err = apply("Deployment", &d, PatchType::Apply, b"kind: Deployment").unwrap_err();
    assert!(matches!(err, PatchError::Unsupported(PatchType::Apply)));
    assert_eq!(err.http_status(), 415);
}

#[test]
fn merge_patch_replaces_lists_and_deletes_with_null() {
    let body = br#"{"metadata":{"labels":{"old":null,"new":"y"}},
        "spec":{"template":{"spec":{"containers":[{"name":"only","image":"z"}]}}}}"#;
    let out = apply("Deployment", &deployment(), PatchType::Merge, body).unwrap();
    assert_eq!(out["metadata"]["labels"], json!({"app": "web", "new": "y"}));
    assert_eq!(
        containers(&out),
        &vec![json!({"name": "only", "image": "z"})]
    );
}

#[test]
fn json_patch_add_replace_remove() {
    let body = br#"[
        {"op": "test", "path": "/spec/replicas", "value": 2},
        {"op": "replace", "path": "/spec/replicas", "value": 3},
        {"op": "add", "path": "/metadata/labels/tier", "value": "web"},
        {"op": "remove", "path": "/metadata/labels/old"},
        {"op": "add", "path": "/spec/template/spec/containers/-", "value": {"name": "c", "image": "i"}}
    ]"#;
    let out = apply("Deployment", &deployment(), PatchType::Json, body).unwrap();
    assert_eq!(out["spec"]["replicas"], 3);
    assert_eq!(
        out["metadata"]["labels"],
        json!({"app": "web", "tier": "web"})
    );
    assert_eq!(names(containers(&out)), ["app", "sidecar", "c"]);
}

#[test]
fn json_patch_failed_test_names_the_operation() {
    let body = br#"[
        {"op": "replace", "path": "/spec/replicas", "value": 3},
        {"op": "test", "path": "/metadata/name", "value": "other"}
    ]"#;
    let original = deployment();
    let err = apply("Deployment", &original, PatchType::Json, body).unwrap_err();
    match &err {
        PatchError::JsonPatchFailed {
            index, op, path, ..
        } => {
            assert_eq!((*index, *op, path.as_str()), (1, "test", "/metadata/name"));
        }
        other => panic!("unexpected error {other}"),
    }
    assert_eq!(err.http_status(), 422);
    assert_eq!(original["spec"]["replicas"], 2);

    let err = apply(
        "Deployment",
        &original,
        PatchType::Json,
        br#"[{"op":"remove","path":"/spec/nope"}]"#,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("remove at path \"/spec/nope\""),
        "{err}"
    );
}

#[test]
fn list_strategy_table() {
    use ListStrategy::{MergeByKey, MergePrimitives, Replace};
    let cases: &[(&str, &[&str], ListStrategy)] = &[
        ("Pod", &["spec", "containers"], MergeByKey("name")),
        (
            "Pod",
            &["spec", "initContainers", "ports"],
            MergeByKey("containerPort"),
        ),
        (
            "Pod",
            &["spec", "ephemeralContainers", "volumeDevices"],
            MergeByKey("devicePath"),
        ),
        (
            "Pod",
            &["spec", "containers", "volumeMounts"],
            MergeByKey("mountPath"),
        ),
        ("Pod", &["spec", "hostAliases"], MergeByKey("ip")),
        (
            "Pod",
            &["spec", "topologySpreadConstraints"],
            MergeByKey("topologyKey"),
        ),
        ("Pod", &["spec", "tolerations"], Replace),
        ("Pod", &["status", "conditions"], MergeByKey("type")),
        ("Pod", &["status", "podIPs"], MergeByKey("ip")),
        (
            "Deployment",
            &["spec", "template", "spec", "volumes"],
            MergeByKey("name"),
        ),
        (
            "Deployment",
            &["spec", "template", "spec", "imagePullSecrets"],
            MergeByKey("name"),
        ),
        (
            "Deployment",
            &["spec", "template", "metadata", "finalizers"],
            MergePrimitives,
        ),
        ("Deployment", &["spec", "containers"], Replace),
        (
            "Job",
            &["spec", "template", "spec", "containers", "env"],
            MergeByKey("name"),
        ),
        ("Job", &["status", "conditions"], MergeByKey("type")),
        ("StatefulSet", &["spec", "volumeClaimTemplates"], Replace),
        ("Service", &["spec", "ports"], MergeByKey("port")),
        ("Node", &["status", "addresses"], MergeByKey("type")),
        ("Node", &["spec", "podCIDRs"], MergePrimitives),
        ("ServiceAccount", &["secrets"], MergeByKey("name")),
        (
            "ConfigMap",
            &["metadata", "ownerReferences"],
            MergeByKey("uid"),
        ),
        ("Lease", &["metadata", "finalizers"], MergePrimitives),
        ("EndpointSlice", &["endpoints"], Replace),
        ("EndpointSlice", &["status", "conditions"], Replace),
        (
            "HorizontalPodAutoscaler",
            &["status", "conditions"],
            MergeByKey("type"),
        ),
    ];
    for (kind, path, want) in cases {
        assert_eq!(list_strategy(kind, path), *want, "{kind} {path:?}");
    }
    assert_eq!(MergeByKey("name").merge_key(), Some("name"));
    assert_eq!(MergePrimitives.patch_strategy(), Some("merge"));
    assert_eq!(Replace.patch_strategy(), None);
}
