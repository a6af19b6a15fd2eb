//! Prometheus metrics of the proxy (names follow kube-proxy's where one exists):
//! sync duration, installed rules, time of the last successful sync, and the
//! endpoint count of every service port.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::model::ServiceMap;

type Labels = Vec<(String, String)>;

/// The proxy's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    sync_duration: Histogram,
    last_sync: Gauge<f64, AtomicU64>,
    rules: Gauge,
    sync_errors: Counter,
    endpoints: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        // 1 ms … ~16 s.
        let sync_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let last_sync = Gauge::<f64, AtomicU64>::default();
        let rules = Gauge::default();
        let sync_errors = Counter::default();
        let endpoints = Family::<Labels, Gauge>::default();
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "How long one data plane sync took",
            sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "Unix time of the last successful sync",
            last_sync.clone(),
        );
        registry.register(
            "skiff_proxy_rules",
            "Rules (iptables) or map entries (eBPF) installed",
            rules.clone(),
        );
        registry.register(
            "skiff_proxy_sync_errors",
            "Syncs that failed (retried as full syncs)",
            sync_errors.clone(),
        );
        registry.register(
            "skiff_proxy_service_endpoints",
            "Endpoints receiving traffic per service port on this node",
            endpoints.clone(),
        );
        Metrics {
            registry,
            sync_duration,
            last_sync,
            rules,
            sync_errors,
            endpoints,
        }
    }

    /// Records a successful sync of `map`.
    pub fn synced(&self, map: &ServiceMap, seconds: f64, rules: u64, unix_time: f64) {
        self.sync_duration.observe(seconds);
        self.last_sync.set(unix_time);
        self.rules.set(i64::try_from(rules).unwrap_or(i64::MAX));
        self.endpoints.clear();
        for (name, port) in &map.ports {
            let labels = vec![
                ("namespace".to_string(), name.namespace.clone()),
                ("name".to_string(), name.name.clone()),
                ("port".to_string(), name.port.clone()),
                ("protocol".to_string(), name.protocol.as_str().to_string()),
            ];
            self.endpoints
                .get_or_create(&labels)
                .set(port.cluster_endpoints.len() as i64);
        }
    }

    /// Records a failed sync.
    pub fn failed(&self) {
        self.sync_errors.inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
