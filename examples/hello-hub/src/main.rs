//! A minimal hub in your own axum application: `/hubs/chat` beside an
//! ordinary route. Clients invoke `SendMessage(user, text)`; everyone
//! connected receives `ReceiveMessage(user, text)`.
//!
//! ```sh
//! cargo run -p example-hello-hub   # LISTEN=127.0.0.1:0 picks a free port
//! ```

use tidings::{Context, HubEndpoint, HubError, hub};

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
async fn main() -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "hello from axum" }))
        .nest("/hubs/chat", HubEndpoint::new(Chat).into_router());
    let addr = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:5000".to_owned());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
