//! Prometheus metrics of the proxy (names follow kube-proxy's where one exists):
//! sync duration (all syncs, and full and partial ones apart), syncs by kind,
//! installed rules, time of the last successful sync, the endpoint count of
//! every service port, Local-policy ports without a local endpoint, Service
//! and EndpointSlice changes received, and the network programming latency
//! (EndpointSlice trigger time → programmed).

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::model::ServiceMap;
use crate::watch::ChangeCounters;

type Labels = Vec<(String, String)>;

/// The proxy's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    sync_duration: Histogram,
    full_sync_duration: Histogram,
    partial_sync_duration: Histogram,
    syncs: Family<Labels, Counter>,
    last_sync: Gauge<f64, AtomicU64>,
    rules: Gauge,
    sync_errors: Counter,
    endpoints: Family<Labels, Gauge>,
    no_local_endpoints: Family<Labels, Gauge>,
    changes: ChangeCounters,
    network_programming: Histogram,
    /// Collectors a data plane adds after start (the eBPF counters); a
    /// registry takes them only by `&mut`.
    extra: Mutex<Registry>,
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
        let buckets = || exponential_buckets(0.001, 2.0, 15);
        let sync_duration = Histogram::new(buckets());
        let full_sync_duration = Histogram::new(buckets());
        let partial_sync_duration = Histogram::new(buckets());
        let syncs = Family::<Labels, Counter>::default();
        let last_sync = Gauge::<f64, AtomicU64>::default();
        let rules = Gauge::default();
        let sync_errors = Counter::default();
        let endpoints = Family::<Labels, Gauge>::default();
        let no_local_endpoints = Family::<Labels, Gauge>::default();
        let changes = ChangeCounters::default();
        // 1 ms … ~65 s.
        let network_programming = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "How long one data plane sync took",
            sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "How long one full sync (everything rewritten) took",
            full_sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "How long one partial sync (only changed service ports) took",
            partial_sync_duration.clone(),
        );
        registry.register(
            "skiff_proxy_syncs",
            "Successful syncs by kind (full or partial)",
            syncs.clone(),
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
        registry.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Service ports with a Local traffic policy that have endpoints, none of them on this node",
            no_local_endpoints.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Service changes received (added, modified, deleted)",
            changes.services.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "EndpointSlice changes received (added, modified, deleted)",
            changes.endpoints.clone(),
        );
        registry.register(
            "kubeproxy_network_programming_duration_seconds",
            "From an EndpointSlice's last-change-trigger-time to its change being programmed",
            network_programming.clone(),
        );
        Metrics {
            registry,
            sync_duration,
            full_sync_duration,
            partial_sync_duration,
            syncs,
            last_sync,
            rules,
            sync_errors,
            endpoints,
            no_local_endpoints,
            changes,
            network_programming,
            extra: Mutex::new(Registry::default()),
        }
    }

    /// Adds a collector whose metrics every scrape includes.
    pub fn add_collector(&self, collector: Box<dyn Collector>) {
        if let Ok(mut r) = self.extra.lock() {
            r.register_collector(collector);
        }
    }

    /// Records a successful sync of `map`, a full one or a partial one.
    pub fn synced(&self, map: &ServiceMap, full: bool, seconds: f64, rules: u64, unix_time: f64) {
        self.sync_duration.observe(seconds);
        let (by_kind, kind) = if full {
            (&self.full_sync_duration, "full")
        } else {
            (&self.partial_sync_duration, "partial")
        };
        by_kind.observe(seconds);
        self.syncs
            .get_or_create(&vec![("kind".to_string(), kind.to_string())])
            .inc();
        self.last_sync.set(unix_time);
        self.rules.set(i64::try_from(rules).unwrap_or(i64::MAX));
        self.endpoints.clear();
        self.count_no_local_endpoints(map);
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

    /// Records that the changes triggered at `triggers` (Unix seconds) are
    /// programmed at `unix_time`.
    pub fn programmed(&self, triggers: &[f64], unix_time: f64) {
        for t in triggers {
            self.network_programming.observe((unix_time - t).max(0.0));
        }
    }

    /// The counters the watches increment.
    pub fn change_counters(&self) -> ChangeCounters {
        self.changes.clone()
    }

    /// As kube-proxy: ports whose Local policy leaves them without an
    /// endpoint here although the service has some (traffic is dropped).
    fn count_no_local_endpoints(&self, map: &ServiceMap) {
        use crate::model::TrafficPolicy::Local;
        let (mut internal, mut external) = (0, 0);
        for p in map.ports.values().filter(|p| !p.endpoints.is_empty()) {
            if p.internal_policy == Local && p.cluster_endpoints.is_empty() {
                internal += 1;
            }
            if p.external_policy == Local
                && p.externally_accessible()
                && p.external_endpoints.is_empty()
            {
                external += 1;
            }
        }
        for (policy, n) in [("internal", internal), ("external", external)] {
            self.no_local_endpoints
                .get_or_create(&vec![("traffic_policy".to_string(), policy.to_string())])
                .set(n);
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
        let _ = encode_registry(&mut out, &self.registry);
        if let Ok(extra) = self.extra.lock() {
            let _ = encode_registry(&mut out, &extra);
        }
        let _ = encode_eof(&mut out);
        out
    }
}
