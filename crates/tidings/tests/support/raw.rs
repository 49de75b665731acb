//! Raw hub connections for tests that control every byte: WebSockets
//! (tokio-tungstenite) and Server-Sent Events / Long Polling (hyper), with
//! the client's bytes sent exactly as given and the server's bytes decoded
//! by `tidings-protocol`.
#![allow(dead_code)]

use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, stream::SplitSink};
use tidings_protocol::{
    CancelInvocation, HubMessage, Invocation, MessageDecoder, Protocol, ToArguments, handshake,
};
use tokio::{net::TcpStream, sync::mpsc};
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::frame::{Frame, coding::Data, coding::OpCode},
};

use crate::http_client::{self, Client, Events};

/// How long a test waits for any one thing the server should do.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

// ---- building messages -----------------------------------------------------

/// A message in `protocol`'s framing, ready to send.
pub(crate) fn encode(protocol: Protocol, message: &HubMessage) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    protocol.write_message(message, &mut out)?;
    Ok(out)
}

/// An Invocation of `target` with id `id`.
pub(crate) fn invocation(
    protocol: Protocol,
    id: &str,
    target: &str,
    arguments: impl ToArguments,
) -> anyhow::Result<Invocation> {
    Ok(Invocation::new(target, arguments.to_arguments(protocol)?).with_invocation_id(id))
}

/// A StreamInvocation of `target` (no arguments) with id `id`.
pub(crate) fn stream_invoke(protocol: Protocol, id: &str, target: &str) -> anyhow::Result<Vec<u8>> {
    let message = HubMessage::StreamInvocation(invocation(protocol, id, target, ())?);
    encode(protocol, &message)
}

/// A CancelInvocation of stream `id`.
pub(crate) fn cancel(protocol: Protocol, id: &str) -> anyhow::Result<Vec<u8>> {
    let message = HubMessage::CancelInvocation(CancelInvocation {
        headers: Default::default(),
        invocation_id: id.to_owned(),
    });
    encode(protocol, &message)
}

/// The three transports of a hub connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    WebSockets,
    ServerSentEvents,
    LongPolling,
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// What the reading side of a transport delivers.
#[derive(Debug)]
enum Chunk {
    Data(Bytes),
    /// The transport ended (WebSocket close or error, end of the SSE
    /// response, a 204 poll), described for failure messages.
    End(String),
}

enum Sender {
    Ws(SplitSink<Socket, Message>),
    /// Each POST goes over a new HTTP connection, so that a refused body
    /// (which may end its connection) does not affect the next POST.
    Http {
        addr: std::net::SocketAddr,
        path: String,
    },
}

/// What arrived from the server.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Incoming {
    Message(HubMessage),
    /// The transport ended; the text says how.
    Ended(String),
}

/// One raw connection to a hub.
pub(crate) struct RawConnection {
    pub transport: Transport,
    pub protocol: Protocol,
    sender: Sender,
    rx: mpsc::UnboundedReceiver<Chunk>,
    /// Bytes before the handshake answer was complete.
    pending: Vec<u8>,
    decoder: Option<MessageDecoder>,
    ended: Option<String>,
}

