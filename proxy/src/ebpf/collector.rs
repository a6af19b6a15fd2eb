//! The eBPF data plane's figures on the proxy's `/metrics`: per-service
//! counters (connections balanced, packets and bytes rewritten by the tc
//! programs, connections refused), map fill levels and attached programs.
//! Read from the node's pins at each scrape, as `skiff proxy status` does,
//! so the figures are the kernel's own and need no polling in between.

use std::collections::BTreeMap;
use std::path::PathBuf;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use skiff_common::{Counters, PROTO_UDP};

use super::status::{self, Status};

type Labels = Vec<(&'static str, String)>;

/// Scrapes the pinned maps of one node's eBPF data plane.
#[derive(Debug)]
pub struct EbpfCollector {
    pin_dir: PathBuf,
}

impl EbpfCollector {
    /// A collector for the data plane pinned in `pin_dir`.
    pub fn new(pin_dir: PathBuf) -> EbpfCollector {
        EbpfCollector { pin_dir }
    }
}

/// Counters summed per service port, protocol and frontend kind (a
/// dual-stack ClusterIP's two frontends are one series).
fn per_service(status: &Status) -> BTreeMap<Labels, Counters> {
    let mut out: BTreeMap<Labels, Counters> = BTreeMap::new();
    for f in &status.frontends {
        let Some(s) = f.service else { continue };
        let protocol = if f.key.proto == PROTO_UDP {
            "UDP"
        } else {
            "TCP"
        };
        let labels = vec![
            ("namespace", s.namespace().to_string()),
            ("name", s.name().to_string()),
            ("port", s.port().to_string()),
            ("protocol", protocol.to_string()),
            ("type", s.kind_str().to_string()),
        ];
        let c = out.entry(labels).or_default();
        c.connections += f.counters.connections;
        c.packets += f.counters.packets;
        c.bytes += f.counters.bytes;
        c.dropped += f.counters.dropped;
    }
    out
}

const SERVICE_COUNTERS: [(&str, &str, fn(&Counters) -> u64); 4] = [
    (
        "skiff_proxy_service_connections",
        "Connections (socket path) or flows (tc path) balanced to a backend, per service port",
        |c| c.connections,
    ),
    (
        "skiff_proxy_service_packets",
        "Packets rewritten by the tc programs (NodePort, externalIPs, LoadBalancer IPs)",
        |c| c.packets,
    ),
    (
        "skiff_proxy_service_bytes",
        "Bytes of the packets rewritten by the tc programs",
        |c| c.bytes,
    ),
    (
        "skiff_proxy_service_refused",
        "Connections refused or dropped: no endpoints, source not in loadBalancerSourceRanges",
        |c| c.dropped,
    ),
];

impl Collector for EbpfCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = match status::read(&self.pin_dir) {
            Ok(s) => s,
            Err(e) => {
                // A scrape must not fail because the pins are being replaced.
                tracing::debug!("eBPF metrics unavailable: {e}");
                return Ok(());
            }
        };
        let services = per_service(&status);
        for (name, help, value) in SERVICE_COUNTERS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, c) in &services {
                ConstCounter::new(value(c)).encode(family.encode_family(labels)?)?;
            }
        }
        let gauges: [(&str, &str, Vec<(Labels, i64)>); 2] = [
            (
                "skiff_proxy_ebpf_map_entries",
                "Entries in an eBPF map of the data plane",
                status
                    .maps
                    .iter()
                    .map(|m| (vec![("map", m.name.to_string())], m.entries as i64))
                    .collect(),
            ),
            (
                "skiff_proxy_ebpf_map_max_entries",
                "Capacity of an eBPF map of the data plane",
                status
                    .maps
                    .iter()
                    .map(|m| (vec![("map", m.name.to_string())], i64::from(m.max)))
                    .collect(),
            ),
        ];
        for (name, help, series) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, v) in &series {
                ConstGauge::new(*v).encode(family.encode_family(labels)?)?;
            }
        }
        let attached = encoder.encode_descriptor(
            "skiff_proxy_ebpf_attached_programs",
            "eBPF program attachments (pinned links) of the data plane",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(status.links.len() as i64).encode(attached)?;
        Ok(())
    }
}
