use super::*;
use serde_json::json;

fn svc(spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid", "labels": {"app": "web"}},
        "spec": spec,
    }))
    .expect("valid service")
}

fn pod(name: &str, ip: &str, ready: bool) -> CachedPod {
    cached(&full(name, ip, ready))
}

fn cached(pod: &Pod) -> CachedPod {
    CachedPod::from(pod)
}

fn full(name: &str, ip: &str, ready: bool) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
        "spec": {
            "nodeName": "node-a",
            "containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 8080},
                {"name": "dns", "containerPort": 5353, "protocol": "UDP"},
            ]}],
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
        },
    }))
    .expect("valid pod")
}

fn conditions(ep: &Endpoint) -> (bool, bool, bool) {
    let c = ep.conditions.clone().unwrap_or_default();
    (
        c.ready.unwrap_or(false),
        c.serving.unwrap_or(false),
        c.terminating.unwrap_or(false),
    )
}

#[test]
fn selector_less_and_external_name_services_are_not_managed() {
    assert!(selector(&svc(json!({"ports": [{"port": 80}]}))).is_none());
    assert!(selector(&svc(json!({"selector": {}}))).is_none());
    assert!(selector(&svc(
        json!({"type": "ExternalName", "externalName": "x.example", "selector": {"app": "web"}})
    ))
    .is_none());
    assert!(selector(&svc(json!({"selector": {"app": "web"}}))).is_some());
}

#[test]
fn named_target_ports_resolve_per_pod_and_protocol() {
    let s = svc(json!({"selector": {"app": "web"}, "ports": [
        {"name": "web", "port": 80, "targetPort": "http"},
        {"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "targetPort": "dns", "protocol": "TCP"},
        {"name": "plain", "port": 9000},
    ]}));
    let p = pod("a", "10.244.0.5", true);
    let ports = pod_ports(&s, &p);
    let by_name: Vec<(&str, i32, &str)> = ports
        .iter()
        .map(|k| (k.name.as_str(), k.port, k.protocol.as_str()))
        .collect();
    // dns-tcp is left out: the pod's "dns" port is UDP only.
    assert_eq!(
        by_name,
        vec![
            ("dns", 5353, "UDP"),
            ("plain", 9000, "TCP"),
            ("web", 8080, "TCP")
        ]
    );
}

#[test]
fn sidecar_init_container_ports_resolve() {
    let s =
        svc(json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "metrics"}]}));
    let mut p = full("a", "10.244.0.5", true);
    let sidecar = json!({"name": "side", "restartPolicy": "Always", "ports": [{"name": "metrics", "containerPort": 9100}]});
    p.spec.as_mut().expect("spec").init_containers =
        Some(vec![serde_json::from_value(sidecar).expect("container")]);
    assert_eq!(pod_ports(&s, &cached(&p))[0].port, 9100);
}

#[test]
fn conditions_follow_readiness_and_termination() {
    let s = svc(json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}));
    let ready = endpoint(&pod("a", "10.0.0.1", true), &s, AddressType::V4, None).expect("endpoint");
    assert_eq!(conditions(&ready), (true, true, false));
    let not_ready =
        endpoint(&pod("b", "10.0.0.2", false), &s, AddressType::V4, None).expect("endpoint");
    assert_eq!(conditions(&not_ready), (false, false, false));
    let mut dying = full("c", "10.0.0.3", true);
    dying.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
    let dying = endpoint(&cached(&dying), &s, AddressType::V4, None).expect("endpoint");
    assert_eq!(conditions(&dying), (false, true, true));
    assert_eq!(ready.node_name.as_deref(), Some("node-a"));
    let target = ready.target_ref.expect("targetRef");
    assert_eq!(
        (target.kind.as_deref(), target.uid.as_deref()),
        (Some("Pod"), Some("uid-a"))
    );
}

#[test]
fn publish_not_ready_addresses_makes_everything_ready() {
    let s = svc(json!({"selector": {"app": "web"}, "publishNotReadyAddresses": true}));
    let ep = endpoint(&pod("b", "10.0.0.2", false), &s, AddressType::V4, None).expect("endpoint");
    assert_eq!(conditions(&ep), (true, false, false));
    let (subsets, _) = endpoints_subsets(&s, [&pod("b", "10.0.0.2", false)]);
    assert!(
        subsets.is_empty(),
        "a service with no ports publishes no legacy subsets unless headless"
    );
}

#[test]
fn hostname_only_when_subdomain_names_the_service() {
    let s = svc(json!({"selector": {"app": "web"}}));
    let mut p = full("a", "10.0.0.1", true);
    let spec = p.spec.as_mut().expect("spec");
    spec.hostname = Some("db-0".into());
    spec.subdomain = Some("other".into());
    assert_eq!(
        endpoint(&cached(&p), &s, AddressType::V4, None)
            .expect("ep")
            .hostname,
        None
    );
    p.spec.as_mut().expect("spec").subdomain = Some("web".into());
    assert_eq!(
        endpoint(&cached(&p), &s, AddressType::V4, None)
            .expect("ep")
            .hostname
            .as_deref(),
        Some("db-0")
    );
}

