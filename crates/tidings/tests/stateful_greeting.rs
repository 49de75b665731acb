//! A new stateful-reconnect connection holds its numbered messages until
//! the client has spoken after its handshake.
//!
//! The official JavaScript client starts counting the server's messages
//! only after its handshake completes, a task after the one that read the
//! handshake answer, so a message that came in the same read was handled
//! but not counted: the client was one behind the server's numbering, and
//! the next reconnect replayed it the last message it had (seen in rolling
//! restarts under load, where a broadcast often follows the handshake
//! answer at once). Every client sends a Ping first; the JavaScript one
//! once it counts.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::{SinkExt, StreamExt};
use tidings::{Context, HubEndpoint, HubOptions, hub};
use tokio_tungstenite::tungstenite::Message;

/// Greets every new connection at once, as a busy hub's broadcast would
/// reach a connection right after its handshake.
struct Greeter;

#[hub]
impl Greeter {
    #[on_connected]
    async fn connected(&self, cx: &Context) {
        let _ = cx.clients().caller().send("Hello", ("first",)).await;
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A stateful connection through its handshake (protocol version 2).
async fn connect() -> anyhow::Result<Socket> {
    let endpoint =
        HubEndpoint::new(Greeter).options(HubOptions::default().allow_stateful_reconnects(true));
    let app: axum::Router = axum::Router::new().nest("/hub", endpoint.into_router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(tidings::serve(listener, app).into_future());

    let stream = tokio::net::TcpStream::connect(address).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<bytes::Bytes>,
    >(hyper_util::rt::TokioIo::new(stream))
    .await?;
    tokio::spawn(connection);
    let request = axum::http::Request::post(format!(
        "http://{address}/hub/negotiate?negotiateVersion=1&useStatefulReconnect=true"
    ))
    .header("host", address.to_string())
    .body(http_body_util::Empty::new())?;
    let response = sender.send_request(request).await?;
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await?
        .to_bytes();
    let negotiated: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(negotiated["useStatefulReconnect"], true, "{negotiated}");
    let token = negotiated["connectionToken"].as_str().context("no token")?;

    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{address}/hub?id={token}")).await?;
    socket
        .send(Message::text("{\"protocol\":\"json\",\"version\":2}\u{1e}"))
        .await?;
    assert_eq!(
        next(&mut socket, Duration::from_secs(5)).await?,
        Some("{}\u{1e}".to_owned())
    );
    Ok(socket)
}

/// The next data message within `wait`; `None` if none came.
async fn next(socket: &mut Socket, wait: Duration) -> anyhow::Result<Option<String>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => return Ok(None),
            Ok(message) => {
                if let Message::Text(text) = message.context("socket ended")?? {
                    return Ok(Some(text.to_string()));
                }
            }
        }
    }
}

const HELLO: &str = "{\"type\":1,\"target\":\"Hello\",\"arguments\":[\"first\"]}\u{1e}";

#[tokio::test]
async fn numbered_messages_wait_for_the_clients_first_words() -> anyhow::Result<()> {
    let mut socket = connect().await?;
    assert_eq!(
        next(&mut socket, Duration::from_millis(200)).await?,
        None,
        "nothing numbered right after the handshake answer"
    );
    socket.send(Message::text("{\"type\":6}\u{1e}")).await?;
    assert_eq!(
        next(&mut socket, Duration::from_secs(5)).await?,
        Some(HELLO.to_owned())
    );
    Ok(())
}

#[tokio::test]
async fn a_silent_client_gets_them_after_a_grace() -> anyhow::Result<()> {
    let mut socket = connect().await?;
    let start = Instant::now();
    assert_eq!(
        next(&mut socket, Duration::from_secs(5)).await?,
        Some(HELLO.to_owned())
    );
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "held for the grace only: {waited:?}"
    );
    Ok(())
}
