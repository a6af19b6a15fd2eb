//! Raw bytes in, raw bytes out: the packet path of the server without the
//! sockets, for unit tests and the fuzz target.
//!
//! It mirrors what hickory-server does before it calls the [`Handler`]: a
//! message shorter than a header is dropped, one whose header parses but body
//! does not gets FORMERR, responses are ignored (no reflection).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;

use crate::handler::Handler;

/// A response handler that keeps the encoded answer instead of sending it.
#[derive(Clone, Default)]
struct Capture {
    max_size: u16,
    out: Arc<Mutex<Option<Vec<u8>>>>,
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        let limit = response.edns().map_or(512, |e| e.max_payload());
        encoder.set_max_size(limit.min(self.max_size));
        let info = response
            .destructive_emit(&mut encoder)
            .map_err(|e| NetError::from(e.to_string()))?;
        *self.out.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes);
        Ok(info)
    }
}

/// The answer the server sends over UDP for `bytes` from `src`, or `None`
/// when it sends nothing.
pub async fn answer_udp(handler: &Handler, bytes: &[u8], src: SocketAddr) -> Option<Vec<u8>> {
    let mut decoder = BinDecoder::new(bytes);
    let header = Header::read(&mut decoder).ok()?;
    let request = match Request::from_bytes(bytes.to_vec(), src, Protocol::Udp) {
        Ok(request) => request,
        Err(_) => return formerr(header),
    };
    if request.metadata.message_type == MessageType::Response {
        return None;
    }
    let capture = Capture {
        max_size: u16::MAX,
        out: Arc::default(),
    };
    handler
        .handle_request::<_, TokioTime>(&request, capture.clone())
        .await;
    let out = capture.out.lock().unwrap_or_else(|e| e.into_inner()).take();
    out
}

fn formerr(header: Header) -> Option<Vec<u8>> {
    let mut metadata = Metadata::response_from_request(&header.metadata);
    metadata.response_code = ResponseCode::FormErr;
    let reply = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    reply.to_bytes().ok()
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;
    use std::time::Duration;

    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, RecordType};

    use super::*;
    use crate::cache::Cache;
    use crate::index::{Index, Source};
    use crate::metrics::Metrics;
    use crate::records::Zone;
    use crate::upstream::Upstreams;

    fn handler(addresses: u8) -> Handler {
        let mut index = Index::new(Zone::new("cluster.local", 5).unwrap());
        let owner = Name::from_ascii("big.ns.svc.cluster.local.").unwrap();
        let records = (1..=addresses)
            .map(|i| Record::from_rdata(owner.clone(), 5, RData::A(A::new(10, 244, 0, i))))
            .collect();
        index.set(
            Source::Service {
                namespace: "ns".into(),
                name: "big".into(),
            },
            records,
        );
        Handler::new(
            Arc::new(RwLock::new(index)),
            Cache::new(16),
            Upstreams::new(Vec::new(), Duration::from_millis(10), 4),
            Arc::new(Metrics::new()),
        )
    }

    fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x4242;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn src() -> SocketAddr {
        "127.0.0.1:5000".parse().unwrap()
    }

    #[tokio::test]
    async fn answers_keep_the_id_and_truncate_to_the_udp_limit() {
        let h = handler(60);
        let small = answer_udp(
            &h,
            &query("BIG.ns.svc.cluster.local.", RecordType::A, Some(4096)),
            src(),
        )
        .await
        .unwrap();
        let m = Message::from_vec(&small).unwrap();
        assert_eq!(m.metadata.id, 0x4242);
        assert!(m.metadata.authoritative);
        assert_eq!(m.answers.len(), 60);
        assert!(!m.metadata.truncation);
        assert!(m.edns.is_some(), "EDNS answered with EDNS");
        let plain = answer_udp(
            &h,
            &query("big.ns.svc.cluster.local.", RecordType::A, None),
            src(),
        )
        .await
        .unwrap();
        assert!(plain.len() <= 512);
        assert!(Message::from_vec(&plain).unwrap().metadata.truncation);
    }

    #[tokio::test]
    async fn garbage_gets_formerr_short_packets_and_responses_get_nothing() {
        let h = handler(1);
        let mut garbage = vec![0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
        garbage.extend_from_slice(&[0x3f, 1, 2, 3]);
        let reply = answer_udp(&h, &garbage, src()).await.unwrap();
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.metadata.id, 0xabcd);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert!(answer_udp(&h, &[1, 2, 3], src()).await.is_none());
        let mut response = Message::from_vec(&query("x.", RecordType::A, None)).unwrap();
        response.metadata.message_type = MessageType::Response;
        assert!(answer_udp(&h, &response.to_vec().unwrap(), src())
            .await
            .is_none());
    }

    #[tokio::test]
    async fn forwarding_without_upstreams_is_servfail_not_a_hang() {
        let h = handler(1);
        let reply = answer_udp(&h, &query("example.com.", RecordType::A, None), src())
            .await
            .unwrap();
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert!(m.metadata.recursion_available);
    }
    /// Found by the fuzzer in CI: four questions, some with compression
    /// pointers into the header. Whatever the server answers must parse.
    #[tokio::test]
    async fn fuzz_crash_multi_question_pointers_gets_a_parseable_answer() {
        let h = handler(1);
        let input: [u8; 62] = [
            10, 218, 4, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 192, 70, 63, 192, 2, 0, 0,
            0, 0, 0, 0, 23, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 192, 70, 63, 192, 2, 0, 0, 0,
            0, 0, 0, 23, 0, 0, 0, 12, 0, 0,
        ];
        let reply = answer_udp(&h, &input, src()).await.expect("FORMERR");
        let m = Message::from_vec(&reply).expect("the answer parses");
        assert_eq!(m.metadata.id, 0x0ada);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert!(m.queries.is_empty(), "the broken questions are not echoed");
    }

    /// One question whose name is a compression pointer into the header
    /// (offset 2: flags 0x04 0x00 read as a 4-byte label, then a 0 count
    /// byte ends it): decodable in the request, but the header changes in
    /// the answer, so echoing it would corrupt the answer.
    #[tokio::test]
    async fn a_question_pointing_into_the_header_gets_formerr_without_question() {
        let h = handler(1);
        let mut input = vec![0x12, 0x34, 0x04, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
        input.extend_from_slice(&[0xc0, 0x02, 0x00, 0x01, 0x00, 0x01]);
        assert!(
            Message::from_vec(&input).is_ok(),
            "the request itself decodes"
        );
        let reply = answer_udp(&h, &input, src()).await.expect("FORMERR");
        let m = Message::from_vec(&reply).expect("the answer parses");
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert!(m.queries.is_empty());
    }
}
