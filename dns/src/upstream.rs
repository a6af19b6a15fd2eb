//! Forwarding to the upstream resolvers (from resolv.conf or configured):
//! UDP first, TCP when the answer comes back truncated, next server on a
//! timeout. A semaphore bounds the queries in flight so a flood of random
//! names costs a bounded amount of memory and sockets.
//!
//! Loop prevention lives here too: an upstream that is one of our own listen
//! addresses is dropped when the server list is built.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::cache::Answer;
use crate::sockets::{HostSockets, Sockets};

/// Errors talking to upstream resolvers.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no upstream DNS server configured (check --upstream or the nameservers in /etc/resolv.conf)")]
    NoServers,
    #[error("too many upstream queries in flight ({0}); dropping this one")]
    Overloaded(usize),
    #[error("upstream {server} did not answer in {timeout:?}")]
    Timeout {
        server: SocketAddr,
        timeout: Duration,
    },
    #[error("talking to upstream {server}: {source}")]
    Io {
        server: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream {server} sent an answer that does not parse: {detail}")]
    Malformed { server: SocketAddr, detail: String },
    #[error("encoding the query for {name}: {detail}")]
    Encode { name: Name, detail: String },
}

/// The nameservers of a resolv.conf text, on port 53.
pub fn from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|ip| ip.split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// `servers` without those that are ourselves: an upstream equal to a listen
/// address, or a loopback one on the port of a wildcard listener.
pub fn without_self(servers: Vec<SocketAddr>, listen: &[SocketAddr]) -> Vec<SocketAddr> {
    servers
        .into_iter()
        .filter(|server| {
            !listen.iter().any(|l| {
                l == server
                    || (l.ip().is_unspecified()
                        && l.port() == server.port()
                        && (server.ip().is_loopback() || server.ip().is_unspecified()))
            })
        })
        .collect()
}

/// A set of upstream resolvers tried in order.
pub struct Upstreams {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    inflight: Semaphore,
    limit: usize,
    sockets: Arc<dyn Sockets>,
}

impl Upstreams {
    /// Upstreams tried in order, each for `timeout`, at most `limit` queries at once.
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration, limit: usize) -> Upstreams {
        Upstreams::with_sockets(servers, timeout, limit, Arc::new(HostSockets))
    }

    /// As [`Upstreams::new`], with query sockets made by `sockets`.
    pub fn with_sockets(
        servers: Vec<SocketAddr>,
        timeout: Duration,
        limit: usize,
        sockets: Arc<dyn Sockets>,
    ) -> Upstreams {
        Upstreams {
            servers,
            timeout,
            inflight: Semaphore::new(limit),
            limit,
            sockets,
        }
    }

    /// The servers queries go to.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// Resolves `name`/`qtype` with the first upstream that answers.
    pub async fn query(&self, name: &Name, qtype: RecordType) -> Result<Answer, UpstreamError> {
        let _permit = self
            .inflight
            .try_acquire()
            .map_err(|_| UpstreamError::Overloaded(self.limit))?;
        let mut last = UpstreamError::NoServers;
        for server in &self.servers {
            match self.ask(*server, name, qtype).await {
                Ok(answer) => return Ok(answer),
                Err(error) => last = error,
            }
        }
        Err(last)
    }

    async fn ask(
        &self,
        server: SocketAddr,
        name: &Name,
        qtype: RecordType,
    ) -> Result<Answer, UpstreamError> {
        let id: u16 = rand::random();
        let mut message = Message::query();
        message.metadata.id = id;
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(name.clone(), qtype));
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        message.set_edns(edns);
        let wire = message.to_vec().map_err(|e| UpstreamError::Encode {
            name: name.clone(),
            detail: e.to_string(),
        })?;
        let timeout = self.timeout;
        let io = |source| UpstreamError::Io { server, source };
        let reply = tokio::time::timeout(timeout, async {
            let sockets = self.sockets.as_ref();
            let reply = udp_exchange(sockets, server, &wire, id).await.map_err(io)?;
            // A datagram that filled the buffer may have been cut: ask over TCP.
            let parsed = match reply {
                Some(reply) => parse(server, &reply)?,
                None => {
                    let reply = tcp_exchange(sockets, server, &wire).await.map_err(io)?;
                    return parse(server, &reply);
                }
            };
            if parsed.metadata.truncation {
                let reply = tcp_exchange(sockets, server, &wire).await.map_err(io)?;
                return parse(server, &reply);
            }
            Ok(parsed)
        })
        .await
        .map_err(|_| UpstreamError::Timeout { server, timeout })??;
        if reply.metadata.id != id {
            return Err(UpstreamError::Malformed {
                server,
                detail: format!("answer id {} for query id {id}", reply.metadata.id),
            });
        }
        Ok(Answer {
            rcode: reply.metadata.response_code,
            answers: reply.answers,
            authorities: reply.authorities,
        })
    }
}

