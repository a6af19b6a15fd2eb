//! Node images: a content store by digest under `<data-dir>/images`, pulls from OCI
//! registries, layers unpacked once (OCI whiteouts applied) and a per-container
//! overlayfs rootfs. It owns nothing of the pod lifecycle: the kubelet asks for an
//! image with [`ImageStore::ensure`] and a rootfs with [`ImageStore::mount_rootfs`].

mod archive;
pub mod builder;
mod content;
mod manifest;
mod reference;
mod registry;
mod rootfs;
mod unpack;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use archive::{write as write_archive, ArchiveFormat, ArchiveImage};
pub use reference::ImageRef;

use content::ContentStore;
use manifest::{parse_document, select_platform, ConfigFile, Document, Manifest};
use registry::Registry;

/// The content store of one node.
pub struct ImageStore {
    content: Arc<ContentStore>,
    registry: Registry,
    // One pull at a time per reference: 110 pods of a fresh image make one pull,
    // not 110. The std mutex guards only the map and is never held across an await.
    pulls: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// `imagePullPolicy` of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Resolve the tag at the registry on every start.
    Always,
    /// Pull only when the reference is not in the store.
    IfNotPresent,
    /// Never contact a registry.
    Never,
}

/// Registry credentials, as decoded from an imagePullSecret (`.dockerconfigjson`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryCredential {
    /// Registry host\[:port\] as in the dockerconfigjson `auths` key (`https://` optional).
    pub registry: String,
    pub username: String,
    pub password: String,
}

/// An image present in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The normalised reference, e.g. `docker.io/library/busybox:latest`.
    pub reference: String,
    /// `sha256:<config digest>`: the image ID.
    pub id: String,
    /// `<repository>@sha256:<digest>` of the manifest (or index) the reference resolved to.
    pub repo_digest: String,
    /// The parts of the image config a runtime needs.
    pub config: ImageConfig,
}

/// The runtime-relevant part of an OCI image config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image name {reference:?}: {reason}")]
    InvalidName { reference: String, reason: String },
    #[error("image {0:?} is not present on the node and the pull policy is Never")]
    NeverPull(String),
    #[error("image {reference:?} not found: registry {registry} has no such repository or tag (manifest unknown)")]
    NotFound { reference: String, registry: String },
    #[error("pulling {reference:?}: registry {registry} refused the credentials (check the imagePullSecret): {message}")]
    Unauthorized {
        reference: String,
        registry: String,
        message: String,
    },
    #[error("failed to pull image {reference:?}: {message}")]
    Pull { reference: String, message: String },
    #[error("failed to push image {reference:?}: {message}")]
    Push { reference: String, message: String },
    #[error("image {reference:?} has no manifest for {platform}")]
    NoPlatform { reference: String, platform: String },
    #[error("content digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("invalid {what}: {message}")]
    BadDocument { what: String, message: String },
    #[error("invalid layer {blob}: {message}")]
    BadLayer { blob: PathBuf, message: String },
    #[error("image archive {path}: {message}")]
    Archive { path: PathBuf, message: String },
    #[error("image {0:?} is not in the store")]
    NotInStore(String),
    #[error("rootfs {path}: {message}")]
    Mount { path: PathBuf, message: String },
    #[error("image store I/O at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    /// The kubelet's container waiting reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::InvalidName { .. } => "InvalidImageName",
            ImageError::NeverPull(_) => "ErrImageNeverPull",
            _ => "ErrImagePull",
        }
    }
}

impl ImageStore {
    /// Opens (creating if needed) the store under `root` (`<data-dir>/images`).
    /// `insecure_registries` are `host:port` names reached over plain HTTP.
    pub fn open(root: PathBuf, insecure_registries: Vec<String>) -> Result<ImageStore, ImageError> {
        Ok(ImageStore {
            content: Arc::new(ContentStore::open(&root)?),
            registry: Registry::new(&insecure_registries),
            pulls: Mutex::new(HashMap::new()),
        })
    }

