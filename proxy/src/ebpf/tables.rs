//! Writes desired frontends into the pinned maps and remembers what is
//! installed (ids, generations, backend references), so an incremental sync
//! touches only the frontends of changed ports.
//!
//! Replacing a frontend's backend set never exposes a mix: the new set is
//! written under a fresh generation of slot keys, then the frontend value is
//! replaced in one map update (the flip), then the old generation is deleted.
//! Backends are deleted only once no frontend refers to them.

use std::collections::HashMap;
use std::net::SocketAddr;

use aya::maps::{
    lpm_trie::Key as LpmKey, Array, HashMap as BpfHash, LpmTrie, MapData, MapError, PerCpuArray,
    PerCpuValues,
};
use ipnetwork::IpNetwork;
use skiff_common::{
    ip_words, maglev, Backend, Counters, Frontend, FrontendKey, MaglevTable, NodeAddrKey,
    ServiceName, SlotKey, SourceRangeKey, FAMILY_V4, MAGLEV_TABLE_LEN, SNAT_V4, SNAT_V6,
};

use super::desired::{BackendAddr, DesiredFrontend};

/// Frontend ids index the per-CPU counters array; keep in step with the
/// programs' `MAX_FRONTENDS`.
pub const MAX_FRONTENDS: u32 = 65536;

/// A map write failed.
#[derive(Debug, thiserror::Error)]
pub enum TablesError {
    /// The kernel refused a map operation.
    #[error("writing eBPF map {map}: {source}; check `bpftool map show` for a full map")]
    Map {
        /// Map name.
        map: &'static str,
        /// The error.
        #[source]
        source: MapError,
    },
    /// No frontend id left.
    #[error("more than {MAX_FRONTENDS} service frontends on this node")]
    OutOfIds,
    /// The per-CPU counter value could not be sized.
    #[error("sizing per-CPU counters: {0}")]
    Cpus(std::io::Error),
    /// The Maglev table could not be built.
    #[error("maglev table: {0}")]
    Maglev(#[from] maglev::MaglevError),
}

fn werr(map: &'static str) -> impl FnOnce(MapError) -> TablesError {
    move |source| TablesError::Map { map, source }
}

/// A map entry that is already gone is fine to "remove".
fn gone_ok(r: Result<(), MapError>, map: &'static str) -> Result<(), TablesError> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(2) => Ok(()),
        Err(e) => Err(werr(map)(e)),
    }
}

/// The pinned maps user space writes.
pub struct Maps {
    /// Frontends.
    pub frontends: BpfHash<MapData, FrontendKey, Frontend>,
    /// Backend slots.
    pub slots: BpfHash<MapData, SlotKey, u32>,
    /// Backends.
    pub backends: BpfHash<MapData, u32, Backend>,
    /// Maglev tables.
    pub maglev: BpfHash<MapData, u32, MaglevTable>,
    /// Source ranges.
    pub ranges: LpmTrie<MapData, SourceRangeKey, u8>,
    /// Node addresses.
    pub node_addrs: BpfHash<MapData, NodeAddrKey, u8>,
    /// Counters.
    pub counters: PerCpuArray<MapData, Counters>,
    /// SNAT source per family.
    pub snat: Array<MapData, [u32; 4]>,
    /// Frontend id → service port name.
    pub names: BpfHash<MapData, u32, ServiceName>,
}

#[derive(Debug, Clone)]
struct Installed {
    value: Frontend,
    backends: Vec<u32>,
    ranges: Vec<IpNetwork>,
    maglev: bool,
    /// The name record written for this frontend (`None`: none found).
    service: Option<ServiceName>,
}

/// What the maps hold, as user space last wrote (or found) it.
pub struct Tables {
    maps: Maps,
    maglev_size: usize,
    installed: HashMap<FrontendKey, Installed>,
    /// Backend address → id.
    backend_ids: HashMap<SocketAddr, u32>,
    /// Backend id → (address, frontends referring to it).
    backend_refs: HashMap<u32, (SocketAddr, u32)>,
    next_backend: u32,
    free_ids: Vec<u32>,
    next_id: u32,
    node_addrs: Vec<NodeAddrKey>,
    /// Backends whose reference count dropped to zero since the last collection.
    unreferenced: Vec<u32>,
    /// Map entries written since the counter was last taken.
    pub written: u64,
}