impl RawConnection {
    /// Opens the transport to `http://{addr}{path}` (negotiating for the HTTP
    /// transports) without sending anything.
    pub(crate) async fn open(
        addr: std::net::SocketAddr,
        path: &str,
        transport: Transport,
        protocol: Protocol,
    ) -> anyhow::Result<RawConnection> {
        let (tx, rx) = mpsc::unbounded_channel();
        let sender = match transport {
            Transport::WebSockets => {
                let url = format!("ws://{addr}{path}");
                let (socket, _) = tokio_tungstenite::connect_async(url).await?;
                let (sink, mut stream) = socket.split();
                tokio::spawn(async move {
                    loop {
                        let chunk = match stream.next().await {
                            Some(Ok(Message::Text(text))) => {
                                Chunk::Data(Bytes::copy_from_slice(text.as_bytes()))
                            }
                            Some(Ok(Message::Binary(data))) => Chunk::Data(data),
                            Some(Ok(Message::Close(frame))) => Chunk::End(format!(
                                "close frame {:?}",
                                frame.map(|f| u16::from(f.code))
                            )),
                            Some(Ok(_)) => continue,
                            Some(Err(error)) => Chunk::End(format!("socket error: {error}")),
                            None => Chunk::End("socket ended".to_owned()),
                        };
                        let end = matches!(chunk, Chunk::End(_));
                        if tx.send(chunk).is_err() || end {
                            break;
                        }
                    }
                });
                Sender::Ws(sink)
            }
            Transport::ServerSentEvents | Transport::LongPolling => {
                let base = format!("http://{addr}");
                let mut client = Client::http1(TcpStream::connect(addr).await?, &base).await?;
                let response = client
                    .send(
                        "POST",
                        &format!("{path}/negotiate?negotiateVersion=1"),
                        &[],
                        None,
                    )
                    .await?;
                let body: serde_json::Value =
                    serde_json::from_str(&http_client::text(response).await?)?;
                let token = body["connectionToken"]
                    .as_str()
                    .context("no connection token")?
                    .to_owned();
                let target = format!("{path}?id={token}");
                let mut reader = Client::http1(TcpStream::connect(addr).await?, &base).await?;
                if transport == Transport::ServerSentEvents {
                    let response = reader
                        .get(&target, &[("accept", "text/event-stream")])
                        .await?;
                    let mut events = Events::new(response)?;
                    tokio::spawn(async move {
                        loop {
                            let chunk = match events.next().await {
                                Ok(Some(event)) => Chunk::Data(Bytes::from(event.data)),
                                Ok(None) => Chunk::End("event stream ended".to_owned()),
                                // A quiet stream is not an end: keep reading.
                                Err(error) if error.to_string().contains("no event in time") => {
                                    continue;
                                }
                                Err(error) => Chunk::End(format!("event stream error: {error}")),
                            };
                            let end = matches!(chunk, Chunk::End(_));
                            if tx.send(chunk).is_err() || end {
                                break;
                            }
                        }
                    });
                } else {
                    // The first poll starts the connection and answers at once.
                    let first = reader.get(&target, &[]).await?;
                    if first.status() != 200 {
                        bail!("first poll: {}", first.status());
                    }
                    http_client::text(first).await?;
                    let target = target.clone();
                    tokio::spawn(async move {
                        loop {
                            let chunk = match reader.get(&target, &[]).await {
                                Ok(response) => match response.status().as_u16() {
                                    200 => match http_client::bytes(response).await {
                                        Ok(body) if body.is_empty() => continue,
                                        Ok(body) => Chunk::Data(body),
                                        Err(error) => Chunk::End(format!("poll body: {error}")),
                                    },
                                    status => Chunk::End(format!("poll status {status}")),
                                },
                                Err(error) => Chunk::End(format!("poll failed: {error}")),
                            };
                            let end = matches!(chunk, Chunk::End(_));
                            if tx.send(chunk).is_err() || end {
                                break;
                            }
                        }
                    });
                }
                drop(client);
                Sender::Http { addr, path: target }
            }
        };
        Ok(RawConnection {
            transport,
            protocol,
            sender,
            rx,
            pending: Vec::new(),
            decoder: None,
            ended: None,
        })
    }

    /// Opens the transport and completes the handshake.
    pub(crate) async fn connect(
        addr: std::net::SocketAddr,
        path: &str,
        transport: Transport,
        protocol: Protocol,
    ) -> anyhow::Result<RawConnection> {
        let mut connection = RawConnection::open(addr, path, transport, protocol).await?;
        connection.send_handshake().await?;
        match connection.handshake_answer().await? {
            None => Ok(connection),
            Some(error) => bail!("handshake refused: {error}"),
        }
    }

    /// Sends the handshake request for the connection's protocol.
    pub(crate) async fn send_handshake(&mut self) -> anyhow::Result<()> {
        let request = format!(
            "{{\"protocol\":\"{}\",\"version\":1}}\u{1e}",
            self.protocol.name()
        );
        self.send(request.into_bytes()).await.map(drop)
    }

