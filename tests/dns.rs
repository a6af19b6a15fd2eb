//! `skiff dns` against a real `skiff server`: Services, EndpointSlices and
//! Pods are created through the API and the answers checked with `dig`, the
//! way a pod's resolver would see them.

mod common;
#[path = "dns_support/mod.rs"]
mod dns_support;

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use common::{StoreKind, TestServer};
use dns_support::*;
use serde_json::json;

#[test]
fn cluster_ip_services_answer_a_srv_ptr_cname_txt_and_negative_with_soa() {
    let server = TestServer::start(StoreKind::Redb);
    let dns = DnsServer::start(&server, &[]);
    let ns = namespace(&server, "dnsrec");
    let web = service(
        &server,
        &ns,
        json!({"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}),
        "web",
    );
    let ip = web["spec"]["clusterIP"]
        .as_str()
        .expect("clusterIP assigned")
        .to_string();
    service(
        &server,
        &ns,
        json!({"type": "ExternalName", "externalName": "mail.example.com"}),
        "mail",
    );
    let fqdn = format!("web.{ns}.svc.cluster.local");

    // A: shows up once the watch delivers it; case does not matter.
    let a = dns.dig_until(&[&fqdn, "A"], "the ClusterIP", |d| {
        d.values() == [ip.clone()]
    });
    assert!(a.flag("aa"), "cluster answers are authoritative: {}", a.raw);
    assert_eq!(a.answer[0].ttl, 5, "default TTL is 5 s");
    let upper = dns.dig(&[&fqdn.to_uppercase(), "A"]);
    assert_eq!(upper.values(), vec![ip.clone()]);

    // SRV for the named port.
    let srv = dns.dig(&[&format!("_http._tcp.{fqdn}"), "SRV"]);
    assert_eq!(srv.values(), [format!("0 100 80 {fqdn}.")]);

    // PTR of the ClusterIP.
    let ptr = dns.dig(&["-x", &ip]);
    assert_eq!(ptr.values(), [format!("{fqdn}.")]);

    // ExternalName → CNAME.
    let cname = dns.dig(&[&format!("mail.{ns}.svc.cluster.local"), "CNAME"]);
    assert_eq!(cname.values(), ["mail.example.com."]);

    // dns-version TXT.
    assert_eq!(
        dns.dig(&["dns-version.cluster.local", "TXT"]).values(),
        ["\"1.1.0\""]
    );

    // NODATA: the name exists, the type does not.
    let nodata = dns.dig(&[&fqdn, "AAAA"]);
    assert_eq!(nodata.status, "NOERROR", "{}", nodata.raw);
    assert!(
        nodata.answer.is_empty() && nodata.has_soa(),
        "{}",
        nodata.raw
    );
    // The namespace is an empty non-terminal: NODATA too.
    let ent = dns.dig(&[&format!("{ns}.svc.cluster.local"), "A"]);
    assert_eq!(ent.status, "NOERROR", "{}", ent.raw);

    // NXDOMAIN with the SOA, also for search-path expansions that cannot exist.
    for name in [
        format!("nope.{ns}.svc.cluster.local"),
        format!("{fqdn}.{ns}.svc.cluster.local"),
        format!("api.example.com.{ns}.svc.cluster.local"),
        "foo.svc.cluster.local.svc.cluster.local".to_string(),
    ] {
        let nx = dns.dig(&[&name, "A"]);
        assert_eq!(nx.status, "NXDOMAIN", "{name}: {}", nx.raw);
        assert!(nx.has_soa(), "{name}: {}", nx.raw);
    }

    // TCP answers the same.
    assert_eq!(dns.dig(&["+tcp", &fqdn, "A"]).values(), vec![ip.clone()]);

    // Deleting the Service removes its name.
    delete(&server, &format!("/api/v1/namespaces/{ns}/services/web"));
    dns.dig_until(&[&fqdn, "A"], "NXDOMAIN after delete", |d| {
        d.status == "NXDOMAIN"
    });

    // Metrics counted the queries by type and rcode.
    let metrics = dns.metrics();
    assert!(
        metrics.contains("skiff_dns_queries_total{qtype=\"SRV\",rcode=\"NoError\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("qtype=\"A\",rcode=\"NXDomain\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("skiff_dns_request_duration_seconds_count"),
        "{metrics}"
    );
}

#[test]
fn headless_services_follow_endpoint_slices_with_hostnames_and_srv() {
    let server = TestServer::start(StoreKind::Redb);
    let dns = DnsServer::start(&server, &[]);
    let ns = namespace(&server, "dnshl");
    service(
        &server,
        &ns,
        json!({"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}),
        "db",
    );
    let fqdn = format!("db.{ns}.svc.cluster.local");
    // No endpoints yet: a headless Service without ready endpoints does not exist.
    assert_eq!(dns.dig(&[&fqdn, "A"]).status, "NXDOMAIN");

    let ports = json!([{"name": "pg", "port": 5432, "protocol": "TCP"}]);
    let path = slices_path(&ns);
    let one = json!([
        {"addresses": ["10.244.1.10"], "hostname": "db-0", "conditions": {"ready": true}},
    ]);
    let created = create(
        &server,
        &path,
        slice_body(&ns, "db-1", "db", one, ports.clone()),
    );
    dns.dig_until(&[&fqdn, "A"], "one endpoint", |d| {
        d.values() == ["10.244.1.10"]
    });
    assert_eq!(
        dns.dig(&[&format!("db-0.{fqdn}"), "A"]).values(),
        ["10.244.1.10"]
    );
    assert_eq!(
        dns.dig(&["-x", "10.244.1.10"]).values(),
        [format!("db-0.{fqdn}.")]
    );

    // Scale up: a second ready endpoint and a not-ready one.
    let mut scaled = slice_body(
        &ns,
        "db-1",
        "db",
        json!([
            {"addresses": ["10.244.1.10"], "hostname": "db-0", "conditions": {"ready": true}},
            {"addresses": ["10.244.2.11"], "hostname": "db-1", "conditions": {"ready": true}},
            {"addresses": ["10.244.3.12"], "hostname": "db-2", "conditions": {"ready": false}},
        ]),
        ports.clone(),
    );
    scaled["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"].clone();
    let stored = replace(&server, &format!("{path}/db-1"), scaled);
    dns.dig_until(&[&fqdn, "A"], "two ready endpoints", |d| {
        d.values() == ["10.244.1.10", "10.244.2.11"]
    });
    let srv = dns.dig(&[&format!("_pg._tcp.{fqdn}"), "SRV"]);
    assert_eq!(
        srv.values(),
        [
            format!("0 50 5432 db-0.{fqdn}."),
            format!("0 50 5432 db-1.{fqdn}.")
        ]
    );
    assert_eq!(dns.dig(&[&format!("db-2.{fqdn}"), "A"]).status, "NXDOMAIN");

    // Scale down to nothing ready: NXDOMAIN again.
    let mut down = slice_body(
        &ns,
        "db-1",
        "db",
        json!([{"addresses": ["10.244.1.10"], "hostname": "db-0",
                "conditions": {"ready": false}}]),
        ports,
    );
    down["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"].clone();
    replace(&server, &format!("{path}/db-1"), down);
    dns.dig_until(&[&fqdn, "A"], "NXDOMAIN with no ready endpoint", |d| {
        d.status == "NXDOMAIN" && d.has_soa()
    });

    // publishNotReadyAddresses publishes the not-ready endpoint.
    service(
        &server,
        &ns,
        json!({"clusterIP": "None", "publishNotReadyAddresses": true}),
        "peers",
    );
    create(
        &server,
        &path,
        slice_body(
            &ns,
            "peers-1",
            "peers",
            json!([{"addresses": ["10.244.4.4"], "conditions": {"ready": false}}]),
            json!([]),
        ),
    );
    let peers = format!("peers.{ns}.svc.cluster.local");
    dns.dig_until(&[&peers, "A"], "the not-ready peer", |d| {
        d.values() == ["10.244.4.4"]
    });
    // Endpoints without a hostname are named after their IP.
    assert_eq!(
        dns.dig(&[&format!("10-244-4-4.{peers}"), "A"]).values(),
        ["10.244.4.4"]
    );
}

#[test]
fn large_answers_truncate_over_udp_and_garbage_gets_formerr() {
    let server = TestServer::start(StoreKind::Redb);
    let dns = DnsServer::start(&server, &[]);
    let ns = namespace(&server, "dnsbig");
    service(&server, &ns, json!({"clusterIP": "None"}), "big");
    let endpoints: Vec<_> = (1..=50)
        .map(|i| json!({"addresses": [format!("10.244.9.{i}")]}))
        .collect();
    create(
        &server,
        &slices_path(&ns),
        slice_body(&ns, "big-1", "big", json!(endpoints), json!([])),
    );
    let fqdn = format!("big.{ns}.svc.cluster.local");
    let tcp = dns.dig_until(&["+tcp", &fqdn, "A"], "50 addresses", |d| {
        d.answer.len() == 50
    });
    assert!(!tcp.flag("tc"));

    // Plain DNS over UDP (512 bytes) cannot hold 50 A records: TC is set.
    let udp = dns.dig(&["+noedns", "+notcp", &fqdn, "A"]);
    assert!(udp.flag("tc"), "{}", udp.raw);
    // EDNS0 with a bigger buffer: the ~860-byte answer fits in one datagram.
    let edns = dns.dig(&["+bufsize=4096", "+notcp", &fqdn, "A"]);
    assert!(edns.raw.contains("EDNS: version: 0"), "{}", edns.raw);
    assert_eq!(edns.answer.len(), 50, "{}", edns.raw);
    assert!(!edns.flag("tc"), "{}", edns.raw);

    // A header followed by garbage: FORMERR, and the server keeps answering.
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut packet = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    packet.extend_from_slice(&[0x3f, b'x', b'y', 0xff, 0xff, 0xff]);
    socket
        .send_to(&packet, (Ipv4Addr::LOCALHOST, dns.port))
        .expect("send");
    let mut buf = [0u8; 512];
    let (n, _) = socket.recv_from(&mut buf).expect("an answer to garbage");
    assert!(n >= 12);
    assert_eq!(&buf[..2], &[0x12, 0x34], "same id");
    assert_eq!(buf[3] & 0x0f, 1, "rcode FORMERR");
    assert_eq!(
        dns.dig(&["dns-version.cluster.local", "TXT"]).values(),
        ["\"1.1.0\""]
    );
}

#[test]
fn other_names_are_forwarded_upstream_cached_and_never_looped() {
    let server = TestServer::start(StoreKind::Redb);
    let upstream = Dnsmasq::start();
    let dns = DnsServer::start(
        &server,
        &["--upstream", &format!("127.0.0.1:{}", upstream.port)],
    );
    let first = dns.dig(&["www.example.test", "A"]);
    assert_eq!(first.values(), ["192.0.2.1"], "{}", first.raw);
    assert!(!first.flag("aa") && first.flag("ra"), "{}", first.raw);
    let again = dns.dig(&["WWW.example.test", "A"]);
    assert_eq!(again.values(), ["192.0.2.1"]);
    assert_eq!(
        upstream.queries_for("www.example.test"),
        1,
        "the second query is served from the cache:\n{}",
        upstream.query_log()
    );
    assert!(dns.metric("skiff_dns_cache_hits_total") >= 1.0);

    // Cluster names, even impossible search-path expansions, never go upstream.
    for name in [
        "www.example.test.default.svc.cluster.local",
        "x.svc.cluster.local.svc.cluster.local",
    ] {
        assert_eq!(dns.dig(&[name, "A"]).status, "NXDOMAIN");
    }
    assert!(
        !upstream.query_log().contains("cluster.local"),
        "{}",
        upstream.query_log()
    );

    // Our own address as upstream is dropped: external names fail fast with
    // SERVFAIL instead of looping.
    let own = free_port();
    let upstream_self = format!("127.0.0.1:{own}");
    let looped = DnsServer::start_on(&server, own, &["--upstream", &upstream_self]);
    assert_eq!(looped.dig(&["www.example.test", "A"]).status, "SERVFAIL");
    assert!(looped.log().contains("forwarding loop"), "{}", looped.log());
    assert!(looped.metric("skiff_dns_upstream_errors_total") >= 1.0);
}

/// A Service created after its name was asked (and denied) is answered as
/// soon as the watch delivers it: not after the record TTL, nor after the
/// negative TTL of the NXDOMAIN (both 300 s here), and the same for a new
/// endpoint of a headless Service.
#[test]
fn new_services_and_endpoints_are_answered_without_waiting_for_a_ttl() {
    const BOUND: Duration = Duration::from_secs(5);
    let server = TestServer::start(StoreKind::Redb);
    let dns = DnsServer::start(&server, &["--ttl", "300"]);
    let ns = namespace(&server, "dnsfresh");
    let fqdn = format!("fresh.{ns}.svc.cluster.local");

    let before = dns.dig(&[&fqdn, "A"]);
    assert_eq!(before.status, "NXDOMAIN", "{}", before.raw);
    let soa_ttl = before.authority.first().map_or(0, |r| r.ttl);
    assert!(
        soa_ttl >= 60,
        "negative answers are cacheable: {}",
        before.raw
    );

    let created = std::time::Instant::now();
    let web = service(&server, &ns, json!({"ports": [{"port": 80}]}), "fresh");
    let ip = web["spec"]["clusterIP"]
        .as_str()
        .expect("clusterIP")
        .to_string();
    let a = dns.dig_until(&[&fqdn, "A"], "the new ClusterIP", |d| {
        d.values() == [ip.clone()]
    });
    let waited = created.elapsed();
    assert!(
        waited < BOUND,
        "answered {waited:?} after creation: {}",
        a.raw
    );
    assert_eq!(a.answer[0].ttl, 300, "{}", a.raw);

    // Headless: a second ready endpoint shows up without waiting for the TTL.
    service(
        &server,
        &ns,
        json!({"clusterIP": "None", "ports": [{"port": 80}]}),
        "db",
    );
    let db = format!("db.{ns}.svc.cluster.local");
    let ep = |ip: &str| json!({"addresses": [ip], "conditions": {"ready": true}});
    let slice = create(
        &server,
        &slices_path(&ns),
        slice_body(
            &ns,
            "db-1",
            "db",
            json!([ep("10.9.0.1")]),
            json!([{"port": 80}]),
        ),
    );
    dns.dig_until(&[&db, "A"], "one endpoint", |d| d.values() == ["10.9.0.1"]);
    let mut scaled = slice.clone();
    scaled["endpoints"] = json!([ep("10.9.0.1"), ep("10.9.0.2")]);
    let changed = std::time::Instant::now();
    replace(&server, &format!("{}/db-1", slices_path(&ns)), scaled);
    dns.dig_until(&[&db, "A"], "two endpoints", |d| {
        d.values() == ["10.9.0.1", "10.9.0.2"]
    });
    let waited = changed.elapsed();
    assert!(
        waited < BOUND,
        "endpoint answered {waited:?} after the change"
    );
}

/// With `--autopath`, the first query of a pod's search-path walk
/// (`name.<its namespace>.svc.cluster.local`, which does not exist) is
/// answered with the first name down the path that does, behind a CNAME;
/// the pod is recognised by its IP (here 127.0.0.2, dig's source address).
/// Clients that are not pods get the plain NXDOMAIN.
#[test]
fn autopath_answers_a_pods_search_path_walk_in_one_query() {
    let server = TestServer::start(StoreKind::Redb);
    let upstream = Dnsmasq::start();
    let dns = DnsServer::start(
        &server,
        &[
            "--autopath",
            "--upstream",
            &format!("127.0.0.1:{}", upstream.port),
        ],
    );
    let home = namespace(&server, "dnsaphome");
    let other = namespace(&server, "dnsapother");
    let web = service(&server, &other, json!({"ports": [{"port": 80}]}), "web");
    let ip = web["spec"]["clusterIP"]
        .as_str()
        .expect("clusterIP")
        .to_string();
    let pods = format!("/api/v1/namespaces/{home}/pods");
    create(
        &server,
        &pods,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "client", "namespace": home},
               "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    );
    let status = json!({"status": {"phase": "Running", "podIP": "127.0.0.2",
                                   "podIPs": [{"ip": "127.0.0.2"}]}});
    let r = server.request(
        "PATCH",
        &format!("{pods}/client/status"),
        Some("application/merge-patch+json"),
        Some(status.to_string().as_bytes()),
    );
    assert_eq!(r.status, 200, "PATCH the pod's status: {}", r.body);
    dns.dig_until(
        &[&format!("127-0-0-2.{home}.pod.cluster.local"), "A"],
        "the client pod's record",
        |d| d.values() == ["127.0.0.2"],
    );

    // `web.<other>` typed in the pod: its first query names the pod's own
    // namespace; the answer is the Service behind a CNAME.
    let asked = format!("web.{other}.{home}.svc.cluster.local");
    let found = format!("web.{other}.svc.cluster.local.");
    let walk = dns.dig(&["-b", "127.0.0.2", &asked, "A"]);
    assert_eq!(walk.status, "NOERROR", "{}", walk.raw);
    assert_eq!(walk.values_of("CNAME"), [found.as_str()], "{}", walk.raw);
    assert_eq!(walk.values_of("A"), [ip.as_str()], "{}", walk.raw);
    assert_eq!(walk.answer[0].name, format!("{asked}."), "{}", walk.raw);
    assert_eq!(walk.answer[1].name, found, "{}", walk.raw);

    // A name outside the cluster: the walk ends at the name itself, upstream.
    let external = format!("www.example.test.{home}.svc.cluster.local");
    let walk = dns.dig(&["-b", "127.0.0.2", &external, "A"]);
    assert_eq!(
        walk.values_of("CNAME"),
        ["www.example.test."],
        "{}",
        walk.raw
    );
    assert_eq!(walk.values_of("A"), ["192.0.2.1"], "{}", walk.raw);

    // Nothing down the path exists: the plain NXDOMAIN of the name asked.
    let nothing = format!("nope.{other}.{home}.svc.cluster.local");
    let nx = dns.dig(&["-b", "127.0.0.2", &nothing, "A"]);
    assert_eq!(nx.status, "NXDOMAIN", "{}", nx.raw);
    assert!(nx.has_soa(), "{}", nx.raw);

    // The same question from an address that is no pod's: no autopath.
    let plain = dns.dig(&[&asked, "A"]);
    assert_eq!(plain.status, "NXDOMAIN", "{}", plain.raw);
    assert!(dns.metric("skiff_dns_autopath_total") >= 2.0);

    // Once the pod is gone, its address is no longer a client of `home`.
    delete(&server, &format!("{pods}/client"));
    dns.dig_until(
        &["-b", "127.0.0.2", &asked, "A"],
        "NXDOMAIN after the pod left",
        |d| d.status == "NXDOMAIN",
    );
}
