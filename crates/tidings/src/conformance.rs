//! A WebSocket echo endpoint with the socket settings of hub endpoints (frame and message limits,
//! read buffer, the close status after a failed read), so that WebSocket conformance suites — the
//! Autobahn test cases, which need a server that echoes every message — can be run against the
//! WebSocket stack hub connections use. Not a public API: `scripts/conformance.sh` serves it with
//! the `websocket_echo` example.

use axum::{
    Router,
    extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade},
    response::Response,
    routing::get,
};

use crate::{
    HubOptions,
    transport::websocket::{READ_BUFFER, close_status, frame_limit},
};

/// `GET /`: a WebSocket that sends back every Text and Binary message it receives.
pub fn echo_router() -> Router {
    Router::new().route("/", get(upgrade))
}

async fn upgrade(upgrade: WebSocketUpgrade) -> Response {
    // The limits of a hub endpoint with the default options.
    let limit = frame_limit(HubOptions::default().maximum_receive_message_size);
    upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(echo)
}

async fn echo(mut socket: WebSocket) {
    loop {
        let message = match socket.recv().await {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => message,
            // The WebSocket library answers pings, and answers a Close frame
            // while it is read further (reading again sends the answer and ends).
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => continue,
            None => return,
            Some(Err(error)) => {
                // As a hub connection does after a failed read.
                let frame = CloseFrame {
                    code: close_status(&error),
                    reason: Utf8Bytes::from_static(""),
                };
                let _ = socket.send(Message::Close(Some(frame))).await;
                return;
            }
        };
        if socket.send(message).await.is_err() {
            return;
        }
    }
}
