//! Pod volumes under `<pod-dir>/volumes/<name>`: emptyDir (shared by the pod's
//! containers, removed with the pod; `medium: Memory` is a tmpfs), configMap,
//! secret, downwardAPI and projected (files rewritten when the source changes),
//! hostPath. Containers get them as bind mounts from their volumeMounts.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, KeyToPath, Pod, Volume};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::env::{field_value, resource_value, EnvError, Lookup};
use crate::runtime::bundle::BindMount;

/// Errors preparing volumes.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A file of the volume.
    #[error("volume {volume}: {path}: {source}")]
    Io {
        volume: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The source object is missing or unreadable.
    #[error("volume {volume}: {source}")]
    Source {
        volume: String,
        #[source]
        source: EnvError,
    },
    /// The volume type is not supported by this agent.
    #[error("volume {0}: unsupported volume type (supported: emptyDir, configMap, secret, hostPath, downwardAPI, projected)")]
    Unsupported(String),
    /// A volumeMount names a volume the pod does not have.
    #[error("container {container}: volumeMount {volume} names no volume of the pod")]
    UnknownVolume { container: String, volume: String },
    /// tmpfs mount failed.
    #[error("volume {volume}: mounting tmpfs: {source}")]
    Mount {
        volume: String,
        #[source]
        source: nix::Error,
    },
}

/// The directory of the pod's volume `name`.
pub fn volume_dir(pod_dir: &Path, name: &str) -> PathBuf {
    pod_dir.join("volumes").join(name)
}

fn io_err(volume: &str, path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError {
    let volume = volume.to_string();
    let path = path.to_path_buf();
    move |source| VolumeError::Io {
        volume,
        path,
        source,
    }
}

/// Writes `files` (relative path → content) into `dir` with `mode`, rewriting
/// only what changed and removing files no longer present.
fn sync_files(
    volume: &str,
    dir: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    mode: u32,
) -> Result<(), VolumeError> {
    std::fs::create_dir_all(dir).map_err(io_err(volume, dir))?;
    for (rel, content) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(volume, parent))?;
        }
        if std::fs::read(&path).ok().as_deref() == Some(content.as_slice()) {
            continue;
        }
        let tmp = path.with_extension("skiff-tmp");
        std::fs::write(&tmp, content).map_err(io_err(volume, &tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(volume, &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(volume, &path))?;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let top_level_kept = files
                .keys()
                .any(|k| k == &name || k.starts_with(&format!("{name}/")));
            if !top_level_kept {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }
    Ok(())
}

/// Selects keys per `items` (all keys when absent).
fn select(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
) -> BTreeMap<String, Vec<u8>> {
    match items {
        None => data,
        Some(items) => items
            .iter()
            .filter_map(|i| data.get(&i.key).map(|v| (i.path.clone(), v.clone())))
            .collect(),
    }
}

fn downward_files(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    volume: &str,
) -> Result<BTreeMap<String, Vec<u8>>, VolumeError> {
    let containers = pod.spec.clone().unwrap_or_default().containers;
    let mut out = BTreeMap::new();
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            match f.field_path.as_str() {
                "metadata.labels" | "metadata.annotations" => {
                    let map = if f.field_path == "metadata.labels" {
                        pod.metadata.labels.clone()
                    } else {
                        pod.metadata.annotations.clone()
                    };
                    map.unwrap_or_default()
                        .iter()
                        .map(|(k, v)| format!("{k}={v:?}\n"))
                        .collect()
                }
                path => field_value(pod, path).map_err(|source| VolumeError::Source {
                    volume: volume.to_string(),
                    source,
                })?,
            }
        } else if let Some(r) = &item.resource_field_ref {
            let name = r.container_name.clone().unwrap_or_default();
            match containers.iter().find(|c| c.name == name) {
                Some(c) => resource_value(c, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str())),
                None => String::new(),
            }
        } else {
            continue;
        };
        out.insert(item.path.clone(), value.into_bytes());
    }
    Ok(out)
}

/// Creates or refreshes every volume of `pod`. Returns `false` while a
/// non-optional source object is missing.
pub async fn sync(pod: &Pod, pod_dir: &Path, lookup: &Lookup) -> Result<(), VolumeError> {
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        sync_one(pod, pod_dir, v, lookup).await?;
    }
    Ok(())
}