    /// Makes `reference` present according to `policy`, its layers unpacked, and returns it.
    pub async fn ensure(
        &self,
        reference: &str,
        policy: PullPolicy,
        creds: &[RegistryCredential],
    ) -> Result<Image, ImageError> {
        let image_ref = ImageRef::parse(reference)?;
        let image = match policy {
            PullPolicy::Never => self
                .lookup(&image_ref)?
                .ok_or_else(|| ImageError::NeverPull(image_ref.full()))?,
            PullPolicy::IfNotPresent => match self.lookup(&image_ref)? {
                Some(image) => image,
                None => {
                    let lock = self.pull_lock(&image_ref);
                    let _pulling = lock.lock().await;
                    // Whoever held the lock before us may have pulled it.
                    match self.lookup(&image_ref)? {
                        Some(image) => image,
                        None => self.pull(&image_ref, creds).await?,
                    }
                }
            },
            PullPolicy::Always => {
                let lock = self.pull_lock(&image_ref);
                let _pulling = lock.lock().await;
                self.pull(&image_ref, creds).await?
            }
        };
        let content = Arc::clone(&self.content);
        let top = top_digest(&image).to_string();
        tokio::task::spawn_blocking(move || unpack_all(&content, &top).map(drop))
            .await
            .map_err(|e| ImageError::Pull {
                reference: image.reference.clone(),
                message: format!("unpacking layers: {e}"),
            })??;
        Ok(image)
    }

    /// The image stored under `reference`, without contacting a registry.
    pub fn get(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        self.lookup(&ImageRef::parse(reference)?)
    }

