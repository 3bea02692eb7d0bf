//! `GET /v1/echo`: a raw RFC 6455 echo (text and binary, no envelope, no policy)
//! for protocol conformance suites. Mounted only when
//! `gateway.diagnostics.echo: true`.
//!
//! It is admitted like `/v1/ws` up to the tenant: a draining gateway answers
//! 503, the handshake limiter 429, and the socket holds its place under
//! `gateway.max_connections` until it closes; an echo ends when the gateway
//! shuts down.
//!
//! Protocol faults end the connection the way `/v1/ws` does: a Close frame with
//! 1002 (protocol violation), 1007 (text that is not UTF-8) or 1009 (over the
//! size limit), then a bounded wait for the peer's Close reply.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tracing::debug;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes};

use super::listener::ConnSlot;
use super::session::{CLOSE_HANDSHAKE_TIMEOUT, close_code_for};
use super::upgrade::{not_draining, within_handshake_limit};
use super::ws::{self, NotUpgrade, Socket};
use crate::error::CloseCode;
use crate::session::Hub;

/// Largest message echoed (conformance suites send up to 16 MiB).
const MAX_ECHO_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Silence after which the echo connection is dropped.
const ECHO_IDLE: Duration = Duration::from_secs(60);

/// The handler.
pub(crate) async fn handle(
    State(gw): State<Arc<Hub>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    let remote =
        super::client_ip::client_addr(remote, req.headers(), &gw.config().gateway.trusted_proxies);
    if let Err(refusal) = not_draining(&gw).and_then(|()| within_handshake_limit(&gw, remote)) {
        return refusal.into_response();
    }
    let slot = req.extensions_mut().remove::<ConnSlot>();
    let upgrade = match ws::prepare(&mut req) {
        Ok(u) => u,
        Err(NotUpgrade::Version) => {
            let mut resp =
                (StatusCode::UPGRADE_REQUIRED, "use Sec-WebSocket-Version 13").into_response();
            resp.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return resp;
        }
        Err(NotUpgrade::Headers) => {
            return (StatusCode::BAD_REQUEST, "not a WebSocket upgrade request").into_response();
        }
    };
    let resp = upgrade.response();
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_ECHO_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_ECHO_MESSAGE_BYTES));
    let shutdown = gw.shutdown.clone();
    gw.tasks.spawn(async move {
        let _slot = slot;
        let mut socket = match upgrade.accept(config, None).await {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "echo upgrade failed after 101");
                return;
            }
        };
        let code = tokio::select! {
            code = echo(&mut socket) => code,
            () = shutdown.cancelled() => Some(CloseCode::GoingAway),
        };
        if let Some(code) = code {
            fail(&mut socket, code).await;
        }
        let _ = socket.flush().await;
    });
    resp
}

/// Echoes until the peer closes or breaks the protocol; returns the close code
/// to send for a protocol fault.
async fn echo(socket: &mut Socket) -> Option<CloseCode> {
    loop {
        let msg = match tokio::time::timeout(ECHO_IDLE, socket.next()).await {
            Ok(Some(Ok(msg))) => msg,
            Ok(Some(Err(e))) => return close_code_for(&e),
            Ok(None) | Err(_) => return None,
        };
        let reply = match msg {
            Message::Text(_) | Message::Binary(_) => msg,
            // tungstenite queued the Close reply; the caller flushes it.
            Message::Close(_) => return None,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        if socket.send(reply).await.is_err() {
            return None;
        }
    }
}

/// Sends our Close for a protocol fault and waits (bounded) for the reply.
async fn fail(socket: &mut Socket, code: CloseCode) {
    let frame = Message::Close(Some(CloseFrame {
        code: code.code().into(),
        reason: Utf8Bytes::from_static(code.label()),
    }));
    let sent = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, socket.send(frame)).await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
        while let Some(Ok(msg)) = socket.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
