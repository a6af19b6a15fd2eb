//! The Kubernetes-compatible API server: HTTPS, authentication, routing to
//! resource handlers, discovery and OpenAPI.

pub mod auth;
pub mod bootstrap;
pub mod convert;
pub mod defaults;
pub mod delete;
pub mod discovery;
pub mod disruption;
pub mod disruption_status;
pub mod event_ttl;
pub mod eviction;
pub mod handlers;
pub mod heap;
pub mod ipam;
pub mod list;
pub mod local_client;
pub mod metrics_api;
pub mod openapi;
pub mod patch;
pub mod pki;
pub mod podexec;
pub mod podlog;
pub mod protobuf;
pub mod registry;
pub mod selector;
pub mod server;
pub mod service_strategy;
pub mod status;
pub mod strategy;
pub mod subresources;
pub mod table;
pub mod validation;
pub mod watch;