fn range_key(id: u32, net: &IpNetwork) -> LpmKey<SourceRangeKey> {
    let (addr, _) = ip_words(net.network());
    LpmKey::new(
        32 + u32::from(net.prefix()),
        SourceRangeKey {
            frontend: id.to_be(),
            addr,
        },
    )
}

impl Tables {
    /// Takes over `maps`, reading back what a previous proxy left pinned so
    /// ids and generations continue where it stopped.
    pub fn resume(maps: Maps, maglev_size: usize) -> Result<Tables, TablesError> {
        let mut t = Tables {
            maps,
            maglev_size,
            installed: HashMap::new(),
            backend_ids: HashMap::new(),
            backend_refs: HashMap::new(),
            next_backend: 1,
            free_ids: Vec::new(),
            next_id: 1,
            node_addrs: Vec::new(),
            unreferenced: Vec::new(),
            written: 0,
        };
        for entry in t.maps.backends.iter() {
            let (id, b) = entry.map_err(werr("backends"))?;
            t.backend_ids.insert(b.socket(), id);
            t.backend_refs.insert(id, (b.socket(), 0));
            t.next_backend = t.next_backend.max(id + 1);
        }
        let fronts: Vec<(FrontendKey, Frontend)> = t
            .maps
            .frontends
            .iter()
            .collect::<Result<_, _>>()
            .map_err(werr("frontends"))?;
        let mut used = std::collections::HashSet::new();
        for (key, value) in fronts {
            let mut backends = Vec::new();
            for slot in 0..value.count {
                let k = SlotKey {
                    frontend: value.id,
                    gen: value.gen,
                    slot,
                };
                if let Ok(id) = t.maps.slots.get(&k, 0) {
                    backends.push(id);
                }
            }
            for id in &backends {
                if let Some(e) = t.backend_refs.get_mut(id) {
                    e.1 += 1;
                }
            }
            used.insert(value.id);
            t.next_id = t.next_id.max(value.id + 1);
            let maglev = t.maps.maglev.get(&value.id, 0).is_ok();
            let service = t.maps.names.get(&value.id, 0).ok();
            t.installed.insert(
                key,
                Installed {
                    value,
                    backends,
                    ranges: Vec::new(),
                    maglev,
                    service,
                },
            );
        }
        t.unreferenced = t
            .backend_refs
            .iter()
            .filter(|(_, (_, refs))| *refs == 0)
            .map(|(id, _)| *id)
            .collect();
        t.free_ids = (1..t.next_id).filter(|id| !used.contains(id)).collect();
        Ok(t)
    }

    /// Map entries installed now (frontends, slots, backends).
    pub fn entry_count(&self) -> u64 {
        let slots: u64 = self
            .installed
            .values()
            .map(|i| u64::from(i.value.count))
            .sum();
        self.installed.len() as u64 + slots + self.backend_refs.len() as u64
    }

    /// Keys of every installed frontend.
    pub fn keys(&self) -> impl Iterator<Item = &FrontendKey> {
        self.installed.keys()
    }

    fn alloc_id(&mut self) -> Result<u32, TablesError> {
        if let Some(id) = self.free_ids.pop() {
            return Ok(id);
        }
        if self.next_id >= MAX_FRONTENDS {
            return Err(TablesError::OutOfIds);
        }
        self.next_id += 1;
        Ok(self.next_id - 1)
    }

