//! The per-container root filesystem: an overlayfs whose lowerdirs are the image's
//! unpacked layers (read-only, shared by every container of the image) and whose
//! upperdir/workdir live in the container's own directory, so writes never touch
//! the layers.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::content::io_err;
use super::ImageError;

/// mount(2) data is limited to one page.
const MAX_MOUNT_DATA: usize = 4000;

/// Mounts `<container_dir>/rootfs` as overlay of `layers` (bottom layer first).
/// Mounting an already mounted rootfs is a no-op (agent restart adoption).
pub fn mount_overlay(layers: &[PathBuf], container_dir: &Path) -> Result<PathBuf, ImageError> {
    let merged = container_dir.join("rootfs");
    let upper = container_dir.join("upper");
    let work = container_dir.join("work");
    for dir in [&merged, &upper, &work] {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    if is_mountpoint(&merged)? {
        return Ok(merged);
    }
    if layers.is_empty() {
        return Err(ImageError::Mount {
            path: merged,
            message: "the image has no layers".into(),
        });
    }
    // overlayfs lists the top layer first.
    let lower = layers
        .iter()
        .rev()
        .map(|p| escape(p))
        .collect::<Vec<_>>()
        .join(":");
    let data = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        escape(&upper),
        escape(&work)
    );
    if data.len() > MAX_MOUNT_DATA {
        return Err(ImageError::Mount {
            path: merged,
            message: format!(
                "{} layers make overlay options of {} bytes, over the kernel's page limit",
                layers.len(),
                data.len()
            ),
        });
    }
    mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| ImageError::Mount {
        path: merged.clone(),
        message: format!("mount overlay ({data}): {e}"),
    })?;
    Ok(merged)
}

/// Unmounts `<container_dir>/rootfs` and removes rootfs, upper and work. Idempotent.
pub fn unmount_overlay(container_dir: &Path) -> Result<(), ImageError> {
    let merged = container_dir.join("rootfs");
    // A rootfs can be stacked by repeated mounts after crashes; bounded.
    for _ in 0..8 {
        if !merged.exists() || !is_mountpoint(&merged)? {
            break;
        }
        umount2(&merged, MntFlags::MNT_DETACH).map_err(|e| ImageError::Mount {
            path: merged.clone(),
            message: format!("umount: {e}"),
        })?;
    }
    for dir in ["rootfs", "upper", "work"] {
        let p = container_dir.join(dir);
        match fs::remove_dir_all(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&p)(e)),
        }
    }
    Ok(())
}

/// Whether `path` is a mount point in this mount namespace (from /proc/self/mountinfo).
pub fn is_mountpoint(path: &Path) -> Result<bool, ImageError> {
    let canonical = fs::canonicalize(path).map_err(io_err(path))?;
    let info = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(info).map_err(io_err(info))?;
    let wanted = canonical.to_string_lossy();
    Ok(text.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape_mountinfo(mp) == wanted)
    }))
}

/// overlayfs option values escape `,` `:` and `\` with a backslash.
fn escape(path: &Path) -> String {
    let s = path.to_string_lossy();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ',' | ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}
