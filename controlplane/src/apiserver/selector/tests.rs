//! Selectors as kubectl, controllers and the kubelet send them.

use serde_json::{json, Value};

use super::{field_value, supported_fields, FieldSelector, LabelSelector, SelectorError};

fn sel(s: &str) -> LabelSelector {
    LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn label_operators() {
    let web =
        json!({"app": "web", "tier": "frontend", "app.kubernetes.io/name": "shop", "gen": "7"});
    let db = json!({"app": "db"});
    let cases: &[(&str, bool, bool)] = &[
        ("", true, true),
        ("app=web", true, false),
        ("app==web", true, false),
        ("app!=web", false, true),
        ("tier!=backend", true, true),
        ("app in (web,db)", true, true),
        ("app in (db)", false, true),
        ("tier notin (frontend)", false, true),
        ("tier notin (backend, x)", true, true),
        ("tier", true, false),
        ("!tier", false, true),
        ("app.kubernetes.io/name=shop", true, false),
        ("app=web,tier=frontend", true, false),
        ("app=web,!tier", false, false),
        ("gen>5", true, false),
        ("gen<5", false, false),
        ("missing=", false, false),
        ("missing!=", true, true),
    ];
    for (s, on_web, on_db) in cases {
        let selector = sel(s);
        assert_eq!(selector.matches(Some(&web)), *on_web, "{s:?} on web");
        assert_eq!(selector.matches(Some(&db)), *on_db, "{s:?} on db");
    }
    assert!(sel("!tier").matches(None));
    assert!(!sel("tier").matches(None));
    assert!(sel("").is_everything());
}

#[test]
fn label_whitespace_and_canonical_form() {
    let s = sel("  tier  notin ( b , a ) ,app = web,  !legacy , app.kubernetes.io/part-of in (x)");
    assert_eq!(
        s.to_string(),
        "app=web,app.kubernetes.io/part-of in (x),!legacy,tier notin (a,b)"
    );
    assert_eq!(sel(&s.to_string()), s);
    assert!(s.matches_object(
        &json!({"metadata": {"labels": {"app": "web", "app.kubernetes.io/part-of": "x"}}})
    ));
    assert!(!s.matches_object(&json!({"metadata": {}})));
}

#[test]
fn label_parse_errors_name_the_requirement() {
    let cases = [
        ("app=web,tier in (a", "tier in (a", "')'"),
        ("app=web,,x", "", "empty requirement"),
        ("app=", "", ""),
        ("tier in ()", "tier in ()", "can't be empty"),
        ("tier in a", "tier in a", "'('"),
        ("a=b=c", "a=b=c", "single value"),
        ("-bad=x", "-bad=x", "invalid label key"),
        ("Bad.Prefix/name", "Bad.Prefix/name", "DNS subdomain"),
        ("app=has space", "app=has space", "single value"),
        ("app=-x", "app=-x", "invalid label value"),
        ("!a=b", "!a=b", "'!'"),
        ("app web", "app web", "expected an operator"),
        ("in", "in", "expected a label key"),
        ("gen>x", "gen>x", "integer"),
    ];
    for (input, requirement, reason) in cases {
        match LabelSelector::parse(input) {
            Ok(s) if input == "app=" => assert_eq!(s.to_string(), "app="),
            Err(SelectorError::LabelRequirement {
                requirement: r,
                reason: why,
            }) => {
                assert_eq!(r, requirement, "{input}");
                assert!(why.contains(reason), "{input}: {why}");
            }
            other => panic!("{input}: {other:?}"),
        }
    }
    let msg = LabelSelector::parse("x in (a").unwrap_err().to_string();
    assert!(msg.contains("\"x in (a\""), "{msg}");
}

#[test]
fn label_selector_objects() {
    let s = LabelSelector::from_json(&json!({
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["frontend", "edge"]},
            {"key": "legacy", "operator": "DoesNotExist"},
            {"key": "env", "operator": "NotIn", "values": ["dev"]},
            {"key": "team", "operator": "Exists"}
        ]
    }))
    .unwrap();
    assert_eq!(
        s.to_string(),
        "app=web,env notin (dev),!legacy,team,tier in (edge,frontend)"
    );
    assert!(s.matches(Some(&json!({"app": "web", "tier": "edge", "team": "a"}))));
    assert!(!s.matches(Some(
        &json!({"app": "web", "tier": "edge", "team": "a", "legacy": "1"})
    )));
    assert!(!s.matches(Some(
        &json!({"app": "web", "tier": "edge", "team": "a", "env": "dev"})
    )));

    assert!(LabelSelector::from_json(&json!({}))
        .unwrap()
        .is_everything());
    let nothing = LabelSelector::from_json(&Value::Null).unwrap();
    assert!(!nothing.matches(Some(&json!({"app": "web"}))));
    assert!(!nothing.matches(None));

    for bad in [
        json!({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]}),
        json!({"matchExpressions": [{"key": "a", "operator": "In"}]}),
        json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
        json!({"matchLabels": {"a": 1}}),
        json!({"matchLabels": {"bad key": "x"}}),
        json!("app=web"),
    ] {
        let err = LabelSelector::from_json(&bad).unwrap_err();
        assert!(
            matches!(err, SelectorError::LabelSelectorObject(_)),
            "{bad}: {err}"
        );
    }

    let svc = LabelSelector::from_map(json!({"app": "web"}).as_object().unwrap());
    assert!(svc.matches(Some(&json!({"app": "web", "x": "y"}))));
    assert!(!svc.matches(None));
}

