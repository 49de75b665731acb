//! A plain WebSocket client's view of a hub connection, for tests that
//! speak the JSON hub protocol by hand.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next Text message that is not a keep-alive Ping, within 5 s.
pub(crate) async fn next_text(socket: &mut Socket) -> anyhow::Result<String> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("socket closed"))??;
        if let Message::Text(text) = message {
            let text = text.as_str().to_owned();
            if text != "{\"type\":6}\u{1e}" {
                return Ok(text);
            }
        }
    }
}
