//! Autopath, as CoreDNS's `autopath @kubernetes`: a pod's resolver walks its
//! search path (`<ns>.svc.<zone>`, `svc.<zone>`, `<zone>`, then the name
//! alone), one query and one NXDOMAIN per step, and `ndots:5` sends nearly
//! every name down that walk. When the walk's first query comes from a Pod
//! whose namespace the index knows and names nothing, the server walks the
//! rest itself and answers with the first name that exists, behind a CNAME
//! from the name asked: one round trip instead of up to four.
//!
//! Off by default, as in CoreDNS: it assumes the client's search path is the
//! one the agent writes into pods' resolv.conf. This module only computes
//! names and the final answer; the walk itself is [`crate::handler`]'s.

use hickory_proto::rr::rdata::CNAME;
use hickory_proto::rr::{Name, RData, Record};

use crate::handler::Reply;

/// The names a Pod in `namespace` would ask after `name` (in order), when
/// `name` is something under its first search domain `<namespace>.svc.<zone>`;
/// otherwise none (the query is not the start of a search-path walk).
pub fn candidates(zone: &Name, namespace: &str, name: &Name) -> Vec<Name> {
    let Some(svc) = Name::from_labels([b"svc".as_slice()])
        .ok()
        .and_then(|svc| svc.append_domain(zone).ok())
    else {
        return Vec::new();
    };
    let Some(first) = Name::from_labels([namespace.as_bytes()])
        .ok()
        .and_then(|ns| ns.append_domain(&svc).ok())
    else {
        return Vec::new();
    };
    if name.num_labels() <= first.num_labels() || !first.zone_of(name) {
        return Vec::new();
    }
    let kept = usize::from(name.num_labels() - first.num_labels());
    let Ok(mut base) = Name::from_labels(name.iter().take(kept)) else {
        return Vec::new();
    };
    base.set_fqdn(false);
    let mut out: Vec<Name> = [&svc, zone]
        .into_iter()
        .filter_map(|domain| base.clone().append_domain(domain).ok())
        .collect();
    base.set_fqdn(true);
    out.push(base);
    out
}

/// The answer to `asked` when autopath found `found` at `candidate`: the
/// records of `candidate` behind a CNAME from `asked` (with the TTL of the
/// first record), as CoreDNS answers. A NODATA answer goes back as it is.
pub fn via_cname(asked: &Name, candidate: &Name, mut found: Reply) -> Reply {
    let Some(ttl) = found.answers.first().map(|r| r.ttl) else {
        return found;
    };
    let cname = Record::from_rdata(asked.clone(), ttl, RData::CNAME(CNAME(candidate.clone())));
    found.answers.insert(0, cname);
    found
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::{Arc, RwLock};
    use std::time::Duration;

    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{DNSClass, RecordType};

    use super::*;
    use crate::cache::Cache;
    use crate::handler::Handler;
    use crate::index::{Index, Source};
    use crate::metrics::Metrics;
    use crate::records::Zone;
    use crate::upstream::Upstreams;

    fn a(owner: &str, ip: [u8; 4]) -> Record {
        Record::from_rdata(name(owner), 5, RData::A(A(std::net::Ipv4Addr::from(ip))))
    }

    /// A handler whose index holds Service `web` in `other` and a Pod of
    /// `team` at 10.244.0.9; no upstream.
    fn handler(autopath: bool) -> Handler {
        let mut index = Index::new(Zone::new("cluster.local", 5).unwrap());
        let web = Source::Service {
            namespace: "other".into(),
            name: "web".into(),
        };
        index.set(web, vec![a("web.other.svc.cluster.local.", [10, 96, 0, 7])]);
        let pod = Source::Pod {
            namespace: "team".into(),
            name: "client".into(),
        };
        index.set(
            pod,
            vec![a("10-244-0-9.team.pod.cluster.local.", [10, 244, 0, 9])],
        );
        Handler::new(
            Arc::new(RwLock::new(index)),
            Cache::new(16),
            Upstreams::new(Vec::new(), Duration::from_millis(10), 4),
            Arc::new(Metrics::new()),
        )
        .with_autopath(autopath)
    }

    #[tokio::test]
    async fn a_pods_walk_is_answered_once_and_others_get_nxdomain() {
        let asked = name("web.other.team.svc.cluster.local.");
        let pod: Option<IpAddr> = Some([10, 244, 0, 9].into());
        let stranger: Option<IpAddr> = Some([10, 244, 0, 10].into());
        let on = handler(true);
        let reply = on
            .reply_to_client(&asked, RecordType::A, DNSClass::IN, pod)
            .await;
        assert_eq!(reply.rcode, ResponseCode::NoError);
        let target = name("web.other.svc.cluster.local.");
        assert_eq!(
            reply.answers,
            vec![
                Record::from_rdata(asked.clone(), 5, RData::CNAME(CNAME(target))),
                a("web.other.svc.cluster.local.", [10, 96, 0, 7]),
            ]
        );
        for (handler, client) in [(&on, stranger), (&on, None), (&handler(false), pod)] {
            let reply = handler
                .reply_to_client(&asked, RecordType::A, DNSClass::IN, client)
                .await;
            assert_eq!(reply.rcode, ResponseCode::NXDomain, "{client:?}");
            assert!(reply.answers.is_empty());
        }
        // Nothing down the path (and no upstream for the bare name): the
        // NXDOMAIN of the name asked, with the zone's SOA.
        let nothing = name("nope.other.team.svc.cluster.local.");
        let reply = on
            .reply_to_client(&nothing, RecordType::A, DNSClass::IN, pod)
            .await;
        assert_eq!(reply.rcode, ResponseCode::NXDomain);
        assert_eq!(reply.authorities.len(), 1);
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn texts(names: Vec<Name>) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn the_walk_continues_after_the_clients_own_namespace() {
        let zone = name("cluster.local.");
        assert_eq!(
            texts(candidates(
                &zone,
                "team",
                &name("web.other.TEAM.svc.cluster.local.")
            )),
            [
                "web.other.svc.cluster.local.",
                "web.other.cluster.local.",
                "web.other."
            ]
        );
        assert_eq!(
            texts(candidates(
                &zone,
                "team",
                &name("example.com.team.svc.cluster.local.")
            )),
            [
                "example.com.svc.cluster.local.",
                "example.com.cluster.local.",
                "example.com."
            ]
        );
    }

    #[test]
    fn names_outside_the_clients_first_search_domain_are_left_alone() {
        let zone = name("cluster.local.");
        for asked in [
            "web.other.svc.cluster.local.",
            "team.svc.cluster.local.",
            "web.team.svc.example.",
            "example.com.",
        ] {
            assert!(
                candidates(&zone, "team", &name(asked)).is_empty(),
                "{asked}"
            );
        }
    }

    #[test]
    fn found_records_come_behind_a_cname_from_the_name_asked() {
        let asked = name("web.other.team.svc.cluster.local.");
        let candidate = name("web.other.svc.cluster.local.");
        let a = Record::from_rdata(candidate.clone(), 5, RData::A(A::new(10, 96, 0, 7)));
        let found = Reply {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers: vec![a.clone()],
            authorities: Vec::new(),
        };
        let reply = via_cname(&asked, &candidate, found);
        let cname = Record::from_rdata(asked, 5, RData::CNAME(CNAME(candidate)));
        assert_eq!(reply.answers, vec![cname, a]);
        assert_eq!(reply.rcode, ResponseCode::NoError);
    }
}