    fn backend_ref(&mut self, b: &BackendAddr) -> Result<u32, TablesError> {
        if let Some(id) = self.backend_ids.get(&b.addr) {
            if let Some(e) = self.backend_refs.get_mut(id) {
                e.1 += 1;
            }
            return Ok(*id);
        }
        let id = self.next_backend;
        self.next_backend += 1;
        self.maps
            .backends
            .insert(id, Backend::from_socket(b.addr, b.local), 0)
            .map_err(werr("backends"))?;
        self.written += 1;
        self.backend_ids.insert(b.addr, id);
        self.backend_refs.insert(id, (b.addr, 1));
        Ok(id)
    }

    /// Whether a backend at `addr` is installed.
    pub fn has_backend(&self, addr: &SocketAddr) -> bool {
        self.backend_ids.contains_key(addr)
    }

    fn backend_unref(&mut self, ids: &[u32]) {
        for id in ids {
            if let Some(e) = self.backend_refs.get_mut(id) {
                e.1 = e.1.saturating_sub(1);
                if e.1 == 0 {
                    self.unreferenced.push(*id);
                }
            }
        }
    }

    /// Deletes backends no frontend refers to any more; returns their addresses.
    pub fn collect_backends(&mut self) -> Result<Vec<SocketAddr>, TablesError> {
        let mut gone = Vec::new();
        for id in std::mem::take(&mut self.unreferenced) {
            // Re-referenced since it dropped to zero: keep it.
            let Some((addr, 0)) = self.backend_refs.get(&id).copied() else {
                continue;
            };
            gone_ok(self.maps.backends.remove(&id), "backends")?;
            self.backend_ids.remove(&addr);
            self.backend_refs.remove(&id);
            self.written += 1;
            gone.push(addr);
        }
        Ok(gone)
    }

    /// Installs or replaces one frontend (atomically, see the module docs).
    pub fn apply(&mut self, d: &DesiredFrontend) -> Result<(), TablesError> {
        let prev = self.installed.get(&d.key).cloned();
        let id = match &prev {
            Some(p) => p.value.id,
            None => {
                let id = self.alloc_id()?;
                let zero = PerCpuValues::try_from(vec![
                    Counters::default();
                    aya::util::nr_cpus().unwrap_or(1)
                ])
                .map_err(TablesError::Cpus)?;
                self.maps
                    .counters
                    .set(id, zero, 0)
                    .map_err(werr("counters"))?;
                id
            }
        };
        let mut ids = Vec::with_capacity(d.backends.len());
        for b in &d.backends {
            ids.push(self.backend_ref(b)?);
        }
        let gen = prev.as_ref().map_or(1, |p| p.value.gen.wrapping_add(1));
        for (slot, bid) in ids.iter().enumerate() {
            let key = SlotKey {
                frontend: id,
                gen,
                slot: slot as u32,
            };
            self.maps
                .slots
                .insert(key, *bid, 0)
                .map_err(werr("slots"))?;
            self.written += 1;
        }
        let maglev_size = if d.external() && !ids.is_empty() {
            self.write_maglev(id, &ids, &d.backends)?;
            self.maglev_size as u32
        } else {
            0
        };
        let prev_ranges = prev.as_ref().map(|p| p.ranges.clone()).unwrap_or_default();
        for net in &d.source_ranges {
            self.maps
                .ranges
                .insert(&range_key(id, net), 1, 0)
                .map_err(werr("source ranges"))?;
            self.written += 1;
        }
        let value = Frontend {
            id,
            gen,
            count: ids.len() as u32,
            affinity_timeout: d.affinity_timeout,
            maglev_size,
            flags: d.flags,
            pad: 0,
        };
        if prev.as_ref().and_then(|p| p.service) != Some(d.service) {
            self.maps
                .names
                .insert(id, d.service, 0)
                .map_err(werr("service names"))?;
            self.written += 1;
        }
        // The flip: from here on lookups see the new generation.
        self.maps
            .frontends
            .insert(d.key, value, 0)
            .map_err(werr("frontends"))?;
        self.written += 1;
        if let Some(p) = &prev {
            self.delete_slots(p)?;
            if p.maglev && maglev_size == 0 {
                gone_ok(self.maps.maglev.remove(&id), "maglev")?;
            }
            for net in prev_ranges.iter().filter(|n| !d.source_ranges.contains(n)) {
                gone_ok(
                    self.maps.ranges.remove(&range_key(id, net)),
                    "source ranges",
                )?;
            }
            let old = p.backends.clone();
            self.backend_unref(&old);
        }
        self.installed.insert(
            d.key,
            Installed {
                value,
                backends: ids,
                ranges: d.source_ranges.clone(),
                maglev: maglev_size != 0,
                service: Some(d.service),
            },
        );
        Ok(())
    }

