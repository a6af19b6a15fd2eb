//! Image archives: importing an OCI image layout tar or a docker-archive tar
//! (`docker save`) into the content store, and writing either kind.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use serde::{Deserialize, Serialize};

use super::content::{io_err, ContentStore};
use super::manifest::{
    parse_document, select_platform, sha256_digest, Descriptor, Document, Index,
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_LAYER_GZIP,
    OCI_MANIFEST,
};
use super::reference::ImageRef;
use super::ImageError;

/// Layout of an image archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// OCI image layout (`oci-layout`, `index.json`, `blobs/`), with a `manifest.json`
    /// so `docker load` reads it too.
    Oci,
    /// Legacy docker-archive: `manifest.json`, config JSON and uncompressed `layer.tar`s.
    Docker,
}

/// One entry of a docker-archive `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// An image held in memory, ready to be written as an archive.
pub struct ArchiveImage {
    /// Full name, e.g. `localhost/busybox:latest`.
    pub name: String,
    /// The image config JSON.
    pub config: Vec<u8>,
    /// Uncompressed layer tars, bottom first.
    pub layers: Vec<Vec<u8>>,
}

/// Imports the archive at `path`; returns each image's name and top digest.
pub fn import(
    store: &ContentStore,
    path: &Path,
    name: Option<&str>,
) -> Result<Vec<(ImageRef, String)>, ImageError> {
    let extra = name.map(ImageRef::parse).transpose()?;
    let dir = store.temp_path("import");
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let result = extract(path, &dir).and_then(|()| {
        if dir.join("index.json").is_file() {
            import_layout(store, path, &dir, extra.as_ref())
        } else if dir.join("manifest.json").is_file() {
            import_docker(store, path, &dir, extra.as_ref())
        } else {
            Err(archive_err(
                path,
                "neither an OCI layout (index.json) nor a docker archive (manifest.json)",
            ))
        }
    });
    let _ = fs::remove_dir_all(&dir);
    result
}

fn archive_err(path: &Path, message: impl Into<String>) -> ImageError {
    ImageError::Archive {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Unpacks the (optionally gzip-compressed) tar at `path` into `dir`.
fn extract(path: &Path, dir: &Path) -> Result<(), ImageError> {
    let mut file = BufReader::new(fs::File::open(path).map_err(io_err(path))?);
    let gzip = file
        .fill_buf()
        .map_err(io_err(path))?
        .starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    tar::Archive::new(reader)
        .unpack(dir)
        .map_err(|e| archive_err(path, format!("unpacking: {e}")))
}

fn read_json<T: for<'de> Deserialize<'de>>(archive: &Path, file: &Path) -> Result<T, ImageError> {
    let bytes = fs::read(file).map_err(io_err(file))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| archive_err(archive, format!("{}: {e}", file.display())))
}

/// The file of blob `digest` in an extracted OCI layout, stored after verification.
fn store_layout_blob(store: &ContentStore, dir: &Path, digest: &str) -> Result<(), ImageError> {
    let src = dir.join(
        store
            .blob_path(digest)?
            .strip_prefix(store.root())
            .map_err(|_| ImageError::BadDocument {
                what: "digest".into(),
                message: digest.into(),
            })?,
    );
    let actual = store.put_file(&src)?;
    if actual != digest {
        return Err(ImageError::DigestMismatch {
            expected: digest.to_string(),
            actual,
        });
    }
    Ok(())
}

fn import_layout(
    store: &ContentStore,
    path: &Path,
    dir: &Path,
    extra: Option<&ImageRef>,
) -> Result<Vec<(ImageRef, String)>, ImageError> {
    let index: Index = read_json(path, &dir.join("index.json"))?;
    let mut out = Vec::new();
    for entry in &index.manifests {
        let bytes = fs::read(
            dir.join("blobs/sha256").join(
                super::manifest::digest_hex(&entry.digest)
                    .ok_or_else(|| archive_err(path, format!("bad digest {}", entry.digest)))?,
            ),
        )
        .map_err(|e| archive_err(path, format!("blob {}: {e}", entry.digest)))?;
        let manifest = match parse_document(&bytes).map_err(|e| archive_err(path, e.to_string()))? {
            Document::Manifest(m) => m,
            Document::Index(child) => {
                let chosen = select_platform(&child)
                    .ok_or_else(|| archive_err(path, "no manifest for this platform"))?;
                let child_bytes = fs::read(
                    dir.join("blobs/sha256")
                        .join(super::manifest::digest_hex(&chosen.digest).unwrap_or_default()),
                )
                .map_err(|e| archive_err(path, format!("blob {}: {e}", chosen.digest)))?;
                store_layout_blob(store, dir, &chosen.digest)?;
                match parse_document(&child_bytes).map_err(|e| archive_err(path, e.to_string()))? {
                    Document::Manifest(m) => m,
                    Document::Index(_) => return Err(archive_err(path, "nested index")),
                }
            }
        };
        for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
            store_layout_blob(store, dir, &desc.digest)?;
        }
        store_layout_blob(store, dir, &entry.digest)?;
        let names = layout_names(entry, extra)?;
        if names.is_empty() {
            return Err(archive_err(
                path,
                format!(
                    "image {} has no name in the archive; pass a name",
                    entry.digest
                ),
            ));
        }
        out.extend(names.into_iter().map(|n| (n, entry.digest.clone())));
    }
    Ok(out)
}

