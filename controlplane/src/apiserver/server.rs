//! The HTTPS listener and request dispatch: authentication, the 3 MiB body
//! limit, non-resource endpoints (health, version, discovery, OpenAPI) and
//! parsing resource paths into a [`ResourceRequest`] for the handlers.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use ipnetwork::IpNetwork;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::auth::Authenticator;
use super::handlers::{self, ResourceRequest};
use super::ipam::ServiceIpam;
use super::registry;
use super::status::ApiError;
use super::{bootstrap, discovery, local_client, metrics_api, openapi, pki};
use crate::controllers::ControllerRuntime;
use crate::store::{EtcdStore, RedbStore, Store};

/// Largest request body accepted, as upstream (3 MiB); larger bodies get 413.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Which store backs the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// Embedded redb file `<data-dir>/state.redb`.
    Redb,
    /// etcd v3 at these endpoints.
    Etcd(Vec<String>),
}

/// `skiff server` settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory for the PKI, kubeconfig and the embedded store.
    pub data_dir: PathBuf,
    /// HTTPS listen address.
    pub listen: SocketAddr,
    /// Storage backend.
    pub store: StoreConfig,
    /// ClusterIP range (the primary one on a dual-stack cluster).
    pub service_cidr: IpNetwork,
    /// Dual-stack: the ClusterIP range of the other family.
    pub secondary_service_cidr: Option<IpNetwork>,
    /// Pod network range (node podCIDRs are carved from it).
    pub cluster_cidr: IpNetwork,
    /// Address other machines reach the server at (added to the certificate).
    pub advertise_address: Option<IpAddr>,
    /// Scheduler and controller settings.
    pub controllers: crate::controllers::Settings,
}

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// PKI creation failed.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The listen address is unavailable.
    #[error("cannot listen on {addr}: {source} (is another server running?)")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// Bootstrapping default objects failed.
    #[error("cannot create the default namespaces and services: {0}")]
    Bootstrap(String),
    /// The controllers' runtime could not start its threads.
    #[error("cannot start the controllers' threads: {0}")]
    Controllers(std::io::Error),
}

/// Shared state of the API server.
pub struct ApiServer {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Bearer token check.
    pub auth: Authenticator,
    /// The admin credential, which the in-process controllers present.
    admin_token: String,
    /// ClusterIP and NodePort allocation.
    pub ipam: ServiceIpam,
    /// `host:port` clients reach us at, for discovery.
    pub server_address: String,
    /// The settings.
    pub config: Config,
}

/// Opens the configured store.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServerError> {
    Ok(match &config.store {
        StoreConfig::Redb => Arc::new(RedbStore::open(&config.data_dir.join("state.redb"))?),
        StoreConfig::Etcd(endpoints) => Arc::new(EtcdStore::connect(endpoints).await?),
    })
}

/// Prepares the PKI, store and default objects; returns the state and listener.
pub async fn prepare(
    config: Config,
) -> Result<(Arc<ApiServer>, TcpListener, TlsAcceptor), ServerError> {
    let advertised = config.advertise_address.unwrap_or(config.listen.ip());
    let mut ips = vec![config.listen.ip(), advertised];
    if let Some(ip) = ServiceIpam::kubernetes_ip(&config.service_cidr) {
        ips.push(ip);
    }
    ips.retain(|ip| !ip.is_unspecified());
    let host = if advertised.is_unspecified() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        advertised
    };
    let server_address = SocketAddr::new(host, config.listen.port()).to_string();
    let pki = pki::ensure(&config.data_dir, &ips, &format!("https://{server_address}"))?;
    let tls = pki::tls_config(&pki, &config.data_dir)?;
    let store = open_store(&config).await?;
    let cidrs = std::iter::once(config.service_cidr)
        .chain(config.secondary_service_cidr)
        .collect();
    let ipam = ServiceIpam::load(cidrs, store.as_ref()).await?;
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Listen {
                addr: config.listen,
                source,
            })?;
    let server = Arc::new(ApiServer {
        store,
        auth: Authenticator::new(vec![pki.admin_token.clone()]),
        admin_token: pki.admin_token.clone(),
        ipam,
        server_address,
        config,
    });
    bootstrap::ensure_defaults(&server)
        .await
        .map_err(|e| ServerError::Bootstrap(e.message))?;
    Ok((server, listener, TlsAcceptor::from(Arc::new(tls))))
}

/// The request router over `server`: what HTTPS connections and the
/// in-process client are served by.
pub fn router(server: Arc<ApiServer>) -> Router {
    Router::new().fallback(dispatch).with_state(server)
}

/// Serves HTTPS with `app` until `shutdown` resolves.
pub async fn serve(
    app: Router,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!("TLS handshake with {peer} failed: {e}");
                    return;
                }
            };
            let builder = auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!("connection from {peer} ended: {e}");
            }
        });
    }
}

/// Runs the server until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    let (server, listener, acceptor) = prepare(config).await?;
    tracing::info!(
        "skiff API server listening on https://{}; kubeconfig: {}",
        server.config.listen,
        server.config.data_dir.join("admin.kubeconfig").display()
    );
    // The OpenAPI documents are large; build them before the first kubectl asks.
    tokio::task::spawn_blocking(|| {
        openapi::v2_gzip().len() + openapi::v3_index().to_string().len()
    });
    super::heap::spawn_trimmer();
    super::event_ttl::spawn(server.clone(), server.config.controllers.event_ttl);
    let app = router(server.clone());
    super::disruption_status::spawn(server.clone());
    let controllers = ControllerRuntime::new().map_err(ServerError::Controllers)?;
    match local_client::client(app.clone(), &server.admin_token) {
        Ok(client) => controllers.enter(|| {
            crate::controllers::spawn_all(Arc::new(crate::controllers::Context {
                client,
                settings: server.config.controllers.clone(),
            }))
        }),
        Err(e) => tracing::error!("controllers not started: {e}"),
    }
    serve(app, listener, acceptor, shutdown).await;
    drop(controllers);
    Ok(())
}

