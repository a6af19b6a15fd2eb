use super::*;

/// A group-version's v3 document, decoded.
fn v3_group_version(path: &str) -> Option<Value> {
    v3_group_version_json(path).map(|json| serde_json::from_slice(&json).expect("JSON"))
}

/// A group-version's v3 document as served to a client without gzip.
fn v3_group_version_json(path: &str) -> Option<Vec<u8>> {
    v3_group_version_gzip(path).map(gunzip)
}

/// The v2 document as served to a client without gzip.
fn v2_json() -> Vec<u8> {
    gunzip(v2_gzip())
}

/// The v2 document, decoded.
fn v2() -> Value {
    serde_json::from_slice(&v2_json()).expect("JSON")
}

fn doc(path: &str) -> Value {
    v3_group_version(path).unwrap_or_else(|| panic!("{path} not served"))
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["components"]["schemas"]
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing"))
}

/// Every operation of a document: (path, method, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method != "parameters" {
                out.push((path.clone(), method.clone(), op.clone()));
            }
        }
    }
    out
}

#[test]
fn index_lists_every_group_version_with_a_stable_hash() {
    let index = v3_index();
    let paths = index["paths"].as_object().unwrap();
    for gv in [
        "api/v1",
        "apis/apps/v1",
        "apis/batch/v1",
        "apis/autoscaling/v2",
        "apis/autoscaling/v1",
        "apis/discovery.k8s.io/v1",
        "apis/coordination.k8s.io/v1",
    ] {
        let url = paths[gv]["serverRelativeURL"].as_str().unwrap();
        assert!(url.starts_with(&format!("/openapi/v3/{gv}?hash=")), "{url}");
        let hash = v3_group_version_hash(gv).unwrap();
        assert!(url.ends_with(hash));
        assert_eq!(hash.len(), 32);
    }
    assert_eq!(v3_index(), index);
    assert_ne!(
        v3_group_version_hash("api/v1"),
        v3_group_version_hash("apis/apps/v1")
    );
}

#[test]
fn group_version_lookup_accepts_request_paths() {
    let by_url = doc("/openapi/v3/apis/apps/v1?hash=ABC");
    assert_eq!(by_url, doc("apis/apps/v1"));
    assert_eq!(by_url["openapi"], "3.0.0");
    let bytes = v3_group_version_json("/openapi/v3/api/v1").unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&bytes).unwrap(),
        doc("api/v1")
    );
    assert!(v3_group_version("apis/apps/v1beta1").is_none());
    assert!(v3_group_version("/openapi/v3/apis/example.com/v1").is_none());
}

