//! The standalone server over HTTP/2 and TLS, end to end: the `tidings`
//! binary is started on a free port and driven with hyper (HTTP/1.1 and
//! HTTP/2), rustls and tungstenite clients.
//!
//! * Several Server-Sent Events streams (`/dashboard/stream` and the SignalR
//!   SSE transport) share one TCP connection, with h2c and with TLS (ALPN
//!   `h2`, certificate generated here).
//! * HTTP/1.1 and WebSockets keep working, with and without TLS.
//! * `/dashboard/stream` resumes after `Last-Event-ID`.
//! * SIGTERM ends open streams and the process exits.

#[path = "../../tidings/tests/support/http_client.rs"]
mod http_client;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_client::{Client, Events};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};
use tokio_tungstenite::tungstenite::Message;

/// The record separator ending every SignalR JSON message.
const RS: char = '\u{1e}';

/// A running `tidings` process, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Starts the binary with a fast metrics period and `extra` arguments,
    /// and waits for its "listening on" line.
    fn start(extra: &[&str]) -> anyhow::Result<Server> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
            // The tests talk to the test hub, which is served only when asked for.
            .args([
                "--listen",
                "127.0.0.1:0",
                "--metrics-period-ms",
                "100",
                "--test-hub",
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            bail!("unexpected first line: {line:?}");
        };
        let addr = url.split("://").nth(1).context("no address")?.parse()?;
        Ok(Server { child, addr })
    }

    fn http_base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM
/// files into `dir`; returns the certificate for the client's trust store.
fn certificate(dir: &Path) -> anyhow::Result<CertificateDer<'static>> {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    std::fs::write(dir.join("cert.pem"), cert.pem())?;
    std::fs::write(dir.join("key.pem"), signing_key.serialize_pem())?;
    Ok(cert.der().clone())
}

/// A server over TLS with a fresh certificate.
fn start_tls() -> anyhow::Result<(Server, CertificateDer<'static>, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let cert = certificate(dir.path())?;
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    let server = Server::start(&[
        "--tls-cert",
        cert_path.to_str().context("path")?,
        "--tls-key",
        key_path.to_str().context("path")?,
    ])?;
    Ok((server, cert, dir))
}

/// A TLS connection trusting `cert` only, offering `alpn`.
async fn tls_connect(
    addr: SocketAddr,
    cert: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> anyhow::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost")?;
    Ok(TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?)
}

/// Opens `/dashboard/stream` and checks the response is a clean HTTP/2
/// event stream when `h2` is set.
async fn dashboard_stream(client: &mut Client, h2: bool) -> anyhow::Result<Events> {
    let response = client.get("/dashboard/stream", &[]).await?;
    ensure!(response.status() == 200, "status {}", response.status());
    if h2 {
        ensure!(response.version() == http::Version::HTTP_2);
        ensure!(response.headers().get("connection").is_none());
    }
    Events::new(response)
}

/// Reads `count` metrics events; their ids must be consecutive. Returns the
/// last id.
async fn metrics(events: &mut Events, count: usize) -> anyhow::Result<u64> {
    let mut previous: Option<u64> = None;
    for _ in 0..count {
        let event = events.next().await?.context("the stream ended")?;
        let id: u64 = event.id.as_deref().context("no id")?.parse()?;
        let sample: serde_json::Value = serde_json::from_str(&event.data)?;
        ensure!(sample["uptimeSeconds"].is_u64(), "not a sample: {sample}");
        ensure!(sample["timestamp"].is_string(), "not a sample: {sample}");
        if let Some(previous) = previous {
            ensure!(id == previous + 1, "id {id} after {previous}");
        }
        previous = Some(id);
    }
    previous.context("no events")
}

/// A SignalR connection over the Server-Sent Events transport, made of
/// requests on `client`'s connection: negotiate, the event stream, and the
/// handshake POST.
struct SignalRSse {
    hub: String,
    token: String,
    events: Events,
}

impl SignalRSse {
    async fn connect(client: &mut Client, hub: &str) -> anyhow::Result<SignalRSse> {
        let negotiate = client
            .send(
                "POST",
                &format!("{hub}/negotiate?negotiateVersion=1"),
                &[],
                None,
            )
            .await?;
        let negotiate: serde_json::Value =
            serde_json::from_str(&http_client::text(negotiate).await?)?;
        let token = negotiate["connectionToken"]
            .as_str()
            .context("no token")?
            .to_owned();
        let response = client
            .get(
                &format!("{hub}?id={token}"),
                &[("accept", "text/event-stream")],
            )
            .await?;
        if response.version() == http::Version::HTTP_2 {
            // Connection-specific headers are forbidden in HTTP/2.
            for name in ["connection", "keep-alive", "transfer-encoding", "upgrade"] {
                ensure!(response.headers().get(name).is_none(), "{name} header");
            }
        }
        let events = Events::new(response)?;
        let mut connection = SignalRSse {
            hub: hub.to_owned(),
            token,
            events,
        };
        connection
            .post(
                client,
                &format!("{{\"protocol\":\"json\",\"version\":1}}{RS}"),
            )
            .await?;
        let answer = connection.next_message().await?;
        ensure!(answer == "{}", "handshake answer {answer}");
        Ok(connection)
    }

