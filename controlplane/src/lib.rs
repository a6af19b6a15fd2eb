//! The skiff control plane: a Kubernetes-compatible API server over a durable
//! store (embedded redb or etcd); the scheduler and controllers join it later.

pub mod apiserver;
pub mod controllers;
mod pack;
pub mod scheduler;
pub mod store;
