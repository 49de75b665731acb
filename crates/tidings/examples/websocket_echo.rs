//! A WebSocket echo server with the socket settings of tidings' hub endpoints, for WebSocket
//! conformance suites (`scripts/conformance.sh`):
//!
//! ```sh
//! cargo run -p tidings --example websocket_echo -- 127.0.0.1:9001
//! ```

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on ws://{}/", listener.local_addr()?);
    tidings::serve(listener, tidings::conformance::echo_router()).await?;
    Ok(())
}
