//! The agent's HTTPS endpoint (the kubelet's port): `GET /containerLogs/
//! {namespace}/{pod}/{container}` with `follow`, `tailLines`, `previous`,
//! `timestamps` and `limitBytes`, which the API server proxies for
//! `kubectl logs`, and `/exec/{namespace}/{pod}/{container}` for
//! `kubectl exec` ([`crate::exec`]), `/attach/{namespace}/{pod}/{container}`
//! for `kubectl attach` ([`crate::attach`]), and `/stats/summary`, the pods' resource
//! usage ([`crate::metrics`]) behind `kubectl top`. Callers authenticate with a bearer token that the API
//! server accepts (checked once against it, then cached), and `/healthz`.
//! The certificate is self-signed per start.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_rustls::TlsAcceptor;

use crate::logs;
use crate::metrics::Metrics;
use crate::runtime::cgroup::{CgroupError, NodeCgroups};
use crate::runtime::runc::Runc;

/// Errors starting the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address is taken or not ours.
    #[error("listening on {addr} for the agent's HTTPS endpoint: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation or TLS setup failed.
    #[error("TLS setup of the agent's HTTPS endpoint: {0}")]
    Tls(String),
    /// The node's cgroups (for metrics) could not be found.
    #[error("the node's cgroups for metrics: {0}")]
    Cgroups(#[from] CgroupError),
}

/// State of the endpoint.
pub struct LogServer {
    log_root: PathBuf,
    /// The agent's runc (`<data-dir>/runc` next to `<data-dir>/logs`), for exec.
    runc: Runc,
    metrics: Arc<Metrics>,
    kube_config: kube::Config,
    valid_tokens: Mutex<HashSet<String>>,
}

/// Query of `/containerLogs`.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LogQuery {
    #[serde(default)]
    pub follow: Option<String>,
    #[serde(default)]
    pub previous: Option<String>,
    #[serde(default)]
    pub timestamps: Option<String>,
    pub tail_lines: Option<i64>,
    pub limit_bytes: Option<i64>,
}

fn flag(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true" | "1" | ""))
}

impl LogServer {
    /// Binds `addr` for node `node`; returns the state, the listener and its port.
    pub async fn bind(
        addr: SocketAddr,
        log_root: PathBuf,
        kube_config: kube::Config,
        node: &str,
    ) -> Result<(Arc<LogServer>, TcpListener, TlsAcceptor), ServerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Listen { addr, source })?;
        let names = vec![addr.ip().to_string(), "localhost".to_string()];
        let ck = rcgen::generate_simple_self_signed(names)
            .map_err(|e| ServerError::Tls(e.to_string()))?;
        let cert = ck.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ServerError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .map_err(|e| ServerError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let runc_root = log_root
            .parent()
            .map_or_else(|| PathBuf::from("runc"), |d| d.join("runc"));
        let metrics = Metrics::new(node, NodeCgroups::detect(node)?, log_root.clone());
        let state = Arc::new(LogServer {
            runc: Runc::new(runc_root),
            metrics: Arc::new(metrics),
            log_root,
            kube_config,
            valid_tokens: Mutex::new(HashSet::new()),
        });
        Ok((state, listener, TlsAcceptor::from(Arc::new(tls))))
    }

    /// Whether the API server accepts `token`.
    async fn authenticate(&self, headers: &HeaderMap) -> bool {
        let Some(token) = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
        else {
            return false;
        };
        if self.valid_tokens.lock().await.contains(token) {
            return true;
        }
        let mut config = self.kube_config.clone();
        let Ok(auth) = serde_json::from_value(serde_json::json!({"token": token})) else {
            return false;
        };
        config.auth_info = auth;
        let Ok(client) = kube::Client::try_from(config) else {
            return false;
        };
        let api: Api<Namespace> = Api::all(client);
        let ok = match api.get("default").await {
            Ok(_) => true,
            // Authenticated but not allowed to read namespaces is still a valid identity.
            Err(kube::Error::Api(s)) => s.code == 403 || s.code == 404,
            Err(_) => false,
        };
        if ok {
            self.valid_tokens.lock().await.insert(token.to_string());
        }
        ok
    }

    /// Serves connections forever.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, acceptor: TlsAcceptor) {
        tokio::spawn(self.metrics.clone().run());
        let app = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
            .route("/exec/{ns}/{pod}/{container}", any(exec))
            .route("/attach/{ns}/{pod}/{container}", any(attach))
            .route("/stats/summary", get(stats_summary))
            .with_state(self);
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let acceptor = acceptor.clone();
            let service = TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let builder = auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await
                {
                    tracing::debug!("agent connection from {peer} ended: {e}");
                }
            });
        }
    }
}

