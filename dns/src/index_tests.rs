use std::net::Ipv4Addr;

use hickory_proto::rr::rdata::{A, CNAME};

use super::*;

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn a(owner: &str, ip: [u8; 4]) -> Record {
    Record::from_rdata(name(owner), 5, RData::A(A(Ipv4Addr::from(ip))))
}

fn svc(ns: &str, n: &str) -> Source {
    Source::Service {
        namespace: ns.into(),
        name: n.into(),
    }
}

fn index() -> Index {
    Index::new(Zone::new("cluster.local", 5).unwrap())
}

fn rcode(r: &Resolution) -> Option<ResponseCode> {
    match r {
        Resolution::Authoritative { rcode, .. } => Some(*rcode),
        _ => None,
    }
}

fn has_soa(r: &Resolution) -> bool {
    matches!(r, Resolution::Authoritative { authorities, .. }
        if authorities.iter().any(|a| a.record_type() == RecordType::SOA))
}

#[test]
fn answers_are_case_insensitive_and_missing_types_are_nodata() {
    let mut idx = index();
    idx.set(
        svc("a", "web"),
        vec![a("web.a.svc.cluster.local.", [10, 96, 0, 1])],
    );
    let r = idx.resolve(&name("WEB.A.Svc.Cluster.Local."), RecordType::A);
    assert!(matches!(&r, Resolution::Authoritative { answers, .. } if answers.len() == 1));
    let nodata = idx.resolve(&name("web.a.svc.cluster.local."), RecordType::AAAA);
    assert_eq!(rcode(&nodata), Some(ResponseCode::NoError));
    assert!(has_soa(&nodata));
    // Empty non-terminals exist: NODATA, not NXDOMAIN.
    let ent = idx.resolve(&name("a.svc.cluster.local."), RecordType::A);
    assert_eq!(rcode(&ent), Some(ResponseCode::NoError));
}

#[test]
fn unknown_names_in_the_zone_are_nxdomain_and_never_forwarded() {
    let mut idx = index();
    idx.set(
        svc("a", "web"),
        vec![a("web.a.svc.cluster.local.", [10, 96, 0, 1])],
    );
    for q in [
        "nope.a.svc.cluster.local.",
        "web.a.svc.cluster.local.svc.cluster.local.",
        "api.example.com.a.svc.cluster.local.",
    ] {
        let r = idx.resolve(&name(q), RecordType::A);
        assert_eq!(rcode(&r), Some(ResponseCode::NXDomain), "{q}");
        assert!(has_soa(&r), "{q}");
    }
    assert_eq!(
        idx.resolve(&name("example.com."), RecordType::A),
        Resolution::Forward
    );
    assert_eq!(
        idx.resolve(&name("9.9.9.9.in-addr.arpa."), RecordType::PTR),
        Resolution::Forward
    );
}

#[test]
fn replacing_and_removing_a_source_drops_its_names_and_empty_parents() {
    let mut idx = index();
    let base = idx.len();
    idx.set(
        svc("b", "db"),
        vec![a("db.b.svc.cluster.local.", [10, 0, 0, 1])],
    );
    idx.set(
        svc("b", "db"),
        vec![a("db.b.svc.cluster.local.", [10, 0, 0, 2])],
    );
    match idx.resolve(&name("db.b.svc.cluster.local."), RecordType::A) {
        Resolution::Authoritative { answers, .. } => {
            assert_eq!(answers, vec![a("db.b.svc.cluster.local.", [10, 0, 0, 2])])
        }
        other => panic!("{other:?}"),
    }
    idx.set(svc("b", "db"), Vec::new());
    assert_eq!(
        rcode(&idx.resolve(&name("db.b.svc.cluster.local."), RecordType::A)),
        Some(ResponseCode::NXDomain)
    );
    assert_eq!(
        rcode(&idx.resolve(&name("b.svc.cluster.local."), RecordType::A)),
        Some(ResponseCode::NXDomain)
    );
    assert_eq!(idx.len(), base);
}

#[test]
fn dns_version_and_apex_soa_are_served() {
    let idx = index();
    match idx.resolve(&name("dns-version.cluster.local."), RecordType::TXT) {
        Resolution::Authoritative { answers, .. } => {
            assert_eq!(answers[0].data.to_string(), "1.1.0")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        idx.resolve(&name("cluster.local."), RecordType::SOA),
        Resolution::Authoritative { answers, .. } if answers.len() == 1
    ));
}

