//! The maps shared by the programs, pinned by name so a restarted proxy
//! reattaches to the same state. Sizes are defaults; the loader may resize
//! them before loading.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use skiff_common::{
    AffinityKey, AffinityValue, Backend, Counters, CtKey, CtValue, Frontend, FrontendKey,
    MaglevTable, NodeAddrKey, RevNatKey, RevNatValue, ServiceName, SlotKey, SourceRangeKey,
};

/// Entries are freed after an RCU grace period instead of being recycled at
/// once, so a program never reads a value that user space is replacing.
const NO_PREALLOC: u32 = 1;

/// Frontend id space (also the size of the counters array).
pub const MAX_FRONTENDS: u32 = 65536;

#[map]
pub static SKIFF_FRONTENDS: HashMap<FrontendKey, Frontend> =
    HashMap::pinned(MAX_FRONTENDS, NO_PREALLOC);

#[map]
pub static SKIFF_SLOTS: HashMap<SlotKey, u32> = HashMap::pinned(1 << 20, NO_PREALLOC);

#[map]
pub static SKIFF_BACKENDS: HashMap<u32, Backend> = HashMap::pinned(1 << 20, NO_PREALLOC);

#[map]
pub static SKIFF_MAGLEV: HashMap<u32, MaglevTable> = HashMap::pinned(4096, NO_PREALLOC);

#[map]
pub static SKIFF_REVNAT: LruHashMap<RevNatKey, RevNatValue> = LruHashMap::pinned(1 << 18, 0);

#[map]
pub static SKIFF_AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(1 << 16, 0);

#[map]
pub static SKIFF_CT: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(1 << 18, 0);

#[map]
pub static SKIFF_SRC_RANGES: LpmTrie<SourceRangeKey, u8> = LpmTrie::pinned(16384, 0);

#[map]
pub static SKIFF_NODE_ADDRS: HashMap<NodeAddrKey, u8> = HashMap::pinned(256, 0);

#[map]
pub static SKIFF_COUNTERS: PerCpuArray<Counters> = PerCpuArray::pinned(MAX_FRONTENDS, 0);

/// Frontend id → the service port it belongs to. Only user space reads and
/// writes it (status, metrics); it lives here so it is created and pinned
/// with the others.
#[map]
pub static SKIFF_SVC_NAMES: HashMap<u32, ServiceName> = HashMap::pinned(MAX_FRONTENDS, NO_PREALLOC);

/// SNAT source addresses by family (`SNAT_V4`, `SNAT_V6`); all-zero: unset.
#[map]
pub static SKIFF_SNAT: Array<[u32; 4]> = Array::pinned(2, 0);

/// A copy of the frontend at `key`, if any.
#[inline(always)]
pub fn frontend(key: &FrontendKey) -> Option<Frontend> {
    // SAFETY: the map is not preallocated, so the value stays valid for the
    // program's RCU read section; it is copied out at once.
    SKIFF_FRONTENDS.get_ptr(key).map(|p| unsafe { *p })
}

/// A copy of the backend with `id`, if any.
#[inline(always)]
pub fn backend(id: u32) -> Option<Backend> {
    // SAFETY: as in `frontend`.
    SKIFF_BACKENDS.get_ptr(id).map(|p| unsafe { *p })
}

/// The backend id in slot `slot` of the frontend's live generation.
#[inline(always)]
pub fn slot(fe: &Frontend, slot: u32) -> Option<u32> {
    let key = SlotKey {
        frontend: fe.id,
        gen: fe.gen,
        slot,
    };
    // SAFETY: as in `frontend`.
    SKIFF_SLOTS.get_ptr(key).map(|p| unsafe { *p })
}

/// Adds to the frontend's per-CPU counters: `packets` packets of `bytes`
/// bytes in all (tc path), `connections` new connections or flows.
#[inline(always)]
pub fn count(id: u32, connections: u64, packets: u64, bytes: u64, dropped: u64) {
    if let Some(c) = SKIFF_COUNTERS.get_ptr_mut(id) {
        // SAFETY: per-CPU value, only this CPU writes it.
        unsafe {
            (*c).connections += connections;
            (*c).packets += packets;
            (*c).bytes += bytes;
            (*c).dropped += dropped;
        }
    }
}
