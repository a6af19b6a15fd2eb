//! An in-process HTTPS client for the skiff API server: hyper-util's pooled
//! client over tokio-rustls (ring), trusting only the server's own CA and
//! sending the admin bearer token. HTTP/1.1 with keep-alive by default, or
//! HTTP/2 multiplexed over one connection.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Longest a single request may take before the benchmark gives up on it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A client for one API server.
#[derive(Clone)]
pub struct ApiClient {
    client: Client<Connector, Full<Bytes>>,
    base: String,
    auth: HeaderValue,
}

/// A complete response.
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// The whole body.
    pub body: Bytes,
}

/// A request that got an unexpected answer, with everything needed to
/// reproduce it by hand.
#[derive(Debug)]
pub struct UnexpectedReply {
    method: Method,
    path: String,
    request_body: String,
    status: StatusCode,
    response_body: String,
}

impl fmt::Display for UnexpectedReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)?;
        if !self.request_body.is_empty() {
            write!(f, " with body {}", self.request_body)?;
        }
        write!(f, " answered {}: {}", self.status, self.response_body)
    }
}

impl std::error::Error for UnexpectedReply {}

impl ApiClient {
    /// A client for the server listening on `addr` whose certificate is
    /// signed by the PEM CA `ca_pem`, authenticating with bearer `token`.
    pub fn new(addr: SocketAddr, ca_pem: &[u8], token: &str, http2: bool) -> Result<ApiClient> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
            roots
                .add(cert.context("parsing the server's CA certificate")?)
                .context("trusting the server's CA")?;
        }
        if roots.is_empty() {
            bail!("the server's CA file holds no certificate");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("setting up TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![if http2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let connector = Connector {
            tls: TlsConnector::from(Arc::new(tls)),
        };
        let client = Client::builder(TokioExecutor::new())
            .http2_only(http2)
            .pool_max_idle_per_host(usize::MAX)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        let auth = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .context("the admin token is not a valid header value")?;
        Ok(ApiClient {
            client,
            base: format!("https://{addr}"),
            auth,
        })
    }

    /// Sends a request and returns the response with its headers only, for
    /// streams such as watches.
    pub async fn open(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Response<Incoming>> {
        let uri: Uri = format!("{}{path}", self.base)
            .parse()
            .with_context(|| format!("invalid request path {path:?}"))?;
        let mut req = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(AUTHORIZATION, self.auth.clone());
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        let req = req
            .body(Full::new(body))
            .with_context(|| format!("building {method} {path}"))?;
        match tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context(format!("{method} {path} failed"))),
            Err(_) => bail!("{method} {path}: no response within {REQUEST_TIMEOUT:?}"),
        }
    }

    /// Sends a request and reads the whole response.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Reply> {
        let resp = self.open(method.clone(), path, content_type, body).await?;
        let status = resp.status();
        let body = match tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) => {
                return Err(
                    anyhow::Error::new(e).context(format!("reading the body of {method} {path}"))
                )
            }
            Err(_) => bail!("{method} {path}: body not complete within {REQUEST_TIMEOUT:?}"),
        };
        Ok(Reply { status, body })
    }

    /// Sends a request and returns the response body if the status is
    /// `expected`; otherwise fails with the exact request and response.
    pub async fn expect(
        &self,
        expected: StatusCode,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Bytes> {
        let reply = self
            .send(method.clone(), path, content_type, body.clone())
            .await?;
        if reply.status != expected {
            return Err(UnexpectedReply {
                method,
                path: path.to_string(),
                request_body: String::from_utf8_lossy(&body).into_owned(),
                status: reply.status,
                response_body: String::from_utf8_lossy(&reply.body).into_owned(),
            }
            .into());
        }
        Ok(reply.body)
    }
}

/// Opens TLS connections to the host and port of a request's URI.
#[derive(Clone)]
struct Connector {
    tls: TlsConnector,
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<TlsConn>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TlsConn>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}"))
                })?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            // Requests are small; do not let Nagle hold them back.
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            Ok(TokioIo::new(TlsConn(tls.connect(name, tcp).await?)))
        })
    }
}

/// A client TLS stream that tells hyper whether ALPN picked HTTP/2.
struct TlsConn(TlsStream<TcpStream>);

impl Connection for TlsConn {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.0.get_ref().1.alpn_protocol() == Some(b"h2") {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
