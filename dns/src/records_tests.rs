use super::*;
use serde_json::json;

fn zone() -> Zone {
    Zone::new("cluster.local", 5).unwrap()
}

fn svc(v: serde_json::Value) -> Service {
    serde_json::from_value(v).unwrap()
}

fn slice(v: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(v).unwrap()
}

/// `name type data` lines, sorted, for readable comparisons.
fn lines(records: &[Record]) -> Vec<String> {
    let mut out: Vec<String> = records
        .iter()
        .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data))
        .collect();
    out.sort();
    out
}

#[test]
fn cluster_ip_service_gets_a_aaaa_ptr_and_srv_for_named_ports() {
    let s = svc(json!({
        "metadata": {"name": "Web", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00::20"],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 9000}]}
    }));
    let got = lines(&service_records(&zone(), &s, []));
    assert_eq!(
        got,
        vec![
            "0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa. 5 PTR web.shop.svc.cluster.local.",
            "20.0.96.10.in-addr.arpa. 5 PTR web.shop.svc.cluster.local.",
            "_http._tcp.web.shop.svc.cluster.local. 5 SRV 0 100 80 web.shop.svc.cluster.local.",
            "web.shop.svc.cluster.local. 5 A 10.96.0.20",
            "web.shop.svc.cluster.local. 5 AAAA fd00::20",
        ]
    );
}

#[test]
fn headless_service_lists_ready_endpoints_with_hostnames_and_srv() {
    let s = svc(json!({
        "metadata": {"name": "db", "namespace": "prod"},
        "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}
    }));
    let sl = slice(json!({
        "metadata": {"name": "db-abc", "namespace": "prod",
                     "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
            {"addresses": ["10.244.1.6"]},
            {"addresses": ["10.244.1.7"], "conditions": {"ready": false}}
        ],
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]
    }));
    let got = lines(&service_records(&zone(), &s, [&sl]));
    assert_eq!(
        got,
        vec![
            "10-244-1-6.db.prod.svc.cluster.local. 5 A 10.244.1.6",
            "5.1.244.10.in-addr.arpa. 5 PTR db-0.db.prod.svc.cluster.local.",
            "6.1.244.10.in-addr.arpa. 5 PTR 10-244-1-6.db.prod.svc.cluster.local.",
            "_pg._tcp.db.prod.svc.cluster.local. 5 SRV 0 50 5432 10-244-1-6.db.prod.svc.cluster.local.",
            "_pg._tcp.db.prod.svc.cluster.local. 5 SRV 0 50 5432 db-0.db.prod.svc.cluster.local.",
            "db-0.db.prod.svc.cluster.local. 5 A 10.244.1.5",
            "db.prod.svc.cluster.local. 5 A 10.244.1.5",
            "db.prod.svc.cluster.local. 5 A 10.244.1.6",
        ]
    );
}

#[test]
fn headless_without_ready_endpoints_has_no_records_unless_published() {
    let not_ready = slice(json!({
        "metadata": {"name": "x-1", "namespace": "a",
                     "labels": {"kubernetes.io/service-name": "x"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.0.9"], "conditions": {"ready": false}}]
    }));
    let hidden = svc(json!({
        "metadata": {"name": "x", "namespace": "a"},
        "spec": {"clusterIP": "None"}
    }));
    assert!(service_records(&zone(), &hidden, [&not_ready]).is_empty());
    let published = svc(json!({
        "metadata": {"name": "x", "namespace": "a"},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": true}
    }));
    let got = lines(&service_records(&zone(), &published, [&not_ready]));
    assert!(got.contains(&"x.a.svc.cluster.local. 5 A 10.244.0.9".to_string()));
}

#[test]
fn external_name_is_a_cname_and_duplicates_across_slices_count_once() {
    let ext = svc(json!({
        "metadata": {"name": "mail", "namespace": "a"},
        "spec": {"type": "ExternalName", "externalName": "smtp.example.com"}
    }));
    assert_eq!(
        lines(&service_records(&zone(), &ext, [])),
        vec!["mail.a.svc.cluster.local. 5 CNAME smtp.example.com."]
    );
    let headless = svc(json!({
        "metadata": {"name": "h", "namespace": "a"}, "spec": {"clusterIP": "None"}
    }));
    let one = |name: &str| {
        slice(json!({
            "metadata": {"name": name, "namespace": "a",
                         "labels": {"kubernetes.io/service-name": "h"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.3"]}]
        }))
    };
    let (s1, s2) = (one("h-1"), one("h-2"));
    assert_eq!(service_records(&zone(), &headless, [&s1, &s2]).len(), 3);
}

#[test]
fn pods_get_dashed_ip_names_except_host_network_ones() {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "ns1"},
        "status": {"podIP": "10.244.2.7", "podIPs": [{"ip": "10.244.2.7"}, {"ip": "fd00::7"}]}
    }))
    .unwrap();
    assert_eq!(
        lines(&pod_records(&zone(), &pod)),
        vec![
            "10-244-2-7.ns1.pod.cluster.local. 5 A 10.244.2.7",
            "fd00--7.ns1.pod.cluster.local. 5 AAAA fd00::7",
        ]
    );
    let host: Pod = serde_json::from_value(json!({
        "metadata": {"name": "h", "namespace": "ns1"},
        "spec": {"hostNetwork": true, "containers": []},
        "status": {"podIP": "192.168.0.2"}
    }))
    .unwrap();
    assert!(pod_records(&zone(), &host).is_empty());
}
