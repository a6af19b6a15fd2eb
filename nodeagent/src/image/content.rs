//! The content store: blobs by digest under `blobs/sha256/<hex>` and the table of
//! names (`refs.json`: reference → manifest digest). Every write goes to a temp
//! file under `tmp/` first and is renamed into place only after its digest was
//! verified, so a crash never leaves a half blob under a trusted name.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::manifest::{digest_hex, sha256_digest};
use super::ImageError;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Maps an `std::io::Error` at `path` to [`ImageError::Io`].
pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Blobs and names of one store.
pub struct ContentStore {
    root: PathBuf,
    // Serialises read-modify-write of refs.json between threads of this process;
    // never held across an await.
    refs_lock: Mutex<()>,
}

impl ContentStore {
    /// Opens the store at `root`, creating its directories.
    pub fn open(root: &Path) -> Result<ContentStore, ImageError> {
        for dir in ["blobs/sha256", "tmp", "layers/sha256"] {
            let p = root.join(dir);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        remove_stale_temps(&root.join("tmp"));
        Ok(ContentStore {
            root: root.to_path_buf(),
            refs_lock: Mutex::new(()),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh path under `tmp/` (same filesystem as the blobs, so renames are atomic).
    pub fn temp_path(&self, what: &str) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n}-{nanos}", std::process::id()))
    }

    /// Where the blob `digest` lives.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        let hex = digest_hex(digest).ok_or_else(|| ImageError::BadDocument {
            what: "digest".into(),
            message: format!("{digest:?} is not a sha256 digest"),
        })?;
        Ok(self.root.join("blobs/sha256").join(hex))
    }

    /// Whether the blob is present.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Reads a (small) blob and checks it still matches its digest.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest)?;
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Stores `bytes` under `digest` after checking it.
    pub fn write_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
        let actual = sha256_digest(bytes);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                expected: digest.to_string(),
                actual,
            });
        }
        let dest = self.blob_path(digest)?;
        if dest.is_file() {
            return Ok(());
        }
        let tmp = self.temp_path("blob");
        write_synced(&tmp, bytes)?;
        rename_into_place(&tmp, &dest)
    }

    /// Stores bytes under their own digest and returns it.
    pub fn put(&self, bytes: &[u8]) -> Result<String, ImageError> {
        let digest = sha256_digest(bytes);
        self.write_blob(&digest, bytes)?;
        Ok(digest)
    }

    /// Moves the file `tmp` (under `tmp/`) into place as `digest` after hashing it.
    pub fn commit_file(&self, tmp: &Path, digest: &str) -> Result<(), ImageError> {
        let actual = file_digest(tmp)?;
        if actual != digest {
            let _ = fs::remove_file(tmp);
            return Err(ImageError::DigestMismatch {
                expected: digest.to_string(),
                actual,
            });
        }
        let dest = self.blob_path(digest)?;
        rename_into_place(tmp, &dest)
    }

    /// Hashes the file at `path` and stores a copy of it; returns its digest.
    pub fn put_file(&self, path: &Path) -> Result<String, ImageError> {
        let digest = file_digest(path)?;
        let dest = self.blob_path(&digest)?;
        if !dest.is_file() {
            let tmp = self.temp_path("blob");
            fs::copy(path, &tmp).map_err(io_err(path))?;
            self.commit_file(&tmp, &digest)?;
        }
        Ok(digest)
    }

    /// All names and the manifest digests they point at.
    pub fn refs(&self) -> Result<BTreeMap<String, String>, ImageError> {
        let path = self.root.join("refs.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ImageError::BadDocument {
                what: path.display().to_string(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Points the names at `manifest_digest` (atomically replaces refs.json).
    pub fn set_refs(&self, names: &[String], manifest_digest: &str) -> Result<(), ImageError> {
        let _guard = self.refs_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut refs = self.refs()?;
        for name in names {
            refs.insert(name.clone(), manifest_digest.to_string());
        }
        let bytes = serde_json::to_vec_pretty(&refs).map_err(|e| ImageError::BadDocument {
            what: "refs.json".into(),
            message: e.to_string(),
        })?;
        let tmp = self.temp_path("refs");
        write_synced(&tmp, &bytes)?;
        rename_into_place(&tmp, &self.root.join("refs.json"))
    }
}

/// Temp files older than this are left over from a crash (another process using
/// the same store, e.g. `skiff image import` next to the agent, may still be writing
/// younger ones).
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(3600);

fn remove_stale_temps(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_TEMP);
        if stale {
            let p = entry.path();
            let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
        }
    }
}

/// `sha256:<hex>` of a file's contents.
pub fn file_digest(path: &Path) -> Result<String, ImageError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let mut f = fs::File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// fsyncs `tmp`, renames it to `dest` and fsyncs the directory so the rename is durable.
fn rename_into_place(tmp: &Path, dest: &Path) -> Result<(), ImageError> {
    if let Ok(f) = fs::File::open(tmp) {
        f.sync_all().map_err(io_err(tmp))?;
    }
    fs::rename(tmp, dest).map_err(io_err(dest))?;
    if let Some(dir) = dest.parent() {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
