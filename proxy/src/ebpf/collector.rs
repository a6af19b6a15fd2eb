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

/// One per-service counter series and which field of [`Counters`] it shows.
struct CounterMetric {
    name: &'static str,
    help: &'static str,
    value: fn(&Counters) -> u64,
}

const SERVICE_COUNTERS: [CounterMetric; 4] = [
    CounterMetric {
        name: "skiff_proxy_service_connections",
        help:
            "Connections (socket path) or flows (tc path) balanced to a backend, per service port",
        value: |c| c.connections,
    },
    CounterMetric {
        name: "skiff_proxy_service_packets",
        help: "Packets rewritten by the tc programs (NodePort, externalIPs, LoadBalancer IPs)",
        value: |c| c.packets,
    },
    CounterMetric {
        name: "skiff_proxy_service_bytes",
        help: "Bytes of the packets rewritten by the tc programs",
        value: |c| c.bytes,
    },
    CounterMetric {
        name: "skiff_proxy_service_refused",
        help:
            "Connections refused or dropped: no endpoints, source not in loadBalancerSourceRanges",
        value: |c| c.dropped,
    },
];

/// Encodes a gauge family.
fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(*v).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

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
        for m in &SERVICE_COUNTERS {
            let mut family =
                encoder.encode_descriptor(m.name, m.help, None, MetricType::Counter)?;
            for (labels, c) in &services {
                ConstCounter::new((m.value)(c)).encode(family.encode_family(labels)?)?;
            }
        }
        let by_map = |f: fn(&super::MapFill) -> i64| -> Vec<(Labels, i64)> {
            status
                .maps
                .iter()
                .map(|m| (vec![("map", m.name.to_string())], f(m)))
                .collect()
        };
        gauges(
            &mut encoder,
            "skiff_proxy_ebpf_map_entries",
            "Entries in an eBPF map of the data plane",
            &by_map(|m| m.entries as i64),
        )?;
        gauges(
            &mut encoder,
            "skiff_proxy_ebpf_map_max_entries",
            "Capacity of an eBPF map of the data plane",
            &by_map(|m| i64::from(m.max)),
        )?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ebpf::FrontendStatus;
    use skiff_common::{FrontendKey, ServiceName, KIND_CLUSTER_IP, KIND_NODE_PORT, PROTO_TCP};

    fn frontend(key: FrontendKey, kind: Option<u8>, connections: u64) -> FrontendStatus {
        FrontendStatus {
            key,
            service: kind.map(|k| ServiceName::new("default", "web", "http", k)),
            counters: Counters {
                connections,
                packets: connections * 10,
                bytes: connections * 600,
                dropped: 0,
            },
        }
    }

    #[test]
    fn dual_stack_frontends_sum_into_one_series_per_kind() {
        let status = Status {
            links: Vec::new(),
            maps: Vec::new(),
            frontends: vec![
                frontend(
                    FrontendKey::v4([10, 96, 0, 1], 80, PROTO_TCP),
                    Some(KIND_CLUSTER_IP),
                    2,
                ),
                frontend(
                    FrontendKey::v6(
                        [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                        80,
                        PROTO_TCP,
                    ),
                    Some(KIND_CLUSTER_IP),
                    3,
                ),
                frontend(
                    FrontendKey::node_port(skiff_common::FAMILY_V4, 30080, PROTO_TCP),
                    Some(KIND_NODE_PORT),
                    7,
                ),
                // Pinned by a proxy that recorded no name: left out.
                frontend(FrontendKey::v4([10, 96, 0, 9], 80, PROTO_TCP), None, 100),
            ],
        };
        let series = per_service(&status);
        let kinds: Vec<(String, u64, u64)> = series
            .iter()
            .map(|(labels, c)| (labels[4].1.clone(), c.connections, c.bytes))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("ClusterIP".to_string(), 5, 3000),
                ("NodePort".to_string(), 7, 4200)
            ]
        );
        let (labels, _) = series.iter().next().expect("a series");
        assert_eq!(labels[0], ("namespace", "default".to_string()));
        assert_eq!(labels[3], ("protocol", "TCP".to_string()));
    }
}
