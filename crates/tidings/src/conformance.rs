//! A WebSocket echo endpoint with the socket settings of hub endpoints (frame and message limits,
//! read buffer, the close status after a failed read), so that WebSocket conformance suites — the
//! Autobahn test cases, which need a server that echoes every message — can be run against the
//! WebSocket stack hub connections use. Not a public API: `scripts/conformance.sh` serves it with
//! the `websocket_echo` example.

use axum::{Router, extract::Request, response::Response, routing::get};
use futures_util::{SinkExt, StreamExt};
use tungstenite::{Message, Utf8Bytes, protocol::CloseFrame};

use crate::{
    HubOptions,
    connections::transport::{
        frames::close_status,
        socket::{Upgrade, WebSocket},
        websocket::socket_config,
    },
};

/// `GET /`: a WebSocket that sends back every Text and Binary message it receives.
pub fn echo_router() -> Router {
    Router::new().route("/", get(upgrade))
}

async fn upgrade(request: Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    // The settings of a hub endpoint with the default options.
    let config = socket_config(HubOptions::default().maximum_receive_message_size);
    match Upgrade::from_parts(&mut parts, config).await {
        Ok(upgrade) => upgrade.on_upgrade(echo),
        Err(response) => response,
    }
}

async fn echo(mut socket: WebSocket) {
    loop {
        let message = match socket.next().await {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => message,
            // The WebSocket library answers pings, and answers a Close frame
            // while it is read further (reading again sends the answer and ends).
            Some(Ok(
                Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_),
            )) => continue,
            None => return,
            Some(Err(error)) => {
                // As a hub connection does after a failed read.
                let frame = CloseFrame {
                    code: close_status(&error).into(),
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
