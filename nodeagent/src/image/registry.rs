//! Talking to OCI registries with `oci-client`: pulls into the content store and
//! pushes from it. Plain HTTP only for registries listed as insecure; anonymous
//! access unless a credential names the image's registry.

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::content::{io_err, ContentStore};
use super::manifest::{
    parse_document, select_platform, sha256_digest, Document, DOCKER_LIST, DOCKER_MANIFEST,
    OCI_INDEX, OCI_MANIFEST,
};
use super::reference::{credential_host, ImageRef};
use super::{ImageError, RegistryCredential};

const ACCEPTED: &[&str] = &[OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];

/// Registry access for one store.
pub struct Registry {
    insecure: Vec<String>,
}

impl Registry {
    /// Speaks plain HTTP to `insecure` (`host:port`) and HTTPS elsewhere.
    pub fn new(insecure: &[String]) -> Registry {
        // reqwest is built without a bundled crypto provider; use ring like the rest of skiff.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Registry {
            insecure: insecure.to_vec(),
        }
    }

    /// A client for one operation. oci-client remembers the first credentials it
    /// saw for a registry for its whole life, so sharing one client would send one
    /// pod's pull secret (or none) for another pod's image.
    fn client(&self) -> Client {
        Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.insecure.clone()),
            ..ClientConfig::default()
        })
    }

    /// The auths to try for `image`, in order: each matching credential, else anonymous.
    pub fn auths_for(image: &ImageRef, creds: &[RegistryCredential]) -> Vec<RegistryAuth> {
        let auths: Vec<RegistryAuth> = creds
            .iter()
            .filter(|c| credential_host(&c.registry) == image.registry())
            .map(|c| RegistryAuth::Basic(c.username.clone(), c.password.clone()))
            .collect();
        if auths.is_empty() {
            vec![RegistryAuth::Anonymous]
        } else {
            auths
        }
    }

    /// Pulls `image` into `store`; returns the digest the reference resolved to
    /// (an index's digest for multi-platform images).
    pub async fn pull(
        &self,
        store: &Arc<ContentStore>,
        image: &ImageRef,
        auth: &RegistryAuth,
    ) -> Result<String, ImageError> {
        let r = &image.inner;
        let client = self.client();
        let (bytes, _) = client
            .pull_manifest_raw(r, auth, ACCEPTED)
            .await
            .map_err(|e| pull_error(image, e))?;
        let top = sha256_digest(&bytes);
        if let Some(pinned) = image.digest() {
            if pinned != top {
                return Err(ImageError::DigestMismatch {
                    expected: pinned.to_string(),
                    actual: top,
                });
            }
        }
        let manifest_bytes = match parse_document(&bytes).map_err(|e| bad_manifest(image, e))? {
            Document::Manifest(_) => bytes.to_vec(),
            Document::Index(index) => {
                let entry = select_platform(&index).ok_or_else(|| no_platform(image))?;
                let by_digest = r.clone_with_digest(entry.digest.clone());
                let (child, _) = client
                    .pull_manifest_raw(&by_digest, auth, ACCEPTED)
                    .await
                    .map_err(|e| pull_error(image, e))?;
                store.write_blob(&entry.digest, &child)?;
                child.to_vec()
            }
        };
        let manifest = match parse_document(&manifest_bytes).map_err(|e| bad_manifest(image, e))? {
            Document::Manifest(m) => m,
            Document::Index(_) => return Err(no_platform(image)),
        };
        for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if store.has_blob(&desc.digest) {
                continue;
            }
            let tmp = store.temp_path("pull");
            let mut file = tokio::fs::File::create(&tmp).await.map_err(io_err(&tmp))?;
            let pulled = client.pull_blob(r, desc.digest.as_str(), &mut file).await;
            if let Err(e) = pulled {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(pull_error(image, e));
            }
            file.flush().await.map_err(io_err(&tmp))?;
            drop(file);
            let digest = desc.digest.clone();
            let owned = Arc::clone(store);
            // Hashing a large layer is CPU work: keep it off the async workers.
            tokio::task::spawn_blocking(move || owned.commit_file(&tmp, &digest))
                .await
                .map_err(|e| ImageError::Pull {
                    reference: image.full(),
                    message: format!("verifying a blob: {e}"),
                })??;
        }
        // The top document last: its presence means everything below it is present.
        store.write_blob(&top, &bytes)?;
        Ok(top)
    }

    /// Pushes the image manifest `manifest_digest` (with its config and layers) as `target`.
    pub async fn push(
        &self,
        store: &ContentStore,
        manifest_digest: &str,
        target: &ImageRef,
        auth: &RegistryAuth,
    ) -> Result<(), ImageError> {
        let r = &target.inner;
        let push_err = |e: OciDistributionError| ImageError::Push {
            reference: target.full(),
            message: e.to_string(),
        };
        let client = self.client();
        client
            .auth(r, auth, RegistryOperation::Push)
            .await
            .map_err(push_err)?;
        let bytes = store.read_blob(manifest_digest)?;
        let manifest = match parse_document(&bytes).map_err(|e| bad_manifest(target, e))? {
            Document::Manifest(m) => m,
            Document::Index(_) => {
                return Err(ImageError::Push {
                    reference: target.full(),
                    message: "pushing an index is not supported; push a single-platform image"
                        .into(),
                })
            }
        };
        for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if client
                .blob_exists(r, &desc.digest)
                .await
                .map_err(push_err)?
            {
                continue;
            }
            let path = store.blob_path(&desc.digest)?;
            let data = tokio::fs::read(&path).await.map_err(io_err(&path))?;
            client
                .push_blob(r, data, &desc.digest)
                .await
                .map_err(push_err)?;
        }
        let content_type = if manifest.media_type.is_empty() {
            OCI_MANIFEST.to_string()
        } else {
            manifest.media_type.clone()
        };
        let header = content_type.parse().map_err(|_| ImageError::Push {
            reference: target.full(),
            message: format!("bad manifest media type {content_type:?}"),
        })?;
        client
            .push_manifest_raw(r, bytes, header)
            .await
            .map_err(push_err)?;
        Ok(())
    }
}

/// Turns a registry error into one an operator can act on.
fn pull_error(image: &ImageRef, e: OciDistributionError) -> ImageError {
    let registry = image.registry().to_string();
    let reference = image.full();
    let codes: Vec<&OciErrorCode> = match &e {
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().map(|x| &x.code).collect()
        }
        _ => Vec::new(),
    };
    let not_found = matches!(e, OciDistributionError::ImageManifestNotFoundError(_))
        || matches!(e, OciDistributionError::ServerError { code: 404, .. })
        || codes.iter().any(|c| {
            matches!(
                c,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound
            )
        });
    let unauthorized = matches!(
        e,
        OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_)
            | OciDistributionError::ServerError {
                code: 401 | 403,
                ..
            }
    ) || codes
        .iter()
        .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied));
    if not_found {
        ImageError::NotFound {
            reference,
            registry,
        }
    } else if unauthorized {
        ImageError::Unauthorized {
            reference,
            registry,
            message: e.to_string(),
        }
    } else {
        ImageError::Pull {
            reference,
            message: e.to_string(),
        }
    }
}

fn bad_manifest(image: &ImageRef, e: serde_json::Error) -> ImageError {
    ImageError::BadDocument {
        what: format!("manifest of {}", image.full()),
        message: e.to_string(),
    }
}

fn no_platform(image: &ImageRef) -> ImageError {
    ImageError::NoPlatform {
        reference: image.full(),
        platform: format!("linux/{}", super::manifest::host_architecture()),
    }
}
