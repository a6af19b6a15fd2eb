//! Where the server's sockets come from. Standalone `skiff dns` opens them in
//! its own network namespace ([`HostSockets`]); the node agent opens them in
//! the node's namespace, so the listen addresses and the path to the upstream
//! resolvers are the node's, not those of the process running the agent.
//!
//! Only socket creation goes through here: once made, a socket keeps the
//! namespace it was created in and is driven by tokio like any other.

use std::fmt::Debug;
use std::io;
use std::net::SocketAddr;

/// Makes the sockets the server listens on and forwards through.
pub trait Sockets: Send + Sync + Debug {
    /// A UDP socket bound to `local` (port 0: any free port).
    fn udp(&self, local: SocketAddr) -> io::Result<std::net::UdpSocket>;
    /// A TCP listener on `local`.
    fn listen(&self, local: SocketAddr) -> io::Result<std::net::TcpListener>;
    /// An unconnected TCP socket of the address family of `remote`.
    fn tcp(&self, remote: SocketAddr) -> io::Result<tokio::net::TcpSocket>;
}

/// Sockets in the namespace of the calling thread.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostSockets;

impl Sockets for HostSockets {
    fn udp(&self, local: SocketAddr) -> io::Result<std::net::UdpSocket> {
        std::net::UdpSocket::bind(local)
    }

    fn listen(&self, local: SocketAddr) -> io::Result<std::net::TcpListener> {
        std::net::TcpListener::bind(local)
    }

    fn tcp(&self, remote: SocketAddr) -> io::Result<tokio::net::TcpSocket> {
        match remote {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
    }
}

/// `udp` as a tokio socket; call from inside the runtime.
pub fn tokio_udp(sockets: &dyn Sockets, local: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let socket = sockets.udp(local)?;
    socket.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(socket)
}

/// `listen` as a tokio listener; call from inside the runtime.
pub fn tokio_listener(
    sockets: &dyn Sockets,
    local: SocketAddr,
) -> io::Result<tokio::net::TcpListener> {
    let listener = sockets.listen(local)?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn host_sockets_listen_and_exchange_on_loopback() {
        let sockets = HostSockets;
        let server = tokio_udp(&sockets, "127.0.0.1:0".parse().unwrap()).unwrap();
        let client = tokio_udp(&sockets, "127.0.0.1:0".parse().unwrap()).unwrap();
        let to = server.local_addr().unwrap();
        client.send_to(b"ping", to).await.unwrap();
        let mut buf = [0u8; 8];
        let (n, from) = server.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(from, client.local_addr().unwrap());

        let listener = tokio_listener(&sockets, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = sockets.tcp(addr).unwrap().connect(addr);
        let (accepted, connected) = tokio::join!(listener.accept(), connect);
        assert_eq!(
            accepted.unwrap().1,
            connected.unwrap().local_addr().unwrap()
        );
    }
}
