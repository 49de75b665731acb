//! Several servers acting as one through Redis, with no sticky sessions:
//! start this program twice on different ports with the same `REDIS_URL`,
//! connect a client to each, and a message sent through one server reaches
//! the clients of both. A load balancer may spread one client's requests
//! over the servers (round-robin): each server forwards requests of
//! connections held elsewhere to the server that holds them, at the
//! address that server advertises.
//!
//! ```sh
//! redis-server --port 6379 &
//! LISTEN=127.0.0.1:5001 REDIS_URL=redis://127.0.0.1:6379 cargo run -p example-redis-cluster &
//! LISTEN=127.0.0.1:5002 REDIS_URL=redis://127.0.0.1:6379 cargo run -p example-redis-cluster
//! ```
//!
//! Hub (`/hubs/chat`): `SendMessage(user, text)` → every client of every
//! server gets `ReceiveMessage(user, text)`.

use std::sync::Arc;

use anyhow::Context as _;
use tidings::{Context, HubError, Server, hub};
use tidings_redis::{RedisBackplane, RedisOptions};

struct Chat;

#[hub]
impl Chat {
    async fn send_message(&self, cx: &Context, user: String, text: String) -> Result<(), HubError> {
        cx.clients()
            .all()
            .send("ReceiveMessage", (user, text))
            .await?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let addr = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:5000".to_owned());
    // Bind first: the other servers reach this one at the address it
    // actually listens on (a port of 0 becomes a real port here).
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;

    // Waits for Redis (the command timeout, 5 s); after that the backplane
    // reconnects on its own whenever Redis goes away.
    let options = RedisOptions::new(redis).advertise(local.to_string());
    let backplane = RedisBackplane::connect(options)
        .await
        .context("cannot reach Redis")?;
    // Given once, the backplane carries the hubs' messages AND forwards
    // requests of connections held by the other servers.
    let server = Server::builder()
        .backplane(Arc::new(backplane))
        // Every server must use the same hub name on the backplane.
        .hub_with("/hubs/chat", Chat, |hub| hub.name("Example.ChatHub"))
        .build();

    let app: axum::Router = server.into_router();
    println!("listening on http://{local}");
    axum::serve(listener, app).await?;
    Ok(())
}
