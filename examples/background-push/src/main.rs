//! Pushing from a background task: a `HubContext` reaches the hub's clients
//! from anywhere in the application, outside any hub method. Here a task
//! sends every client `Tick(count)` once a second (`TICK_MS` changes the
//! period); clients only listen. The hub method `Count()` reads the same
//! counter, to show state shared between the task and the hub.
//!
//! ```sh
//! cargo run -p example-background-push   # LISTEN=127.0.0.1:0 picks a free port
//! ```
//!
//! ```js
//! import * as signalR from "@microsoft/signalr";
//! const c = new signalR.HubConnectionBuilder().withUrl("http://127.0.0.1:5000/hubs/clock").build();
//! c.on("Tick", (count) => console.log("tick", count));
//! await c.start();
//! ```

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tidings::{HubContext, HubEndpoint, hub};

struct Clock {
    ticks: Arc<AtomicU64>,
}

#[hub]
impl Clock {
    async fn count(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }
}

async fn tick(context: HubContext, ticks: Arc<AtomicU64>, period: Duration) {
    let mut interval = tokio::time::interval(period);
    loop {
        interval.tick().await;
        let count = ticks.fetch_add(1, Ordering::Relaxed) + 1;
        // A failed send concerns this tick only; the next one tries again.
        if let Err(error) = context.clients().all().send("Tick", (count,)).await {
            tracing::warn!(%error, "tick not sent");
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt::init();
    let period = std::env::var("TICK_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::from_secs(1), Duration::from_millis);
    let ticks = Arc::new(AtomicU64::new(0));
    let endpoint = HubEndpoint::new(Clock {
        ticks: Arc::clone(&ticks),
    });
    // Take the context before the endpoint becomes a router.
    tokio::spawn(tick(endpoint.context(), ticks, period));

    let app = axum::Router::new().nest("/hubs/clock", endpoint.into_router());
    let addr = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:5000".to_owned());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