/// The log files of a container, oldest first.
fn log_files(root: &Path, ns: &str, pod: &str, container: &str) -> Vec<PathBuf> {
    let prefix = format!("{ns}_{pod}_");
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| {
            let t = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (t, e.path().join(container))
        })
        .collect();
    dirs.sort();
    let Some((_, dir)) = dirs.pop() else {
        return Vec::new();
    };
    let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_suffix(".log")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

async fn exec(
    State(server): State<Arc<LogServer>>,
    UrlPath(target): UrlPath<(String, String, String)>,
    req: Request,
) -> Response {
    if !server.authenticate(req.headers()).await {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized".into());
    }
    crate::exec::serve(server.runc.clone(), server.log_root.clone(), target, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn attach(
    State(server): State<Arc<LogServer>>,
    UrlPath(target): UrlPath<(String, String, String)>,
    req: Request,
) -> Response {
    if !server.authenticate(req.headers()).await {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized".into());
    }
    let (ns, pod, container) = &target;
    let log = log_files(&server.log_root, ns, pod, container).pop();
    crate::attach::serve(
        server.runc.clone(),
        server.log_root.clone(),
        log,
        target,
        req,
    )
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

async fn stats_summary(State(server): State<Arc<LogServer>>, headers: HeaderMap) -> Response {
    if !server.authenticate(&headers).await {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized".into());
    }
    let body = server.metrics.summary().await.to_string();
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}

fn text(code: StatusCode, msg: String) -> Response {
    (code, msg).into_response()
}

async fn container_logs(
    State(server): State<Arc<LogServer>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    Query(q): Query<LogQuery>,
    headers: HeaderMap,
) -> Response {
    if !server.authenticate(&headers).await {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized".into());
    }
    let files = log_files(&server.log_root, &ns, &pod, &container);
    let path = if flag(&q.previous) {
        if files.len() < 2 {
            return text(
                StatusCode::BAD_REQUEST,
                format!("previous terminated container \"{container}\" in pod \"{pod}\" not found"),
            );
        }
        files[files.len() - 2].clone()
    } else {
        match files.last() {
            Some(p) => p.clone(),
            None => {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("container \"{container}\" in pod \"{pod}\" has no logs on this node"),
                )
            }
        }
    };
    let data = std::fs::read(&path).unwrap_or_default();
    // Only complete records now; a partial trailing write is picked up by follow.
    let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let shown = match q.tail_lines {
        Some(n) if n >= 0 => logs::tail(&data[..complete], n as usize),
        _ => &data[..complete],
    };
    let timestamps = flag(&q.timestamps);
    let mut first = logs::render(shown, timestamps);
    if let Some(limit) = q.limit_bytes.filter(|l| *l > 0) {
        first.truncate(limit as usize);
    }
    if !flag(&q.follow) || flag(&q.previous) {
        return (StatusCode::OK, [("content-type", "text/plain")], first).into_response();
    }
    let done = path.with_extension("log.done");
    let state = (path, complete as u64, done, Some(first));
    let stream = futures::stream::unfold(state, move |(path, offset, done, first)| async move {
        if let Some(first) = first {
            return Some((
                Ok::<_, std::io::Error>(Bytes::from(first)),
                (path, offset, done, None),
            ));
        }
        let mut offset = offset;
        // Follow until the container's streams closed and everything was sent.
        loop {
            let finished = done.exists();
            let data = std::fs::read(&path).unwrap_or_default();
            let len = data.len() as u64;
            if len > offset {
                let chunk = &data[offset as usize..];
                let complete = chunk.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                if complete > 0 {
                    let out = logs::render(&chunk[..complete], timestamps);
                    offset += complete as u64;
                    return Some((Ok(Bytes::from(out)), (path, offset, done, None)));
                }
            }
            if finished {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (
        StatusCode::OK,
        [("content-type", "text/plain")],
        Body::from_stream(stream),
    )
        .into_response()
}