#[test]
fn pods_without_ip_or_finished_are_left_out() {
    let s = svc(json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}));
    let mut no_ip = full("a", "10.0.0.1", false);
    no_ip.status.as_mut().expect("status").pod_ip = None;
    no_ip.status.as_mut().expect("status").pod_ips = None;
    let mut done = full("b", "10.0.0.2", false);
    done.status.as_mut().expect("status").phase = Some("Succeeded".into());
    let (no_ip, done, ok) = (cached(&no_ip), cached(&done), pod("c", "10.0.0.3", true));
    let groups = desired_endpoints(&s, [&no_ip, &done, &ok], |_| None);
    let all: Vec<&Endpoint> = groups.values().flatten().collect();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].addresses, vec!["10.0.0.3".to_string()]);
}

#[test]
fn address_families_follow_the_service() {
    let dual = svc(
        json!({"selector": {"app": "web"}, "ipFamilies": ["IPv6", "IPv4"], "clusterIP": "fd00::1"}),
    );
    assert_eq!(address_types(&dual), vec![AddressType::V4, AddressType::V6]);
    assert_eq!(primary_address_type(&dual), AddressType::V6);
    let legacy = svc(json!({"selector": {"app": "web"}, "clusterIP": "10.96.0.7"}));
    assert_eq!(address_types(&legacy), vec![AddressType::V4]);
    let mut p = full("a", "10.0.0.1", true);
    p.status.as_mut().expect("status").pod_ips = Some(vec![
        serde_json::from_value(json!({"ip": "10.0.0.1"})).expect("ip"),
        serde_json::from_value(json!({"ip": "fd00::5"})).expect("ip"),
    ]);
    let groups = desired_endpoints(&dual, [&cached(&p)], |_| Some("zone-1".to_string()));
    let types: Vec<AddressType> = groups.keys().map(|g| g.address_type).collect();
    assert_eq!(types, vec![AddressType::V4, AddressType::V6]);
    let v6 = &groups
        .iter()
        .find(|(g, _)| g.address_type == AddressType::V6)
        .expect("v6 group")
        .1[0];
    assert_eq!(v6.addresses, vec!["fd00::5".to_string()]);
    assert_eq!(v6.zone.as_deref(), Some("zone-1"));
}

#[test]
fn pods_with_different_named_port_numbers_land_in_different_groups() {
    let s = svc(json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}));
    let a = pod("a", "10.0.0.1", true);
    let mut b = full("b", "10.0.0.2", true);
    b.spec.as_mut().expect("spec").containers[0]
        .ports
        .as_mut()
        .expect("ports")[0]
        .container_port = 9090;
    let groups = desired_endpoints(&s, [&a, &cached(&b)], |_| None);
    let ports: Vec<i32> = groups.keys().map(|g| g.ports[0].port).collect();
    assert_eq!(ports, vec![8080, 9090]);
}

#[test]
fn labels_copy_the_service_and_mark_headless() {
    let s = svc(json!({"selector": {"app": "web"}, "clusterIP": "None"}));
    let labels = slice_labels(&s);
    assert_eq!(labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(
        labels.get(SERVICE_NAME_LABEL).map(String::as_str),
        Some("web")
    );
    assert_eq!(
        labels.get(MANAGED_BY_LABEL).map(String::as_str),
        Some(CONTROLLER_NAME)
    );
    assert_eq!(labels.get(HEADLESS_LABEL).map(String::as_str), Some(""));
    let ep_labels = endpoints_labels(&s);
    assert_eq!(
        ep_labels
            .get(ENDPOINTS_MANAGED_BY_LABEL)
            .map(String::as_str),
        Some(ENDPOINTS_CONTROLLER_NAME)
    );
}

#[test]
fn legacy_subsets_split_ready_and_not_ready_and_skip_terminating() {
    let s = svc(
        json!({"selector": {"app": "web"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}),
    );
    let mut dying = full("d", "10.0.0.4", true);
    dying.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
    let pods = [
        pod("b", "10.0.0.10", true),
        pod("a", "10.0.0.9", true),
        pod("c", "10.0.0.3", false),
        cached(&dying),
    ];
    let (subsets, truncated) = endpoints_subsets(&s, pods.iter());
    assert!(!truncated);
    assert_eq!(subsets.len(), 1);
    let ips = |list: &Option<Vec<EndpointAddress>>| -> Vec<String> {
        list.iter().flatten().map(|a| a.ip.clone()).collect()
    };
    // Sorted numerically, not as strings.
    assert_eq!(ips(&subsets[0].addresses), vec!["10.0.0.9", "10.0.0.10"]);
    assert_eq!(ips(&subsets[0].not_ready_addresses), vec!["10.0.0.3"]);
    let port = &subsets[0].ports.as_ref().expect("ports")[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("web"), 8080));
}

#[test]
fn legacy_subsets_truncate_at_capacity() {
    let s = svc(json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}));
    let pods: Vec<CachedPod> = (0..MAX_ENDPOINTS_ADDRESSES + 5)
        .map(|i| {
            pod(
                &format!("p{i}"),
                &format!("10.1.{}.{}", i / 250, i % 250),
                true,
            )
        })
        .collect();
    let (subsets, truncated) = endpoints_subsets(&s, pods.iter());
    assert!(truncated);
    let total: usize = subsets
        .iter()
        .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
        .sum();
    assert_eq!(total, MAX_ENDPOINTS_ADDRESSES);
}

#[test]
fn irrelevant_pod_changes_are_recognised() {
    let a = full("a", "10.0.0.1", true);
    let mut b = a.clone();
    b.metadata.annotations = Some([("x".to_string(), "y".to_string())].into());
    assert!(same_for_endpoints(&cached(&a), &cached(&b)));
    let c = pod("a", "10.0.0.1", false);
    assert!(!same_for_endpoints(&cached(&a), &c));
}

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
