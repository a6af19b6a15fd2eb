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