#[test]
fn cnames_are_followed_inside_the_zone_and_chased_outside() {
    let mut idx = index();
    let cname =
        |from: &str, to: &str| Record::from_rdata(name(from), 5, RData::CNAME(CNAME(name(to))));
    idx.set(
        svc("a", "alias"),
        vec![cname(
            "alias.a.svc.cluster.local.",
            "web.a.svc.cluster.local.",
        )],
    );
    idx.set(
        svc("a", "web"),
        vec![a("web.a.svc.cluster.local.", [10, 96, 0, 1])],
    );
    idx.set(
        svc("a", "ext"),
        vec![cname("ext.a.svc.cluster.local.", "www.example.com.")],
    );
    match idx.resolve(&name("alias.a.svc.cluster.local."), RecordType::A) {
        Resolution::Authoritative { answers, .. } => assert_eq!(answers.len(), 2),
        other => panic!("{other:?}"),
    }
    match idx.resolve(&name("ext.a.svc.cluster.local."), RecordType::A) {
        Resolution::Chase { answers, target } => {
            assert_eq!(answers.len(), 1);
            assert_eq!(target, name("www.example.com."));
        }
        other => panic!("{other:?}"),
    }
    // Asking for the CNAME itself answers it without chasing.
    assert!(matches!(
        idx.resolve(&name("ext.a.svc.cluster.local."), RecordType::CNAME),
        Resolution::Authoritative { answers, .. } if answers.len() == 1
    ));
}

#[test]
fn srv_and_ptr_records_come_back_whole_and_leave_nothing_when_removed() {
    use hickory_proto::rr::rdata::{PTR, SRV};
    let mut idx = index();
    let base = idx.len();
    let target = name("web.a.svc.cluster.local.");
    let srv = Record::from_rdata(
        name("_http._tcp.web.a.svc.cluster.local."),
        5,
        RData::SRV(SRV::new(0, 100, 80, target.clone())),
    );
    let ptr = Record::from_rdata(
        name("1.0.96.10.in-addr.arpa."),
        5,
        RData::PTR(PTR(target.clone())),
    );
    // A TTL other than the zone's is kept as given.
    let slow = Record::from_rdata(target.clone(), 60, RData::A(A(Ipv4Addr::new(10, 96, 0, 1))));
    idx.set(
        svc("a", "web"),
        vec![srv.clone(), ptr.clone(), slow.clone()],
    );
    for (record, qtype) in [
        (srv, RecordType::SRV),
        (ptr, RecordType::PTR),
        (slow, RecordType::A),
    ] {
        match idx.resolve(&record.name, qtype) {
            Resolution::Authoritative { answers, .. } => assert_eq!(answers, vec![record]),
            other => panic!("{other:?}"),
        }
    }
    // `_tcp.web` exists as an empty non-terminal.
    let ent = idx.resolve(&name("_TCP.web.a.svc.cluster.local."), RecordType::A);
    assert_eq!(rcode(&ent), Some(ResponseCode::NoError));
    idx.set(svc("a", "web"), Vec::new());
    assert_eq!(idx.len(), base);
}

#[test]
fn pod_addresses_name_their_namespace_until_the_pod_goes() {
    let mut idx = index();
    let pod = |ns: &str, n: &str| Source::Pod {
        namespace: ns.into(),
        name: n.into(),
    };
    let ip = "10.244.0.9".parse().unwrap();
    idx.set(
        pod("a", "old"),
        vec![a("10-244-0-9.a.pod.cluster.local.", [10, 244, 0, 9])],
    );
    assert_eq!(idx.client_namespace(ip), Some("a"));
    // The address goes to a new pod before the old one is deleted: removing
    // the old one leaves the new owner in place.
    idx.set(
        pod("b", "new"),
        vec![a("10-244-0-9.b.pod.cluster.local.", [10, 244, 0, 9])],
    );
    idx.set(pod("a", "old"), Vec::new());
    assert_eq!(idx.client_namespace(ip), Some("b"));
    idx.set(pod("b", "new"), Vec::new());
    assert_eq!(idx.client_namespace(ip), None);
    // Service addresses are no clients.
    idx.set(
        svc("a", "web"),
        vec![a("web.a.svc.cluster.local.", [10, 244, 0, 9])],
    );
    assert_eq!(idx.client_namespace(ip), None);
}
