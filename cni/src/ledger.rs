//! The ledger of attachments whose addresses came from a delegated IPAM plugin.
//!
//! GC must release every allocation not in `cni.dev/valid-attachments`, but a
//! delegate may not implement GC (the reference `host-local`, up to at least
//! 1.9.1, answers GC and STATUS with success and does nothing). So before a
//! delegated ADD, skiff records the attachment here; GC sends the delegate a
//! DEL for each stale entry, which every IPAM plugin implements. An entry is
//! written before the delegate runs, so an ADD killed in between still leaves
//! something GC finds. The ledger lives under
//! `<ipam.dataDir or /var/lib/cni/skiff>/skiff-delegated/<network>/`, one empty
//! file per attachment named `<containerID>,<ifname>` (container IDs hold no
//! comma); owners too long for a file name get a hashed name and the owner as
//! content. It never touches the delegate's own files.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::config::AttachmentId;

/// Directory under the data dir that holds the ledgers of all networks.
const LEDGER_DIR: &str = "skiff-delegated";
/// Longest file name Linux accepts.
const NAME_MAX: usize = 255;
/// Prefix of hashed entry names.
const HASHED_PREFIX: &str = "h-";

/// Errors reading or writing the ledger.
#[derive(Debug, thiserror::Error)]
#[error("delegated-IPAM ledger {path}: {op} failed; check that the IPAM dataDir is a writable directory")]
pub struct LedgerError {
    /// The file or directory.
    pub path: PathBuf,
    /// What was being done.
    pub op: &'static str,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// The ledger of one network.
pub struct Ledger {
    dir: PathBuf,
}

impl Ledger {
    /// The ledger of `network` under `data_dir`.
    pub fn new(data_dir: &Path, network: &str) -> Ledger {
        Ledger {
            dir: data_dir.join(LEDGER_DIR).join(network),
        }
    }

    /// Records `id` (idempotent).
    pub fn record(&self, id: &AttachmentId) -> Result<(), LedgerError> {
        let (name, content) = entry(id);
        let path = self.dir.join(name);
        let write = |p: &Path| fs::write(p, &content);
        match write(&path) {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                fs::create_dir_all(&self.dir).map_err(|source| LedgerError {
                    path: self.dir.clone(),
                    op: "creating the directory",
                    source,
                })?;
                write(&path)
            }
            r => r,
        }
        .map_err(|source| LedgerError {
            path,
            op: "writing an entry",
            source,
        })
    }

    /// Removes `id`; an entry already gone is fine.
    pub fn forget(&self, id: &AttachmentId) -> Result<(), LedgerError> {
        let path = self.dir.join(entry(id).0);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(LedgerError {
                path,
                op: "removing an entry",
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Every recorded attachment (none when the ledger was never written).
    pub fn list(&self) -> Result<Vec<AttachmentId>, LedgerError> {
        let err = |path: &Path, op| {
            let path = path.to_path_buf();
            move |source| LedgerError { path, op, source }
        };
        let entries = match fs::read_dir(&self.dir) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            r => r.map_err(err(&self.dir, "listing"))?,
        };
        let mut out = Vec::new();
        for e in entries {
            let e = e.map_err(err(&self.dir, "listing"))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let owner = if name.starts_with(HASHED_PREFIX) {
                let text = fs::read_to_string(e.path()).map_err(err(&e.path(), "reading"))?;
                parse(&text, '\n')
            } else {
                parse(&name, ',')
            };
            out.extend(owner);
        }
        out.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
        Ok(out)
    }
}

/// The entry name of `id` and the file content.
fn entry(id: &AttachmentId) -> (String, String) {
    let name = format!("{},{}", id.container_id, id.ifname);
    if name.len() <= NAME_MAX {
        (name, String::new())
    } else {
        let mut h = DefaultHasher::new();
        (&id.container_id, &id.ifname).hash(&mut h);
        (
            format!("{HASHED_PREFIX}{:016x}", h.finish()),
            format!("{}\n{}", id.container_id, id.ifname),
        )
    }
}

fn parse(text: &str, sep: char) -> Option<AttachmentId> {
    let (cid, ifname) = text.split_once(sep)?;
    (!cid.is_empty() && !ifname.is_empty()).then(|| AttachmentId {
        container_id: cid.to_string(),
        ifname: ifname.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(cid: &str) -> AttachmentId {
        AttachmentId {
            container_id: cid.to_string(),
            ifname: "eth0".to_string(),
        }
    }

    #[test]
    fn records_lists_and_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::new(dir.path(), "net");
        assert!(l.list().unwrap().is_empty());
        let long = "a".repeat(300);
        for cid in ["c2", "c1", long.as_str()] {
            l.record(&id(cid)).unwrap();
        }
        l.record(&id("c1")).unwrap();
        let all = l.list().unwrap();
        assert_eq!(all, vec![id(&long), id("c1"), id("c2")]);
        l.forget(&id("c1")).unwrap();
        l.forget(&id("c1")).unwrap();
        l.forget(&id(&long)).unwrap();
        assert_eq!(l.list().unwrap(), vec![id("c2")]);
        // Another network's ledger is separate.
        assert!(Ledger::new(dir.path(), "other").list().unwrap().is_empty());
    }
}
