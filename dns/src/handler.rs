//! The query handler hickory-server calls for every request: answer from the
//! index, or forward upstream through the cache, and count what happened.
//!
//! Decisions about one question live in [`Handler::reply`]; this module only
//! adds the envelope (header flags, EDNS, error codes) around them. Packets
//! that do not parse never reach it: hickory-server answers those FORMERR.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use hickory_proto::serialize::binary::BinDecoder;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};

use crate::autopath;
use crate::cache::{Answer, Cache};
use crate::index::{Index, Resolution};
use crate::metrics::{Metrics, QType, QueryLabels, Rcode};
use crate::upstream::Upstreams;

/// Largest UDP payload we answer with, whatever the client advertises
/// (the DNS flag day 2020 value: avoids IP fragmentation).
const MAX_UDP_PAYLOAD: u16 = 1232;

/// What goes back for one request.
#[derive(Debug, PartialEq)]
pub struct Reply {
    pub rcode: ResponseCode,
    pub authoritative: bool,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
}

impl Reply {
    fn error(rcode: ResponseCode) -> Reply {
        Reply {
            rcode,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
        }
    }
}

/// Answers DNS requests from the index and upstream.
pub struct Handler {
    index: Arc<RwLock<Index>>,
    cache: Cache,
    upstreams: Upstreams,
    metrics: Arc<Metrics>,
    /// A random name sent upstream once at start; seeing it come back means
    /// the upstream forwards to us (a loop), so forwarding is switched off.
    loop_probe: Name,
    loop_detected: AtomicBool,
    /// Whether search-path walks are answered in one query ([`crate::autopath`]).
    autopath: bool,
}

impl Handler {
    /// A handler over `index`, forwarding to `upstreams` through `cache`.
    pub fn new(
        index: Arc<RwLock<Index>>,
        cache: Cache,
        upstreams: Upstreams,
        metrics: Arc<Metrics>,
    ) -> Handler {
        let probe = format!("skiff-loop-{:016x}.invalid.", rand::random::<u64>());
        Handler {
            index,
            cache,
            upstreams,
            metrics,
            loop_probe: Name::from_ascii(probe).unwrap_or_default(),
            loop_detected: AtomicBool::new(false),
            autopath: false,
        }
    }

    /// The same handler answering search-path walks in one query when `on`.
    pub fn with_autopath(mut self, on: bool) -> Handler {
        self.autopath = on;
        self
    }

    /// Sends the loop probe upstream; if it comes back to us, forwarding stops.
    pub async fn probe_for_loops(&self) {
        if self.upstreams.servers().is_empty() {
            return;
        }
        let _ = self
            .upstreams
            .query(&self.loop_probe, RecordType::HINFO)
            .await;
        if self.loop_detected.load(Ordering::Relaxed) {
            tracing::error!(
                upstreams = ?self.upstreams.servers(),
                "forwarding loop detected: an upstream sends our queries back to us; \
                 forwarding is disabled (check --upstream and /etc/resolv.conf)"
            );
        }
    }

    /// The reply to one question, from the index, the cache or upstream.
    pub async fn reply(&self, name: &Name, qtype: RecordType, class: DNSClass) -> Reply {
        self.reply_to_client(name, qtype, class, None).await
    }

