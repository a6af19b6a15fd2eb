//! The service-proxy behaviour suite (tests/lab/services.rs) with
//! `skiff proxy --mode iptables`, in lab namespaces against a real `skiff server`.

mod common;
mod lab;

const MODE: &str = "iptables";

#[test]
fn clusterip_tcp_and_udp() {
    lab::services::clusterip_tcp_and_udp(MODE);
}

#[test]
fn nodeport_from_underlay() {
    lab::services::nodeport_from_underlay(MODE);
}

#[test]
fn no_endpoints_rejects() {
    lab::services::no_endpoints_rejects(MODE);
}

#[test]
fn client_ip_affinity() {
    lab::services::client_ip_affinity(MODE);
}

#[test]
fn external_traffic_policy_local() {
    lab::services::external_traffic_policy_local(MODE);
}

#[test]
fn terminating_fallback() {
    lab::services::terminating_fallback(MODE);
}

#[test]
fn udp_flow_moves_after_endpoint_removed() {
    lab::services::udp_flow_moves_after_endpoint_removed(MODE);
}

#[test]
fn load_balancer_source_ranges() {
    lab::services::load_balancer_source_ranges(MODE);
}

/// iptables only: rules removed behind the proxy's back come back with the
/// periodic full resync (every 10 s in the lab).
#[test]
fn resync_repairs_drift() {
    use lab::proxy::{apply, endpoint_slice, service, Ep, ProxyProcess};
    use lab::sockets::{eventually, tcp_request, tcp_server};
    use std::time::Duration;

    let server = common::TestServer::start(common::StoreKind::Redb);
    let mut lab = lab::Lab::new("drift");
    lab.add_node("n1", 1);
    let a = lab.node("n1").add_pod("a", 2);
    let client = lab.node("n1").add_pod("client", 9);
    let _srv = tcp_server(&a.ns, 8080, "a");
    apply(
        &server,
        &service(
            "web",
            "10.96.10.20",
            &[("http", "TCP", 80, None)],
            serde_json::json!({}),
        ),
    );
    apply(
        &server,
        &endpoint_slice("web", &[("http", "TCP", 8080)], &[Ep::ready(a.ip, "n1")]),
    );
    let _proxy = ProxyProcess::start(&server, lab.node("n1"), MODE);
    let vip = "10.96.10.20:80".parse().expect("address");
    eventually(Duration::from_secs(20), "the service", || {
        tcp_request(&client.ns, vip).ok()
    });
    let node = &lab.node("n1").ns;
    node.exec(&["iptables", "-t", "nat", "-F", "KUBE-SERVICES"]);
    assert!(
        tcp_request(&client.ns, vip).is_err(),
        "the flushed rules still answered"
    );
    let reply = eventually(
        Duration::from_secs(30),
        "the resync to restore the rules",
        || tcp_request(&client.ns, vip).ok(),
    );
    assert_eq!(reply.backend, "a");
    let rules = node.exec(&["iptables-save", "-t", "nat"]);
    assert!(rules.contains("-j KUBE-SVC-"), "{rules}");
}