    async fn post(&self, client: &mut Client, body: &str) -> anyhow::Result<()> {
        let response = client
            .send(
                "POST",
                &format!("{}?id={}", self.hub, self.token),
                &[("content-type", "text/plain")],
                Some(Bytes::from(body.to_owned())),
            )
            .await?;
        ensure!(
            response.status() == 200,
            "POST status {}",
            response.status()
        );
        Ok(())
    }

    /// The next hub message (one SSE event holds one message), without its
    /// record separator; pings are skipped.
    async fn next_message(&mut self) -> anyhow::Result<String> {
        loop {
            let event = self.events.next().await?.context("the stream ended")?;
            let message = event.data.trim_end_matches(RS).to_owned();
            if message != "{\"type\":6}" {
                return Ok(message);
            }
        }
    }
}

/// Opens three dashboard streams and two SignalR SSE connections on
/// `client`'s single connection and checks every one of them receives.
async fn many_streams_on_one_connection(mut client: Client, h2: bool) -> anyhow::Result<()> {
    let mut plain = Vec::new();
    for _ in 0..3 {
        plain.push(dashboard_stream(&mut client, h2).await?);
    }
    let mut dashboard = SignalRSse::connect(&mut client, "/hubs/dashboard").await?;
    let mut test = SignalRSse::connect(&mut client, "/hubs/test").await?;
    // While all streams are open, an invocation travels as a POST on the
    // same connection and its completion comes back on the test stream.
    test.post(
        &mut client,
        &format!("{{\"type\":1,\"invocationId\":\"1\",\"target\":\"Echo\",\"arguments\":[\"over one connection\"]}}{RS}"),
    )
    .await?;
    let completion: serde_json::Value = serde_json::from_str(&test.next_message().await?)?;
    ensure!(completion["type"] == 3 && completion["result"] == "over one connection");
    for events in &mut plain {
        metrics(events, 3).await?;
    }
    // Metrics arrive on the hub stream too; once the sample was taken
    // after both hub connections opened, it counts both.
    for _ in 0..20 {
        let pushed: serde_json::Value = serde_json::from_str(&dashboard.next_message().await?)?;
        ensure!(
            pushed["target"] == "Metrics",
            "expected a Metrics invocation: {pushed}"
        );
        if pushed["arguments"][0]["connections"].as_u64() >= Some(2) {
            return Ok(());
        }
    }
    bail!("the metrics never counted both hub connections")
}

#[tokio::test]
async fn several_event_streams_share_one_h2c_connection() -> anyhow::Result<()> {
    let server = Server::start(&[])?;
    // One TCP connection, HTTP/2 by prior knowledge: every request below is
    // a stream of it.
    let tcp = TcpStream::connect(server.addr).await?;
    let client = Client::http2(tcp, &server.http_base()).await?;
    many_streams_on_one_connection(client, true).await
}

#[tokio::test]
async fn tls_negotiates_h2_and_shares_one_connection() -> anyhow::Result<()> {
    let (server, cert, _dir) = start_tls()?;
    let tls = tls_connect(server.addr, &cert, &[b"h2", b"http/1.1"]).await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let client = Client::http2(tls, &format!("https://localhost:{}", server.addr.port())).await?;
    many_streams_on_one_connection(client, true).await
}

