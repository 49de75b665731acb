//! The slow-consumer policy, end to end: a client that never reads is
//! closed once its bounded queue overflows, while a client that reads keeps
//! receiving every message.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

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

/// A WebSocket opened over a raw TCP socket with a small receive buffer,
/// handshaken (HTTP upgrade, then the hub handshake), after which the test
/// never reads from it again: its TCP window fills, as a stuck client's does.
async fn open_raw_unread(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut tcp = socket.connect(addr).await?;
    tcp.write_all(
        format!(
            "GET /hub HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    // Reads byte by byte up to the end of the upgrade answer, so that no
    // WebSocket frame after it is taken along.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        anyhow::ensure!(tcp.read(&mut byte).await? == 1, "upgrade answer cut short");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    anyhow::ensure!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
    // One masked Text frame (a client's frames must be masked) carrying
    // the hub handshake.
    let payload = b"{\"protocol\":\"json\",\"version\":1}\x1e";
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | u8::try_from(payload.len())?];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&frame).await?;
    // The answer: an unmasked Text frame holding `{}` and a separator.
    let mut answer = [0u8; 5];
    tcp.read_exact(&mut answer).await?;
    anyhow::ensure!(
        answer == [0x81, 3, b'{', b'}', 0x1e],
        "handshake answer: {answer:?}"
    );
    Ok(tcp)
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_within_the_send_timeout() -> anyhow::Result<()> {
    const SEND_TIMEOUT: Duration = Duration::from_secs(1);
    // Room for far more messages than the test sends: only the send
    // timeout can catch the stuck client.
    const CAPACITY: usize = 100_000;
    let (gone_tx, mut gone_rx) = mpsc::unbounded_channel();
    let metrics = tidings::Metrics::new();
    let endpoint = HubEndpoint::new(Recorder {
        gone: Mutex::new(Some(gone_tx)),
    })
    .name("slow")
    .metrics(&metrics)
    .options(
        HubOptions::default()
            .outbound_buffer_capacity(CAPACITY)
            .transport_send_timeout(SEND_TIMEOUT),
    );
    let hub = endpoint.context();
    let app: axum::Router = axum::Router::new().nest("/hub", endpoint.into_router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let stuck = open_raw_unread(addr).await?;
    let reader = open(&format!("ws://{addr}/hub")).await?;
    let (_reader_tx, mut reader_rx) = reader.split();

    // 32 KiB every 2 ms for 4 s. The stuck client's writes block once the
    // kernel's buffers are full: its own receive buffer (4 KiB asked for)
    // and the server's send buffer, which Linux grows to 4 MiB at most by
    // default (`net.ipv4.tcp_wmem`). Once 8 MiB have been sent, they are.
    const MESSAGE: usize = 32 * 1024;
    const FILLED: usize = 8 << 20;
    let started = tokio::time::Instant::now();
    let filled_at = Arc::new(Mutex::new(None));
    let sender = tokio::spawn({
        let filled_at = Arc::clone(&filled_at);
        async move {
            let big = "x".repeat(MESSAGE);
            let mut sent = 0usize;
            let mut ticks = tokio::time::interval(Duration::from_millis(2));
            while started.elapsed() < Duration::from_secs(4) {
                ticks.tick().await;
                hub.clients().all().send("Big", (big.clone(),)).await?;
                sent += 1;
                if sent * MESSAGE >= FILLED
                    && let Ok(mut slot) = filled_at.lock()
                {
                    slot.get_or_insert_with(|| started.elapsed());
                }
            }
            anyhow::Ok(sent)
        }
    });
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = tokio::spawn({
        let seen = Arc::clone(&seen);
        async move {
            while let Some(Ok(message)) = reader_rx.next().await {
                if let Message::Text(text) = message {
                    let big = text.as_str().matches("\"target\":\"Big\"").count();
                    seen.fetch_add(big, Ordering::Relaxed);
                }
            }
        }
    });

    let (id, error) = tokio::time::timeout(Duration::from_secs(10), gone_rx.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no disconnection"))?;
    let closed_after = started.elapsed();
    assert_eq!(
        error,
        Some(ConnectionError::SlowConsumer.to_string()),
        "connection {id}"
    );
    // Within the send timeout of the buffers being full, give or take a
    // margin for a loaded machine.
    let filled_after = filled_at
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .ok_or_else(|| anyhow::anyhow!("closed before {FILLED} bytes were sent"))?;
    assert!(
        closed_after < filled_after + SEND_TIMEOUT + Duration::from_secs(2),
        "closed after {closed_after:?}, buffers full after {filled_after:?}"
    );

    // Closed for good: the server ends the TCP connection (after the data
    // its buffers held, which the stuck client now reads to the end).
    let drained = tokio::time::timeout(Duration::from_secs(10), async move {
        use tokio::io::AsyncReadExt;
        let mut stuck = stuck;
        let mut chunk = vec![0u8; 64 * 1024];
        while stuck.read(&mut chunk).await? > 0 {}
        anyhow::Ok(())
    })
    .await;
    assert!(
        matches!(drained, Ok(Ok(()))),
        "the stuck client's connection stays open: {drained:?}"
    );

    // The well-behaved client got every message, before the stuck one was
    // closed and after.
    let sent = sender.await??;
    let all_seen = tokio::time::timeout(Duration::from_secs(10), async {
        while seen.load(Ordering::Relaxed) < sent {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        all_seen.is_ok(),
        "the reading client saw {} of {sent} messages",
        seen.load(Ordering::Relaxed)
    );
    counter.abort();

    // Counted under its own status.
    let text = metrics.render();
    let line = "signalr_server_connection_duration_seconds_count{signalr_hub=\"slow\",signalr_transport=\"web_sockets\",signalr_connection_status=\"slow_consumer\"} 1";
    assert!(text.contains(line), "no `{line}` in\n{text}");
    Ok(())
}
