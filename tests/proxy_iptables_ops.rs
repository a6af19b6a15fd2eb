//! The iptables proxy as an operator meets it, in lab namespaces against a
//! real `skiff server`: its `/metrics` after changes, IPv6 ClusterIPs
//! allocated by a dual-stack API server, and no stale rules left when the
//! iptables implementation or the proxy mode changes, or after `--cleanup`.

mod common;
mod lab;

use lab::proxy::{implementation_in_use, kube_lines};

const MODE: &str = "iptables";

/// `/metrics` after changes: the first sync is full, an endpoint change is
/// a partial sync (its own histogram and counter), the periodic resync is
/// full again; the rule count, the per-service endpoint counts, the
/// last-sync timestamp, the change counters and the network programming
/// latency follow.
#[test]
fn metrics_count_full_and_partial_syncs() {
    use lab::proxy::{apply, endpoint_slice, metric, service, Ep, ProxyProcess};
    use lab::sockets::{eventually, tcp_server};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64()
    };
    let server = common::TestServer::start(common::StoreKind::Redb);
    let mut lab = lab::Lab::new("metrics");
    lab.add_node("n1", 1);
    let a = lab.node("n1").add_pod("a", 2);
    let b = lab.node("n1").add_pod("b", 3);
    let _servers = [tcp_server(&a.ns, 8080, "a"), tcp_server(&b.ns, 8080, "b")];
    let ports = [("http", "TCP", 8080)];
    apply(
        &server,
        &service(
            "web",
            "10.96.10.24",
            &[("http", "TCP", 80, None)],
            serde_json::json!({}),
        ),
    );
    apply(
        &server,
        &endpoint_slice("web", &ports, &[Ep::ready(a.ip, "n1")]),
    );
    let started = now();
    let _proxy = ProxyProcess::start(&server, lab.node("n1"), MODE);
    let ns = &lab.node("n1").ns;
    let web = r#"skiff_proxy_service_endpoints{namespace="default",name="web",port="http",protocol="tcp"}"#;
    let value = |text: &str, series: &str| {
        metric(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    let first = eventually(Duration::from_secs(20), "web with 1 endpoint", || {
        let m = ProxyProcess::metrics_in(ns);
        (metric(&m, web) == Some(1.0)).then_some(m)
    });
    assert!(
        value(&first, r#"skiff_proxy_syncs_total{kind="full"}"#) >= 1.0,
        "{first}"
    );
    assert!(
        value(
            &first,
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count"
        ) >= 1.0,
        "{first}"
    );
    assert_eq!(
        value(&first, "skiff_proxy_sync_errors_total"),
        0.0,
        "{first}"
    );
    let rules_before = value(&first, "skiff_proxy_rules");
    assert!(rules_before > 0.0, "{first}");
    let synced_at = value(&first, "kubeproxy_sync_proxy_rules_last_timestamp_seconds");
    assert!(
        synced_at >= started - 1.0 && synced_at <= now() + 1.0,
        "last sync {synced_at}, proxy started {started}"
    );

    // Endpoint changes are partial syncs. A change can coincide with the
    // periodic full resync (then it is synced as part of it), so try a few.
    let mut sets = [
        vec![Ep::ready(a.ip, "n1"), Ep::ready(b.ip, "n1")],
        vec![Ep::ready(a.ip, "n1")],
    ]
    .into_iter()
    .cycle();
    let mut after = first.clone();
    for _ in 0..4 {
        let eps = sets.next().expect("cycle");
        apply(&server, &endpoint_slice("web", &ports, &eps));
        let want = eps.len() as f64;
        after = eventually(Duration::from_secs(20), "the endpoint count", || {
            let m = ProxyProcess::metrics_in(ns);
            (metric(&m, web) == Some(want)).then_some(m)
        });
        if metric(&after, r#"skiff_proxy_syncs_total{kind="partial"}"#).unwrap_or(0.0) >= 1.0 {
            break;
        }
    }
    assert!(
        value(
            &after,
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_count"
        ) >= 1.0,
        "{after}"
    );
    assert!(
        value(&after, "kubeproxy_sync_proxy_rules_duration_seconds_count")
            > value(&first, "kubeproxy_sync_proxy_rules_duration_seconds_count"),
        "{after}"
    );
    assert!(
        value(&after, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") > synced_at,
        "{after}"
    );

    // A second service: its own endpoint count, and more rules.
    apply(
        &server,
        &endpoint_slice("web", &ports, &[Ep::ready(a.ip, "n1")]),
    );
    apply(
        &server,
        &service(
            "api",
            "10.96.10.25",
            &[("http", "TCP", 80, None)],
            serde_json::json!({}),
        ),
    );
    apply(
        &server,
        &endpoint_slice(
            "api",
            &ports,
            &[Ep::ready(a.ip, "n1"), Ep::ready(b.ip, "n1")],
        ),
    );
    let api = r#"skiff_proxy_service_endpoints{namespace="default",name="api",port="http",protocol="tcp"}"#;
    let both = eventually(Duration::from_secs(20), "api with 2 endpoints", || {
        let m = ProxyProcess::metrics_in(ns);
        (metric(&m, api) == Some(2.0) && metric(&m, web) == Some(1.0)).then_some(m)
    });
    assert!(value(&both, "skiff_proxy_rules") > rules_before, "{both}");
    // Every Service and EndpointSlice change was received and counted.
    let services = value(&both, "kubeproxy_sync_proxy_rules_service_changes_total");
    let slices = value(&both, "kubeproxy_sync_proxy_rules_endpoint_changes_total");
    assert!(
        services >= value(&first, "kubeproxy_sync_proxy_rules_service_changes_total") + 1.0,
        "{both}"
    );
    assert!(
        slices >= value(&first, "kubeproxy_sync_proxy_rules_endpoint_changes_total") + 2.0,
        "{both}"
    );

    // Network programming latency runs from the slice's trigger time (set
    // by an EndpointSlice controller; here 5 s before the update is sent)
    // to the sync that programmed it.
    let programming = "kubeproxy_network_programming_duration_seconds";
    let count = |m: &str| metric(m, &format!("{programming}_count")).unwrap_or(0.0);
    let sum = |m: &str| metric(m, &format!("{programming}_sum")).unwrap_or(0.0);
    let before = ProxyProcess::metrics_in(ns);
    let triggered =
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(5);
    let mut slice = endpoint_slice("api", &ports, &[Ep::ready(b.ip, "n1")]);
    slice["metadata"]["annotations"] = serde_json::json!({
        "endpoints.kubernetes.io/last-change-trigger-time": triggered.to_string(),
    });
    apply(&server, &slice);
    let after = eventually(Duration::from_secs(20), "the programming latency", || {
        let m = ProxyProcess::metrics_in(ns);
        (count(&m) > count(&before)).then_some(m)
    });
    let latency = sum(&after) - sum(&before);
    assert!(
        (5.0..30.0).contains(&latency),
        "programming latency {latency} s for a change triggered 5 s before:\n{after}"
    );

    // The periodic resync (every 10 s here) counts as a full sync.
    let full_before = value(&both, r#"skiff_proxy_syncs_total{kind="full"}"#);
    eventually(Duration::from_secs(25), "a periodic full resync", || {
        let m = ProxyProcess::metrics_in(ns);
        (value(&m, r#"skiff_proxy_syncs_total{kind="full"}"#) > full_before).then_some(())
    });
}

/// IPv6 through the API server: a dual-stack `skiff server` hands out IPv6
/// ClusterIPs (`ipFamilies: [IPv6]`, and an IPv6 address added to an IPv4
/// Service patched to PreferDualStack), the proxy writes ip6tables rules for
/// them, and pods reach the backends over TCP and UDP through the allocated
/// addresses.
#[test]
fn ipv6_cluster_ip_allocated_by_the_api_server() {
    use lab::proxy::{apply, ProxyProcess};
    use lab::sockets::eventually;
    use lab::v6::{
        slice6, tcp6_request, tcp6_server, udp6_request, udp6_server, Node6, CLUSTER_CIDR6,
    };
    use std::collections::BTreeSet;
    use std::net::{IpAddr, SocketAddr};
    use std::time::Duration;

    let server = common::TestServer::start_with_args(
        common::StoreKind::Redb,
        &["--service-cidr", "10.96.0.0/12,fd00:10:96::/108"],
    );
    let node = Node6::new("v6api");
    let a = node.add_pod("a", 2);
    let b = node.add_pod("b", 3);
    let client = node.add_pod("client", 9);
    let _servers = [
        tcp6_server(&a.ns, 8080, "a"),
        tcp6_server(&b.ns, 8080, "b"),
        udp6_server(&a.ns, 5353, "a"),
        udp6_server(&b.ns, 5353, "b"),
    ];
    let service = |name: &str, spec: serde_json::Value| {
        let mut spec = spec;
        spec["ports"] = serde_json::json!([
            {"name": "http", "protocol": "TCP", "port": 80},
            {"name": "dns", "protocol": "UDP", "port": 53},
        ]);
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        })
    };
    apply(
        &server,
        &service("web6", serde_json::json!({"ipFamilies": ["IPv6"]})),
    );
    apply(&server, &service("dual", serde_json::json!({})));
    let get = |name: &str, path: &str| {
        server
            .kubectl_ok(&["get", "service", name, "-o", &format!("jsonpath={path}")])
            .trim()
            .to_string()
    };
    // A Service without ipFamilies gets the primary family only ...
    assert_eq!(get("dual", "{.spec.ipFamilies}"), r#"["IPv4"]"#);
    // ... until it asks for both.
    server.kubectl_ok(&[
        "patch",
        "service",
        "dual",
        "-p",
        r#"{"spec":{"ipFamilyPolicy":"PreferDualStack"}}"#,
    ]);
    let range: skiff_proxy::model::IpNetwork = "fd00:10:96::/108".parse().expect("CIDR");
    let web6: IpAddr = get("web6", "{.spec.clusterIP}")
        .parse()
        .expect("web6 clusterIP");
    assert!(web6.is_ipv6() && range.contains(web6), "{web6}");
    assert_eq!(get("web6", "{.spec.ipFamilies}"), r#"["IPv6"]"#);
    // Dual-stack: the primary (IPv4) family first, then IPv6.
    let dual_ips = get("dual", "{.spec.clusterIPs[*]}");
    let dual_ips: Vec<IpAddr> = dual_ips
        .split_whitespace()
        .map(|ip| ip.parse().expect("clusterIPs"))
        .collect();
    assert_eq!(dual_ips.len(), 2, "{dual_ips:?}");
    assert!(
        dual_ips[0].is_ipv4() && dual_ips[1].is_ipv6(),
        "{dual_ips:?}"
    );
    assert_eq!(get("dual", "{.spec.ipFamilies}"), r#"["IPv4","IPv6"]"#);
    let dual6 = dual_ips[1];

    let ports = [("http", "TCP", 8080), ("dns", "UDP", 5353)];
    for svc in ["web6", "dual"] {
        let mut slice = slice6(svc, &ports, &[a.ip, b.ip], &node.name);
        slice["apiVersion"] = serde_json::json!("discovery.k8s.io/v1");
        slice["kind"] = serde_json::json!("EndpointSlice");
        apply(&server, &slice);
    }
    let _proxy = ProxyProcess::start_iptables_in(&server, &node.name, &node.ns, CLUSTER_CIDR6);

    for vip in [web6, dual6] {
        let tcp = SocketAddr::new(vip, 80);
        let mut seen = BTreeSet::new();
        eventually(Duration::from_secs(20), "both IPv6 backends", || {
            if let Ok(reply) = tcp6_request(&client.ns, tcp) {
                let (backend, peer) = reply.split_once(' ').expect("reply");
                assert_eq!(peer, client.ip.to_string(), "pod source kept");
                seen.insert(backend.to_string());
            }
            (seen.len() == 2).then_some(())
        });
        let udp = udp6_request(&client.ns, SocketAddr::new(vip, 53))
            .expect("UDP through the IPv6 ClusterIP");
        assert!(udp.starts_with('a') || udp.starts_with('b'), "{udp}");
    }
    // The rules are ip6tables rules in the implementation the proxy chose.
    let mut rules = String::new();
    for save in ["ip6tables-legacy-save", "ip6tables-nft-save"] {
        rules.push_str(&node.ns.exec(&[save, "-t", "nat"]));
    }
    for vip in [web6, dual6] {
        assert!(rules.contains(&format!("-d {vip}/128")), "{rules}");
    }
}

/// A proxy restarted with another `--iptables-backend` takes its rules out
/// of the implementation it left (both would DNAT otherwise), and
/// `skiff proxy --cleanup` removes them from every implementation and family.
#[test]
fn switching_backend_and_cleanup_leave_no_stale_rules() {
    use lab::proxy::{apply_web_service, ProxyProcess};
    use lab::sockets::{eventually, tcp_request, tcp_server};
    use std::time::Duration;

    let server = common::TestServer::start(common::StoreKind::Redb);
    let mut lab = lab::Lab::new("switch");
    lab.add_node("n1", 1);
    let a = lab.node("n1").add_pod("a", 2);
    let client = lab.node("n1").add_pod("client", 9);
    let _srv = tcp_server(&a.ns, 8080, "a");
    apply_web_service(&server, "web", "10.96.10.27", a.ip, "n1");
    let vip = "10.96.10.27:80".parse().expect("address");
    let node = &lab.node("n1").ns;
    let through_the_service = || {
        let reply = eventually(Duration::from_secs(20), "the service", || {
            tcp_request(&client.ns, vip).ok()
        });
        assert_eq!(reply.backend, "a");
    };

    let legacy = ProxyProcess::start_with_args(
        &server,
        lab.node("n1"),
        MODE,
        &["--iptables-backend", "legacy"],
    );
    through_the_service();
    assert!(!kube_lines(node, "iptables-legacy-save").is_empty());
    drop(legacy);

    let nft = ProxyProcess::start_with_args(
        &server,
        lab.node("n1"),
        MODE,
        &["--iptables-backend", "nft"],
    );
    through_the_service();
    assert!(!kube_lines(node, "iptables-nft-save").is_empty());
    let left = kube_lines(node, "iptables-legacy-save");
    assert!(left.is_empty(), "legacy rules left behind: {left:?}");
    assert!(
        nft.log()
            .contains("removed service rules an earlier run left"),
        "{}",
        nft.log()
    );
    drop(nft);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["proxy", "--cleanup", "--netns"])
        .arg(node.path())
        .output()
        .expect("skiff proxy --cleanup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("iptables-nft"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for save in [
        "iptables-legacy-save",
        "iptables-nft-save",
        "ip6tables-legacy-save",
        "ip6tables-nft-save",
    ] {
        let left = kube_lines(node, save);
        assert!(left.is_empty(), "{save} after --cleanup: {left:?}");
    }
    assert!(
        tcp_request(&client.ns, vip).is_err(),
        "the service still answers after --cleanup"
    );
}

/// A node switched from `--mode iptables` to `--mode ebpf`: the eBPF proxy
/// takes out the iptables rules the earlier run left (they would keep
/// DNATing to stale endpoints) and serves the service itself.
#[test]
fn ebpf_mode_removes_the_rules_an_iptables_run_left() {
    use lab::proxy::{apply_web_service, ProxyProcess};
    use lab::sockets::{eventually, tcp_request, tcp_server};
    use std::time::Duration;

    let server = common::TestServer::start(common::StoreKind::Redb);
    let mut lab = lab::Lab::new("toebpf");
    lab.add_node("n1", 1);
    let a = lab.node("n1").add_pod("a", 2);
    let client = lab.node("n1").add_pod("client", 9);
    let _srv = tcp_server(&a.ns, 8080, "a");
    apply_web_service(&server, "web", "10.96.10.28", a.ip, "n1");
    let vip = "10.96.10.28:80".parse().expect("address");
    let node = &lab.node("n1").ns;
    let iptables = ProxyProcess::start(&server, lab.node("n1"), MODE);
    eventually(Duration::from_secs(20), "the service (iptables)", || {
        tcp_request(&client.ns, vip).ok()
    });
    let save = format!("{}-save", implementation_in_use(node));
    assert!(!kube_lines(node, &save).is_empty());
    drop(iptables);

    let ebpf = ProxyProcess::start(&server, lab.node("n1"), "ebpf");
    let left = kube_lines(node, &save);
    assert!(left.is_empty(), "iptables rules left behind: {left:?}");
    let reply = eventually(Duration::from_secs(20), "the service (eBPF)", || {
        tcp_request(&client.ns, vip).ok()
    });
    assert_eq!(reply.backend, "a");
    assert!(
        ebpf.log()
            .contains("removed service rules an earlier run left"),
        "{}",
        ebpf.log()
    );
}
