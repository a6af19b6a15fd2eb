//! HTTP endpoints of the proxy, all bound inside the proxy's namespace:
//!
//! - one health-check server per `healthCheckNodePort` (LoadBalancer services
//!   with externalTrafficPolicy Local): 200 while this node has a ready local
//!   endpoint, else 503, with kube-proxy's JSON body, so a cloud load
//!   balancer only sends traffic to nodes that can serve it locally;
//! - `/healthz` (and `/livez`): 200 while syncs succeed, 503 before the first
//!   one or when the last is older than twice the resync period;
//! - `/metrics` in the Prometheus text format.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use skiff_cni::Netns;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::model::ServiceMap;

/// Errors starting an HTTP listener.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The namespace could not be entered.
    #[error("entering the proxy's network namespace to listen: {0}")]
    Netns(#[from] skiff_cni::netns::NetnsError),
    /// Binding failed.
    #[error("listening on {addr}: {source}; is the port already taken?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What a health-check port reports.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServiceHealth {
    namespace: String,
    name: String,
    local_endpoints: usize,
}

/// Shared state the HTTP handlers read and the sync loop writes.
pub struct HealthState {
    last_sync: RwLock<Option<SystemTime>>,
    resync_period: Duration,
    services: RwLock<BTreeMap<u16, ServiceHealth>>,
    metrics: Metrics,
}

impl HealthState {
    /// State for a proxy that resyncs every `resync_period`.
    pub fn new(resync_period: Duration) -> Arc<HealthState> {
        Arc::new(HealthState {
            last_sync: RwLock::new(None),
            resync_period,
            services: RwLock::new(BTreeMap::new()),
            metrics: Metrics::new(),
        })
    }

    /// The metrics (recorded by the sync loop).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Records a successful sync (`full` or partial) of `map` that took
    /// `took` and left `rules` installed.
    pub fn synced(&self, map: &ServiceMap, full: bool, took: Duration, rules: u64) {
        let now = SystemTime::now();
        if let Ok(mut last) = self.last_sync.write() {
            *last = Some(now);
        }
        let unix = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.metrics
            .synced(map, full, took.as_secs_f64(), rules, unix);
        let mut services: BTreeMap<u16, ServiceHealth> = BTreeMap::new();
        for port in map.ports.values() {
            let Some(hc) = port.health_check_node_port else {
                continue;
            };
            let entry = services.entry(hc).or_insert_with(|| ServiceHealth {
                namespace: port.name.namespace.clone(),
                name: port.name.name.clone(),
                local_endpoints: 0,
            });
            entry.local_endpoints = entry.local_endpoints.max(port.local_ready_endpoints);
        }
        if let Ok(mut s) = self.services.write() {
            *s = services;
        }
    }

    /// Records that the data plane is current without a sync (nothing changed).
    pub fn alive(&self) {
        if let Ok(mut last) = self.last_sync.write() {
            *last = Some(SystemTime::now());
        }
    }

    fn healthy(&self) -> (bool, Option<SystemTime>) {
        let last = self.last_sync.read().ok().and_then(|l| *l);
        let fresh = last.is_some_and(|t| {
            t.elapsed().unwrap_or_default() <= self.resync_period * 2 + Duration::from_secs(5)
        });
        (fresh, last)
    }

    /// Health-check ports currently wanted.
    fn health_ports(&self) -> Vec<u16> {
        self.services
            .read()
            .map(|s| s.keys().copied().collect())
            .unwrap_or_default()
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body.to_string(),
    )
        .into_response()
}

async fn proxy_healthz(State(state): State<Arc<HealthState>>) -> Response {
    let (healthy, last) = state.healthy();
    let secs = |t: Option<SystemTime>| {
        t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64())
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        serde_json::json!({
            "lastUpdated": secs(last),
            "currentTime": secs(Some(SystemTime::now())),
            "healthy": healthy,
        }),
    )
}

async fn metrics(State(state): State<Arc<HealthState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn service_health(State((state, port)): State<(Arc<HealthState>, u16)>) -> Response {
    let svc = state
        .services
        .read()
        .ok()
        .and_then(|s| s.get(&port).cloned());
    let Some(svc) = svc else {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"localEndpoints": 0}),
        );
    };
    let status = if svc.local_endpoints > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        serde_json::json!({
            "service": {"namespace": svc.namespace, "name": svc.name},
            "localEndpoints": svc.local_endpoints,
            "serviceProxyHealthy": state.healthy().0,
        }),
    )
}

/// Binds `addr` inside `netns` and serves `router` on it until the task is aborted.
fn serve(netns: &Netns, addr: SocketAddr, router: Router) -> Result<JoinHandle<()>, HealthError> {
    let std_listener = netns
        .run(|| std::net::TcpListener::bind(addr))?
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| HealthError::Bind { addr, source })?;
    let listener = tokio::net::TcpListener::from_std(std_listener)
        .map_err(|source| HealthError::Bind { addr, source })?;
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!(%addr, "HTTP server stopped: {e}");
        }
    }))
}

/// The proxy's own HTTP servers and the per-service health-check ports.
pub struct HttpServers {
    netns: Arc<Netns>,
    state: Arc<HealthState>,
    fixed: Vec<JoinHandle<()>>,
    health_ports: BTreeMap<u16, JoinHandle<()>>,
}

impl HttpServers {
    /// Starts `/healthz` and `/metrics` on the given addresses (one server
    /// when they are the same), inside `netns`.
    pub fn start(
        netns: Arc<Netns>,
        state: Arc<HealthState>,
        healthz: Option<SocketAddr>,
        metrics_addr: Option<SocketAddr>,
    ) -> Result<HttpServers, HealthError> {
        let health_routes = Router::new()
            .route("/healthz", get(proxy_healthz))
            .route("/livez", get(proxy_healthz));
        let metric_routes = Router::new().route("/metrics", get(metrics));
        let mut fixed = Vec::new();
        match (healthz, metrics_addr) {
            (Some(h), Some(m)) if h == m => {
                let router = health_routes.merge(metric_routes).with_state(state.clone());
                fixed.push(serve(&netns, h, router)?);
            }
            (h, m) => {
                if let Some(h) = h {
                    fixed.push(serve(&netns, h, health_routes.with_state(state.clone()))?);
                }
                if let Some(m) = m {
                    fixed.push(serve(&netns, m, metric_routes.with_state(state.clone()))?);
                }
            }
        }
        Ok(HttpServers {
            netns,
            state,
            fixed,
            health_ports: BTreeMap::new(),
        })
    }

    /// Opens health-check ports that are now wanted and closes the others.
    pub fn update_health_ports(&mut self) {
        let wanted = self.state.health_ports();
        self.health_ports.retain(|port, task| {
            let keep = wanted.contains(port);
            if !keep {
                task.abort();
            }
            keep
        });
        for port in wanted {
            if self.health_ports.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::from(([0, 0, 0, 0], port));
            let router = Router::new()
                .fallback(service_health)
                .with_state((self.state.clone(), port));
            match serve(&self.netns, addr, router) {
                Ok(task) => {
                    self.health_ports.insert(port, task);
                }
                // Retried on the next sync.
                Err(e) => tracing::warn!(port, "health-check node port: {e}"),
            }
        }
    }
}

impl Drop for HttpServers {
    fn drop(&mut self) {
        for t in self.fixed.iter().chain(self.health_ports.values()) {
            t.abort();
        }
    }
}