/// Names of an index entry: containerd's full-name annotation, a ref.name that is a
/// full reference, and the caller's extra name.
fn layout_names(entry: &Descriptor, extra: Option<&ImageRef>) -> Result<Vec<ImageRef>, ImageError> {
    let annotations = entry.annotations.clone().unwrap_or_default();
    let mut names = Vec::new();
    if let Some(full) = annotations.get(ANNOTATION_IMAGE_NAME) {
        names.push(ImageRef::parse(full)?);
    } else if let Some(r) = annotations
        .get(ANNOTATION_REF_NAME)
        .filter(|r| r.contains('/'))
    {
        names.push(ImageRef::parse(r)?);
    }
    names.extend(extra.cloned());
    Ok(names)
}

fn import_docker(
    store: &ContentStore,
    path: &Path,
    dir: &Path,
    extra: Option<&ImageRef>,
) -> Result<Vec<(ImageRef, String)>, ImageError> {
    let entries: Vec<DockerEntry> = read_json(path, &dir.join("manifest.json"))?;
    let mut out = Vec::new();
    for entry in entries {
        let inside = |rel: &str| -> Result<PathBuf, ImageError> {
            if rel.split('/').any(|c| c == "..") || rel.starts_with('/') {
                return Err(archive_err(
                    path,
                    format!("{rel:?} points outside the archive"),
                ));
            }
            Ok(dir.join(rel))
        };
        let config_file = inside(&entry.config)?;
        let config_digest = store.put_file(&config_file)?;
        let config_size = fs::metadata(&config_file)
            .map_err(io_err(&config_file))?
            .len();
        let mut layers = Vec::new();
        for layer in &entry.layers {
            let file = inside(layer)?;
            let digest = store.put_file(&file)?;
            let size = fs::metadata(&file).map_err(io_err(&file))?.len();
            let mut head = [0u8; 2];
            let gzip = fs::File::open(&file)
                .and_then(|mut f| f.read_exact(&mut head))
                .is_ok()
                && head == [0x1f, 0x8b];
            layers.push(descriptor(
                if gzip { OCI_LAYER_GZIP } else { OCI_LAYER },
                digest,
                size,
            ));
        }
        let manifest = manifest_json(descriptor(OCI_CONFIG, config_digest, config_size), layers);
        let digest = store.put(&manifest)?;
        let mut names = entry
            .repo_tags
            .unwrap_or_default()
            .iter()
            .map(|t| ImageRef::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        names.extend(extra.cloned());
        if names.is_empty() {
            return Err(archive_err(path, "image has no RepoTags; pass a name"));
        }
        out.extend(names.into_iter().map(|n| (n, digest.clone())));
    }
    Ok(out)
}

fn descriptor(media_type: &str, digest: String, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest,
        size,
        platform: None,
        annotations: None,
    }
}

fn manifest_json(config: Descriptor, layers: Vec<Descriptor>) -> Vec<u8> {
    let manifest = super::manifest::Manifest {
        schema_version: 2,
        media_type: OCI_MANIFEST.to_string(),
        config,
        layers,
    };
    serde_json::to_vec(&manifest).unwrap_or_default()
}

