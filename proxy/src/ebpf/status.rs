//! `skiff proxy status`: what the eBPF data plane of a node is doing, read
//! from its pins alone (attached links, map fill levels, per-frontend
//! counters with the service each frontend belongs to), so it works while
//! the proxy runs and changes nothing.

use std::fmt;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap as BpfHash, Map, MapData, MapError, PerCpuArray};
use aya::Pod;
use skiff_common::{
    names, words_ip, AffinityKey, Counters, CtKey, Frontend, FrontendKey, RevNatKey, ServiceName,
    SlotKey, PROTO_UDP,
};

use super::attach::pinned_links;

/// Reading the pinned state failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// A pinned map is missing or unreadable.
    #[error("pinned map {path}: {source}; is the eBPF proxy running for this node (see --ebpf-pin-dir)?")]
    Map {
        /// The pin.
        path: PathBuf,
        /// The error.
        #[source]
        source: MapError,
    },
}

/// How full one map is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapFill {
    /// Map name.
    pub name: &'static str,
    /// Entries now.
    pub entries: u64,
    /// Capacity.
    pub max: u32,
}

/// One frontend, the service port it serves and its counters.
#[derive(Debug, Clone)]
pub struct FrontendStatus {
    /// The frontend.
    pub key: FrontendKey,
    /// Its service port (`None` if the proxy recorded no name).
    pub service: Option<ServiceName>,
    /// Counters summed over CPUs.
    pub counters: Counters,
}

impl FrontendStatus {
    /// `address:port/proto` (`0.0.0.0` / `::` for a NodePort).
    pub fn address(&self) -> String {
        let ip = words_ip(self.key.addr, self.key.family);
        let proto = if self.key.proto == PROTO_UDP {
            "udp"
        } else {
            "tcp"
        };
        let sa = std::net::SocketAddr::new(ip, u16::from_be(self.key.port));
        format!("{sa}/{proto}")
    }
}

/// What `skiff proxy status` shows for the eBPF data plane.
#[derive(Debug, Clone)]
pub struct Status {
    /// Pinned links (attached programs).
    pub links: Vec<PathBuf>,
    /// Fill level of the maps that grow with services and flows.
    pub maps: Vec<MapFill>,
    /// Every frontend, sorted by service then address.
    pub frontends: Vec<FrontendStatus>,
}

fn open(pin_dir: &Path, name: &'static str) -> Result<(Map, u32), StatusError> {
    let path = pin_dir.join(name);
    let err = |source| StatusError::Map {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(err)?;
    let max = data.info().map_err(err)?.max_entries();
    Ok((Map::from_map_data(data).map_err(err)?, max))
}

fn hash<K: Pod, V: Pod>(
    pin_dir: &Path,
    name: &'static str,
) -> Result<(BpfHash<MapData, K, V>, u32), StatusError> {
    let (map, max) = open(pin_dir, name)?;
    let map = BpfHash::try_from(map).map_err(|source| StatusError::Map {
        path: pin_dir.join(name),
        source,
    })?;
    Ok((map, max))
}

fn fill<K: Pod, V: Pod>(pin_dir: &Path, name: &'static str) -> Result<MapFill, StatusError> {
    let (map, max) = hash::<K, V>(pin_dir, name)?;
    Ok(MapFill {
        name,
        entries: map.keys().filter(Result::is_ok).count() as u64,
        max,
    })
}

/// Reads the status of the data plane pinned in `pin_dir`.
pub fn read(pin_dir: &Path) -> Result<Status, StatusError> {
    let (fronts, fmax) = hash::<FrontendKey, Frontend>(pin_dir, names::FRONTENDS)?;
    let (counters, _) = open(pin_dir, names::COUNTERS)?;
    let counters: PerCpuArray<MapData, Counters> =
        PerCpuArray::try_from(counters).map_err(|source| StatusError::Map {
            path: pin_dir.join(names::COUNTERS),
            source,
        })?;
    let (svc_names, _) = hash::<u32, ServiceName>(pin_dir, names::SERVICE_NAMES)?;
    let mut frontends = Vec::new();
    for (key, fe) in fronts.iter().filter_map(Result::ok) {
        let sum = counters
            .get(&fe.id, 0)
            .map(|per_cpu| {
                per_cpu.iter().fold(Counters::default(), |a, c| Counters {
                    connections: a.connections + c.connections,
                    packets: a.packets + c.packets,
                    bytes: a.bytes + c.bytes,
                    dropped: a.dropped + c.dropped,
                })
            })
            .unwrap_or_default();
        frontends.push(FrontendStatus {
            key,
            service: svc_names.get(&fe.id, 0).ok(),
            counters: sum,
        });
    }
    frontends.sort_by_key(|f| {
        let name = f.service.map(|s| (s.namespace, s.name, s.port, s.kind));
        let k = &f.key;
        (name, k.family, k.addr.map(u32::from_be), k.port, k.proto)
    });
    let maps = vec![
        MapFill {
            name: names::FRONTENDS,
            entries: frontends.len() as u64,
            max: fmax,
        },
        fill::<SlotKey, u32>(pin_dir, names::SLOTS)?,
        fill::<u32, skiff_common::Backend>(pin_dir, names::BACKENDS)?,
        fill::<CtKey, skiff_common::CtValue>(pin_dir, names::CONNTRACK)?,
        fill::<AffinityKey, skiff_common::AffinityValue>(pin_dir, names::AFFINITY)?,
        fill::<RevNatKey, skiff_common::RevNatValue>(pin_dir, names::REVNAT)?,
    ];
    Ok(Status {
        links: pinned_links(pin_dir),
        maps,
        frontends,
    })
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "attached programs:")?;
        for l in &self.links {
            writeln!(f, "  {}", l.display())?;
        }
        writeln!(f, "maps:")?;
        for m in &self.maps {
            writeln!(f, "  {} {}/{}", m.name, m.entries, m.max)?;
        }
        writeln!(f, "frontends: {}", self.frontends.len())?;
        let mut current: Option<String> = None;
        for fs in &self.frontends {
            let service = fs.service.map_or_else(
                || "(no service name recorded)".to_string(),
                |s| s.to_string(),
            );
            if current.as_ref() != Some(&service) {
                writeln!(f, "  {service}")?;
                current = Some(service);
            }
            let kind = fs.service.map_or("?", |s| s.kind_str());
            let c = &fs.counters;
            writeln!(
                f,
                "    {} {kind} connections={} packets={} bytes={} dropped={}",
                fs.address(),
                c.connections,
                c.packets,
                c.bytes,
                c.dropped
            )?;
        }
        Ok(())
    }
}