/// Parses a query string into a map (last value wins).
fn query_map(query: Option<&str>) -> HashMap<String, String> {
    query
        .map(|q| form_urlencoded_pairs(q).collect())
        .unwrap_or_default()
}

fn form_urlencoded_pairs(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    q.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k), percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
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

fn json_response(code: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    (code, [("content-type", "application/json")], body).into_response()
}

async fn dispatch(State(server): State<Arc<ApiServer>>, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    // The body is read (up to the limit) before any answer, also a 401: an
    // answer while the client is still sending resets the HTTP/2 stream, and
    // clients then report a transport error instead of the Status.
    let body = axum::body::to_bytes(body, MAX_BODY).await;
    if !server.auth.allows(&path, &parts.headers) {
        return ApiError::new(401, "Unauthorized", "Unauthorized").into_response();
    }
    let body = match body {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                413,
                "RequestEntityTooLarge",
                "the request body exceeds the 3 MiB limit",
            )
            .into_response()
        }
    };
    if super::podexec::target(&path).is_some() {
        return super::podexec::serve(&server, parts).await;
    }
    let query = query_map(parts.uri.query());
    match route(&server, &parts.method, &path, query, &parts.headers, body).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn route(
    server: &Arc<ApiServer>,
    method: &Method,
    path: &str,
    query: HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let get_only = |v: Option<Value>| -> Result<Response, ApiError> {
        if method != Method::GET {
            return Err(ApiError::method_not_allowed(method.as_str()));
        }
        v.map(|v| json_response(StatusCode::OK, &v))
            .ok_or_else(ApiError::no_route)
    };
    match segs.as_slice() {
        ["healthz"] | ["livez"] | ["readyz"] => {
            return Ok((StatusCode::OK, [("content-type", "text/plain")], "ok").into_response())
        }
        ["version"] => return get_only(Some(discovery::version_info())),
        ["api"] => return get_only(Some(discovery::api_versions(&server.server_address))),
        ["apis"] => return get_only(Some(metrics_api::add_group(discovery::api_group_list()))),
        ["apis", metrics_api::GROUP, rest @ ..] => {
            return metrics_api::serve(server, method, rest, &query, headers).await
        }
        ["api", "v1"] => return get_only(discovery::resource_list("", "v1")),
        ["apis", group] => return get_only(discovery::api_group(group)),
        ["apis", group, version] => return get_only(discovery::resource_list(group, version)),
        ["openapi", "v2"] if method == Method::GET => {
            // JSON, or the gnostic protobuf client-go's OpenAPISchema() asks
            // for (kubectl validates `kind: List` items with it).
            let accept = headers.get("accept").and_then(|v| v.to_str().ok());
            let form = openapi::v2_negotiate(accept).ok_or_else(|| {
                ApiError::new(
                    406,
                    "NotAcceptable",
                    "/openapi/v2 is served as application/json and as application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
                )
            })?;
            return Ok(openapi::v2_response(form, headers));
        }
        ["openapi", "v3"] => return get_only(Some(openapi::v3_index())),
        ["openapi", "v3", rest @ ..] if method == Method::GET => {
            return openapi::v3_group_version_gzip(&rest.join("/"))
                .map(|gzip| openapi::response(gzip, headers))
                .ok_or_else(ApiError::no_route)
        }
        _ => {}
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route()),
    };
    let (namespace, plural, name, sub) = match rest {
        // Namespace objects and their subresources.
        ["namespaces", name, sub @ ("status" | "finalize")] if group.is_empty() => {
            (None, "namespaces", Some(*name), Some(*sub))
        }
        ["namespaces", ns, plural] => (Some(*ns), *plural, None, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name), None),
        ["namespaces", ns, plural, name, sub] => (Some(*ns), *plural, Some(*name), Some(*sub)),
        [plural] => (None, *plural, None, None),
        [plural, name] => (None, *plural, Some(*name), None),
        [plural, name, sub] => (None, *plural, Some(*name), Some(*sub)),
        _ => return Err(ApiError::no_route()),
    };
    if group.is_empty() && plural == "bindings" && name.is_none() {
        // POST /api/v1/namespaces/{ns}/bindings: the older binding endpoint.
        let resource = registry::find("", "v1", "pods").ok_or_else(ApiError::no_route)?;
        let req = ResourceRequest::new(resource, namespace, None, None, query, headers, body);
        return handlers::binding(server, &req, None).await;
    }
    let resource = registry::find(group, version, plural).ok_or_else(ApiError::no_route)?;
    if namespace.is_some() && !resource.namespaced {
        return Err(ApiError::no_route());
    }
    let sub = match sub {
        None => None,
        Some(s) => Some(
            resource
                .subresources
                .iter()
                .copied()
                .find(|r| r.name() == s)
                .ok_or_else(ApiError::no_route)?,
        ),
    };
    let req = ResourceRequest::new(resource, namespace, name, sub, query, headers, body);
    handlers::handle(server, method, req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_values() {
        let q = query_map(Some("labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=1&x"));
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert_eq!(q["watch"], "1");
        assert_eq!(q["x"], "");
    }
}
