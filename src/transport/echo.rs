//! `GET /v1/echo`: a raw RFC 6455 echo (text and binary, no envelope, no policy)
//! for protocol conformance suites. Mounted only when
//! `gateway.diagnostics.echo: true`.
//!
//! Protocol faults end the connection the way `/v1/ws` does: a Close frame with
//! 1002 (protocol violation), 1007 (text that is not UTF-8) or 1009 (over the
//! size limit), then a bounded wait for the peer's Close reply.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};

use super::session::{CLOSE_HANDSHAKE_TIMEOUT, close_code_for};
use crate::error::CloseCode;

/// Largest message echoed (conformance suites send up to 16 MiB).
const MAX_ECHO_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Silence after which the echo connection is dropped.
const ECHO_IDLE: Duration = Duration::from_secs(60);

/// The handler.
pub(crate) async fn handle(ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(MAX_ECHO_MESSAGE_BYTES)
        .max_frame_size(MAX_ECHO_MESSAGE_BYTES)
        .on_upgrade(|mut socket| async move {
            if let Some(code) = echo(&mut socket).await {
                fail(&mut socket, code).await;
            }
            let _ = socket.flush().await;
        })
}

/// Echoes until the peer closes or breaks the protocol; returns the close code
/// to send for a protocol fault.
async fn echo(socket: &mut WebSocket) -> Option<CloseCode> {
    loop {
        let msg = match tokio::time::timeout(ECHO_IDLE, socket.next()).await {
            Ok(Some(Ok(msg))) => msg,
            Ok(Some(Err(e))) => return close_code_for(e),
            Ok(None) | Err(_) => return None,
        };
        let reply = match msg {
            Message::Text(_) | Message::Binary(_) => msg,
            // tungstenite queued the Close reply; the caller flushes it.
            Message::Close(_) => return None,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if socket.send(reply).await.is_err() {
            return None;
        }
    }
}

/// Sends our Close for a protocol fault and waits (bounded) for the reply.
async fn fail(socket: &mut WebSocket, code: CloseCode) {
    let frame = Message::Close(Some(CloseFrame {
        code: code.code(),
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
