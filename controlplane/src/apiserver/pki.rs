//! The server's PKI in its data directory: a CA, a serving certificate signed
//! by it, the admin bearer token, and `admin.kubeconfig` that ties them
//! together for kubectl and the official clients.
//!
//! Created on first start and reused after; the serving certificate is
//! re-issued (by the same CA) when its subject alternative names change, so a
//! new listen or advertise address never breaks existing kubeconfigs.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Errors while creating or loading the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file in the data directory could not be read or written.
    #[error("cannot access {path}: {source} (check that the data directory is writable)")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Certificate generation or parsing failed.
    #[error("certificate error in {what}: {source} (delete the data directory's *.crt/*.key files to regenerate)")]
    Cert {
        /// Which certificate.
        what: &'static str,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration failed: {0}")]
    Tls(String),
    /// A PEM file held no usable key or certificate.
    #[error("{0} holds no usable PEM data")]
    Pem(PathBuf),
}

/// The loaded PKI: what the TLS listener and the authenticator need.
pub struct Pki {
    /// PEM of the CA certificate (clients trust it).
    pub ca_pem: String,
    /// PEM of the serving certificate chain.
    pub server_cert_pem: String,
    /// PEM of the serving key.
    pub server_key_pem: String,
    /// The admin bearer token.
    pub admin_token: String,
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            path: path.into(),
            source,
        }),
    }
}

/// Writes a file atomically (temp + rename) with the given mode.
fn write(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    let io_err = |source| PkiError::Io {
        path: path.into(),
        source,
    };
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).map_err(io_err)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io_err)?;
    fs::rename(&tmp, path).map_err(io_err)
}

fn cert_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Cert { what, source }
}

/// The names the serving certificate must cover.
fn subject_alt_names(ips: &[IpAddr]) -> Vec<String> {
    let mut names: Vec<String> = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut ips: Vec<IpAddr> = ips.to_vec();
    ips.push(IpAddr::from([127, 0, 0, 1]));
    ips.sort();
    ips.dedup();
    names.extend(ips.iter().map(|ip| ip.to_string()));
    names
}

fn new_ca() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(cert_err("CA key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "skiff-ca");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params
        .self_signed(&key)
        .map_err(cert_err("CA certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn new_server_cert(
    ca_pem: &str,
    ca_key_pem: &str,
    sans: &[String],
) -> Result<(String, String), PkiError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(cert_err("CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(cert_err("CA certificate"))?;
    let key = KeyPair::generate().map_err(cert_err("serving key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kube-apiserver");
    params.distinguished_name = dn;
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => s.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()
        .map_err(cert_err("serving certificate names"))?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(cert_err("serving certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn new_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Loads the PKI from `dir`, creating whatever is missing, and (re)writes
/// `admin.kubeconfig` pointing at `server_url`.
pub fn ensure(dir: &Path, ips: &[IpAddr], server_url: &str) -> Result<Pki, PkiError> {
    fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.into(),
        source,
    })?;
    let (ca_pem, ca_key_pem) = match (read(&dir.join("ca.crt"))?, read(&dir.join("ca.key"))?) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            let (c, k) = new_ca()?;
            write(&dir.join("ca.key"), &k, 0o600)?;
            write(&dir.join("ca.crt"), &c, 0o644)?;
            // A new CA invalidates any serving certificate signed by an old one.
            let _ = fs::remove_file(dir.join("server.crt"));
            (c, k)
        }
    };
    let sans = subject_alt_names(ips);
    let sans_text = sans.join("\n");
    let current = (
        read(&dir.join("server.crt"))?,
        read(&dir.join("server.key"))?,
        read(&dir.join("server.sans"))?,
    );
    let (server_cert_pem, server_key_pem) = match current {
        (Some(c), Some(k), Some(s)) if s == sans_text => (c, k),
        _ => {
            let (c, k) = new_server_cert(&ca_pem, &ca_key_pem, &sans)?;
            write(&dir.join("server.key"), &k, 0o600)?;
            write(&dir.join("server.crt"), &c, 0o644)?;
            write(&dir.join("server.sans"), &sans_text, 0o644)?;
            (c, k)
        }
    };
    let admin_token = match read(&dir.join("admin.token"))? {
        Some(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            let t = new_token();
            write(&dir.join("admin.token"), &t, 0o600)?;
            t
        }
    };
    write(
        &dir.join("admin.kubeconfig"),
        &kubeconfig(server_url, &ca_pem, &admin_token),
        0o600,
    )?;
    Ok(Pki {
        ca_pem,
        server_cert_pem,
        server_key_pem,
        admin_token,
    })
}

/// A kubeconfig for the admin user with context `skiff`.
pub fn kubeconfig(server_url: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: admin\n    namespace: default\ncurrent-context: skiff\n"
    )
}

/// A rustls server config for the serving certificate, offering HTTP/2 and HTTP/1.1.
pub fn tls_config(pki: &Pki, dir: &Path) -> Result<rustls::ServerConfig, PkiError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pki.server_cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|source| PkiError::Io {
            path: dir.join("server.crt"),
            source,
        })?;
    let key = rustls_pemfile::private_key(&mut pki.server_key_pem.as_bytes())
        .map_err(|source| PkiError::Io {
            path: dir.join("server.key"),
            source,
        })?
        .ok_or_else(|| PkiError::Pem(dir.join("server.key")))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = ensure(dir.path(), &[ip], "https://127.0.0.1:6443").unwrap();
        let b = ensure(dir.path(), &[ip], "https://127.0.0.1:6443").unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.server_cert_pem, b.server_cert_pem);
        assert_eq!(a.admin_token, b.admin_token);
        let kc = fs::read_to_string(dir.path().join("admin.kubeconfig")).unwrap();
        assert!(kc.contains(&a.admin_token));
        // A new address re-issues the serving certificate under the same CA.
        let c = ensure(
            dir.path(),
            &[ip, "10.0.0.1".parse().unwrap()],
            "https://10.0.0.1:6443",
        )
        .unwrap();
        assert_eq!(a.ca_pem, c.ca_pem);
        assert_ne!(a.server_cert_pem, c.server_cert_pem);
        assert!(tls_config(&c, dir.path()).is_ok());
    }
}
