//! The load generator's connection driver: one WebSocket, opened from a
//! chosen source address, that speaks either the SignalR hub protocol (after
//! its handshake) or nothing at all (the raw baseline, which echoes or
//! forwards frames verbatim).
//!
//! It is deliberately lean — one `WebSocketStream`, one decoder and one
//! encode buffer per connection, small tungstenite buffers — so that one
//! process can hold tens of thousands of connections. Frames are encoded and
//! decoded with `tidings-protocol`, in both modes: the raw baseline carries
//! the very bytes a SignalR server would send, so both sides of a comparison
//! move and parse the same payloads.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tidings_protocol::{
    HubMessage, MessageDecoder, Protocol,
    handshake::{self, HandshakeRequest},
};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest, protocol::WebSocketConfig},
};

/// Which server a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ServerKind {
    /// A tidings (SignalR) server: handshake, hub methods.
    Tidings,
    /// The raw WebSocket baseline: no handshake, frames echoed or forwarded.
    Raw,
    /// The same raw baseline on the tokio-websockets codec
    /// (`tidings-baseline --codec tokio-websockets`).
    #[serde(rename = "raw-tws")]
    RawTws,
}

impl ServerKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ServerKind::Tidings => "tidings",
            ServerKind::Raw => "raw",
            ServerKind::RawTws => "raw-tws",
        }
    }
}

/// The transport a connection uses (tidings only: the raw baseline speaks
/// WebSockets).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transport {
    #[default]
    #[value(name = "websockets")]
    WebSockets,
    #[value(name = "sse")]
    ServerSentEvents,
    #[value(name = "longpolling")]
    LongPolling,
}

impl Transport {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Transport::WebSockets => "WebSockets",
            Transport::ServerSentEvents => "Server-Sent Events",
            Transport::LongPolling => "Long Polling",
        }
    }

    /// The name the tidings server's `--transports` takes.
    pub(crate) fn server_name(self) -> &'static str {
        match self {
            Transport::WebSockets => "WebSockets",
            Transport::ServerSentEvents => "ServerSentEvents",
            Transport::LongPolling => "LongPolling",
        }
    }
}

/// Where and how to connect.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Endpoint {
    pub kind: ServerKind,
    pub server: SocketAddr,
    /// Further servers of a cluster: listeners are spread over `server` and
    /// these in turn; senders and echo connections use `server`.
    #[serde(default)]
    pub peers: Vec<SocketAddr>,
    /// The hub path on a tidings server (e.g. `/hubs/test`).
    pub hub_path: String,
    #[serde(with = "protocol_name")]
    pub protocol: Protocol,
    /// The transport (idle scenario; every other scenario uses WebSockets).
    #[serde(default)]
    pub transport: Transport,
}

impl Endpoint {
    /// The server the listener with this global index connects to.
    pub(crate) fn listener_server(&self, index: usize) -> SocketAddr {
        match index % (self.peers.len() + 1) {
            0 => self.server,
            n => self.peers[n - 1],
        }
    }
}

/// A protocol travels between processes by its handshake name.
mod protocol_name {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use tidings_protocol::Protocol;

    pub(super) fn serialize<S: Serializer>(protocol: &Protocol, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(protocol.name())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Protocol, D::Error> {
        let name = String::deserialize(d)?;
        Protocol::from_name(&name)
            .ok_or_else(|| D::Error::custom(format!("unknown protocol {name}")))
    }
}

/// Source addresses 127.0.0.2, 127.0.0.3, …: each has its own ephemeral port
/// range, so the number of connections is not limited by one range.
pub(crate) fn source_address(index: usize, count: usize) -> Ipv4Addr {
    let n = (index % count.max(1)) as u32;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + n)
}

fn config() -> WebSocketConfig {
    // Small buffers: messages here are small, and the defaults (128 KiB each
    // way) would cost a page or more of resident memory per connection.
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(64 << 20))
}

/// An open connection.
pub(crate) struct Conn {
    ws: WebSocketStream<TcpStream>,
    protocol: Protocol,
    decoder: MessageDecoder,
    out: Vec<u8>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Opens a TCP connection from `source`, upgrades it to a WebSocket at
    /// `path_and_query`, and (for tidings) completes the SignalR handshake.
    pub(crate) async fn open(
        endpoint: &Endpoint,
        server: SocketAddr,
        path_and_query: &str,
        source: Ipv4Addr,
    ) -> anyhow::Result<Conn> {
        let socket = TcpSocket::new_v4()?;
        socket
            .bind(SocketAddr::from((source, 0)))
            .with_context(|| format!("cannot bind {source}"))?;
        let stream = socket
            .connect(server)
            .await
            .with_context(|| format!("cannot connect to {server}"))?;
        stream.set_nodelay(true)?;
        let request = format!("ws://{server}{path_and_query}").into_client_request()?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config()))
            .await
            .context("WebSocket upgrade failed")?;
        let mut conn = Conn {
            ws,
            protocol: endpoint.protocol,
            decoder: MessageDecoder::new(endpoint.protocol, None),
            out: Vec::with_capacity(128),
        };
        if endpoint.kind == ServerKind::Tidings {
            conn.handshake().await?;
        }
        Ok(conn)
    }

    async fn handshake(&mut self) -> anyhow::Result<()> {
        let mut request = Vec::new();
        handshake::write_request(
            &HandshakeRequest {
                protocol: self.protocol.name().to_owned(),
                version: 1,
            },
            &mut request,
        );
        let text = String::from_utf8(request).context("handshake is UTF-8")?;
        self.ws.send(Message::text(text)).await?;
        let mut buf = Vec::new();
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => buf.extend_from_slice(t.as_bytes()),
                Some(Ok(Message::Binary(b))) => buf.extend_from_slice(&b),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("closed during the handshake"),
            }
            if let Some((response, used)) = handshake::parse_response(&buf)? {
                if let Some(error) = response.error {
                    bail!("handshake refused: {error}");
                }
                self.decoder.push(&buf[used..]);
                return Ok(());
            }
        }
    }

    /// Sends one hub message in the connection's protocol.
    pub(crate) async fn send(&mut self, message: &HubMessage) -> anyhow::Result<()> {
        self.out.clear();
        self.protocol.write_message(message, &mut self.out)?;
        let frame = Bytes::copy_from_slice(&self.out);
        self.send_frame(frame).await
    }

    /// Sends bytes already framed in the connection's protocol.
    pub(crate) async fn send_frame(&mut self, frame: Bytes) -> anyhow::Result<()> {
        let message = match self.protocol {
            Protocol::Json => Message::Text(
                tungstenite::Utf8Bytes::try_from(frame).context("JSON frame is not UTF-8")?,
            ),
            Protocol::MessagePack => Message::Binary(frame),
        };
        self.ws.send(message).await?;
        Ok(())
    }

    /// The next hub message; `Ok(None)` when the connection closed.
    ///
    /// Cancel-safe: a message is taken from the decoder only when returned.
    pub(crate) async fn recv(&mut self) -> anyhow::Result<Option<HubMessage>> {
        loop {
            if let Some(message) = self.decoder.next_message()? {
                return Ok(Some(message));
            }
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => self.decoder.push(t.as_bytes()),
                Some(Ok(Message::Binary(b))) => self.decoder.push(&b),
                Some(Ok(Message::Close(_))) | None => return Ok(None),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Closes the WebSocket politely, waiting briefly for the server.
    pub(crate) async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.ws.close(None).await;
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}
