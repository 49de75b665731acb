//! A raw connection handler (ASP.NET Core's `MapConnectionHandler`): no
//! hub protocol, no handshake — every message a client sends on `/echo`
//! comes straight back to it, over WebSockets, Server-Sent Events or Long
//! Polling, whichever the client negotiated. Clients connect with the
//! official client's `HttpConnection` (or any WebSocket client).
//!
//! ```sh
//! cargo run -p example-echo-connection   # LISTEN=127.0.0.1:0 picks a free port
//! ```

use futures_util::StreamExt;
use tidings::connections::{Connection, ConnectionEndpoint, ConnectionHandler, Inbound};

struct Echo;

impl ConnectionHandler for Echo {
    async fn on_connected(&self, connection: Connection, mut inbound: Inbound) {
        // Each item is what one WebSocket message or one POST carried.
        while let Some(Ok(bytes)) = inbound.next().await {
            // Waits for room in the connection's queue rather than
            // dropping a client that reads slowly.
            if !connection.send(bytes).await {
                break;
            }
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let app = axum::Router::new().nest("/echo", ConnectionEndpoint::new(Echo).into_router());
    let addr = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:5000".to_owned());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
