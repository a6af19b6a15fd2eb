//! Any bytes sent to the DNS port: the handler must never panic, and every
//! answer it sends must be a well-formed DNS message with the query's id.

#![no_main]

use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;
use skiff_dns::cache::Cache;
use skiff_dns::handler::Handler;
use skiff_dns::index::{Index, Source};
use skiff_dns::metrics::Metrics;
use skiff_dns::records::Zone;
use skiff_dns::upstream::Upstreams;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    handler: Handler,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let zone = Zone::new("cluster.local", 5).expect("zone");
        let mut index = Index::new(zone);
        let record = hickory_proto::rr::Record::from_rdata(
            hickory_proto::rr::Name::from_ascii("web.default.svc.cluster.local.").expect("name"),
            5,
            hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A::new(10, 96, 0, 10)),
        );
        index.set(
            Source::Service {
                namespace: "default".into(),
                name: "web".into(),
            },
            vec![record],
        );
        // The fuzz packets come from this pod's IP, so autopath is exercised.
        index.set(
            Source::Pod {
                namespace: "team".into(),
                name: "client".into(),
            },
            vec![hickory_proto::rr::Record::from_rdata(
                hickory_proto::rr::Name::from_ascii("10-244-0-9.team.pod.cluster.local.")
                    .expect("name"),
                5,
                hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A::new(10, 244, 0, 9)),
            )],
        );
        // No upstreams: forwarded names fail fast with SERVFAIL, no network.
        let handler = Handler::new(
            Arc::new(RwLock::new(index)),
            Cache::new(64),
            Upstreams::new(Vec::new(), Duration::from_millis(10), 4),
            Arc::new(Metrics::new()),
        )
        .with_autopath(true);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        Fixture { runtime, handler }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let src = "10.244.0.9:40000".parse().expect("addr");
    let answer = f
        .runtime
        .block_on(skiff_dns::packet::answer_udp(&f.handler, data, src));
    if let Some(bytes) = answer {
        let reply = Message::from_vec(&bytes).expect("the server sent an unparseable answer");
        assert_eq!(
            &bytes[..2],
            &data[..2],
            "answer id differs from the query id"
        );
        assert!(bytes.len() <= 65535);
        let _ = reply;
    }
});
