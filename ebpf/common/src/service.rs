//! The service port a frontend belongs to, as user space records it next to
//! the frontend's id so `skiff proxy status` and the metrics can name the
//! service behind each counter. The programs never read it.

/// The frontend is a ClusterIP.
pub const KIND_CLUSTER_IP: u8 = 1;
/// The frontend is a NodePort (on every node address).
pub const KIND_NODE_PORT: u8 = 2;
/// The frontend is an externalIP.
pub const KIND_EXTERNAL_IP: u8 = 3;
/// The frontend is a LoadBalancer ingress IP.
pub const KIND_LOAD_BALANCER: u8 = 4;

/// Longest namespace or service name (a DNS label) plus its NUL.
const NAME_LEN: usize = 64;
/// Longest port name (an IANA service name, 15 characters) plus its NUL.
const PORT_LEN: usize = 16;

/// Namespace, name and port name of a service port, NUL-padded, and the
/// kind of frontend (`KIND_*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceName {
    /// Namespace, NUL-padded.
    pub namespace: [u8; NAME_LEN],
    /// Service name, NUL-padded.
    pub name: [u8; NAME_LEN],
    /// Port name (may be empty), NUL-padded.
    pub port: [u8; PORT_LEN],
    /// `KIND_*`.
    pub kind: u8,
    /// Padding, zero.
    pub pad: [u8; 7],
}

/// `s` NUL-padded into `N` bytes, cut at a character boundary so that at
/// least one NUL remains (Kubernetes names always fit).
fn padded<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let mut end = s.len().min(N - 1);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out[..end].copy_from_slice(&s.as_bytes()[..end]);
    out
}

/// The text before the first NUL.
fn text(b: &[u8]) -> &str {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    core::str::from_utf8(&b[..end]).unwrap_or("?")
}

impl ServiceName {
    /// The record of port `port` of service `namespace/name` for a frontend of `kind`.
    pub fn new(namespace: &str, name: &str, port: &str, kind: u8) -> ServiceName {
        ServiceName {
            namespace: padded(namespace),
            name: padded(name),
            port: padded(port),
            kind,
            pad: [0; 7],
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        text(&self.namespace)
    }

    /// The service name.
    pub fn name(&self) -> &str {
        text(&self.name)
    }

    /// The port name (empty for a service's single unnamed port).
    pub fn port(&self) -> &str {
        text(&self.port)
    }

    /// The frontend kind as Kubernetes spells it.
    pub fn kind_str(&self) -> &'static str {
        match self.kind {
            KIND_CLUSTER_IP => "ClusterIP",
            KIND_NODE_PORT => "NodePort",
            KIND_EXTERNAL_IP => "ExternalIP",
            KIND_LOAD_BALANCER => "LoadBalancer",
            _ => "unknown",
        }
    }
}

impl core::fmt::Display for ServiceName {
    /// `namespace/name` or `namespace/name:port` (kube-proxy's spelling).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}/{}", self.namespace(), self.name())?;
        if !self.port().is_empty() {
            write!(f, ":{}", self.port())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn round_trips_names_and_prints_like_kube_proxy() {
        let n = ServiceName::new("default", "web", "http", KIND_NODE_PORT);
        assert_eq!(
            (n.namespace(), n.name(), n.port()),
            ("default", "web", "http")
        );
        assert_eq!(n.to_string(), "default/web:http");
        assert_eq!(n.kind_str(), "NodePort");
        let unnamed = ServiceName::new("kube-system", "kube-dns", "", KIND_CLUSTER_IP);
        assert_eq!(unnamed.to_string(), "kube-system/kube-dns");
        assert_eq!(core::mem::size_of::<ServiceName>(), 64 + 64 + 16 + 1 + 7);
    }

    #[test]
    fn overlong_names_are_cut_on_a_character_boundary() {
        let long = "é".repeat(40);
        let n = ServiceName::new(&long, "x", "a-port-name-longer-than-15", KIND_CLUSTER_IP);
        assert_eq!(n.namespace(), "é".repeat(31));
        assert_eq!(n.port(), "a-port-name-lon");
        assert_eq!(n.namespace[63], 0);
    }
}
