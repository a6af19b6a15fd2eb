//! Authentication: bearer tokens from the data directory. Requests without a
//! valid token get 401, except the public health endpoints (as upstream's
//! `system:public-info-viewer`).

use axum::http::HeaderMap;

/// Paths served without credentials.
const PUBLIC: &[&str] = &["/healthz", "/livez", "/readyz"];

/// Checks bearer tokens in constant time.
pub struct Authenticator {
    tokens: Vec<String>,
}

impl Authenticator {
    /// Accepts any of `tokens`.
    pub fn new(tokens: Vec<String>) -> Self {
        Authenticator { tokens }
    }

    /// True when the request may proceed.
    pub fn allows(&self, path: &str, headers: &HeaderMap) -> bool {
        if PUBLIC.contains(&path) {
            return true;
        }
        let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some(token) = value.strip_prefix("Bearer ").map(str::trim) else {
            return false;
        };
        self.tokens
            .iter()
            .any(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", v.parse().unwrap());
        h
    }

    #[test]
    fn token_required_except_health() {
        let a = Authenticator::new(vec!["secret".into()]);
        assert!(a.allows("/api", &headers("Bearer secret")));
        assert!(!a.allows("/api", &headers("Bearer secreT")));
        assert!(!a.allows("/api", &headers("Basic c2VjcmV0")));
        assert!(!a.allows("/api", &HeaderMap::new()));
        assert!(a.allows("/readyz", &HeaderMap::new()));
    }
}
