//! The websocket upgrade `kubectl exec` and `kubectl attach` share: check the
//! request, pick the channel subprotocol, answer 101 and run the session on
//! the upgraded connection.

use std::future::Future;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::Response;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::{choose_protocol, is_websocket, ExecError};

/// The server side of an upgraded connection.
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// A websocket upgrade request taken apart.
pub struct Upgrade {
    /// The channel subprotocol chosen (`v5.channel.k8s.io` when offered).
    pub protocol: &'static str,
    accept: String,
    on_upgrade: OnUpgrade,
}

impl Upgrade {
    /// Takes the upgrade out of `req`, or says why it is not one we serve.
    pub fn take(req: &mut Request<Body>) -> Result<Upgrade, ExecError> {
        let headers = req.headers();
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .filter(|_| is_websocket(headers))
            .ok_or(ExecError::NotWebsocket)?;
        let protocol = choose_protocol(headers).ok_or(ExecError::NotWebsocket)?;
        let accept = derive_accept_key(key.as_bytes());
        let on_upgrade = req
            .extensions_mut()
            .remove::<OnUpgrade>()
            .ok_or(ExecError::NoUpgrade)?;
        Ok(Upgrade {
            protocol,
            accept,
            on_upgrade,
        })
    }

    /// Answers 101 and runs `session` (named `what` in logs) on the
    /// connection once the client has switched.
    pub fn respond<F, Fut>(self, what: &'static str, session: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!("{what} upgrade failed: {e}");
                    return;
                }
            };
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            session(ws).await;
        });
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(self.protocol),
        );
        if let Ok(v) = HeaderValue::from_str(&self.accept) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        resp
    }
}
