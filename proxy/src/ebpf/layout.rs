//! Pinned maps outlive the proxy (a restart resumes from them), so a pin may
//! come from an older build whose key or value layout differs from what this
//! build's programs expect (the per-service counters grew from 24 to 32
//! bytes once). Reused as it is, the programs would read garbage or refuse
//! to load. Before loading, every pin is compared with the map the embedded
//! object declares (type, key size, value size, capacity, flags); a pin that
//! differs is removed so the loader creates the map afresh, and the proxy's
//! first full sync fills it again from the service model.
//!
//! Only pins named after the object's own maps in the node's pin directory
//! are looked at or removed.

use std::fmt;
use std::path::{Path, PathBuf};

use aya::maps::{MapError, MapInfo};
use aya_obj::maps::PinningType;
use skiff_common::names;

/// Comparing or replacing a pinned map failed.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The embedded object could not be parsed (a build problem).
    #[error("parsing the embedded eBPF object: {0}")]
    Object(#[from] aya_obj::ParseError),
    /// A pin exists but is not a readable map.
    #[error(
        "pinned map {path}: {source}; remove it (`skiff proxy --cleanup`) if it is not skiff's"
    )]
    Read {
        /// The pin.
        path: PathBuf,
        /// The error.
        #[source]
        source: MapError,
    },
    /// The stale pin could not be removed.
    #[error("removing the stale pinned map {path}: {source}")]
    Remove {
        /// The pin.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What defines a map's layout to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// `BPF_MAP_TYPE_*`.
    pub map_type: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Capacity.
    pub max_entries: u32,
    /// `BPF_F_*` creation flags.
    pub flags: u32,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {} key {} B value {} B max {} flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

impl Layout {
    fn of_pin(info: &MapInfo) -> Result<Layout, MapError> {
        Ok(Layout {
            map_type: info.map_type()? as u32,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        })
    }
}

/// The layout of the map pinned at `path`.
pub fn pinned(path: &Path) -> Result<Layout, LayoutError> {
    MapInfo::from_pin(path)
        .and_then(|i| Layout::of_pin(&i))
        .map_err(|source| LayoutError::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// The layouts of the maps this build's programs pin, by map name.
pub fn expected() -> Result<Vec<(String, Layout)>, LayoutError> {
    of_object(super::attach::OBJECT)
}

/// The layouts of the maps `object` pins by name, by map name.
fn of_object(object: &[u8]) -> Result<Vec<(String, Layout)>, LayoutError> {
    let obj = aya_obj::Object::parse(object)?;
    let mut v: Vec<(String, Layout)> = obj
        .maps
        .iter()
        .filter(|(_, m)| m.pinning() == PinningType::ByName)
        .map(|(name, m)| {
            (
                name.clone(),
                Layout {
                    map_type: m.map_type(),
                    key_size: m.key_size(),
                    value_size: m.value_size(),
                    max_entries: m.max_entries(),
                    flags: m.map_flags(),
                },
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

/// A pin whose layout differs from this build's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaced {
    /// Map name.
    pub name: String,
    /// The pin's layout.
    pub found: Layout,
    /// The layout this build's programs expect.
    pub want: Layout,
}

/// Removes every pin in `pin_dir` whose layout differs from the map `object`
/// declares under the same name (logging one line for each), so the loader
/// creates it anew. Returns what was replaced.
pub fn replace_stale(pin_dir: &Path, object: &[u8]) -> Result<Vec<Replaced>, LayoutError> {
    let mut replaced = Vec::new();
    for (name, want) in of_object(object)? {
        let path = pin_dir.join(&name);
        if !path.exists() {
            continue;
        }
        let found = pinned(&path)?;
        if found == want {
            continue;
        }
        let lost = if name == names::CONNTRACK || name == names::AFFINITY {
            "; its flows are forgotten (established NodePort flows may be balanced anew)"
        } else if name == names::REVNAT {
            "; its socket reverse-NAT entries are lost"
        } else {
            "; it is filled again from the service model"
        };
        tracing::warn!(
            "pinned eBPF map {name} has another layout than this build's ({found} pinned, \
             {want} expected): replacing it{lost}"
        );
        std::fs::remove_file(&path).map_err(|source| LayoutError::Remove {
            path: path.clone(),
            source,
        })?;
        replaced.push(Replaced { name, found, want });
    }
    Ok(replaced)
}
