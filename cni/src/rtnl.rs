//! A blocking rtnetlink socket that sends requests in batches, for the ADD
//! path of the plugin binary (no async runtime, no extra threads).
//!
//! The kernel handles rtnetlink requests synchronously and in order, and one
//! `sendto` may carry several requests: they are processed one after the
//! other, each answered with its own acknowledgement (or error), and a failed
//! request does not stop the ones behind it. So a batch is written with one
//! system call and its answers are read back together, saving a round trip
//! (two system calls and a wake-up) per request. Every request asks for an
//! acknowledgement, which is how the batch knows it has every answer; the
//! answers are matched to requests by sequence number, so each error is
//! reported for the request that caused it.
//!
//! A socket stays bound to the network namespace it was created in, so
//! [`Rtnl::open_in`] creates it inside a namespace (see
//! [`Netns::run`](crate::netns::Netns::run)) and it is used from the calling
//! thread afterwards.

use std::io;
use std::num::NonZeroI32;

use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{
    ErrorMessage, NetlinkMessage, NetlinkPayload, NLMSG_ERROR, NLM_F_ACK,
};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::netns::{Netns, NetnsError};

/// Receive buffer: larger than any answer to the requests sent here (an
/// echoed link is ~1.5 KiB; the kernel never splits a message).
const RECV_BUFFER: usize = 64 * 1024;

/// Length of the netlink header, whose first four bytes are the message length.
const HEADER_LEN: usize = 16;

/// The kernel's answer to one request of a batch.
#[derive(Debug)]
pub struct Answer {
    /// The acknowledgement, or the kernel's error.
    pub result: Result<(), rtnetlink::Error>,
    /// Messages the kernel sent back before it (a looked-up or echoed object).
    pub messages: Vec<RouteNetlinkMessage>,
}

/// A blocking `NETLINK_ROUTE` socket.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Rtnl> {
        Ok(Rtnl {
            socket: Socket::new(NETLINK_ROUTE)?,
            seq: 0,
            buf: Vec::new(),
        })
    }

    /// A socket in `ns`, usable from any thread.
    pub fn open_in(ns: &Netns) -> Result<Rtnl, NetnsError> {
        ns.run(Rtnl::open)?.map_err(|source| NetnsError::Socket {
            where_: ns.describe(),
            source,
        })
    }

    /// Sends one request and returns its answer.
    pub fn request(
        &mut self,
        req: NetlinkMessage<RouteNetlinkMessage>,
    ) -> Result<Answer, rtnetlink::Error> {
        let mut answers = self.batch(vec![req])?;
        answers.pop().ok_or(rtnetlink::Error::RequestFailed)
    }

    /// Sends `reqs` with one write and returns their answers, in request
    /// order. An `Err` means the socket itself failed (nothing is known about
    /// which requests were applied); kernel errors are in the answers.
    pub fn batch(
        &mut self,
        reqs: Vec<NetlinkMessage<RouteNetlinkMessage>>,
    ) -> Result<Vec<Answer>, rtnetlink::Error> {
        self.exchange(reqs).map_err(socket_error)
    }

    fn exchange(
        &mut self,
        reqs: Vec<NetlinkMessage<RouteNetlinkMessage>>,
    ) -> io::Result<Vec<Answer>> {
        let count = reqs.len();
        if count == 0 {
            return Ok(Vec::new());
        }
        let first = self.seq.wrapping_add(1);
        let mut out = Vec::new();
        for mut req in reqs {
            self.seq = self.seq.wrapping_add(1);
            req.header.sequence_number = self.seq;
            req.header.flags |= NLM_F_ACK;
            req.finalize();
            let start = out.len();
            out.resize(start + req.buffer_len(), 0);
            req.serialize(&mut out[start..]);
        }
        let sent = self.socket.send_to(&out, &SocketAddr::new(0, 0), 0)?;
        if sent != out.len() {
            return Err(io::Error::other(
                "the kernel took only part of the netlink batch",
            ));
        }
        let mut results: Vec<Option<Result<(), rtnetlink::Error>>> = vec![None; count];
        let mut messages: Vec<Vec<RouteNetlinkMessage>> = (0..count).map(|_| Vec::new()).collect();
        let mut open = count;
        while open > 0 {
            self.buf.clear();
            self.buf.reserve(RECV_BUFFER);
            let len = self.socket.recv(&mut self.buf, nix::libc::MSG_TRUNC)?;
            if len > self.buf.len() {
                return Err(io::Error::other(
                    "a netlink answer did not fit the receive buffer",
                ));
            }
            let mut rest = &self.buf[..];
            while rest.len() >= HEADER_LEN {
                let len = u32_at(rest, 0) as usize;
                if len < HEADER_LEN || len > rest.len() {
                    return Err(io::Error::other(
                        "the kernel sent a malformed netlink message",
                    ));
                }
                let (msg, next) = rest.split_at(len.next_multiple_of(4).min(rest.len()));
                rest = next;
                let slot = u32_at(msg, 8).wrapping_sub(first) as usize;
                if slot >= count {
                    continue;
                }
                let kind = u16::from_ne_bytes([msg[4], msg[5]]);
                if kind == NLMSG_ERROR {
                    // Read by hand: whatever else a message holds, the
                    // request it answers must complete.
                    let code = msg
                        .get(HEADER_LEN..HEADER_LEN + 4)
                        .map_or(-nix::libc::EBADMSG, |_| u32_at(msg, HEADER_LEN) as i32);
                    if results[slot].is_none() {
                        open -= 1;
                    }
                    results[slot] = Some(match NonZeroI32::new(code) {
                        None => Ok(()),
                        Some(c) => {
                            let mut e = ErrorMessage::default();
                            e.code = Some(c);
                            Err(rtnetlink::Error::NetlinkError(e))
                        }
                    });
                } else if let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(msg) {
                    // A message this crate cannot parse (a newer kernel's)
                    // is skipped.
                    if let NetlinkPayload::InnerMessage(m) = m.payload {
                        messages[slot].push(m);
                    }
                }
            }
        }
        Ok(results
            .into_iter()
            .zip(messages)
            .map(|(result, messages)| Answer {
                result: result.unwrap_or(Err(rtnetlink::Error::RequestFailed)),
                messages,
            })
            .collect())
    }
}

/// The native-endian `u32` at `at` in `b` (the caller checked the length).
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A socket failure as the error type the rest of the crate handles: the
/// errno as a netlink error, so the usual checks and messages apply.
fn socket_error(e: io::Error) -> rtnetlink::Error {
    let mut m = ErrorMessage::default();
    m.code = e.raw_os_error().and_then(|c| NonZeroI32::new(-c));
    match m.code {
        Some(_) => rtnetlink::Error::NetlinkError(m),
        None => rtnetlink::Error::RequestFailed,
    }
}
