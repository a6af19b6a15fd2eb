//! Shared helpers for the integration tests: servers, etcd, kubectl.
