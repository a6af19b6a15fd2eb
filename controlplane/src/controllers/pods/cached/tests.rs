use super::*;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ContainerStatus, PodCondition, PodIP, PodSpec, PodStatus,
};

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).expect("valid time")
}

fn port(name: Option<&str>, number: i32, protocol: Option<&str>) -> ContainerPort {
    ContainerPort {
        name: name.map(str::to_string),
        container_port: number,
        protocol: protocol.map(str::to_string),
        ..ContainerPort::default()
    }
}

fn full_pod() -> Pod {
    let container = |name: &str, ports: Vec<ContainerPort>, restart: Option<&str>| Container {
        name: name.into(),
        image: Some("busybox".into()),
        ports: Some(ports),
        restart_policy: restart.map(str::to_string),
        ..Container::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some("web-1".into()),
            namespace: Some("ns".into()),
            uid: Some("u1".into()),
            resource_version: Some("42".into()),
            creation_timestamp: Some(Time(at(0))),
            labels: Some(
                [("tier", "fe"), ("app", "web")]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
            ),
            annotations: Some([("note".to_string(), "x".to_string())].into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "web".into(),
                uid: "rs-uid".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            finalizers: Some(vec!["example.com/keep".into()]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some("n1".into()),
            hostname: Some("h".into()),
            subdomain: Some("s".into()),
            tolerations: Some(vec![Toleration {
                key: Some("k".into()),
                operator: Some("Exists".into()),
                ..Toleration::default()
            }]),
            containers: vec![container(
                "app",
                vec![port(Some("http"), 8080, None), port(None, 9090, None)],
                None,
            )],
            init_containers: Some(vec![
                container(
                    "proxy",
                    vec![port(Some("admin"), 15000, Some("UDP"))],
                    Some("Always"),
                ),
                container("setup", vec![port(Some("setup"), 1, None)], None),
            ]),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("10.0.0.5".into()),
            pod_ips: Some(vec![PodIP {
                ip: "10.0.0.5".into(),
            }]),
            conditions: Some(vec![
                PodCondition {
                    type_: "PodScheduled".into(),
                    status: "True".into(),
                    ..PodCondition::default()
                },
                PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(at(7))),
                    ..PodCondition::default()
                },
            ]),
            container_statuses: Some(vec![ContainerStatus {
                name: "app".into(),
                restart_count: 2,
                ..ContainerStatus::default()
            }]),
            init_container_statuses: Some(vec![
                ContainerStatus {
                    name: "proxy".into(),
                    restart_count: 5,
                    ..ContainerStatus::default()
                },
                ContainerStatus {
                    name: "setup".into(),
                    restart_count: 9,
                    ..ContainerStatus::default()
                },
            ]),
            ..PodStatus::default()
        }),
    }
}

#[test]
fn keeps_what_the_controllers_read() {
    let pod = CachedPod::from(&full_pod());
    assert_eq!(pod.key(), "ns/web-1");
    assert_eq!(&*pod.uid, "u1");
    assert_eq!(&*pod.resource_version, "42");
    assert_eq!(pod.created, Some(at(0)));
    assert_eq!(pod.deleted, None);
    assert_eq!(pod.labels.get("app"), Some("web"));
    assert_eq!(pod.labels.get("tier"), Some("fe"));
    assert_eq!(pod.labels.get("none"), None);
    assert_eq!(pod.annotations.get("note"), Some("x"));
    assert_eq!(pod.controller().map(|o| &*o.name), Some("web"));
    assert_eq!(pod.node_name.as_deref(), Some("n1"));
    assert_eq!(pod.hostname.as_deref(), Some("h"));
    assert_eq!(pod.subdomain.as_deref(), Some("s"));
    assert_eq!(pod.tolerations.len(), 1);
    assert_eq!(pod.phase, Phase::Running);
    assert!(!pod.phase.is_terminal());
    assert!(pod.is_ready());
    assert_eq!(pod.ready.and_then(|r| r.since), Some(at(7)));
    assert_eq!(pod.disruption, None);
    assert_eq!(
        &pod.ips[..],
        [Box::<str>::from("10.0.0.5"), "10.0.0.5".into()]
    );
    // Restarts of the sidecar count apart; a plain init container's do not.
    assert_eq!(pod.restarts, (2, 5));
    // Named ports of containers and sidecars only, protocol defaulted.
    let ports: Vec<(&str, &str, i32)> = pod
        .named_ports
        .iter()
        .map(|p| (&*p.name, &*p.protocol, p.port))
        .collect();
    assert_eq!(ports, [("http", "TCP", 8080), ("admin", "UDP", 15000)]);
}

#[test]
fn metadata_round_trips_for_the_garbage_collector() {
    let full = full_pod();
    let meta = CachedPod::from(&full).meta();
    assert_eq!(meta.name, full.metadata.name);
    assert_eq!(meta.namespace, full.metadata.namespace);
    assert_eq!(meta.uid, full.metadata.uid);
    assert_eq!(meta.labels, full.metadata.labels);
    assert_eq!(meta.owner_references, full.metadata.owner_references);
    assert_eq!(meta.finalizers, full.metadata.finalizers);
    let bare = CachedPod::from(&Pod::default()).meta();
    assert_eq!(
        (bare.labels, bare.owner_references, bare.finalizers),
        (None, None, None)
    );
    let reference = CachedPod::from(&full).reference();
    assert_eq!(reference.kind.as_deref(), Some("Pod"));
    assert_eq!(reference.uid.as_deref(), Some("u1"));
}

#[test]
fn an_empty_pod_ip_is_no_address() {
    let mut pod = full_pod();
    if let Some(s) = pod.status.as_mut() {
        s.pod_ips = None;
        s.pod_ip = Some(String::new());
        s.phase = Some("Succeeded".into());
        s.conditions = Some(vec![PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            reason: Some("DeletionByPodGC".into()),
            ..PodCondition::default()
        }]);
    }
    let cached = CachedPod::from(&pod);
    assert!(cached.ips.is_empty());
    assert!(cached.phase.is_terminal());
    assert_eq!(cached.ready, None);
    assert_eq!(cached.disruption.as_deref(), Some("DeletionByPodGC"));
}

#[test]
fn label_queries_match_as_kube_selectors() {
    use kube::core::SelectorExt;
    let full = full_pod();
    let labels = CachedPod::from(&full).labels;
    let map = full.metadata.labels.clone().unwrap_or_default();
    let exprs = [
        Expression::Equal("app".into(), "web".into()),
        Expression::Equal("app".into(), "db".into()),
        Expression::NotEqual("app".into(), "db".into()),
        Expression::In("tier".into(), ["fe".to_string(), "be".to_string()].into()),
        Expression::NotIn("tier".into(), ["fe".to_string()].into()),
        Expression::NotIn("zone".into(), ["a".to_string()].into()),
        Expression::Exists("tier".into()),
        Expression::DoesNotExist("tier".into()),
        Expression::DoesNotExist("zone".into()),
    ];
    for e in exprs {
        let selector = Selector::from(e.clone());
        assert_eq!(
            LabelQuery::from(&selector).matches(&labels),
            selector.matches(&map),
            "{e}"
        );
    }
    let both: Selector = [("app", "web"), ("tier", "fe")].into_iter().collect();
    assert!(LabelQuery::from(&both).matches(&labels));
    assert!(LabelQuery::from(&Selector::default()).is_empty());
    assert!(labels.contains_all(&[("app".to_string(), "web".to_string())].into()));
    assert!(!labels.contains_all(&[("app".to_string(), "db".to_string())].into()));
}
