//! The slow-consumer rule, end to end: a client that does not read is
//! closed once its bounded queue overflows, or once it has made no write
//! progress for the send timeout (on each transport), while a client that
//! reads keeps receiving every message.

use std::{
    future::IntoFuture,
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
    let metrics = tidings::Metrics::new();
    let endpoint = HubEndpoint::new(Recorder {
        gone: Mutex::new(Some(gone_tx)),
    })
    .name("slow")
    .metrics(&metrics)
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
    expect_counted(&metrics, "web_sockets")?;
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

/// The send timeout of the servers of the tests below.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// A hub server (on `tidings::serve`) whose queues have room for far more messages than a test
/// sends, so that only the send timeout can catch a stuck client: its
/// address, hub context, metrics, and the departures of its connections.
async fn slow_server() -> anyhow::Result<(
    std::net::SocketAddr,
    tidings::HubContext,
    tidings::Metrics,
    mpsc::UnboundedReceiver<(String, Option<String>)>,
)> {
    let (gone_tx, gone_rx) = mpsc::unbounded_channel();
    let metrics = tidings::Metrics::new();
    let endpoint = HubEndpoint::new(Recorder {
        gone: Mutex::new(Some(gone_tx)),
    })
    .name("slow")
    .metrics(&metrics)
    .options(
        HubOptions::default()
            .outbound_buffer_capacity(100_000)
            .transport_send_timeout(SEND_TIMEOUT),
    );
    let hub = endpoint.context();
    let app: axum::Router = axum::Router::new().nest("/hub", endpoint.into_router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(tidings::serve(listener, app).into_future());
    Ok((addr, hub, metrics, gone_rx))
}

/// Opens a TCP connection with a small receive buffer (4 KiB asked for),
/// sends `request` and reads the answer's head, byte by byte so that
/// nothing after it is taken along. The test then stops reading: the
/// connection's TCP window fills, as a stuck client's does.
async fn open_unread(
    addr: std::net::SocketAddr,
    request: &str,
) -> anyhow::Result<(tokio::net::TcpStream, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut tcp = socket.connect(addr).await?;
    tcp.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        anyhow::ensure!(tcp.read(&mut byte).await? == 1, "answer cut short");
        head.push(byte[0]);
    }
    Ok((tcp, String::from_utf8_lossy(&head).into_owned()))
}

/// A flood of large broadcasts, started by [`flood`].
struct Flood {
    started: tokio::time::Instant,
    /// When enough had been sent to fill every buffer between the server
    /// and a client that does not read.
    filled_at: Arc<Mutex<Option<Duration>>>,
    /// How many messages were sent, once the flood is over.
    sent: tokio::task::JoinHandle<anyhow::Result<usize>>,
}

/// The size of one message of a [`flood`].
const MESSAGE: usize = 32 * 1024;
/// What fills the buffers of a client that does not read: its own receive
/// buffer (4 KiB), the server's send buffer, which Linux grows to 4 MiB at
/// most by default (`net.ipv4.tcp_wmem`), and the HTTP server's, with room
/// to spare.
const FILLED: usize = 8 << 20;

/// Broadcasts a 32 KiB message every 2 ms for 4 s.
fn flood(hub: tidings::HubContext) -> Flood {
    let started = tokio::time::Instant::now();
    let filled_at = Arc::new(Mutex::new(None));
    let sent = tokio::spawn({
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
            Ok(sent)
        }
    });
    Flood {
        started,
        filled_at,
        sent,
    }
}

impl Flood {
    /// Asserts that the stuck client is closed as a slow consumer within
    /// the send timeout of its buffers being full, give or take a margin
    /// for a loaded machine, and counted as one under `transport`.
    async fn expect_slow_consumer_closed(
        &self,
        gone: &mut mpsc::UnboundedReceiver<(String, Option<String>)>,
        metrics: &tidings::Metrics,
        transport: &str,
    ) -> anyhow::Result<()> {
        let (id, error) = tokio::time::timeout(Duration::from_secs(10), gone.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("no disconnection"))?;
        let closed_after = self.started.elapsed();
        assert_eq!(
            error,
            Some(ConnectionError::SlowConsumer.to_string()),
            "connection {id}"
        );
        let filled_after = self
            .filled_at
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .ok_or_else(|| anyhow::anyhow!("closed before {FILLED} bytes were sent"))?;
        assert!(
            closed_after < filled_after + SEND_TIMEOUT + Duration::from_secs(2),
            "closed after {closed_after:?}, buffers full after {filled_after:?}"
        );
        expect_counted(metrics, transport)
    }
}

/// Asserts that the metrics count one connection of `transport` closed
/// as a slow consumer.
fn expect_counted(metrics: &tidings::Metrics, transport: &str) -> anyhow::Result<()> {
    let text = metrics.render();
    let line = format!(
        "signalr_server_connection_duration_seconds_count{{signalr_hub=\"slow\",signalr_transport=\"{transport}\",signalr_connection_status=\"slow_consumer\"}} 1"
    );
    anyhow::ensure!(text.contains(&line), "no `{line}` in\n{text}");
    Ok(())
}