/// gzip-compresses a layer tar (deterministically: no name, no mtime).
pub fn gzip(data: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(data)?;
    enc.finish()
}

/// Writes `image` as an archive of `format` at `out` (atomically).
pub fn write(image: &ArchiveImage, format: ArchiveFormat, out: &Path) -> Result<(), ImageError> {
    let image_ref = ImageRef::parse(&image.name)?;
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let config_digest = sha256_digest(&image.config);
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    match format {
        ArchiveFormat::Oci => {
            let mut layer_descs = Vec::new();
            let mut layer_paths = Vec::new();
            for layer in &image.layers {
                let gz = gzip(layer).map_err(io_err(out))?;
                let d = sha256_digest(&gz);
                layer_paths.push(format!("blobs/sha256/{}", hex(&d)));
                layer_descs.push(descriptor(OCI_LAYER_GZIP, d.clone(), gz.len() as u64));
                files.insert(format!("blobs/sha256/{}", hex(&d)), gz);
            }
            let manifest = manifest_json(
                descriptor(OCI_CONFIG, config_digest.clone(), image.config.len() as u64),
                layer_descs,
            );
            let manifest_digest = sha256_digest(&manifest);
            let tag = image_ref.inner.tag().unwrap_or("latest").to_string();
            let annotations = BTreeMap::from([
                (ANNOTATION_IMAGE_NAME.to_string(), image_ref.full()),
                (ANNOTATION_REF_NAME.to_string(), tag),
            ]);
            let mut entry =
                descriptor(OCI_MANIFEST, manifest_digest.clone(), manifest.len() as u64);
            entry.annotations = Some(annotations);
            let index = Index {
                schema_version: 2,
                media_type: OCI_INDEX.to_string(),
                manifests: vec![entry],
            };
            files.insert(format!("blobs/sha256/{}", hex(&manifest_digest)), manifest);
            files.insert(
                format!("blobs/sha256/{}", hex(&config_digest)),
                image.config.clone(),
            );
            files.insert(
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            );
            files.insert("index.json".into(), to_json(&index));
            let docker = vec![DockerEntry {
                config: format!("blobs/sha256/{}", hex(&config_digest)),
                repo_tags: Some(vec![docker_name(&image_ref)]),
                layers: layer_paths,
            }];
            files.insert("manifest.json".into(), to_json(&docker));
        }
        ArchiveFormat::Docker => {
            let mut layer_paths = Vec::new();
            for layer in &image.layers {
                let p = format!("{}/layer.tar", hex(&sha256_digest(layer)));
                files.insert(p.clone(), layer.clone());
                layer_paths.push(p);
            }
            let config_path = format!("{}.json", hex(&config_digest));
            files.insert(config_path.clone(), image.config.clone());
            let docker = vec![DockerEntry {
                config: config_path,
                repo_tags: Some(vec![docker_name(&image_ref)]),
                layers: layer_paths,
            }];
            files.insert("manifest.json".into(), to_json(&docker));
        }
    }
    write_tar(&files, out)
}

/// `docker save` writes Docker Hub names short (`busybox:latest`).
fn docker_name(image_ref: &ImageRef) -> String {
    image_ref
        .full()
        .strip_prefix("docker.io/library/")
        .map(str::to_string)
        .unwrap_or_else(|| image_ref.full())
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Writes regular files (directories implied) into a tar at `out` via a temp file.
fn write_tar(files: &BTreeMap<String, Vec<u8>>, out: &Path) -> Result<(), ImageError> {
    let tmp = out.with_extension("tar.partial");
    let file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut builder = tar::Builder::new(file);
    let mut dirs = std::collections::BTreeSet::new();
    for name in files.keys() {
        let mut acc = String::new();
        for part in name
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, d)| d)
        {
            acc.push_str(part);
            acc.push('/');
            dirs.insert(acc.clone());
        }
    }
    for dir in &dirs {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        header.set_mtime(0);
        builder
            .append_data(&mut header, dir, std::io::empty())
            .map_err(io_err(&tmp))?;
    }
    for (name, data) in files {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_mtime(0);
        builder
            .append_data(&mut header, name, data.as_slice())
            .map_err(io_err(&tmp))?;
    }
    let file = builder.into_inner().map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, out).map_err(io_err(out))
}
