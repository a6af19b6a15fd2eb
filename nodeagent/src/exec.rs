//! `kubectl exec` on the node: `GET|POST /exec/{ns}/{pod}/{container}?
//! command=…&stdin=…&stdout=…&stderr=…&tty=…` upgraded to a websocket that
//! speaks Kubernetes' channel protocol (`v5.channel.k8s.io`, and
//! `v4.channel.k8s.io` for older clients such as the Python client). Every
//! binary message starts with its channel: 0 stdin, 1 stdout, 2 stderr, 3 the
//! final `metav1.Status`, 4 terminal resize; v5 adds 255, "close this
//! channel", which is how a client ends stdin. The command runs with
//! `runc exec` in the container; only containers in this agent's runc root
//! are reachable.

mod session;
mod tty;
pub(crate) mod upgrade;

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::runtime::runc::{Runc, RuncError};
use upgrade::Upgrade;

/// Subprotocols served, most preferred first.
pub const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// Errors answering an exec request (before the connection is upgraded).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// No running container of that name in the pod on this node.
    #[error("container not found ({0:?})")]
    ContainerNotFound(String),
    /// The request has no `command`.
    #[error("you must specify at least one command for the container")]
    NoCommand,
    /// Neither stdin, stdout nor stderr was asked for.
    #[error("you must specify at least 1 of stdin, stdout, stderr")]
    NoStreams,
    /// Not a websocket upgrade (kubectl falls back to SPDY when websockets fail).
    #[error("exec needs a websocket upgrade with subprotocol v5.channel.k8s.io or v4.channel.k8s.io; SPDY is not supported")]
    NotWebsocket,
    /// The connection cannot be upgraded (e.g. HTTP/2).
    #[error("this connection cannot be upgraded; use HTTP/1.1")]
    NoUpgrade,
    /// runc could not list the node's containers.
    #[error("looking up the container: {0}")]
    Runc(#[from] RuncError),
}

impl ExecError {
    fn status(&self) -> StatusCode {
        match self {
            ExecError::ContainerNotFound(_) => StatusCode::NOT_FOUND,
            ExecError::Runc(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for ExecError {
    fn into_response(self) -> Response {
        (
            self.status(),
            [("content-type", "text/plain")],
            self.to_string(),
        )
            .into_response()
    }
}

/// What to run and which streams to attach, from the query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOptions {
    /// argv; `command` repeats once per argument.
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecOptions {
    /// Parses `command=a&command=b&stdin=true…` (booleans as Go's ParseBool).
    pub fn parse(query: &str) -> ExecOptions {
        let mut o = ExecOptions::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            let on = matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True");
            match k {
                "command" => o.command.push(v),
                "input" | "stdin" => o.stdin = on,
                "output" | "stdout" => o.stdout = on,
                "error" | "stderr" => o.stderr = on,
                "tty" => o.tty = on,
                _ => {}
            }
        }
        // With a terminal, stderr is merged into stdout, as upstream.
        if o.tty {
            o.stderr = false;
        }
        o
    }
}

fn percent_decode(s: &str) -> String {
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

/// The runc ID of the running container `container` of pod `ns/pod`. The
/// pod's UIDs come from its log directories (`<ns>_<pod>_<uid>`, see
/// [`crate::logs::pod_dir`]); the container from runc's annotations.
pub async fn find_container(
    runc: &Runc,
    log_root: &Path,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<String, ExecError> {
    let prefix = format!("{ns}_{pod}_");
    let uids: Vec<String> = std::fs::read_dir(log_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix(&prefix).map(str::to_string)
        })
        .collect();
    let not_found = || ExecError::ContainerNotFound(container.to_string());
    if uids.is_empty() {
        return Err(not_found());
    }
    runc.list()
        .await?
        .into_iter()
        .filter(|s| s.status == "running")
        .find(|s| {
            let a = s.annotations.clone().unwrap_or_default();
            a.get("io.kubernetes.container.name")
                .is_some_and(|c| c == container)
                && a.get("io.kubernetes.pod.uid")
                    .is_some_and(|u| uids.contains(u))
        })
        .map(|s| s.id)
        .ok_or_else(not_found)
}

/// The subprotocol to speak: the first of the client's offers we serve.
pub(crate) fn choose_protocol(headers: &HeaderMap) -> Option<&'static str> {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    PROTOCOLS
        .iter()
        .copied()
        .find(|p| offered.iter().any(|o| o == p))
}

/// Whether the request asks for a websocket upgrade.
pub(crate) fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Answers an exec request: checks it, then upgrades and runs the session.
pub async fn serve(
    runc: Runc,
    log_root: PathBuf,
    (ns, pod, container): (String, String, String),
    mut req: Request<Body>,
) -> Result<Response, ExecError> {
    let opts = ExecOptions::parse(req.uri().query().unwrap_or(""));
    if opts.command.is_empty() {
        return Err(ExecError::NoCommand);
    }
    if !(opts.stdin || opts.stdout || opts.stderr) {
        return Err(ExecError::NoStreams);
    }
    let id = find_container(&runc, &log_root, &ns, &pod, &container).await?;
    let upgrade = Upgrade::take(&mut req)?;
    tracing::info!(%ns, %pod, %container, command = ?opts.command, tty = opts.tty, "exec");
    let v5 = upgrade.protocol == PROTOCOLS[0];
    Ok(upgrade.respond("exec", move |ws| async move {
        session::run(ws, &runc, &id, opts, v5).await;
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn parses_repeated_command_and_flags() {
        let o = ExecOptions::parse(
            "command=sh&command=-c&command=echo+a%26b%3D1&stdin=true&stdout=1&stderr=false",
        );
        assert_eq!(o.command, ["sh", "-c", "echo a&b=1"]);
        assert!(o.stdin && o.stdout && !o.stderr && !o.tty);
        let t = ExecOptions::parse("command=sh&tty=true&stderr=true&stdout=true");
        assert!(t.tty && t.stdout && !t.stderr);
    }

    #[test]
    fn prefers_v5_and_rejects_unknown_protocols() {
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v4.channel.k8s.io, v5.channel.k8s.io"),
        );
        assert_eq!(choose_protocol(&h), Some("v5.channel.k8s.io"));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("base64.channel.k8s.io"),
        );
        assert_eq!(choose_protocol(&h), None);
    }
}