/// Asserts that the server has closed the stuck client's TCP connection:
/// it ends (after the data the kernel's buffers held, which the client now
/// reads).
async fn expect_closed(mut stuck: tokio::net::TcpStream) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let drained = tokio::time::timeout(Duration::from_secs(10), async move {
        let mut chunk = vec![0u8; 64 * 1024];
        while stuck.read(&mut chunk).await? > 0 {}
        anyhow::Ok(())
    })
    .await;
    anyhow::ensure!(
        matches!(drained, Ok(Ok(()))),
        "the stuck client's connection stays open: {drained:?}"
    );
    Ok(())
}

/// The hub handshake of the tests' clients.
const HANDSHAKE: &[u8] = b"{\"protocol\":\"json\",\"version\":1}\x1e";

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_within_the_send_timeout() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, hub, metrics, mut gone) = slow_server().await?;
    let upgrade = format!(
        "GET /hub HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let (mut stuck, head) = open_unread(addr, &upgrade).await?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
    // The hub handshake in one masked Text frame (a client's frames are
    // masked), and its answer: an unmasked Text frame holding `{}`.
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | u8::try_from(HANDSHAKE.len())?];
    frame.extend_from_slice(&mask);
    frame.extend(HANDSHAKE.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stuck.write_all(&frame).await?;
    let mut answer = [0u8; 5];
    stuck.read_exact(&mut answer).await?;
    anyhow::ensure!(
        answer == [0x81, 3, b'{', b'}', 0x1e],
        "handshake answer: {answer:?}"
    );

    // A well-behaved client on the same server counts what it gets.
    let reader = open(&format!("ws://{addr}/hub")).await?;
    let (_reader_tx, mut reader_rx) = reader.split();
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

    let flood = flood(hub);
    flood
        .expect_slow_consumer_closed(&mut gone, &metrics, "web_sockets")
        .await?;

    expect_closed(stuck).await?;

    // The well-behaved client got every message, before the stuck one was
    // closed and after.
    let sent = flood.sent.await??;
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
    Ok(())
}

#[tokio::test]
async fn a_server_sent_events_client_that_stops_reading_is_closed_within_the_send_timeout()
-> anyhow::Result<()> {
    let (addr, hub, metrics, mut gone) = slow_server().await?;
    let token = negotiate(addr).await?;
    let path = format!("/hub?id={token}");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    let (stream, head) = open_unread(addr, &request).await?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "event stream refused: {head}"
    );
    assert_eq!(http(addr, "POST", &path, HANDSHAKE).await?.0, 200);

    let flood = flood(hub);
    flood
        .expect_slow_consumer_closed(&mut gone, &metrics, "server_sent_events")
        .await?;
    flood.sent.abort();
    expect_closed(stream).await
}

#[tokio::test]
async fn a_long_polling_client_that_stops_polling_is_closed_within_the_send_timeout()
-> anyhow::Result<()> {
    let (addr, hub, metrics, mut gone) = slow_server().await?;
    let token = negotiate(addr).await?;
    let path = format!("/hub?id={token}");
    // The first poll is answered at once; the handshake goes by POST and
    // its answer comes with the next poll.
    assert_eq!(http(addr, "GET", &path, b"").await?.0, 200);
    assert_eq!(http(addr, "POST", &path, HANDSHAKE).await?.0, 200);
    let (status, body) = http(addr, "GET", &path, b"").await?;
    assert_eq!((status, body.as_slice()), (200, b"{}\x1e".as_slice()));

    // The client polls no more while messages are sent to it: well within
    // the disconnect timeout (15 s), it is closed as a slow consumer.
    let started = tokio::time::Instant::now();
    let sender = tokio::spawn(async move {
        while started.elapsed() < Duration::from_secs(5) {
            hub.clients().all().send("Small", ("x",)).await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::Ok(())
    });
    let (id, error) = tokio::time::timeout(Duration::from_secs(10), gone.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no disconnection"))?;
    let closed_after = started.elapsed();
    sender.abort();
    assert_eq!(
        error,
        Some(ConnectionError::SlowConsumer.to_string()),
        "connection {id}"
    );
    assert!(
        closed_after >= SEND_TIMEOUT && closed_after < SEND_TIMEOUT + Duration::from_secs(1),
        "closed after {closed_after:?}"
    );
    // A poll now finds the connection over.
    assert_eq!(http(addr, "GET", &path, b"").await?.0, 204);
    expect_counted(&metrics, "long_polling")
}

/// One HTTP/1.1 request on a connection of its own: the status and the
/// body (the answers read here carry a length, not chunks).
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<(u16, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await??;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no end of headers"))?;
    let status = std::str::from_utf8(answer.get(9..12).unwrap_or_default())?.parse()?;
    Ok((status, answer[split + 4..].to_vec()))
}

/// Negotiates a connection; its token.
async fn negotiate(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    let (status, body) = http(addr, "POST", "/hub/negotiate?negotiateVersion=1", b"").await?;
    anyhow::ensure!(status == 200, "negotiate: {status}");
    let answer: serde_json::Value = serde_json::from_slice(&body)?;
    answer["connectionToken"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no token in {answer}"))
}