#[tokio::test]
async fn tls_still_serves_http1_and_websockets() -> anyhow::Result<()> {
    let (server, cert, _dir) = start_tls()?;
    let base = format!("https://localhost:{}", server.addr.port());

    // A client that offers only HTTP/1.1 gets it; one without ALPN too.
    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let tls = tls_connect(server.addr, &cert, alpn).await?;
        let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        assert_eq!(negotiated, alpn.first().map(|p| p.to_vec()));
        let mut client = Client::http1(tls, &base).await?;
        let response = client.get("/health", &[]).await?;
        assert_eq!(response.version(), http::Version::HTTP_11);
        assert_eq!(http_client::text(response).await?, "ok");
        let mut events = dashboard_stream(&mut client, false).await?;
        metrics(&mut events, 2).await?;
    }

    // A SignalR WebSocket connection over TLS (HTTP/1.1 upgrade).
    let tls = tls_connect(server.addr, &cert, &[b"http/1.1"]).await?;
    let (mut socket, _) = tokio_tungstenite::client_async(
        format!("wss://localhost:{}/hubs/test", server.addr.port()),
        tls,
    )
    .await?;
    socket
        .send(Message::text(format!(
            "{{\"protocol\":\"json\",\"version\":1}}{RS}"
        )))
        .await?;
    socket
        .send(Message::text(format!(
            "{{\"type\":1,\"invocationId\":\"7\",\"target\":\"GetTransport\",\"arguments\":[]}}{RS}"
        )))
        .await?;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + http_client::EVENT_TIMEOUT;
    while !seen.contains("\"invocationId\":\"7\"") {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .context("no completion over wss")?
            .context("socket closed")??;
        if let Message::Text(text) = frame {
            seen.push_str(text.as_str());
        }
    }
    assert!(
        seen.starts_with(&format!("{{}}{RS}")),
        "handshake first: {seen}"
    );
    assert!(seen.contains("\"result\":\"WebSockets\""), "{seen}");
    Ok(())
}

#[test]
fn an_unusable_certificate_stops_the_server_with_a_clear_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    certificate(dir.path())?;
    let cert = dir.path().join("cert.pem");
    let missing = dir.path().join("missing.pem");
    // The certificate given as its own key, and a key file that is not there.
    for (cert, key, expected) in [
        (&cert, &cert, "no valid private key"),
        (&cert, &missing, "cannot read"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()?;
        ensure!(!output.status.success(), "the server must not start");
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(stderr.contains(expected), "stderr: {stderr}");
        ensure!(!String::from_utf8_lossy(&output.stdout).contains("listening"));
    }
    Ok(())
}

#[tokio::test]
async fn http1_and_websockets_share_the_port_with_h2c() -> anyhow::Result<()> {
    let server = Server::start(&[])?;
    let mut h1 = Client::http1(TcpStream::connect(server.addr).await?, &server.http_base()).await?;
    let response = h1.get("/health", &[]).await?;
    assert_eq!(response.version(), http::Version::HTTP_11);
    assert_eq!(http_client::text(response).await?, "ok");

    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/hubs/test", server.addr)).await?;
    socket
        .send(Message::text(format!(
            "{{\"protocol\":\"json\",\"version\":1}}{RS}"
        )))
        .await?;
    let answer = tokio::time::timeout(http_client::EVENT_TIMEOUT, socket.next())
        .await?
        .context("socket closed")??;
    assert_eq!(answer, Message::text(format!("{{}}{RS}")));
    Ok(())
}

#[tokio::test]
async fn dashboard_stream_resumes_after_last_event_id() -> anyhow::Result<()> {
    let server = Server::start(&[])?;
    let mut client =
        Client::http1(TcpStream::connect(server.addr).await?, &server.http_base()).await?;
    let mut first = dashboard_stream(&mut client, false).await?;
    let last = metrics(&mut first, 3).await?;
    drop(first);
    drop(client);

    // Reconnect on another connection, after more samples were published.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let mut client =
        Client::http2(TcpStream::connect(server.addr).await?, &server.http_base()).await?;
    let last_header = last.to_string();
    let response = client
        .get("/dashboard/stream", &[("last-event-id", &last_header)])
        .await?;
    let mut resumed = Events::new(response)?;
    let event = resumed.next().await?.context("the stream ended")?;
    assert_eq!(
        event.id.as_deref(),
        Some((last + 1).to_string().as_str()),
        "the first event after a resume is the one after Last-Event-ID"
    );
    metrics(&mut resumed, 5).await?;
    Ok(())
}

#[cfg(unix)]
#[tokio::test]
async fn sigterm_ends_open_streams_and_the_process_exits() -> anyhow::Result<()> {
    let mut server = Server::start(&[])?;
    let mut client =
        Client::http2(TcpStream::connect(server.addr).await?, &server.http_base()).await?;
    let mut plain = dashboard_stream(&mut client, true).await?;
    let mut hub = SignalRSse::connect(&mut client, "/hubs/dashboard").await?;
    metrics(&mut plain, 1).await?;
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()?;
    ensure!(status.success());
    // The plain stream ends; the hub connection gets its Close first.
    while plain.next().await?.is_some() {}
    loop {
        let message = hub.next_message().await?;
        if message.contains("\"type\":7") {
            ensure!(message.contains("\"allowReconnect\":true"), "{message}");
            break;
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = server.child.try_wait()? {
            ensure!(status.success(), "exit status {status}");
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the server did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