async fn sync_one(
    pod: &Pod,
    pod_dir: &Path,
    v: &Volume,
    lookup: &Lookup,
) -> Result<(), VolumeError> {
    let dir = volume_dir(pod_dir, &v.name);
    let src = |source| VolumeError::Source {
        volume: v.name.clone(),
        source,
    };
    if let Some(ed) = &v.empty_dir {
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(io_err(&v.name, &dir))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .map_err(io_err(&v.name, &dir))?;
            if ed.medium.as_deref() == Some("Memory") {
                mount(
                    Some("tmpfs"),
                    &dir,
                    Some("tmpfs"),
                    MsFlags::empty(),
                    None::<&str>,
                )
                .map_err(|source| VolumeError::Mount {
                    volume: v.name.clone(),
                    source,
                })?;
            }
        }
    } else if let Some(cm) = &v.config_map {
        let mode = cm.default_mode.unwrap_or(0o644) as u32;
        match lookup.configmap(&cm.name).await.map_err(src)? {
            Some(data) => sync_files(&v.name, &dir, &select(data, cm.items.as_ref()), mode)?,
            None if cm.optional == Some(true) => sync_files(&v.name, &dir, &BTreeMap::new(), mode)?,
            None => return Err(src(EnvError::ConfigMapMissing(cm.name.clone()))),
        }
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let mode = s.default_mode.unwrap_or(0o644) as u32;
        match lookup.secret(&name).await.map_err(src)? {
            Some(data) => sync_files(&v.name, &dir, &select(data, s.items.as_ref()), mode)?,
            None if s.optional == Some(true) => sync_files(&v.name, &dir, &BTreeMap::new(), mode)?,
            None => return Err(src(EnvError::SecretMissing(name))),
        }
    } else if let Some(d) = &v.downward_api {
        let files = downward_files(pod, d.items.as_deref().unwrap_or_default(), &v.name)?;
        sync_files(
            &v.name,
            &dir,
            &files,
            d.default_mode.unwrap_or(0o644) as u32,
        )?;
    } else if let Some(p) = &v.projected {
        let mut files = BTreeMap::new();
        for source in p.sources.iter().flatten() {
            if let Some(cm) = &source.config_map {
                match lookup.configmap(&cm.name).await.map_err(src)? {
                    Some(data) => files.extend(select(data, cm.items.as_ref())),
                    None if cm.optional == Some(true) => {}
                    None => return Err(src(EnvError::ConfigMapMissing(cm.name.clone()))),
                }
            }
            if let Some(s) = &source.secret {
                match lookup.secret(&s.name).await.map_err(src)? {
                    Some(data) => files.extend(select(data, s.items.as_ref())),
                    None if s.optional == Some(true) => {}
                    None => return Err(src(EnvError::SecretMissing(s.name.clone()))),
                }
            }
            if let Some(d) = &source.downward_api {
                files.extend(downward_files(
                    pod,
                    d.items.as_deref().unwrap_or_default(),
                    &v.name,
                )?);
            }
        }
        sync_files(
            &v.name,
            &dir,
            &files,
            p.default_mode.unwrap_or(0o644) as u32,
        )?;
    } else if let Some(hp) = &v.host_path {
        let path = PathBuf::from(&hp.path);
        match hp.type_.as_deref() {
            Some("DirectoryOrCreate") => {
                std::fs::create_dir_all(&path).map_err(io_err(&v.name, &path))?
            }
            Some("FileOrCreate") if !path.exists() => {
                std::fs::write(&path, b"").map_err(io_err(&v.name, &path))?
            }
            _ => {}
        }
    } else {
        return Err(VolumeError::Unsupported(v.name.clone()));
    }
    Ok(())
}

/// The bind mounts of `container`'s volumeMounts.
pub fn mounts(
    pod: &Pod,
    pod_dir: &Path,
    container: &Container,
) -> Result<Vec<BindMount>, VolumeError> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let Some(v) = volumes.iter().find(|v| v.name == m.name) else {
            return Err(VolumeError::UnknownVolume {
                container: container.name.clone(),
                volume: m.name.clone(),
            });
        };
        let mut source = match &v.host_path {
            Some(hp) => PathBuf::from(&hp.path),
            None => volume_dir(pod_dir, &v.name),
        };
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            source = source.join(sub);
            if !source.exists() {
                std::fs::create_dir_all(&source).map_err(io_err(&v.name, &source))?;
            }
        }
        let readonly = m.read_only == Some(true)
            || v.config_map.is_some()
            || v.secret.is_some()
            || v.downward_api.is_some()
            || v.projected.is_some();
        out.push(BindMount {
            source,
            destination: m.mount_path.clone(),
            readonly,
        });
    }
    Ok(out)
}

/// Unmounts tmpfs emptyDirs and removes every volume directory of the pod.
pub fn remove_all(pod_dir: &Path) {
    let root = pod_dir.join("volumes");
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            // Only a tmpfs emptyDir is a mount point; unmounting anything else fails harmlessly.
            let _ = umount2(&e.path(), MntFlags::MNT_DETACH);
        }
    }
    let _ = std::fs::remove_dir_all(root);
}
