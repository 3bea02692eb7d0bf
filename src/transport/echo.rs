//! `GET /v1/echo`: a raw RFC 6455 echo (text and binary, no envelope, no policy)
//! for protocol conformance suites. Mounted only when
//! `gateway.diagnostics.echo: true`.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};

/// Largest message echoed (conformance suites send up to 16 MiB).
const MAX_ECHO_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Silence after which the echo connection is dropped.
const ECHO_IDLE: Duration = Duration::from_secs(60);

/// The handler.
pub(crate) async fn handle(ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(MAX_ECHO_MESSAGE_BYTES)
        .max_frame_size(MAX_ECHO_MESSAGE_BYTES)
        .on_upgrade(|mut socket| async move {
            while let Ok(Some(Ok(msg))) = tokio::time::timeout(ECHO_IDLE, socket.next()).await {
                let reply = match msg {
                    Message::Text(_) | Message::Binary(_) => msg,
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                if socket.send(reply).await.is_err() {
                    break;
                }
            }
            let _ = socket.flush().await;
        })
}
