//! The slow-consumer policy, end to end: a client that never reads is
//! closed once its bounded queue overflows, while a client that reads keeps
//! receiving every message.

use std::{sync::Mutex, time::Duration};

use futures_util::{SinkExt, StreamExt};
use tidings::{ConnectionError, Context, HubEndpoint, HubOptions, hub};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// (connection id, disconnection error) of every connection that ended.
type Departures = mpsc::UnboundedSender<(String, Option<String>)>;

struct Recorder {
    gone: Mutex<Option<Departures>>,
}

#[hub]
impl Recorder {
    async fn ping(&self) -> &'static str {
        "pong"
    }

    #[on_disconnected]
    async fn gone(&self, cx: &Context, error: Option<ConnectionError>) {
        if let Ok(slot) = self.gone.lock()
            && let Some(tx) = slot.as_ref()
        {
            let _ = tx.send((cx.connection_id().to_owned(), error.map(|e| e.to_string())));
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(url: &str) -> anyhow::Result<Socket> {
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await?;
    socket
        .send(Message::text("{\"protocol\":\"json\",\"version\":1}\u{1e}"))
        .await?;
    match socket.next().await {
        Some(Ok(Message::Text(text))) => {
            anyhow::ensure!(text.as_str() == "{}\u{1e}", "handshake: {text}")
        }
        other => anyhow::bail!("no handshake answer: {other:?}"),
    }
    Ok(socket)
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_and_others_get_everything() -> anyhow::Result<()> {
    let (gone_tx, mut gone_rx) = mpsc::unbounded_channel();
    let endpoint = HubEndpoint::new(Recorder {
        gone: Mutex::new(Some(gone_tx)),
    })
    .options(HubOptions::default().outbound_buffer_capacity(8));
    let hub = endpoint.context();
    let app: axum::Router = axum::Router::new().nest("/hub", endpoint.into_router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/hub", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The stalled client completes its handshake and then never reads.
    let stalled = open(&url).await?;
    let reader = open(&url).await?;
    let (mut reader_tx, mut reader_rx) = reader.split();
    const COUNT: usize = 400;
    let counter = tokio::spawn(async move {
        let mut seen = 0usize;
        while let Some(Ok(message)) = reader_rx.next().await {
            if let Message::Text(text) = message {
                seen += text.as_str().matches("\"target\":\"Big\"").count();
                if seen == COUNT {
                    break;
                }
            }
        }
        (seen, reader_rx)
    });

    // 400 × 64 KiB = 25 MiB: far more than the socket buffers of the stalled client.
    let big = "x".repeat(64 * 1024);
    for _ in 0..COUNT {
        hub.clients().all().send("Big", (big.clone(),)).await?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let (id, error) = tokio::time::timeout(Duration::from_secs(10), gone_rx.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no disconnection"))?;
    assert_eq!(
        error,
        Some(ConnectionError::SlowConsumer.to_string()),
        "connection {id}"
    );
    let (seen, mut reader_rx) = tokio::time::timeout(Duration::from_secs(10), counter).await??;
    assert_eq!(seen, COUNT);

    // The reading client is still served.
    reader_tx
        .send(Message::text(
            "{\"type\":1,\"invocationId\":\"1\",\"target\":\"Ping\",\"arguments\":[]}\u{1e}",
        ))
        .await?;
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(message)) = reader_rx.next().await {
            if let Message::Text(text) = message
                && text.as_str().contains("\"invocationId\":\"1\"")
            {
                return Some(text.as_str().to_owned());
            }
        }
        None
    })
    .await?;
    assert_eq!(
        answer.as_deref(),
        Some("{\"type\":3,\"invocationId\":\"1\",\"result\":\"pong\"}\u{1e}")
    );
    drop(stalled);
    Ok(())
}
