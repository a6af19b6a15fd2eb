//! Unpacking a layer blob (tar, gzip or not) once into `layers/sha256/<blob hex>`,
//! in the form overlayfs reads as a lowerdir: an OCI whiteout `.wh.name` becomes a
//! 0/0 character device `name`, an opaque marker `.wh..wh..opq` becomes the
//! `trusted.overlay.opaque=y` xattr on its directory.

use std::fs;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use super::content::{io_err, ContentStore};
use super::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// The directory a layer blob unpacks to.
pub fn layer_dir(store: &ContentStore, blob_digest: &str) -> Result<PathBuf, ImageError> {
    let blob = store.blob_path(blob_digest)?;
    let hex = blob
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(store.root().join("layers/sha256").join(hex))
}

/// Unpacks the layer blob unless it already is; returns its directory.
pub fn ensure_unpacked(store: &ContentStore, blob_digest: &str) -> Result<PathBuf, ImageError> {
    let dest = layer_dir(store, blob_digest)?;
    if dest.is_dir() {
        return Ok(dest);
    }
    let blob = store.blob_path(blob_digest)?;
    let tmp = store.temp_path("layer");
    fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    if let Err(e) = unpack_file(&blob, &tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match fs::rename(&tmp, &dest) {
        Ok(()) => Ok(dest),
        // Another worker unpacked the same layer first: keep theirs.
        Err(_) if dest.is_dir() => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(dest)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(io_err(&dest)(e))
        }
    }
}

/// Unpacks the tar (gzip-compressed or not, told by its magic bytes) at `blob` into `dest`.
fn unpack_file(blob: &Path, dest: &Path) -> Result<(), ImageError> {
    let mut file = BufReader::new(fs::File::open(blob).map_err(io_err(blob))?);
    let mut magic = [0u8; 2];
    let gzip = {
        use std::io::BufRead;
        let head = file.fill_buf().map_err(io_err(blob))?;
        if head.len() >= 2 {
            magic.copy_from_slice(&head[..2]);
        }
        magic == [0x1f, 0x8b]
    };
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    unpack_tar(reader, dest).map_err(|message| ImageError::BadLayer {
        blob: blob.to_path_buf(),
        message,
    })
}

/// Unpacks a layer tar stream into `dest`, converting whiteouts for overlayfs.
pub fn unpack_tar(reader: impl Read, dest: &Path) -> Result<(), String> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(|e| format!("reading tar: {e}"))? {
        let mut entry = entry.map_err(|e| format!("reading tar entry: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("tar entry path: {e}"))?
            .into_owned();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            let parent = safe_join(dest, path.parent().unwrap_or(Path::new("")))?;
            fs::create_dir_all(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
            if name == OPAQUE_MARKER {
                xattr::set(&parent, "trusted.overlay.opaque", b"y")
                    .map_err(|e| format!("marking {} opaque: {e}", parent.display()))?;
            } else {
                let target = parent.join(hidden);
                remove_any(&target);
                mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                    .map_err(|e| format!("whiteout {}: {e}", target.display()))?;
            }
            continue;
        }
        entry
            .unpack_in(dest)
            .map_err(|e| format!("unpacking {}: {e}", path.display()))?;
    }
    Ok(())
}

/// `dest/rel` if `rel` stays inside `dest` (no `..`, no absolute escape).
fn safe_join(dest: &Path, rel: &Path) -> Result<PathBuf, String> {
    let mut out = dest.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            _ => return Err(format!("tar entry {} escapes the layer", rel.display())),
        }
    }
    Ok(out)
}

fn remove_any(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = fs::remove_file(path);
        }
        Err(_) => {}
    }
}
