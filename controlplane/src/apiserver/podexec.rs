//! `GET|POST pods/{name}/exec` (`kubectl exec`) and `pods/{name}/attach`
//! (`kubectl attach`): checks the pod and the container, then hands the
//! upgrade to the node agent's `/exec/{ns}/{pod}/{container}` (or
//! `/attach/…`; found as for `pods/log`, see
//! [`super::podlog`]) and, once the agent switched protocols, splices the two
//! connections byte for byte — the websocket channel protocol
//! (`v5.channel.k8s.io`) runs end to end between the client and the agent.
//! Handled ahead of the generic resource routing because it needs the raw
//! upgrade and a query whose `command` repeats.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::podlog::{agent_endpoint, AnyAgentCert};
use super::registry;
use super::server::ApiServer;
use super::status::ApiError;

/// Request headers passed on to the agent for the upgrade.
const UPGRADE_HEADERS: &[&str] = &[
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
];
/// Largest response head or error body read from the agent.
const MAX_AGENT_RESPONSE: usize = 64 * 1024;
/// How long the agent may take to answer the upgrade.
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

/// `(namespace, pod, subresource)` when `path` is
/// `/api/v1/namespaces/{ns}/pods/{name}/exec` or `…/attach`.
pub fn target(path: &str) -> Option<(&str, &str, &str)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, sub @ ("exec" | "attach")]
            if !ns.is_empty() && !name.is_empty() =>
        {
            Some((ns, name, sub))
        }
        _ => None,
    }
}

/// Every value of each query parameter, decoded.
fn query_values(query: &str) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(decode(k)).or_default().push(decode(v));
    }
    out
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The container to exec into: the one asked for, else the pod's default.
fn pick_container(pod: &Value, name: &str, asked: Option<&str>) -> Result<String, ApiError> {
    let names: Vec<&str> = ["containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| pod["spec"][k].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    match asked.filter(|c| !c.is_empty()) {
        Some(c) if names.contains(&c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None => pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"]
            .as_str()
            .or(names.first().copied())
            .map(str::to_string)
            .ok_or_else(|| ApiError::bad_request(format!("pod {name} has no containers"))),
    }
}

async fn load(
    server: &ApiServer,
    plural: &str,
    ns: Option<&str>,
    name: &str,
) -> Result<Value, ApiError> {
    let resource =
        registry::find("", "v1", plural).ok_or_else(|| ApiError::internal("no such resource"))?;
    let kv = server
        .store
        .get(&resource.key(ns, name))
        .await
        .map_err(|e| ApiError::from_store(e, resource, name))?
        .ok_or_else(|| ApiError::not_found(resource, name))?;
    serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored {plural} {name} is corrupt: {e}")))
}

/// Serves an exec request (already authenticated).
pub async fn serve(server: &Arc<ApiServer>, mut parts: Parts) -> Response {
    match exec(server, &mut parts).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn exec(server: &Arc<ApiServer>, parts: &mut Parts) -> Result<Response, ApiError> {
    if parts.method != Method::GET && parts.method != Method::POST {
        return Err(ApiError::method_not_allowed(parts.method.as_str()));
    }
    let path = parts.uri.path().to_string();
    let (ns, name, sub) = target(&path).ok_or_else(ApiError::no_route)?;
    let verb = if sub == "attach" {
        "attach to"
    } else {
        "exec into"
    };
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let query = query_values(&raw_query);
    let pod = load(server, "pods", Some(ns), name).await?;
    let asked = query
        .get("container")
        .and_then(|v| v.last())
        .map(String::as_str);
    let container = pick_container(&pod, name, asked)?;
    if let Some(phase @ ("Succeeded" | "Failed")) = pod["status"]["phase"].as_str() {
        return Err(ApiError::bad_request(format!(
            "cannot {verb} a container in a completed pod; current phase is {phase}"
        )));
    }
    if !parts.headers.contains_key(header::UPGRADE) {
        return Err(ApiError::bad_request("Upgrade request required"));
    }
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let node = load(server, "nodes", None, node_name).await?;
    let (addr, port) = agent_endpoint(&node).ok_or_else(|| {
        ApiError::new(
            503,
            "ServiceUnavailable",
            format!("node {node_name} has no agent endpoint"),
        )
    })?;
    let on_upgrade = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| {
            ApiError::bad_request(format!("{sub} needs an HTTP/1.1 connection upgrade"))
        })?;
    let mut head = format!(
        "{} /{sub}/{ns}/{name}/{container}?{raw_query} HTTP/1.1\r\nHost: {addr}:{port}\r\nConnection: Upgrade\r\n",
        parts.method
    );
    if let Some(auth) = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        head.push_str(&format!("Authorization: {auth}\r\n"));
    }
    for h in UPGRADE_HEADERS {
        for v in parts
            .headers
            .get_all(*h)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            head.push_str(&format!("{h}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    let (agent, response, leftover) =
        tokio::time::timeout(AGENT_TIMEOUT, upgrade_agent(&addr, port, &head))
            .await
            .map_err(|_| unavailable(&format!("{addr}:{port}"), &"no answer to the upgrade"))??;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(response);
    }
    tokio::spawn(async move {
        let mut client = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!("exec: client upgrade failed: {e}");
                return;
            }
        };
        let mut agent = agent;
        if client.write_all(&leftover).await.is_err() {
            return;
        }
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut agent).await {
            tracing::debug!("exec stream ended: {e}");
        }
    });
    Ok(response)
}

