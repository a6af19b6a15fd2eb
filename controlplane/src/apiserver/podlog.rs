//! `GET pods/{name}/log`: proxied to the node agent's HTTPS endpoint
//! (`/containerLogs/{ns}/{pod}/{container}`) on the pod's node, at the node's
//! `node.skiff.dev/agent-address` annotation or InternalIP and
//! `status.daemonEndpoints.kubeletEndpoint.Port`. The caller's bearer token is
//! passed on so the agent can check it with us. The agent's certificate is
//! self-signed and not verified (upstream's `--kubelet-insecure-tls`).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::handlers::{read, ResourceRequest};
use super::registry;
use super::server::ApiServer;
use super::status::ApiError;

/// Annotation an agent sets when it serves somewhere other than its InternalIP.
const AGENT_ADDRESS_ANNOTATION: &str = "node.skiff.dev/agent-address";
/// Query parameters passed through to the agent.
const PASSED: &[&str] = &[
    "follow",
    "previous",
    "timestamps",
    "tailLines",
    "limitBytes",
    "sinceSeconds",
];

/// Accepts the agent's self-signed certificate.
#[derive(Debug)]
pub(super) struct AnyAgentCert(pub(super) Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyAgentCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn bad_request(msg: String) -> ApiError {
    ApiError::new(400, "BadRequest", msg)
}

fn unavailable(msg: String) -> ApiError {
    ApiError::new(503, "ServiceUnavailable", msg)
}

/// Where the agent of `node` serves.
pub(super) fn agent_endpoint(node: &Value) -> Option<(String, u16)> {
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64()?;
    let addr = node["metadata"]["annotations"][AGENT_ADDRESS_ANNOTATION]
        .as_str()
        .map(str::to_string)
        .or_else(|| {
            node["status"]["addresses"]
                .as_array()?
                .iter()
                .find(|a| a["type"] == "InternalIP")?["address"]
                .as_str()
                .map(str::to_string)
        })?;
    Some((addr, u16::try_from(port).ok()?))
}

/// Serves `GET pods/{name}/log`.
pub async fn serve(
    server: &Arc<ApiServer>,
    req: &ResourceRequest<'_>,
) -> Result<Response, ApiError> {
    let (pod, _) = read(server, req).await?;
    let name = req.object_name();
    let ns = req.namespace.clone().unwrap_or_default();
    let containers: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .filter_map(|c| c["name"].as_str())
        .collect();
    let container = match req.param("container") {
        Some(c) if containers.contains(&c) => c.to_string(),
        Some(c) => {
            return Err(bad_request(format!(
                "container {c} is not valid for pod {name}"
            )))
        }
        None if containers.len() == 1 => containers[0].to_string(),
        None => {
            return Err(bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )))
        }
    };
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node_name.is_empty() {
        return Err(bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let nodes =
        registry::find("", "v1", "nodes").ok_or_else(|| ApiError::internal("no nodes resource"))?;
    let kv = server
        .store
        .get(&nodes.key(None, node_name))
        .await
        .map_err(|e| ApiError::from_store(e, nodes, node_name))?
        .ok_or_else(|| ApiError::not_found(nodes, node_name))?;
    let node: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored node {node_name} is corrupt: {e}")))?;
    let (addr, port) = agent_endpoint(&node)
        .ok_or_else(|| unavailable(format!("node {node_name} has no agent endpoint")))?;
    let mut query: Vec<String> = PASSED
        .iter()
        .filter_map(|k| req.param(k).map(|v| format!("{k}={v}")))
        .collect();
    query.sort();
    let path = format!("/containerLogs/{ns}/{name}/{container}?{}", query.join("&"));
    let auth = req
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    fetch(&addr, port, &path, auth).await
}

pub(super) async fn fetch(
    addr: &str,
    port: u16,
    path: &str,
    auth: &str,
) -> Result<Response, ApiError> {
    let target = format!("{addr}:{port}");
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        unavailable(format!("{what} the node agent at {target}: {e}"))
    };
    let tcp = tokio::net::TcpStream::connect(&target)
        .await
        .map_err(|e| fail("connecting to", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("TLS setup for", &e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyAgentCert(provider)))
        .with_no_client_auth();
    let name = ServerName::try_from(addr.to_string()).map_err(|e| fail("naming", &e))?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| fail("TLS handshake with", &e))?;
    // HTTP/1.0: the body is everything up to the close, no chunked framing.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {target}\r\nAuthorization: {auth}\r\n\r\n");
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| fail("writing to", &e))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 8192];
    let body_start = loop {
        let n = tls
            .read(&mut buf)
            .await
            .map_err(|e| fail("reading from", &e))?;
        if n == 0 {
            return Err(fail(
                "reading from",
                &"connection closed before the response",
            ));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > 64 * 1024 {
            return Err(fail("reading from", &"response header too large"));
        }
    };
    let status = String::from_utf8_lossy(&head[..body_start])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .unwrap_or(502);
    let first = Bytes::copy_from_slice(&head[body_start..]);
    if status != 200 {
        let mut rest = first.to_vec();
        let _ = tls.read_to_end(&mut rest).await;
        let msg = String::from_utf8_lossy(&rest).trim().to_string();
        let reason = match status {
            400 => "BadRequest",
            401 => "Unauthorized",
            404 => "NotFound",
            _ => "InternalError",
        };
        return Err(ApiError::new(status, reason, msg));
    }
    let stream = futures::stream::unfold((tls, Some(first)), |(mut tls, first)| async move {
        if let Some(first) = first.filter(|b| !b.is_empty()) {
            return Some((Ok::<_, std::io::Error>(first), (tls, None)));
        }
        let mut buf = vec![0u8; 16 * 1024];
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), (tls, None)))
            }
        }
    });
    Ok((
        StatusCode::OK,
        [("content-type", "text/plain")],
        Body::from_stream(stream),
    )
        .into_response())
}