fn parse(server: SocketAddr, bytes: &[u8]) -> Result<Message, UpstreamError> {
    Message::from_vec(bytes).map_err(|e| UpstreamError::Malformed {
        server,
        detail: e.to_string(),
    })
}

/// Largest UDP answer read. We advertise 1232 bytes (EDNS); a bigger
/// datagram is read whole up to this size, and one that fills it is asked
/// again over TCP. (A 64 KiB buffer per query in flight made a burst of
/// forwarded queries the largest part of our memory.)
const UDP_ANSWER_BUF: usize = 4096;

/// The answer to `wire` from `server` over UDP, or `None` when it may have
/// been cut to the buffer.
async fn udp_exchange(
    sockets: &dyn Sockets,
    server: SocketAddr,
    wire: &[u8],
    id: u16,
) -> std::io::Result<Option<Vec<u8>>> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = crate::sockets::tokio_udp(sockets, local)?;
    socket.connect(server).await?;
    socket.send(wire).await?;
    let mut buf = [0u8; UDP_ANSWER_BUF];
    // A connected socket only sees the server's datagrams; skip stale ones
    // whose id is not ours (bounded: the caller's timeout ends the wait).
    loop {
        let n = socket.recv(&mut buf).await?;
        if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            return Ok((n < buf.len()).then(|| buf[..n].to_vec()));
        }
    }
}

async fn tcp_exchange(
    sockets: &dyn Sockets,
    server: SocketAddr,
    wire: &[u8],
) -> std::io::Result<Vec<u8>> {
    let mut stream = sockets.tcp(server)?.connect(server).await?;
    let len = u16::try_from(wire.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "query too long"))?;
    let mut framed = Vec::with_capacity(wire.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(wire);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{RData, Record};
    use tokio::net::{TcpListener, UdpSocket};

    use super::*;

    /// An upstream whose UDP answer is bigger than we read (and not even a
    /// DNS message past its id): the query is asked again over TCP, whose
    /// answer is the one used.
    #[tokio::test]
    async fn an_answer_that_fills_the_udp_buffer_is_asked_again_over_tcp() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = tcp.local_addr().unwrap();
        let udp = UdpSocket::bind(server).await.unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let (_, from) = udp.recv_from(&mut buf).await.unwrap();
            let mut big = vec![0xffu8; UDP_ANSWER_BUF + 100];
            big[..2].copy_from_slice(&buf[..2]);
            udp.send_to(&big, from).await.unwrap();
        });
        tokio::spawn(async move {
            let (mut stream, _) = tcp.accept().await.unwrap();
            let len = stream.read_u16().await.unwrap();
            let mut query = vec![0u8; usize::from(len)];
            stream.read_exact(&mut query).await.unwrap();
            let query = Message::from_vec(&query).unwrap();
            let mut answer = Message::query();
            answer.metadata.id = query.metadata.id;
            answer.metadata.message_type = hickory_proto::op::MessageType::Response;
            let name = query.queries[0].name().clone();
            answer.add_query(query.queries[0].clone());
            answer.add_answer(Record::from_rdata(name, 60, RData::A(A::new(192, 0, 2, 7))));
            let wire = answer.to_vec().unwrap();
            let len = u16::try_from(wire.len()).unwrap();
            stream.write_all(&len.to_be_bytes()).await.unwrap();
            stream.write_all(&wire).await.unwrap();
        });
        let upstreams = Upstreams::new(vec![server], Duration::from_secs(5), 4);
        let name = Name::from_ascii("big.example.test.").unwrap();
        let answer = upstreams.query(&name, RecordType::A).await.unwrap();
        assert_eq!(answer.rcode, ResponseCode::NoError);
        assert_eq!(answer.answers[0].data, RData::A(A::new(192, 0, 2, 7)));
    }

    #[test]
    fn resolv_conf_nameservers_become_port_53_upstreams() {
        let text = "# comment\nsearch example.com\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nnameserver\noptions ndots:5\n";
        assert_eq!(
            from_resolv_conf(text),
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn our_own_addresses_are_never_upstreams() {
        let servers: Vec<SocketAddr> = vec![
            "127.0.0.1:5353".parse().unwrap(),
            "127.0.0.1:53".parse().unwrap(),
            "192.0.2.1:53".parse().unwrap(),
        ];
        let listen: Vec<SocketAddr> = vec!["127.0.0.1:5353".parse().unwrap()];
        assert_eq!(
            without_self(servers.clone(), &listen),
            servers[1..].to_vec()
        );
        let wildcard: Vec<SocketAddr> = vec!["0.0.0.0:53".parse().unwrap()];
        assert_eq!(
            without_self(servers.clone(), &wildcard),
            vec![servers[0], servers[2]]
        );
    }
}
