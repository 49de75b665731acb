//! The Rust client: connects to a hub with `SendMessage(user, text)` →
//! `ReceiveMessage(user, text)` (the hello-hub example, or the standalone
//! server's `/hubs/chat`), sends a message and prints it when the server
//! sends it back.
//!
//! ```sh
//! cargo run -p example-hello-hub &
//! cargo run -p example-rust-client                  # HUB_URL=http://host:port/hubs/chat for another server
//! ```

use std::time::Duration;

use anyhow::Context as _;
use tidings_client::HubConnectionBuilder;
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url =
        std::env::var("HUB_URL").unwrap_or_else(|_| "http://127.0.0.1:5000/hubs/chat".to_owned());
    let connection = HubConnectionBuilder::new(url).build()?;

    // Handlers run on the client's own task; hand the message to `main`.
    let (received, mut messages) = mpsc::unbounded_channel();
    connection.on("ReceiveMessage", move |(user, text): (String, String)| {
        let received = received.clone();
        async move {
            let _ = received.send(format!("{user}: {text}"));
        }
    });

    connection.start().await?;
    connection
        .invoke::<()>("SendMessage", ("rust", "hello from Rust"))
        .await?;
    let message = tokio::time::timeout(Duration::from_secs(5), messages.recv())
        .await
        .context("no ReceiveMessage within 5 s")?
        .context("the connection closed")?;
    println!("received {message}");
    connection.stop().await;
    Ok(())
}