fn unavailable(target: &str, e: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(
        503,
        "ServiceUnavailable",
        format!("error dialing the node agent at {target}: {e}"),
    )
}

type AgentStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Sends the upgrade to the agent; returns the connection, the response for
/// the client (101 with the agent's handshake headers, or the agent's error
/// as a Status) and bytes the agent sent after its response head.
async fn upgrade_agent(
    addr: &str,
    port: u16,
    head: &str,
) -> Result<(AgentStream, Response, Vec<u8>), ApiError> {
    let target = format!("{addr}:{port}");
    let fail = |e: &dyn std::fmt::Display| unavailable(&target, e);
    let tcp = tokio::net::TcpStream::connect(&target)
        .await
        .map_err(|e| fail(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyAgentCert(provider)))
        .with_no_client_auth();
    let name = ServerName::try_from(addr.to_string()).map_err(|e| fail(&e))?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| fail(&e))?;
    tls.write_all(head.as_bytes()).await.map_err(|e| fail(&e))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        let n = tls.read(&mut chunk).await.map_err(|e| fail(&e))?;
        if n == 0 {
            return Err(fail(&"the agent closed the connection before answering"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_AGENT_RESPONSE {
            return Err(fail(&"the agent's response head is too large"));
        }
    };
    let head_text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head_text.split("\r\n");
    let code: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| fail(&"the agent sent a malformed response"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut rest = buf[end..].to_vec();
    if code == 101 {
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        for (k, v) in &headers {
            if let (Ok(k), Ok(v)) = (
                header::HeaderName::from_bytes(k.as_bytes()),
                header::HeaderValue::from_str(v),
            ) {
                resp.headers_mut().append(k, v);
            }
        }
        return Ok((tls, resp, rest));
    }
    // An error: the body is the agent's message (Content-Length framed).
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_AGENT_RESPONSE);
    while rest.len() < length {
        match tls.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => rest.extend_from_slice(&chunk[..n]),
        }
    }
    rest.truncate(length);
    let message = String::from_utf8_lossy(&rest).trim().to_string();
    let reason = match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        _ => "InternalError",
    };
    let err = ApiError::new(
        code,
        reason,
        format!("unable to upgrade connection: {message}"),
    );
    Ok((tls, err.into_response(), Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_pod_exec_paths() {
        assert_eq!(
            target("/api/v1/namespaces/default/pods/web/exec"),
            Some(("default", "web", "exec"))
        );
        assert_eq!(
            target("/api/v1/namespaces/default/pods/web/attach"),
            Some(("default", "web", "attach"))
        );
        assert_eq!(target("/api/v1/namespaces/default/pods/web/log"), None);
        assert_eq!(target("/api/v1/pods/web/exec"), None);
    }

    #[test]
    fn keeps_every_command_argument() {
        let q = query_values("command=sh&command=-c&command=echo+hi%3B+exit+3&container=c2");
        assert_eq!(q["command"], ["sh", "-c", "echo hi; exit 3"]);
        assert_eq!(q["container"], ["c2"]);
    }

    #[test]
    fn picks_the_requested_or_default_container() {
        let pod = serde_json::json!({
            "metadata": {"annotations": {}},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]}
        });
        assert_eq!(pick_container(&pod, "p", Some("b")).unwrap(), "b");
        assert_eq!(pick_container(&pod, "p", None).unwrap(), "a");
        let err = pick_container(&pod, "p", Some("zz")).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.contains("container zz is not valid for pod p"));
    }
}
