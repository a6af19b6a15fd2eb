//! The in-process client of the server's own controllers and scheduler.
//!
//! They run in the server's process, so their requests go straight to the
//! router as `http::Request`s: no TCP connection, no TLS records, no HTTP/1
//! framing on either side — every pod a ReplicaSet creates and every binding
//! the scheduler writes used to be encrypted, framed, parsed and decrypted
//! twice. The requests still pass authentication (they carry the admin
//! token) and everything after it, exactly as a remote client's would, and
//! they name their field manager through the User-Agent as before. Each
//! request is served on a task of its own, as a connection's would be: a
//! controller that issues many requests from one task (a ReplicaSet's
//! slow-start batch) must not have them all handled on that one task.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::header::{AUTHORIZATION, USER_AGENT};
use axum::http::{HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::Service;

/// Namespace of namespaced requests that name none (a kubeconfig's default).
const DEFAULT_NAMESPACE: &str = "default";

/// The User-Agent of the controller manager: the server records
/// "skiff-controller-manager" as the field manager of what the controllers
/// and the scheduler write (upstream takes it up to the first '/').
const CONTROLLER_MANAGER: &str = concat!("skiff-controller-manager/", env!("CARGO_PKG_VERSION"));

/// Errors building the in-process client.
#[derive(Debug, thiserror::Error)]
pub enum LocalClientError {
    /// The admin token cannot be sent as a header value.
    #[error("the admin token is not a valid HTTP header value (check admin.token in the data directory)")]
    Token,
}

/// A kube client whose requests `app` serves in this process.
pub fn client(app: Router, token: &str) -> Result<kube::Client, LocalClientError> {
    let authorization =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| LocalClientError::Token)?;
    Ok(kube::Client::new(
        InProcess { app, authorization },
        DEFAULT_NAMESPACE,
    ))
}

/// The router as a client transport, adding the credentials.
#[derive(Clone)]
struct InProcess {
    app: Router,
    authorization: HeaderValue,
}

impl Service<Request<kube::client::Body>> for InProcess {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        <Router as Service<Request<kube::client::Body>>>::poll_ready(&mut self.app, cx)
    }

    fn call(&mut self, mut req: Request<kube::client::Body>) -> Self::Future {
        let headers = req.headers_mut();
        headers.insert(AUTHORIZATION, self.authorization.clone());
        if !headers.contains_key(USER_AGENT) {
            headers.insert(USER_AGENT, HeaderValue::from_static(CONTROLLER_MANAGER));
        }
        let served = tokio::spawn(self.app.call(req));
        Box::pin(async move {
            Ok(match served.await {
                Ok(Ok(response)) => response,
                Err(e) => {
                    tracing::error!("in-process request failed: {e}");
                    StatusCode::INTERNAL_SERVER_ERROR.into_response()
                }
            })
        })
    }
}
