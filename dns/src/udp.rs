//! The UDP serving loop: receive a query, answer it, send the answer, all in
//! one task and without a per-query task or channel.
//!
//! Answers from the index and the cache are ready on the first poll and are
//! sent inline; only a query that waits for an upstream is moved to its own
//! task, so a slow upstream never holds up the loop. The packet path is
//! [`packet::answer_udp`], the same one the unit tests and the fuzz target
//! drive. TCP stays with hickory-server.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use tokio::net::UdpSocket;

use crate::handler::Handler;
use crate::packet;

/// Largest query accepted over UDP (bigger datagrams are cut and then fail to
/// parse, which answers FORMERR).
const MAX_QUERY: usize = 4096;

type Answering = Pin<Box<dyn Future<Output = Option<Vec<u8>>> + Send>>;

/// Serves `socket` until it fails for good; returns the error that stopped it.
pub async fn serve(socket: UdpSocket, handler: Arc<Handler>) -> std::io::Error {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; MAX_QUERY];
    loop {
        let (len, src) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) if transient(&error) => continue,
            Err(error) => return error,
        };
        if !respondable(src) {
            continue;
        }
        let query = buf[..len].to_vec();
        let handler = handler.clone();
        let mut answering: Answering =
            Box::pin(async move { packet::answer_udp(&handler, &query, src).await });
        match futures::poll!(answering.as_mut()) {
            Poll::Ready(answer) => send(&socket, answer, src).await,
            Poll::Pending => {
                let socket = socket.clone();
                tokio::spawn(async move {
                    let answer = answering.await;
                    send(&socket, answer, src).await;
                });
            }
        }
    }
}

async fn send(socket: &UdpSocket, answer: Option<Vec<u8>>, to: SocketAddr) {
    let Some(answer) = answer else {
        return;
    };
    if let Err(error) = socket.send_to(&answer, to).await {
        tracing::debug!(%error, %to, "sending a DNS answer failed");
    }
}

/// Errors after which the socket still works (ICMP port unreachable reported
/// for an earlier send, an interrupted call, a full buffer).
fn transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionRefused | ConnectionReset | Interrupted | WouldBlock | OutOfMemory
    )
}

/// Answers to port 0 or an unspecified address would go nowhere (or be
/// reflected at someone): drop those queries, as hickory-server does.
fn respondable(src: SocketAddr) -> bool {
    src.port() != 0 && !src.ip().is_unspecified()
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;
    use std::time::Duration;

    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    use super::*;
    use crate::cache::Cache;
    use crate::index::{Index, Source};
    use crate::metrics::Metrics;
    use crate::records::Zone;
    use crate::upstream::Upstreams;

    fn handler(upstream: SocketAddr) -> Arc<Handler> {
        let mut index = Index::new(Zone::new("cluster.local", 5).unwrap());
        let owner = Name::from_ascii("web.ns.svc.cluster.local.").unwrap();
        index.set(
            Source::Service {
                namespace: "ns".into(),
                name: "web".into(),
            },
            vec![Record::from_rdata(owner, 5, RData::A(A::new(10, 96, 0, 7)))],
        );
        Arc::new(Handler::new(
            Arc::new(RwLock::new(index)),
            Cache::new(16),
            Upstreams::new(vec![upstream], Duration::from_secs(2), 4),
            Arc::new(Metrics::new()),
        ))
    }

    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    async fn ask(client: &UdpSocket) -> Message {
        let mut buf = [0u8; 1500];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        Message::from_vec(&buf[..n]).unwrap()
    }

    #[tokio::test]
    async fn cluster_names_are_answered_while_an_upstream_is_slow() {
        // An upstream that never answers: the forwarded query waits in its
        // own task while the loop keeps answering cluster names.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let task = tokio::spawn(serve(server, handler(silent.local_addr().unwrap())));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client
            .send_to(&query(1, "example.com."), addr)
            .await
            .unwrap();
        for id in 2..5 {
            client
                .send_to(&query(id, "WEB.ns.svc.cluster.local."), addr)
                .await
                .unwrap();
            let m = ask(&client).await;
            assert_eq!(m.metadata.id, id);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert_eq!(
                m.answers[0].data,
                RData::A(A::new(10, 96, 0, 7)),
                "answer of query {id}"
            );
        }
        // The upstream times out (2 s): the forwarded query gets SERVFAIL.
        let m = ask(&client).await;
        assert_eq!(m.metadata.id, 1);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        task.abort();
    }

    #[test]
    fn replies_never_go_to_port_zero_or_unspecified_addresses() {
        assert!(respondable("127.0.0.1:5353".parse().unwrap()));
        assert!(!respondable("127.0.0.1:0".parse().unwrap()));
        assert!(!respondable("0.0.0.0:53".parse().unwrap()));
    }
}
