//! The WebSocket transport: one task reads and writes the socket.
//!
//! Frames are sent as Text for JSON and Binary for MessagePack, like the JavaScript client; frames
//! of either type are accepted from the server (some servers send JSON in Binary frames). Frames
//! queued together are written with one flush.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use tidings_protocol::{Protocol, TransportType};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{
        self, Message,
        client::IntoClientRequest,
        protocol::{CloseFrame, frame::coding::CloseCode},
    },
};
use url::Url;

use super::{Link, LinkEnds, TransportEvent, http::TlsConfig};
use crate::TransportError;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket to `url` (an `http`/`https` hub URL with its `id`), sending `headers`.
pub(crate) async fn connect(
    url: &Url,
    headers: HeaderMap,
    protocol: Protocol,
    tls: Option<&TlsConfig>,
) -> Result<Link, TransportError> {
    let mut ws_url = url.clone();
    let scheme = match url.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => return Err(TransportError::Url(format!("unsupported scheme '{other}'"))),
    };
    ws_url
        .set_scheme(scheme)
        .map_err(|()| TransportError::Url(url.to_string()))?;
    let mut request = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| TransportError::Url(e.to_string()))?;
    request.headers_mut().extend(headers);
    // Small messages should not wait for Nagle's algorithm.
    #[cfg(feature = "rustls")]
    let connected = tokio_tungstenite::connect_async_tls_with_config(
        request,
        None,
        true,
        tls.map(|config| tokio_tungstenite::Connector::Rustls(std::sync::Arc::clone(config))),
    )
    .await;
    #[cfg(not(feature = "rustls"))]
    let connected = {
        let _ = tls;
        tokio_tungstenite::connect_async_with_config(request, None, true).await
    };
    let (socket, _response) = connected.map_err(connect_error)?;
    let text = protocol == Protocol::Json;
    Ok(Link::new(TransportType::WebSockets, |ends, tasks| {
        tasks.spawn(run(socket, ends, text));
    }))
}

fn connect_error(error: tungstenite::Error) -> TransportError {
    match error {
        tungstenite::Error::Http(response) => {
            let status = response.status();
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .filter(|b| !b.is_empty())
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned());
            TransportError::Status {
                status: status.as_u16(),
                body,
            }
        }
        other => TransportError::WebSocket(other.to_string()),
    }
}

fn message(frame: Bytes, text: bool) -> Message {
    if text {
        // JSON frames are UTF-8 by construction; fall back to Binary rather than fail.
        match tungstenite::Utf8Bytes::try_from(frame.clone()) {
            Ok(text) => Message::Text(text),
            Err(_) => Message::Binary(frame),
        }
    } else {
        Message::Binary(frame)
    }
}

async fn run(mut socket: Socket, ends: LinkEnds, text: bool) {
    let LinkEnds {
        mut outgoing,
        incoming,
    } = ends;
    let mut closing = false;
    let outcome = loop {
        tokio::select! {
            frame = outgoing.recv(), if !closing => match frame {
                Some(frame) => {
                    if let Err(e) = write(&mut socket, &mut outgoing, frame, text).await {
                        break Some(TransportError::WebSocket(e.to_string()));
                    }
                }
                None => {
                    // The connection is stopping: start the close handshake, then read until the
                    // server's close arrives.
                    closing = true;
                    if socket.close(None).await.is_err() {
                        break None;
                    }
                }
            },
            read = socket.next() => match read {
                Some(Ok(Message::Text(data))) => {
                    if incoming.send(TransportEvent::Data(Bytes::from(data))).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(Message::Binary(data))) => {
                    if incoming.send(TransportEvent::Data(data)).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(Message::Close(frame))) => break closed(frame),
                Some(Ok(_)) => {}
                Some(Err(_)) if closing => break None,
                Some(Err(e)) => break Some(TransportError::WebSocket(e.to_string())),
                None => break None,
            },
        }
    };
    // Answers the server's close (or finishes ours); errors here change nothing.
    let _ = socket.close(None).await;
    let _ = incoming.send(TransportEvent::Closed(outcome)).await;
}

/// Writes `first` and whatever else is queued, then flushes once.
async fn write(
    socket: &mut Socket,
    outgoing: &mut tokio::sync::mpsc::Receiver<Bytes>,
    first: Bytes,
    text: bool,
) -> Result<(), tungstenite::Error> {
    socket.feed(message(first, text)).await?;
    while let Ok(frame) = outgoing.try_recv() {
        socket.feed(message(frame, text)).await?;
    }
    socket.flush().await
}

/// A close with status 1000 (or none) is a clean end; anything else is an error, as in the
/// JavaScript client.
fn closed(frame: Option<CloseFrame>) -> Option<TransportError> {
    match frame {
        None => None,
        Some(frame) if frame.code == CloseCode::Normal => None,
        Some(frame) => Some(TransportError::WebSocketClosed {
            code: frame.code.into(),
            reason: if frame.reason.is_empty() {
                "no reason given".to_owned()
            } else {
                frame.reason.to_string()
            },
        }),
    }
}