#[test]
fn pod_schema_carries_gvk_and_merge_keys() {
    let core = doc("api/v1");
    let pod = schema(&core, "io.k8s.api.core.v1.Pod");
    assert_eq!(
        pod["x-kubernetes-group-version-kind"],
        json!([{"group": "", "kind": "Pod", "version": "v1"}])
    );
    let spec = schema(&core, "io.k8s.api.core.v1.PodSpec");
    let containers = &spec["properties"]["containers"];
    assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
    assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
    let container = schema(&core, "io.k8s.api.core.v1.Container");
    assert_eq!(
        container["properties"]["ports"]["x-kubernetes-patch-merge-key"],
        "containerPort"
    );
    let meta = schema(&core, "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta");
    assert_eq!(
        meta["properties"]["finalizers"]["x-kubernetes-patch-strategy"],
        "merge"
    );
    assert!(meta["properties"]["finalizers"]
        .get("x-kubernetes-patch-merge-key")
        .is_none());
    // Refs with siblings are wrapped as upstream does, so clients resolve them.
    assert_eq!(
        pod["properties"]["metadata"]["allOf"][0]["$ref"],
        "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    );
    let list = schema(&core, "io.k8s.api.core.v1.PodList");
    assert_eq!(
        list["x-kubernetes-group-version-kind"][0]["kind"],
        "PodList"
    );

    let apps = doc("apis/apps/v1");
    let template_spec = schema(&apps, "io.k8s.api.core.v1.PodSpec");
    assert_eq!(
        template_spec["properties"]["containers"]["x-kubernetes-patch-merge-key"],
        "name"
    );
}

#[test]
fn every_resource_has_a_kind_schema_in_its_group_version() {
    for r in registry::RESOURCES {
        let d = doc(&gv_path(r.group, r.version));
        let found = d["components"]["schemas"]
            .as_object()
            .unwrap()
            .values()
            .any(|s| {
                s["x-kubernetes-group-version-kind"]
                    .as_array()
                    .is_some_and(|gvks| {
                        gvks.contains(
                            &json!({"group": r.group, "kind": r.kind, "version": r.version}),
                        )
                    })
            });
        assert!(found, "no schema for {}", r.qualified());
    }
}

#[test]
fn every_write_declares_field_validation_and_patch_types() {
    for gv in v3_docs().keys() {
        let d = doc(gv);
        let ops = operations(&d);
        let mut ids = BTreeSet::new();
        for (path, method, op) in &ops {
            assert!(
                ids.insert(op["operationId"].as_str().unwrap().to_string()),
                "{path}"
            );
            let gvk = &op["x-kubernetes-group-version-kind"];
            assert!(
                gvk.is_object() && gvk["kind"].is_string(),
                "{path} {method}"
            );
            assert!(op["x-kubernetes-action"].is_string());
            if ["post", "put", "patch"].contains(&method.as_str()) {
                let has = op["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == "fieldValidation" && p["in"] == "query");
                assert!(has, "{method} {path} lacks fieldValidation");
            }
            if method == "patch" {
                let content = &op["requestBody"]["content"];
                assert!(content
                    .get("application/strategic-merge-patch+json")
                    .is_some());
                assert!(content.get("application/merge-patch+json").is_some());
            }
        }
    }
    let apps = doc("apis/apps/v1");
    let patch = &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
    assert_eq!(patch["operationId"], "patchAppsV1NamespacedDeployment");
    assert_eq!(
        patch["x-kubernetes-group-version-kind"],
        json!({"group": "apps", "kind": "Deployment", "version": "v1"})
    );
    let scale = &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"];
    assert_eq!(
        scale["get"]["x-kubernetes-group-version-kind"]["kind"],
        "Scale"
    );
    assert_eq!(
        scale["get"]["operationId"],
        "readAppsV1NamespacedDeploymentScale"
    );
}

#[test]
fn core_paths_follow_upstream_names() {
    let core = doc("api/v1");
    let paths = &core["paths"];
    assert_eq!(
        paths["/api/v1/namespaces/{namespace}/pods"]["get"]["operationId"],
        "listCoreV1NamespacedPod"
    );
    assert_eq!(
        paths["/api/v1/pods"]["get"]["operationId"],
        "listCoreV1PodForAllNamespaces"
    );
    assert_eq!(
        paths["/api/v1/watch/namespaces/{namespace}/pods"]["get"]["x-kubernetes-action"],
        "watchlist"
    );
    assert_eq!(
        paths["/api/v1/namespaces/{namespace}/pods/{name}/log"]["get"]["operationId"],
        "readCoreV1NamespacedPodLog"
    );
    assert_eq!(
        paths["/api/v1/namespaces/{namespace}/pods/{name}/binding"]["post"]
            ["x-kubernetes-group-version-kind"]["kind"],
        "Binding"
    );
    assert_eq!(
        paths["/api/v1/nodes/{name}/status"]["patch"]["operationId"],
        "patchCoreV1NodeStatus"
    );
    assert!(paths["/api/v1/namespaces"].get("delete").is_none());
    assert_eq!(
        paths["/api/v1/nodes"]["delete"]["x-kubernetes-action"],
        "deletecollection"
    );
}

#[test]
fn every_ref_resolves_and_names_are_upstream() {
    for gv in v3_docs().keys() {
        let d = doc(gv);
        let schemas = d["components"]["schemas"].as_object().unwrap();
        for name in schemas.keys() {
            assert!(name.starts_with("io.k8s."), "{name}");
        }
        schemas::collect_refs(&d, &mut |name| {
            assert!(schemas.contains_key(name), "{gv}: dangling ref {name}");
        });
    }
    let v2 = v2();
    let defs = v2["definitions"].as_object().unwrap();
    let text = String::from_utf8(v2_json().to_vec()).unwrap();
    assert!(!text.contains("#/components/"));
    assert!(text.contains("\"$ref\":\"#/definitions/io.k8s.api.core.v1.PodSpec\""));
    assert!(defs.contains_key("io.k8s.api.apps.v1.Deployment"));
}

#[test]
fn v2_is_swagger_with_body_parameters() {
    let v2 = v2();
    assert_eq!(v2["swagger"], "2.0");
    let op = &v2["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
    assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Pod");
    assert!(op["consumes"]
        .as_array()
        .unwrap()
        .contains(&json!("application/strategic-merge-patch+json")));
    let params = op["parameters"].as_array().unwrap();
    assert_eq!(params[0]["in"], "body");
    assert!(params
        .iter()
        .any(|p| p["name"] == "fieldValidation" && p["type"] == "string"));
    assert_eq!(
        op["responses"]["200"]["schema"]["$ref"],
        "#/definitions/io.k8s.api.core.v1.Pod"
    );
    assert_eq!(
        v2["definitions"]["io.k8s.api.core.v1.Pod"]["x-kubernetes-group-version-kind"][0]["kind"],
        "Pod"
    );
}

#[test]
fn documents_are_served_gzipped_only_to_clients_that_accept_it() {
    use axum::http::HeaderValue;
    let gzip = v3_group_version_gzip("apis/apps/v1").unwrap();
    let served = |accept: Option<&'static str>| {
        let mut headers = HeaderMap::new();
        if let Some(a) = accept {
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(a));
        }
        let r = response(gzip, &headers);
        (r.headers().get(header::CONTENT_ENCODING).cloned(), r)
    };
    for accept in ["gzip", "deflate, gzip;q=0.5", "*", "br, GZIP"] {
        let (encoding, _) = served(Some(accept));
        assert_eq!(
            encoding.as_ref().map(|v| v.to_str().unwrap()),
            Some("gzip"),
            "{accept}"
        );
    }
    for accept in [None, Some("identity"), Some("gzip;q=0"), Some("deflate")] {
        let (encoding, _) = served(accept);
        assert_eq!(encoding, None, "{accept:?}");
    }
    // Decompressed, the kept bytes are the document.
    assert_eq!(
        serde_json::from_slice::<Value>(&gunzip(gzip)).unwrap(),
        doc("apis/apps/v1")
    );
    assert!(gzip.len() * 4 < gunzip(gzip).len(), "compressed");
}

#[test]
fn v2_form_follows_accept() {
    const PROTO: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
    let cases = [
        (None, Some(V2Form::Json)),
        (Some("application/json"), Some(V2Form::Json)),
        (Some("*/*"), Some(V2Form::Json)),
        // client-go's OpenAPISchema(), and the dotted form.
        (Some(PROTO), Some(V2Form::Protobuf)),
        (
            Some("application/com.github.proto-openapi.spec.v2.v1.0+protobuf"),
            Some(V2Form::Protobuf),
        ),
        (
            Some("application/json;q=0.5, application/com.github.proto-openapi.spec.v2@v1.0+protobuf"),
            Some(V2Form::Protobuf),
        ),
        (Some("application/com.github.proto-openapi.spec.v2@v1.0+protobuf;q=0, */*"), Some(V2Form::Json)),
        (Some("text/html, application/yaml"), None),
        (Some("application/vnd.kubernetes.protobuf"), None),
    ];
    for (accept, expected) in cases {
        assert_eq!(v2_negotiate(accept), expected, "{accept:?}");
    }
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT_ENCODING, "gzip".parse().unwrap());
    let r = v2_response(V2Form::Protobuf, &headers);
    assert_eq!(
        r.headers()[header::CONTENT_TYPE],
        "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
    );
    assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
    // The protobuf document starts with its `swagger = 1` string "2.0".
    assert!(gunzip(v2_protobuf_gzip()).starts_with(b"\x0a\x032.0"));
}
