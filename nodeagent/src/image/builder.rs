//! A small image builder: a busybox image from a static busybox binary (Debian's
//! busybox-static), so tests and `skiff up` have a real image with no external registry.

use std::path::Path;
use std::process::Command;

use super::archive::{self, ArchiveFormat, ArchiveImage};
use super::manifest::{host_architecture, sha256_digest};
use super::ImageError;

/// Where Debian's busybox-static installs the binary.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";
/// The name the built image gets unless told otherwise.
pub const DEFAULT_NAME: &str = "localhost/busybox:latest";

/// The page `httpd -h /var/www` serves.
pub const INDEX_HTML: &str = "<html><body><h1>skiff busybox</h1></body></html>\n";

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\n";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Builds the busybox image named `name` from the binary at `busybox` in memory.
pub fn busybox_image(busybox: &Path, name: &str) -> Result<ArchiveImage, ImageError> {
    let binary = std::fs::read(busybox).map_err(|source| ImageError::Io {
        path: busybox.to_path_buf(),
        source,
    })?;
    let applets = applets(busybox)?;
    let layer = rootfs_layer(&binary, &applets).map_err(|source| ImageError::Io {
        path: busybox.to_path_buf(),
        source,
    })?;
    let config = serde_json::json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": host_architecture(),
        "os": "linux",
        "config": { "Env": [PATH_ENV], "Cmd": ["sh"] },
        "rootfs": { "type": "layers", "diff_ids": [sha256_digest(&layer)] },
        "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "skiff image build-busybox" }],
    });
    Ok(ArchiveImage {
        name: name.to_string(),
        config: serde_json::to_vec(&config).unwrap_or_default(),
        layers: vec![layer],
    })
}

/// Builds the busybox image and writes it as an archive at `out`.
pub fn build_busybox(
    busybox: &Path,
    name: &str,
    format: ArchiveFormat,
    out: &Path,
) -> Result<(), ImageError> {
    archive::write(&busybox_image(busybox, name)?, format, out)
}

/// The applet names the binary provides (`busybox --list`).
fn applets(busybox: &Path) -> Result<Vec<String>, ImageError> {
    let output = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|source| ImageError::Io {
            path: busybox.to_path_buf(),
            source,
        })?;
    if !output.status.success() {
        return Err(ImageError::BadDocument {
            what: busybox.display().to_string(),
            message: "`busybox --list` failed; is it busybox (apt-get install busybox-static)?"
                .into(),
        });
    }
    let mut names: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|n| {
            !n.is_empty()
                && *n != "busybox"
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '['))
        })
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// The single rootfs layer (uncompressed tar, owned by root, mtime 0 for reproducibility).
fn rootfs_layer(binary: &[u8], applets: &[String]) -> Result<Vec<u8>, std::io::Error> {
    let mut b = tar::Builder::new(Vec::new());
    let dirs: [(&str, u32); 14] = [
        ("bin/", 0o755),
        ("dev/", 0o755),
        ("etc/", 0o755),
        ("home/", 0o755),
        ("proc/", 0o755),
        ("root/", 0o700),
        ("sys/", 0o755),
        ("tmp/", 0o1777),
        ("usr/", 0o755),
        ("usr/bin/", 0o755),
        ("usr/sbin/", 0o755),
        ("sbin/", 0o755),
        ("var/", 0o755),
        ("var/www/", 0o755),
    ];
    for (dir, mode) in dirs {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        b.append_data(&mut h, dir, std::io::empty())?;
    }
    let files: [(&str, u32, &[u8]); 4] = [
        ("bin/busybox", 0o755, binary),
        ("etc/passwd", 0o644, PASSWD.as_bytes()),
        ("etc/group", 0o644, GROUP.as_bytes()),
        ("var/www/index.html", 0o644, INDEX_HTML.as_bytes()),
    ];
    for (path, mode, data) in files {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        b.append_data(&mut h, path, data)?;
    }
    for applet in applets {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    // Scripts start with #!/usr/bin/env.
    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "usr/bin/env", "/bin/busybox")?;
    b.into_inner()
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}