    fn write_maglev(
        &mut self,
        id: u32,
        ids: &[u32],
        backends: &[BackendAddr],
    ) -> Result<(), TablesError> {
        let names: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
        let set: Vec<(u32, &[u8])> = ids
            .iter()
            .zip(&names)
            .map(|(i, n)| (*i, n.as_bytes()))
            .collect();
        let built = maglev::build(&set, self.maglev_size)?;
        let mut table = Box::new(MaglevTable {
            entries: [0; MAGLEV_TABLE_LEN],
        });
        table.entries[..built.len()].copy_from_slice(&built);
        self.maps
            .maglev
            .insert(id, table.as_ref(), 0)
            .map_err(werr("maglev"))?;
        self.written += 1;
        Ok(())
    }

    fn delete_slots(&mut self, p: &Installed) -> Result<(), TablesError> {
        for slot in 0..p.value.count {
            let key = SlotKey {
                frontend: p.value.id,
                gen: p.value.gen,
                slot,
            };
            gone_ok(self.maps.slots.remove(&key), "slots")?;
            self.written += 1;
        }
        Ok(())
    }

    /// Removes a frontend and everything keyed by its id.
    pub fn remove(&mut self, key: &FrontendKey) -> Result<(), TablesError> {
        let Some(p) = self.installed.remove(key) else {
            return Ok(());
        };
        gone_ok(self.maps.frontends.remove(key), "frontends")?;
        self.written += 1;
        self.delete_slots(&p)?;
        if p.maglev {
            gone_ok(self.maps.maglev.remove(&p.value.id), "maglev")?;
        }
        for net in &p.ranges {
            gone_ok(
                self.maps.ranges.remove(&range_key(p.value.id, net)),
                "source ranges",
            )?;
        }
        gone_ok(self.maps.names.remove(&p.value.id), "service names")?;
        self.backend_unref(&p.backends);
        self.free_ids.push(p.value.id);
        Ok(())
    }

    /// Makes the node-address map hold exactly `addrs` (NodePorts answer on
    /// them); the first address of each family becomes its SNAT source.
    pub fn set_node_addrs(&mut self, addrs: &[std::net::IpAddr]) -> Result<(), TablesError> {
        let want: Vec<NodeAddrKey> = addrs
            .iter()
            .map(|ip| {
                let (addr, family) = ip_words(*ip);
                NodeAddrKey {
                    addr,
                    family,
                    pad: [0; 3],
                }
            })
            .collect();
        if !self.node_addrs.is_empty() && want == self.node_addrs {
            return Ok(());
        }
        let stale: Vec<NodeAddrKey> = self
            .maps
            .node_addrs
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !want.contains(k))
            .collect();
        for k in stale {
            gone_ok(self.maps.node_addrs.remove(&k), "node addresses")?;
        }
        for k in &want {
            if !self.node_addrs.contains(k) {
                self.maps
                    .node_addrs
                    .insert(k, 1, 0)
                    .map_err(werr("node addresses"))?;
                self.written += 1;
            }
        }
        for (index, family) in [(SNAT_V4, FAMILY_V4), (SNAT_V6, skiff_common::FAMILY_V6)] {
            let addr = want
                .iter()
                .find(|k| k.family == family)
                .map_or([0; 4], |k| k.addr);
            self.maps.snat.set(index, addr, 0).map_err(werr("snat"))?;
        }
        self.node_addrs = want;
        Ok(())
    }
}
