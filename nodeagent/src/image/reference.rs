//! Image names normalised as the kubelet and containerd do: `busybox` is
//! `docker.io/library/busybox:latest`; `localhost/x` and `host:port/x` name their registry.

use oci_client::Reference;

use super::ImageError;

/// A parsed, normalised image reference.
#[derive(Debug, Clone)]
pub struct ImageRef {
    pub(crate) inner: Reference,
}

impl ImageRef {
    /// Parses and normalises `name`; a missing tag means `latest`.
    pub fn parse(name: &str) -> Result<ImageRef, ImageError> {
        let invalid = |reason: String| ImageError::InvalidName {
            reference: name.to_string(),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("empty name".into()));
        }
        if name.contains(char::is_whitespace) {
            return Err(invalid("image names contain no whitespace".into()));
        }
        let inner: Reference = name.parse().map_err(|e| invalid(format!("{e}")))?;
        Ok(ImageRef { inner })
    }

    /// `registry/repository:tag`, `registry/repository@digest` or both.
    pub fn full(&self) -> String {
        self.inner.whole()
    }

    /// `registry/repository` (the name a repo digest is formed with).
    pub fn repository(&self) -> String {
        format!("{}/{}", self.inner.registry(), self.inner.repository())
    }

    /// The registry host\[:port\] as written (`docker.io` for Docker Hub).
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// The digest pinned by the reference, if any.
    pub fn digest(&self) -> Option<&str> {
        self.inner.digest()
    }

    /// `repository@digest`.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.repository())
    }
}

/// Registry names a credential can be written with, reduced to `host[:port]`.
pub fn credential_host(registry: &str) -> String {
    let r = registry
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = r.split('/').next().unwrap_or(r);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        h => h.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_the_kubelet() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("library/busybox:1.36", "docker.io/library/busybox:1.36"),
            ("localhost/busybox:latest", "localhost/busybox:latest"),
            ("127.0.0.1:5000/x:y", "127.0.0.1:5000/x:y"),
            ("127.0.0.1:5000/team/app", "127.0.0.1:5000/team/app:latest"),
        ];
        for (input, want) in cases {
            assert_eq!(ImageRef::parse(input).unwrap().full(), want, "{input}");
        }
        let pinned = format!("registry.local/app@sha256:{}", "a".repeat(64));
        assert_eq!(ImageRef::parse(&pinned).unwrap().full(), pinned);
    }

    #[test]
    fn rejects_invalid_names() {
        for bad in ["", "Busybox", "busy box", "a:b:c:d", "x@sha256:short"] {
            let err = ImageRef::parse(bad).unwrap_err();
            assert_eq!(err.reason(), "InvalidImageName", "{bad}");
        }
    }

    #[test]
    fn credential_hosts_match_registries() {
        assert_eq!(credential_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(credential_host("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(credential_host("http://127.0.0.1:5000/"), "127.0.0.1:5000");
    }
}