fn pod() -> Value {
    json!({
        "metadata": {"name": "web-1", "namespace": "shop"},
        "spec": {"nodeName": "node-a", "restartPolicy": "Always", "schedulerName": "default-scheduler",
                 "serviceAccountName": "default"},
        "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.7"}]}
    })
}

fn fsel(s: &str) -> FieldSelector {
    FieldSelector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn field_operators_on_pods() {
    let running = pod();
    let pending =
        json!({"metadata": {"name": "web-2", "namespace": "shop"}, "status": {"phase": "Pending"}});
    let cases: &[(&str, bool, bool)] = &[
        ("", true, true),
        ("spec.nodeName=node-a", true, false),
        ("spec.nodeName==node-a", true, false),
        ("spec.nodeName!=node-a", false, true),
        ("spec.nodeName=", false, true),
        ("status.phase!=Failed,status.phase!=Succeeded", true, true),
        ("metadata.name=web-2,metadata.namespace=shop", false, true),
        (" status.phase = Running ", true, false),
        ("spec.hostNetwork=false", true, true),
        ("status.podIP=10.0.0.7", true, false),
        (
            "spec.restartPolicy=Always,spec.schedulerName=default-scheduler",
            true,
            false,
        ),
        ("spec.serviceAccountName=default", true, false),
        ("status.nominatedNodeName=", true, true),
    ];
    for (s, on_running, on_pending) in cases {
        let selector = fsel(s);
        selector.validate("pods").unwrap();
        assert_eq!(
            selector.matches("pods", &running).unwrap(),
            *on_running,
            "{s:?} running"
        );
        assert_eq!(
            selector.matches("pods", &pending).unwrap(),
            *on_pending,
            "{s:?} pending"
        );
    }
    assert_eq!(
        fsel("spec.nodeName=node-a").exact_match("spec.nodeName"),
        Some("node-a")
    );
    assert_eq!(
        fsel("spec.nodeName!=node-a").exact_match("spec.nodeName"),
        None
    );
    assert!(fsel("").is_everything());
}

#[test]
fn field_values_of_pods_and_events() {
    let p = pod();
    assert_eq!(
        field_value("pods", &p, "status.podIP").unwrap().as_deref(),
        Some("10.0.0.7")
    );
    assert_eq!(
        field_value("pods", &p, "spec.hostNetwork")
            .unwrap()
            .as_deref(),
        Some("false")
    );
    assert_eq!(
        field_value("pods", &json!({}), "spec.nodeName").unwrap(),
        None
    );

    let event = json!({
        "metadata": {"name": "web-1.17a", "namespace": "shop"},
        "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "web-1", "uid": "u-1",
                           "apiVersion": "v1", "resourceVersion": "42", "fieldPath": "spec.containers{app}"},
        "reason": "Pulled", "type": "Normal", "source": {"component": "kubelet", "host": "node-a"},
        "reportingComponent": "kubelet"
    });
    let expected = [
        ("involvedObject.kind", "Pod"),
        ("involvedObject.namespace", "shop"),
        ("involvedObject.name", "web-1"),
        ("involvedObject.uid", "u-1"),
        ("involvedObject.apiVersion", "v1"),
        ("involvedObject.resourceVersion", "42"),
        ("involvedObject.fieldPath", "spec.containers{app}"),
        ("reason", "Pulled"),
        ("reportingComponent", "kubelet"),
        ("source", "kubelet"),
        ("type", "Normal"),
        ("metadata.name", "web-1.17a"),
    ];
    for (field, want) in expected {
        assert_eq!(
            field_value("events", &event, field).unwrap().as_deref(),
            Some(want),
            "{field}"
        );
    }
    let s = fsel("involvedObject.kind=Pod,involvedObject.name=web-1,type!=Warning");
    assert!(s.matches("events", &event).unwrap());
}