    /// Every name in the store with its image, sorted by name.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        self.content
            .refs()?
            .into_iter()
            .filter(|(name, _)| !name.contains('@'))
            .map(|(name, digest)| load(&self.content, &name, &digest))
            .collect()
    }

    /// Imports an OCI image layout or docker-archive tar; `name` tags an image the
    /// archive does not name itself. Returns the imported images.
    pub fn import(&self, archive: &Path, name: Option<&str>) -> Result<Vec<Image>, ImageError> {
        let imported = archive::import(&self.content, archive, name)?;
        imported
            .into_iter()
            .map(|(image_ref, digest)| {
                self.content
                    .set_refs(&[image_ref.full(), image_ref.with_digest(&digest)], &digest)?;
                load(&self.content, &image_ref.full(), &digest)
            })
            .collect()
    }

    /// Pushes the stored image `reference` to the registry as `target`.
    pub async fn push(
        &self,
        reference: &str,
        target: &str,
        creds: &[RegistryCredential],
    ) -> Result<(), ImageError> {
        let source = ImageRef::parse(reference)?;
        let target = ImageRef::parse(target)?;
        let image = self
            .lookup(&source)?
            .ok_or_else(|| ImageError::NotInStore(source.full()))?;
        let manifest_digest = resolve_manifest(&self.content, top_digest(&image))?.0;
        let auths = Registry::auths_for(&target, creds);
        self.registry
            .push(&self.content, &manifest_digest, &target, &auths[0])
            .await
    }

    /// overlayfs: lowerdirs = the image's unpacked layers, upper/work under
    /// `container_dir`; returns the merged rootfs path (`<container_dir>/rootfs`).
    pub fn mount_rootfs(&self, image: &Image, container_dir: &Path) -> Result<PathBuf, ImageError> {
        let layers = unpack_all(&self.content, top_digest(image))?;
        rootfs::mount_overlay(&layers, container_dir)
    }

    /// Unmounts the rootfs of `container_dir` and removes its rootfs, upper and work
    /// directories. Idempotent.
    pub fn unmount_rootfs(container_dir: &Path) -> Result<(), ImageError> {
        rootfs::unmount_overlay(container_dir)
    }

    fn pull_lock(&self, image_ref: &ImageRef) -> Arc<tokio::sync::Mutex<()>> {
        let mut pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(pulls.entry(image_ref.full()).or_default())
    }

    fn lookup(&self, image_ref: &ImageRef) -> Result<Option<Image>, ImageError> {
        let refs = self.content.refs()?;
        match refs.get(&image_ref.full()) {
            Some(digest) => Ok(Some(load(&self.content, &image_ref.full(), digest)?)),
            // `repo@digest` of content already here (pulled under another tag) is present too.
            None => match image_ref.digest() {
                Some(d) if self.content.has_blob(d) && image_ref.inner.tag().is_none() => {
                    Ok(Some(load(&self.content, &image_ref.full(), d)?))
                }
                _ => Ok(None),
            },
        }
    }

    async fn pull(
        &self,
        image_ref: &ImageRef,
        creds: &[RegistryCredential],
    ) -> Result<Image, ImageError> {
        let mut last = None;
        for auth in Registry::auths_for(image_ref, creds) {
            match self.registry.pull(&self.content, image_ref, &auth).await {
                Ok(top) => {
                    self.content
                        .set_refs(&[image_ref.full(), image_ref.with_digest(&top)], &top)?;
                    tracing::info!(image = %image_ref.full(), digest = %top, "pulled image");
                    return load(&self.content, &image_ref.full(), &top);
                }
                // The next credential for this registry may be the right one.
                Err(e @ ImageError::Unauthorized { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ImageError::Pull {
            reference: image_ref.full(),
            message: "no credentials to try".into(),
        }))
    }
}

/// The digest after `@` in the image's repo digest.
fn top_digest(image: &Image) -> &str {
    image
        .repo_digest
        .rsplit_once('@')
        .map_or(image.repo_digest.as_str(), |(_, d)| d)
}

/// The image manifest (digest and document) `top` stands for on this platform.
fn resolve_manifest(store: &ContentStore, top: &str) -> Result<(String, Manifest), ImageError> {
    let bad = |e: serde_json::Error| ImageError::BadDocument {
        what: format!("manifest {top}"),
        message: e.to_string(),
    };
    match parse_document(&store.read_blob(top)?).map_err(bad)? {
        Document::Manifest(m) => Ok((top.to_string(), m)),
        Document::Index(index) => {
            let entry = select_platform(&index).ok_or_else(|| ImageError::NoPlatform {
                reference: top.to_string(),
                platform: format!("linux/{}", manifest::host_architecture()),
            })?;
            match parse_document(&store.read_blob(&entry.digest)?).map_err(bad)? {
                Document::Manifest(m) => Ok((entry.digest.clone(), m)),
                Document::Index(_) => Err(ImageError::BadDocument {
                    what: format!("index {top}"),
                    message: "nested indexes are not supported".into(),
                }),
            }
        }
    }
}

/// Builds the [`Image`] named `name` whose reference resolved to `top`.
fn load(store: &ContentStore, name: &str, top: &str) -> Result<Image, ImageError> {
    let (_, manifest) = resolve_manifest(store, top)?;
    let config: ConfigFile = serde_json::from_slice(&store.read_blob(&manifest.config.digest)?)
        .map_err(|e| ImageError::BadDocument {
            what: format!("image config {}", manifest.config.digest),
            message: e.to_string(),
        })?;
    let image_ref = ImageRef::parse(name)?;
    Ok(Image {
        reference: image_ref.full(),
        id: manifest.config.digest.clone(),
        repo_digest: image_ref.with_digest(top),
        config: config.image_config(),
    })
}

/// Unpacks every layer of the image `top` (once) and returns their dirs, bottom first.
fn unpack_all(store: &ContentStore, top: &str) -> Result<Vec<PathBuf>, ImageError> {
    let (_, manifest) = resolve_manifest(store, top)?;
    manifest
        .layers
        .iter()
        .map(|layer| {
            if !store.has_blob(&layer.digest) {
                return Err(ImageError::NotInStore(layer.digest.clone()));
            }
            unpack::ensure_unpacked(store, &layer.digest)
        })
        .collect()
}