    /// The reply to one question asked by `client` (autopath uses the
    /// namespace of the Pod holding that address).
    pub async fn reply_to_client(
        &self,
        name: &Name,
        qtype: RecordType,
        class: DNSClass,
        client: Option<IpAddr>,
    ) -> Reply {
        if class != DNSClass::IN && class != DNSClass::ANY {
            return Reply::error(ResponseCode::Refused);
        }
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return Reply::error(ResponseCode::Refused);
        }
        if *name == self.loop_probe {
            self.loop_detected.store(true, Ordering::Relaxed);
            return Reply::error(ResponseCode::Refused);
        }
        let reply = self.answer(name, qtype).await;
        if !self.autopath || reply.rcode != ResponseCode::NXDomain {
            return reply;
        }
        let candidates = {
            let index = self.index.read().unwrap_or_else(|e| e.into_inner());
            match client.and_then(|ip| index.client_namespace(ip)) {
                Some(namespace) => autopath::candidates(&index.zone().origin, namespace, name),
                None => return reply,
            }
        };
        // At most three more names (svc.<zone>, <zone>, the name alone).
        for candidate in candidates {
            let found = self.answer(&candidate, qtype).await;
            // NXDOMAIN goes on down the path; an error (SERVFAIL from an
            // upstream) is no answer either: the client walks on by itself.
            if found.rcode != ResponseCode::NoError {
                continue;
            }
            self.metrics.autopath.inc();
            return autopath::via_cname(name, &candidate, found);
        }
        reply
    }

    /// The answer for `name` from the index, else the cache or upstream.
    async fn answer(&self, name: &Name, qtype: RecordType) -> Reply {
        let resolution = {
            let index = self.index.read().unwrap_or_else(|e| e.into_inner());
            index.resolve(name, qtype)
        };
        match resolution {
            Resolution::Authoritative {
                rcode,
                answers,
                authorities,
            } => Reply {
                rcode,
                authoritative: true,
                answers,
                authorities,
            },
            Resolution::Forward => self.forward(name, qtype).await,
            Resolution::Chase { answers, target } => {
                let mut reply = self.forward(&target, qtype).await;
                let mut chain = answers;
                chain.append(&mut reply.answers);
                reply.answers = chain;
                reply
            }
        }
    }

    async fn forward(&self, name: &Name, qtype: RecordType) -> Reply {
        if self.loop_detected.load(Ordering::Relaxed) {
            return Reply::error(ResponseCode::ServFail);
        }
        let now = Instant::now();
        let answer = match self.cache.get(name, qtype, now) {
            Some(hit) => {
                self.metrics.cache_hits.inc();
                hit
            }
            None => {
                self.metrics.cache_misses.inc();
                match self.upstreams.query(name, qtype).await {
                    Ok(answer) => {
                        self.cache.put(name.clone(), qtype, answer.clone(), now);
                        answer
                    }
                    Err(error) => {
                        self.metrics.upstream_errors.inc();
                        tracing::debug!(%error, %name, "upstream query failed");
                        return Reply::error(ResponseCode::ServFail);
                    }
                }
            }
        };
        let Answer {
            rcode,
            answers,
            authorities,
        } = answer;
        Reply {
            rcode,
            authoritative: false,
            answers,
            authorities,
        }
    }

    /// `echoable`: whether the question section is one question that can be
    /// copied into the answer (see [`echoable`]); anything else is FORMERR.
    async fn reply_to(&self, request: &Request, echoable: bool) -> Reply {
        if request.metadata.op_code != OpCode::Query {
            return Reply::error(ResponseCode::NotImp);
        }
        let ([query], true) = (request.queries.queries(), echoable) else {
            return Reply::error(ResponseCode::FormErr);
        };
        let name = Name::from(query.name().clone());
        let client = request.src().ip();
        self.reply_to_client(&name, query.query_type(), query.query_class(), Some(client))
            .await
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let start = Instant::now();
        let echo = echoable(&request.queries);
        let reply = self.reply_to(request, echo).await;
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = reply.rcode;
        metadata.authoritative = reply.authoritative;
        metadata.recursion_available = true;
        let edns = request.edns.as_ref().map(|theirs| {
            let mut ours = Edns::new();
            ours.set_max_payload(theirs.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            ours
        });
        // The question section goes back byte for byte as the client sent
        // it; one that cannot (see `echoable`) is left out of the FORMERR.
        let no_questions;
        let questions = if echo {
            &request.queries
        } else {
            no_questions = empty_questions();
            &no_questions
        };
        let mut builder = MessageResponseBuilder::new(questions, None);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let response = builder.build(
            metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            std::iter::empty(),
        );
        let info = match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "sending a DNS response failed");
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        };
        let qtype = request.queries.queries().first().map(|q| q.query_type());
        self.metrics
            .queries
            .get_or_create(&QueryLabels {
                qtype: QType(qtype),
                rcode: Rcode(info.response_code),
            })
            .inc();
        self.metrics.latency.observe(start.elapsed().as_secs_f64());
        info
    }
}

/// Whether the question section can be copied into the answer verbatim:
/// exactly one question whose name has no compression pointer. A pointer in a
/// question can only point backwards, into the header, whose bytes differ in
/// the answer (flags, counts): copied, it would make the answer unparseable.
/// Real resolvers never compress a lone question; such requests get FORMERR.
fn echoable(queries: &Queries) -> bool {
    if queries.len() != 1 {
        return false;
    }
    let bytes = queries.as_bytes();
    let mut at = 0;
    // Bounded: every step moves `at` forward by at least one byte.
    while let Some(&len) = bytes.get(at) {
        match len {
            0 => return true,
            l if l & 0xC0 != 0 => return false,
            l => at += 1 + usize::from(l),
        }
    }
    false
}

fn empty_questions() -> Queries {
    Queries::read(&mut BinDecoder::new(&[]), 0).expect("reading zero questions cannot fail")
}
