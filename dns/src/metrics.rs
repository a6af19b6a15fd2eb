//! Prometheus metrics of the DNS server and the HTTP endpoint that serves
//! them (`GET /metrics`, text exposition format).

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::fmt::Write as _;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr} (is the port taken?): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Labels of the query counter. Kept as the DNS types themselves (no
/// strings) so counting a query allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    /// Question type (`A`, `SRV`, …).
    pub qtype: QType,
    /// Response code (`NoError`, `NXDomain`, …).
    pub rcode: Rcode,
}

/// A question type as a label value (`A`, `SRV`, `none` without a question).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct QType(pub Option<RecordType>);

/// A response code as a label value (`NoError`, `NXDomain`, …).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Rcode(pub ResponseCode);

impl EncodeLabelValue for QType {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self.0 {
            Some(t) => write!(encoder, "{t}"),
            None => encoder.write_str("none"),
        }
    }
}

impl EncodeLabelValue for Rcode {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        write!(encoder, "{:?}", self.0)
    }
}

/// Every metric the server updates.
pub struct Metrics {
    registry: Registry,
    /// Queries answered, by question type and response code.
    pub queries: Family<QueryLabels, Counter>,
    /// Time from receiving a query to handing the answer to the socket, seconds.
    pub latency: Histogram,
    /// Answers served from the upstream cache.
    pub cache_hits: Counter,
    /// Forwarded questions not found in the cache.
    pub cache_misses: Counter,
    /// Upstream queries that failed (timeout, I/O, overload, bad answer).
    pub upstream_errors: Counter,
    /// Queries autopath answered with a name further down the client's search path.
    pub autopath: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `skiff_dns` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("skiff_dns");
        let queries = Family::<QueryLabels, Counter>::default();
        registry.register("queries", "DNS queries answered", queries.clone());
        // 10 µs … ~2.6 s.
        let latency = Histogram::new(exponential_buckets(0.00001, 4.0, 10));
        registry.register(
            "request_duration_seconds",
            "Time to answer a query",
            latency.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "cache_hits",
            "Upstream answers served from the cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "cache_misses",
            "Forwarded questions not in the cache",
            cache_misses.clone(),
        );
        let upstream_errors = Counter::default();
        registry.register(
            "upstream_errors",
            "Failed upstream queries",
            upstream_errors.clone(),
        );
        let autopath = Counter::default();
        registry.register(
            "autopath",
            "Queries answered with a name further down the client's search path",
            autopath.clone(),
        );
        Metrics {
            registry,
            autopath,
            queries,
            latency,
            cache_hits,
            cache_misses,
            upstream_errors,
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Binds the metrics endpoint (so a taken port fails at start-up).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let response = if req.uri().path() == "/metrics" {
                        Response::builder()
                            .header(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .body(metrics.encode())
                    } else {
                        Response::builder()
                            .status(404)
                            .body("not found\n".to_string())
                    };
                    response
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