    /// Sends `bytes` exactly: one WebSocket message (Text for JSON when the
    /// bytes are UTF-8, Binary otherwise; the server ignores the opcode) or
    /// one POST body. Returns the POST's status (200 for WebSockets).
    pub(crate) async fn send(&mut self, bytes: Vec<u8>) -> anyhow::Result<u16> {
        match &mut self.sender {
            Sender::Ws(sink) => {
                let message = match (self.protocol, String::from_utf8(bytes)) {
                    (Protocol::Json, Ok(text)) => Message::text(text),
                    (_, Ok(text)) => Message::binary(text.into_bytes()),
                    (_, Err(error)) => Message::binary(error.into_bytes()),
                };
                sink.send(message).await?;
                Ok(200)
            }
            Sender::Http { addr, path } => {
                let mut client =
                    Client::http1(TcpStream::connect(*addr).await?, &format!("http://{addr}"))
                        .await?;
                let response = client
                    .send("POST", path, &[], Some(Bytes::from(bytes)))
                    .await?;
                let status = response.status().as_u16();
                http_client::text(response).await?;
                Ok(status)
            }
        }
    }

    /// WebSockets only: a Text frame whose payload is not UTF-8 (which a
    /// conforming client never sends).
    pub(crate) async fn send_raw_text_frame(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        let Sender::Ws(sink) = &mut self.sender else {
            bail!("not a WebSocket");
        };
        let frame = Frame::message(bytes, OpCode::Data(Data::Text), true);
        sink.send(Message::Frame(frame)).await?;
        Ok(())
    }

    async fn next_chunk(&mut self) -> anyhow::Result<Chunk> {
        if let Some(end) = &self.ended {
            return Ok(Chunk::End(end.clone()));
        }
        let chunk = tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .context("nothing from the server in time")?
            .unwrap_or_else(|| Chunk::End("reader gone".to_owned()));
        if let Chunk::End(end) = &chunk {
            self.ended = Some(end.clone());
        }
        Ok(chunk)
    }

    /// The handshake answer: `None` if accepted, `Some(error)` if refused.
    pub(crate) async fn handshake_answer(&mut self) -> anyhow::Result<Option<String>> {
        loop {
            if let Some((response, used)) = handshake::parse_response(&self.pending)? {
                let mut decoder = MessageDecoder::new(self.protocol, None);
                decoder.push(&self.pending[used..]);
                self.pending.clear();
                self.decoder = Some(decoder);
                return Ok(response.error);
            }
            match self.next_chunk().await? {
                Chunk::Data(data) => self.pending.extend_from_slice(&data),
                Chunk::End(how) => bail!("ended before the handshake answer: {how}"),
            }
        }
    }

    /// The next message other than a Ping, or the end of the transport.
    pub(crate) async fn next(&mut self) -> anyhow::Result<Incoming> {
        let decoder = self.decoder.as_mut().context("no handshake yet")?;
        loop {
            match decoder.next_message()? {
                Some(HubMessage::Ping) => continue,
                Some(message) => return Ok(Incoming::Message(message)),
                None => {}
            }
            let chunk = {
                if let Some(end) = &self.ended {
                    Chunk::End(end.clone())
                } else {
                    let received = tokio::time::timeout(WAIT, self.rx.recv())
                        .await
                        .context("nothing from the server in time")?;
                    received.unwrap_or_else(|| Chunk::End("reader gone".to_owned()))
                }
            };
            match chunk {
                Chunk::Data(data) => decoder.push(&data),
                Chunk::End(how) => {
                    self.ended = Some(how.clone());
                    return Ok(Incoming::Ended(how));
                }
            }
        }
    }

    /// Waits for the transport to end, failing on any message.
    pub(crate) async fn expect_end(&mut self) -> anyhow::Result<String> {
        match self.next().await? {
            Incoming::Ended(how) => Ok(how),
            Incoming::Message(message) => bail!("expected the end, got {message:?}"),
        }
    }
}