#[test]
fn field_values_of_other_resources() {
    let node = json!({"metadata": {"name": "n"}, "spec": {"unschedulable": true}});
    assert!(fsel("spec.unschedulable=true")
        .matches("nodes", &node)
        .unwrap());
    assert!(fsel("spec.unschedulable=false")
        .matches("nodes", &json!({}))
        .unwrap());
    let secret = json!({"type": "kubernetes.io/service-account-token"});
    assert!(fsel("type=kubernetes.io/service-account-token")
        .matches("secrets", &secret)
        .unwrap());
    assert!(fsel("status.phase=Active")
        .matches("namespaces", &json!({"status": {"phase": "Active"}}))
        .unwrap());
    assert!(fsel("status.replicas=0")
        .matches("replicasets", &json!({"status": {}}))
        .unwrap());
    assert!(fsel("status.successful=1")
        .matches("jobs", &json!({"status": {"successful": 1}}))
        .unwrap());
    assert!(fsel("metadata.namespace=").matches("nodes", &node).unwrap());
    assert!(supported_fields("configmaps") == ["metadata.name", "metadata.namespace"]);
    assert!(supported_fields("pods").contains(&"status.podIP"));
}

#[test]
fn field_errors() {
    let err = fsel("spec.foo=bar").validate("pods").unwrap_err();
    assert_eq!(err.to_string(), "field label not supported: spec.foo");
    let err = fsel("spec.nodeName=x").validate("services").unwrap_err();
    assert_eq!(err, SelectorError::UnsupportedField("spec.nodeName".into()));
    assert!(fsel("spec.foo=bar").matches("pods", &pod()).is_err());
    assert!(field_value("secrets", &json!({}), "status.phase").is_err());

    let err = FieldSelector::parse("status.phase=Running,spec.nodeName").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid field selector: 'status.phase=Running,spec.nodeName'; can't understand 'spec.nodeName'"
    );
    let err = FieldSelector::parse(r"metadata.name=a\x").unwrap_err();
    assert!(
        err.to_string().contains(r"invalid escape sequence: \x"),
        "{err}"
    );
    let err = FieldSelector::parse("metadata.name=a=b").unwrap_err();
    assert!(
        err.to_string().contains("unescaped character in value: ="),
        "{err}"
    );
}

#[test]
fn field_escapes_round_trip() {
    let s = fsel(r"metadata.name=a\,b\=c\\d,spec.nodeName!=x");
    assert_eq!(s.exact_match("metadata.name"), Some(r"a,b=c\d"));
    assert_eq!(s.to_string(), r"metadata.name=a\,b\=c\\d,spec.nodeName!=x");
    assert_eq!(fsel(&s.to_string()), s);
    assert!(fsel("a!b=c").exact_match("a!b").is_some());
}
